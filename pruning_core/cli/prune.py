"""Command: prune (prune, fine-tune, measure, save a reloadable model directory)."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from pruning_core.checkpoint import save_model_dir
from pruning_core.cli.common import resolve, stderr_progress
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.fsio import check_output_dir, output_dir, write_json
from pruning_core.models import get_entry
from pruning_core.prune import PruneConfig, finetune_defaults, list_methods
from pruning_core.recipe import RECIPE_KEYS, RECIPE_VERSION, read_mapping, read_recipe
from pruning_core.recipe import SETTING_CHECKS as C
from pruning_core.regularize import REGULARIZERS, make_regularizer
from pruning_core.schedules import DYNAMIC_DEFAULT_UPDATES, SCHEDULES, Schedule, run_schedule
from pruning_core.stats import count_macs, count_params, size_bytes
from pruning_core.train import OPTIMIZERS, TrainConfig

DISTILL_WEIGHT = 0.5


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the prune command."""
    methods = ", ".join(m.name for m in list_methods())
    p = sub.add_parser(
        "prune",
        parents=[common],
        help="prune a model (any method/granularity), fine-tune, measure, save",
        description=f"Methods: {methods}. Granularities: unstructured, N:M (e.g. 2:4), channel, head, block.",
    )
    p.add_argument(
        "--model", help="registry name, model directory (also a pruned one) or checkpoint file"
    )
    p.add_argument("--arch", help="architecture of a checkpoint file (a registry name)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a full pickled module (trusted files only)",
    )
    p.add_argument("--dataset", help="registry name, idx:DIR, folder:DIR or FILE.zip")
    p.add_argument("--method", help=f"importance criterion ({methods})")
    p.add_argument("--granularity", help="unstructured, N:M (e.g. 2:4), channel, head or block")
    p.add_argument("--ratio", type=C["ratio"], help="share removed, in [0, 1) (N:M implies N/M)")
    p.add_argument(
        "--scope", choices=["global", "layer"], help="one threshold across layers, or per layer"
    )
    p.add_argument("--ratios-file", help="JSON or YAML mapping layer name -> ratio (overrides)")
    p.add_argument("--ignore", help="comma-separated layers kept dense (default: the classifier)")
    p.add_argument(
        "--max-layer-ratio",
        type=C["max_layer_ratio"],
        help="no layer pruned beyond this share, in (0, 1) (default 0.98)",
    )
    p.add_argument(
        "--structured-mode", choices=["physical", "mask"], help="shrink, or mask-only preview"
    )
    p.add_argument(
        "--round-to", type=C["round_to"], help="structured: keep channel counts multiples of this"
    )
    p.add_argument(
        "--calib-batches",
        type=C["calib_batches"],
        help="calibration batches for data-driven criteria",
    )
    p.add_argument("--norm", type=C["norm"], choices=[1, 2], help="magnitude norm (default 1)")
    p.add_argument("--schedule", choices=SCHEDULES, help="oneshot (default), linear, agp, dynamic")
    p.add_argument(
        "--steps", type=C["steps"],
        help=f"prune -> fine-tune cycles (linear/agp), or mask updates (dynamic, default {DYNAMIC_DEFAULT_UPDATES})",
    )  # fmt: skip
    p.add_argument(
        "--finetune-epochs",
        type=C["finetune_epochs"],
        help="fine-tune epochs after each pruning step (default 0)",
    )
    p.add_argument("--lr", type=C["lr"], help="fine-tune learning rate (default per granularity)")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="fine-tune optimizer (default per granularity)"
    )
    p.add_argument("--batch-size", type=C["batch_size"], help="fine-tune batch size (default 64)")
    p.add_argument(
        "--weight-decay",
        type=C["weight_decay"],
        help="fine-tune weight decay, >= 0 (default per granularity)",
    )
    p.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="distil from the dense model while fine-tuning (default: on for channel/head/block)",
    )
    p.add_argument(
        "--regularize", choices=list(REGULARIZERS), help="sparsity training before pruning"
    )
    p.add_argument(
        "--reg-strength",
        type=C["reg_strength"],
        help="regulariser strength (default per regulariser)",
    )
    p.add_argument(
        "--recipe", type=Path, help="repeat a run: its recipe.json/metrics.json (or YAML)"
    )
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--seed", type=C["seed"], help="seed (default 0): same seed, same result")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory (model + metrics.json + recipe.json)",
    )
    p.set_defaults(handler=cmd_prune)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the recipe's (if any, checked) with command-line options on top."""
    given = {k: getattr(args, k) for k in RECIPE_KEYS if getattr(args, k, None) is not None}
    s: dict[str, Any] = read_recipe(args.recipe, given) if args.recipe is not None else {}
    s.update(given)
    for k in ("model", "dataset", "method", "granularity"):
        if not s.get(k):
            raise UserError(f"--{k} is required (or --recipe FILE)")
    return s


