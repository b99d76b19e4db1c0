"""What the Export page writes, without widgets: the metrics document, the recipe, file names
and the HTML report.

`export_metrics` and `export_recipe` are the one place the app builds these documents (in the
layout of `pruning-lab prune`'s metrics.json and recipe), so switching them to the engine's
recipe workflow later changes only this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from pruning_core import export
from pruning_core.errors import UserError
from pruning_core.latency import benchmark_backends
from pruning_core.models import LoadedModel
from pruning_core.store import RunStore
from ui.session import PrunedModel
from ui.uploads import CHECKPOINT_SUFFIXES

__all__ = [
    "build_report",
    "checkpoint_zip",
    "export_metrics",
    "export_recipe",
    "export_stem",
    "run_metrics",
]


def run_metrics(run_id: Any) -> dict[str, Any]:
    """The metrics the run store kept for a run ({} when there is no such run)."""
    if not isinstance(run_id, int):
        return {}
    try:
        return RunStore().get_run(run_id).metrics
    except UserError:
        return {}


def export_stem(model_ref: str, pm: PrunedModel | None) -> str:
    """A file-name stem for everything exported (`digits-cnn-magnitude-60%` -> safe chars)."""
    if pm is None:
        stem = f"{model_ref.replace(':', '-').replace('/', '-')}-dense"
    else:
        sp = float(pm.result.get("sparsity", 0.0))
        stem = f"{pm.model_ref.replace(':', '-').replace('/', '-')}-{pm.config.method}-{sp:.0%}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.") or "model"


def export_recipe(pm: PrunedModel | None, loaded: LoadedModel) -> dict[str, Any] | None:
    """The recipe of `pruning-lab prune --recipe` that repeats the session's model (None when
    nothing is pruned)."""
    if pm is None:
        return None
    ft = pm.finetune
    train = ft.get("train") or None
    sched = ft.get("schedule") or {}
    reg = ft.get("regularizer")
    regularized = bool(reg) and reg != "none"
    return export.make_recipe(
        model=pm.model_ref,
        dataset=pm.dataset_ref,
        prune=pm.config.to_dict(),
        train=train,
        schedule=str(sched.get("kind") or "oneshot"),
        steps=sched.get("steps"),
        distill=bool(train and float(train.get("distill_weight") or 0) > 0),
        regularize=reg if regularized else None,
        reg_strength=ft.get("reg_strength") if regularized else None,
        arch=loaded.arch if pm.model_ref.endswith(CHECKPOINT_SUFFIXES) else None,
    )


def export_metrics(
    model_ref: str,
    dataset_ref: str,
    base: Mapping[str, Any],
    loaded: LoadedModel,
    pm: PrunedModel | None,
) -> dict[str, Any]:
    """The exported model's numbers, in the layout of `pruning-lab prune`'s metrics.json.

    Args:
        model_ref, dataset_ref: The selection.
        base: The dense baseline (`ui.loaders.baseline`).
        loaded: The model exported (the session's, or the dense one).
        pm: The session's pruned model, or None (the dense model is exported).
    """
    m: dict[str, Any] = {
        "model": model_ref,
        "arch": loaded.arch,
        "dataset": dataset_ref,
        "params_before": base["params"],
        "macs_before": base["macs"],
        "size_bytes_before": base["size_bytes"],
        "dense_accuracy": base["accuracy"],
        "val_images": base["n"],
    }
    if pm is None:
        m.update(method=None, granularity=None, target_ratio=0.0, sparsity=0.0,
                 params_after=base["params"], macs_after=base["macs"],
                 size_bytes_after=base["size_bytes"], pruned_accuracy=base["accuracy"],
                 finetuned_accuracy=None, stage="dense")  # fmt: skip
        return m
    s = pm.summary
    ran = run_metrics(pm.finetune.get("run_id"))
    fine = pm.stage == "fine-tuned"
    m.update(
        method=pm.config.method, granularity=pm.config.granularity, scope=pm.config.scope,
        target_ratio=pm.config.effective_ratio, sparsity=pm.result.get("sparsity"),
        layer_sparsity=pm.result.get("layer_sparsity", {}),
        params_after=s.get("params_nonzero"), macs_after=s.get("macs"),
        size_bytes_after=s.get("size_bytes"),
        pruned_accuracy=ran.get("pruned_accuracy") if fine else pm.accuracy,
        finetuned_accuracy=pm.accuracy if fine else None, stage=pm.stage,
        history=list(pm.history), recipe=export_recipe(pm, loaded),
    )  # fmt: skip
    if fine and ran.get("schedule_curve"):
        m["curve"] = ran["schedule_curve"]
    return m


def checkpoint_zip(
    loaded: LoadedModel,
    metrics: Mapping[str, Any],
    recipe: Mapping[str, Any] | None,
    dataset_ref: str,
    stem: str,
) -> bytes:
    """The model folder (safetensors + model.json, metrics.json, recipe.json) zipped under
    `stem/` (`export.checkpoint_zip`).

    Raises:
        UserError: The model has no known architecture (a pickled module).
    """
    if loaded.arch is None:
        raise UserError("a model without a known architecture cannot be saved as a checkpoint")
    files: dict[str, Any] = {"metrics.json": dict(metrics)}
    extra = {k: v for k, v in loaded.meta.items() if k not in ("surgery", "recipe")}
    extra["dataset"] = dataset_ref
    if recipe:
        files["recipe.json"] = dict(recipe)
        extra["recipe"] = dict(recipe)
    return export.checkpoint_zip(
        loaded.model, arch=loaded.arch, arch_kwargs=loaded.meta.get("arch_kwargs") or
        loaded.arch_kwargs, spec=loaded.spec, extra_meta=extra, files=files, folder=stem,
    )  # fmt: skip


def build_report(
    metrics: Mapping[str, Any],
    model_ref: str,
    loaded: LoadedModel,
    dense: LoadedModel,
    *,
    pruned: bool,
    sweep: pd.DataFrame | None,
    latency: pd.DataFrame | None,
    latency_attrs: Mapping[str, Any],
) -> str:
    """The self-contained HTML report (`export.pruning_report`).

    Latency comes from the Trade-offs page's measurement when there is one, else it is measured
    now (CPU, batch 32, random input, dense against the exported model's backends).
    """
    if latency is not None:
        lat = latency
        note = "from the Trade-offs page: " + ", ".join(
            f"{k} {v}" for k, v in latency_attrs.items() if k != "cancelled"
        )
    else:
        spec = loaded.spec
        x = torch.randn(32, spec.channels, spec.size, spec.size)
        lat = benchmark_backends(
            loaded.model, x, backends=["dense", "masked", "structured", "csr"],
            dense=dense.model, repeats=20, max_seconds=3.0,
        )  # fmt: skip
        note = f"CPU, {torch.get_num_threads()} threads, batch 32, random input"
    notes = (
        ["Exported from the Pruning Lab app."]
        if pruned
        else ["Nothing was pruned in this session: this report shows the dense model."]
    )
    return export.pruning_report(
        dict(metrics), title=f"Pruning report: {model_ref}", sweep=sweep, latency=lat,
        latency_note=note, model_card=export.model_card(model_ref), notes=notes,
    )  # fmt: skip
