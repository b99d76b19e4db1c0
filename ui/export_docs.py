"""What the Export page writes, without widgets: the metrics document, the recipe, file names
and the HTML report.

The documents come from the engine's one workflow: the recipe is the session's `Recipe`
(`to_document`), and the metrics are `RecipeResult.metrics()`: the fine-tune job's own result, or
one assembled from what Apply measured. No layout is written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pruning_core import export
from pruning_core.data import DataBundle
from pruning_core.errors import UserError
from pruning_core.latency import PROTOCOL, benchmark_backends
from pruning_core.layers import example_input
from pruning_core.models import LoadedModel
from pruning_core.prune import PruneResult
from pruning_core.schedules import ScheduleResult
from pruning_core.workflow import Measures, RecipeResult
from ui.session import PrunedModel

__all__ = [
    "build_report",
    "checkpoint_zip",
    "export_metrics",
    "export_recipe",
    "export_recipe_text",
    "export_stem",
]


def export_stem(model_ref: str, pm: PrunedModel | None) -> str:
    """A file-name stem for everything exported (`digits-cnn-magnitude-60%` -> safe chars)."""
    if pm is None:
        stem = f"{model_ref.replace(':', '-').replace('/', '-')}-dense"
    else:
        sp = float(pm.result.get("sparsity", 0.0))
        stem = f"{pm.model_ref.replace(':', '-').replace('/', '-')}-{pm.config.method}-{sp:.0%}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.") or "model"


def export_recipe(pm: PrunedModel | None) -> dict[str, Any] | None:
    """The recipe document that repeats the session's model with `pruning-lab prune --recipe`
    (None when nothing is pruned). It carries values, not paths: an uploaded model or dataset
    is named by its file name, to be placed beside the recipe."""
    return None if pm is None else pm.recipe().to_document(portable=True)


def export_recipe_text(pm: PrunedModel, fmt: str) -> str:
    """The session's recipe as JSON or YAML text (both read by `pruning-lab prune --recipe`)."""
    return pm.recipe().text(fmt, portable=True)


def export_metrics(
    model_ref: str,
    dataset_ref: str,
    base: Mapping[str, Any],
    loaded: LoadedModel,
    pm: PrunedModel | None,
) -> dict[str, Any]:
    """The exported model's numbers, in the one `metrics.json` layout (`RecipeResult.metrics`).

    Args:
        model_ref, dataset_ref: The selection.
        base: The dense baseline (`ui.loaders.baseline`).
        loaded: The model exported (the session's, or the dense one).
        pm: The session's pruned model, or None (the dense model is exported).
    """
    dense = Measures(base["accuracy"], base["params"], base["macs"], base["size_bytes"])
    if pm is None:
        return {
            "model": model_ref, "arch": loaded.arch, "dataset": dataset_ref, "method": None,
            "granularity": None, "target_ratio": 0.0, "sparsity": 0.0,
            "params_before": dense.params, "params_after": dense.params,
            "macs_before": dense.macs, "macs_after": dense.macs,
            "size_bytes_before": dense.size_bytes, "size_bytes_after": dense.size_bytes,
            "dense_accuracy": dense.accuracy, "pruned_accuracy": dense.accuracy,
            "finetuned_accuracy": None, "stage": "dense", "val_images": base["n"],
        }  # fmt: skip
    extra = {"stage": pm.stage, "history": list(pm.history), "val_images": base["n"]}
    run = pm.run
    if run is None:
        # Pruned in the session without fine-tuning: the same layout from what Apply measured.
        s = pm.summary
        result = dict(pm.result)
        run = RecipeResult(
            recipe=pm.recipe(),
            loaded=loaded,
            dense=dense,
            after=Measures(
                pm.accuracy, s.get("params_nonzero", 0), s.get("macs", 0), s.get("size_bytes", 0)
            ),
            schedule=ScheduleResult(
                prune=PruneResult(
                    layer_sparsity=dict(result.get("layer_sparsity", {})),
                    sparsity=float(result.get("sparsity", 0.0)),
                    removed=dict(result.get("removed", {})),
                    notes=list(result.get("notes", [])),
                ),
                pruned_accuracy=pm.accuracy,
            ),
        )
    metrics = {**run.metrics(), **extra}
    metrics["recipe"] = export_recipe(pm)
    return metrics


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
    companions: pd.DataFrame | None = None,
    data: DataBundle | None = None,
) -> str:
    """The self-contained HTML report (`export.pruning_report`).

    With `data` and a pruned model, the report's per-class section compares the pruned model
    with dense class by class on the validation split (`per_class.per_class_change`, Hooker et
    al. 2019), measured now.

    `companions` is the Trade-offs page's last one view of this selection
    (`companions.compare_companions`, its `attrs` with the protocol), put in as its own section.

    Latency comes from the Trade-offs page's measurement when there is one, else it is measured
    now with the app's protocol (`timing.PROTOCOL`, as `pruning-lab bench`): dense against the
    exported model's backends. The protocol is stated beside the numbers either way.
    """
    if latency is not None:
        lat = latency
        how = latency_attrs.get("protocol") or ", ".join(
            f"{k} {v}" for k, v in latency_attrs.items() if k != "cancelled"
        )
        note = f"from the Trade-offs page: {how}"
    else:
        x = example_input(dense.model, loaded.spec, PROTOCOL.batch_size, random=True)
        lat = benchmark_backends(
            loaded.model, x, backends=["dense", "masked", "structured", "csr"],
            dense=dense.model, protocol=PROTOCOL,
        )  # fmt: skip
        note = lat.attrs["protocol"]
    notes = (
        ["Exported from the Pruning Lab app."]
        if pruned
        else ["Nothing was pruned in this session: this report shows the dense model."]
    )
    per_class = None
    if pruned and data is not None:
        from pruning_core.per_class import per_class_accuracy, per_class_change

        per_class = per_class_change(
            per_class_accuracy(dense.model, data, dense.spec),
            per_class_accuracy(loaded.model, data, loaded.spec),
        )
    return export.pruning_report(
        dict(metrics), title=f"Pruning report: {model_ref}", sweep=sweep, latency=lat,
        latency_note=note, model_card=export.model_card(model_ref), notes=notes,
        companions=companions, per_class=per_class,
    )  # fmt: skip