def _prune_config(s: dict[str, Any]) -> PruneConfig:
    # A recipe carries the ratios file's content, not its path; a file given now wins.
    layer_ratios: dict[str, Any] = dict(s.get("layer_ratios") or {})
    if s.get("ratios_file"):
        layer_ratios = read_mapping(Path(s["ratios_file"]), "ratios file")
    s["layer_ratios"] = layer_ratios
    g = str(s["granularity"])
    if s.get("ratio") is None:
        if ":" not in g:
            raise UserError("--ratio is required (share removed, in [0, 1))")
        s["ratio"] = 0.0
    ignore = s.get("ignore")
    if isinstance(ignore, str):
        ignore = [x.strip() for x in ignore.split(",") if x.strip()]
    kw: dict[str, Any] = {
        "method": s["method"],
        "granularity": g,
        "ratio": s["ratio"],
        "scope": s.get("scope") or "global",
        "layer_ratios": tuple(layer_ratios.items()),
        "ignore": None if ignore is None else tuple(ignore),
        "norm": _given(s, "norm", 1),
        "seed": _given(s, "seed", 0),
    }
    for k in ("max_layer_ratio", "structured_mode", "round_to", "calib_batches"):
        if s.get(k) is not None:
            kw[k] = s[k]
    return PruneConfig(**kw)


def _given(s: dict[str, Any], key: str, default: Any) -> Any:
    """A setting, or `default` only when it is absent (0 is a value, never replaced)."""
    v = s.get(key)
    return default if v is None else v


def _train_config(s: dict[str, Any], config: PruneConfig) -> TrainConfig:
    d = finetune_defaults(config)
    return TrainConfig(
        epochs=int(_given(s, "finetune_epochs", 0)),
        lr=float(s["lr"] if s.get("lr") is not None else d["lr"]),
        optimizer=str(s.get("optimizer") or d["optimizer"]),
        batch_size=int(_given(s, "batch_size", 64)),
        weight_decay=float(
            s["weight_decay"] if s.get("weight_decay") is not None else d["weight_decay"]
        ),
        device=str(s.get("device") or "auto"),
        seed=int(_given(s, "seed", 0)),
        distill_weight=float(d["distill_weight"])
        if s.get("distill") is None
        else (DISTILL_WEIGHT if s["distill"] else 0.0),
    )


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    """Prune, fine-tune, measure and save; returns the metrics."""
    start = time.perf_counter()
    s = _settings(args)
    config = _prune_config(s)
    train_config = _train_config(s, config)
    kind = s.get("schedule") or "oneshot"
    steps = s.get("steps")
    schedule = Schedule(
        kind,
        int(steps) if steps is not None else (DYNAMIC_DEFAULT_UPDATES if kind == "dynamic" else 1),
    )
    regularizer = (
        make_regularizer(s["regularize"], s.get("reg_strength")) if s.get("regularize") else None
    )
    if regularizer is not None and train_config.epochs < 1:
        raise UserError(
            "--regularize trains with the penalty before pruning: give --finetune-epochs >= 1"
        )
    # Everything that can be checked without the model is checked before it is loaded.
    check_output_dir(args.out)
    resolve_device(train_config.device)
    ns = argparse.Namespace(
        model=str(s["model"]),
        arch=s.get("arch"),
        trust_pickle=args.trust_pickle,
        dataset=str(s["dataset"]),
    )
    loaded, data = resolve(ns)
    assert data is not None
    if loaded.arch is None:
        raise UserError(
            "a pickled module has no known architecture, so its pruned result cannot be saved"
        )
    model, spec = loaded.model, loaded.spec
    arch_kwargs = dict(loaded.meta.get("arch_kwargs") or loaded.arch_kwargs)
    seed = int(_given(s, "seed", 0))
    s["seed"], s["layer_ratios"] = seed, dict(config.layer_ratios)
    s.pop("ratios_file", None)

    if regularizer is not None:
        regularizer(model)  # fails now (e.g. slim without BatchNorm), not after an epoch
    torch.manual_seed(seed)
    dense = evaluate(model, data, spec)
    before = {
        "params": count_params(model, nonzero=True),
        "macs": count_macs(model, spec),
        "size": size_bytes(model),
    }
    teacher = copy.deepcopy(model).eval() if train_config.distill_weight > 0 else None
    progress = stderr_progress("fine-tune", args.quiet)
    result = run_schedule(
        model, config, schedule, train_config=train_config, data=data, spec=spec,
        progress=progress, teacher=teacher, regularizer=regularizer,
    )  # fmt: skip
    recipe = {
        "version": RECIPE_VERSION,
        "settings": {k: s.get(k) for k in (*RECIPE_KEYS, "layer_ratios") if k != "ratios_file"},
        "prune": config.to_dict(),
        "schedule": schedule.to_dict(),
        "train": train_config.to_dict(),
        "regularize": regularizer.to_dict() if regularizer is not None else None,
        "seed": seed,
    }
    fine_tuned = train_config.epochs > 0
    metrics: dict[str, Any] = {
        "model": str(s["model"]),
        "arch": loaded.arch,
        "dataset": str(s["dataset"]),
        "method": config.method,
        "granularity": config.granularity,
        "scope": config.scope,
        "target_ratio": config.effective_ratio,
        "sparsity": result.prune.sparsity,
        "layer_sparsity": result.prune.layer_sparsity,
        "params_before": before["params"],
        "params_after": count_params(model, nonzero=True),
        "macs_before": before["macs"],
        "macs_after": count_macs(model, spec),
        "dense_accuracy": dense.accuracy,
        "pruned_accuracy": result.pruned_accuracy,
        "regularized_accuracy": result.regularized_accuracy,
        "finetuned_accuracy": result.finetuned_accuracy if fine_tuned else None,
        "final_accuracy": result.finetuned_accuracy if fine_tuned else result.pruned_accuracy,
        "size_bytes_before": before["size"],
        "size_bytes_after": size_bytes(model),
        "schedule": schedule.kind,
        "curve": result.curve,
        "notes": result.prune.notes,
        "cancelled": result.cancelled,
        "seconds": 0.0,
        "recipe": recipe,
    }
    reference = get_entry(loaded.arch).builder(**arch_kwargs)
    meta = {
        "arch": loaded.arch,
        "arch_kwargs": arch_kwargs,
        "spec": spec.to_dict(),
        "dataset": str(s["dataset"]),
        "pruned": {
            "method": config.method,
            "granularity": config.granularity,
            "sparsity": result.prune.sparsity,
        },
        "recipe": recipe,
    }
    with output_dir(args.out) as tmp:
        save_model_dir(tmp, model, meta, reference=reference)
        metrics["seconds"] = time.perf_counter() - start
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "recipe.json", recipe)
    if args.json:
        return {**metrics, "out": str(args.out)}
    return _summary(metrics, args.out)


def _summary(m: dict[str, Any], out: Path) -> dict[str, Any]:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    return {
        "pruned": f"{m['model']} on {m['dataset']}: {m['method']} {m['granularity']} to {pct(m['sparsity'])} sparsity",
        "accuracy": f"dense {pct(m['dense_accuracy'])}, pruned {pct(m['pruned_accuracy'])}, "
        f"fine-tuned {pct(m['finetuned_accuracy'])}",
        "params": f"{m['params_before']:,} -> {m['params_after']:,} non-zero",
        "macs": f"{m['macs_before']:,} -> {m['macs_after']:,}",
        "notes": "; ".join(m["notes"]) or "-",
        "out": str(out),
        "seconds": round(m["seconds"], 1),
    }
