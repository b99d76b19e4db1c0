"""Command: prune (prune, fine-tune, measure, save a reloadable model directory)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from pruning_core.budget import BUDGET_HELP, Budget, parse_budget
from pruning_core.budget import search as budget_search
from pruning_core.cli.common import (
    add_step_args,
    check_fixed_ratio,
    criterion_name,
    granularity_name,
    resolve,
    stderr_progress,
)
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.executor import RayExecutor, check_executor, get_executor, list_executors
from pruning_core.export import finetune_outcome
from pruning_core.fsio import check_not_source, check_output_dir
from pruning_core.layers import counted_weights, measured_model_sparsity
from pruning_core.plans import list_granularities
from pruning_core.prune import list_methods, method_phrase
from pruning_core.recipe import RECIPE_KEYS, Recipe
from pruning_core.recipe import SETTING_CHECKS as C
from pruning_core.regularize import REGULARIZERS
from pruning_core.schedules import DYNAMIC_DEFAULT_UPDATES, SCHEDULES
from pruning_core.train import DEFAULT_FINETUNE as FT
from pruning_core.train import OPTIMIZERS
from pruning_core.workflow import run_recipe

__all__ = ["cmd_prune", "register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the prune command."""
    methods = ", ".join(m.name for m in list_methods())
    granularities = ", ".join(g.example for g in list_granularities())
    criteria = "; ".join(f"{m.name}: {m.summary} ({m.reference})" for m in list_methods())
    p = sub.add_parser(
        "prune",
        parents=[common],
        help="prune a model (any criterion/granularity), fine-tune, measure, save",
        description=f"Criteria: {criteria}. Granularities: "
        + "; ".join(f"{g.example}: {g.help}" for g in list_granularities())
        + ".",
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
    p.add_argument(
        "--criterion",
        "--method",
        dest="method",
        type=criterion_name,
        help=f"importance criterion ({methods})",
    )
    p.add_argument("--granularity", type=granularity_name, help=granularities)
    p.add_argument(
        "--ratio",
        type=C["ratio"],
        help="share removed, in [0, 1) (N:M fixes it at N/M and takes no other)",
    )
    budget_help = (
        f"instead of --ratio: {BUDGET_HELP}. Per-layer ratios (blocks: which blocks) that meet "
        "it with the least predicted accuracy loss are searched from measured sensitivity and "
        "cost curves, checked by measuring the pruned model, and written into the recipe"
    )
    p.add_argument("--budget", type=_budget, help=budget_help.replace("%", "%%"))
    p.add_argument(
        "--executor",
        choices=list_executors(),
        help="with --budget: where the sensitivity points of the search run: inprocess "
        "(default) or ray (a Ray cluster with --address, else a local runtime)",
    )
    p.add_argument(
        "--address",
        help="with --executor ray: the cluster to join (auto, HOST:PORT or ray://HOST:PORT)",
    )
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
    p.add_argument(
        "--no-bn-recalibration",
        dest="recalibrate_bn",
        action="store_false",
        default=True,
        help="structured pruning: keep the dense model's BatchNorm statistics instead of "
        "re-estimating them on the calibration batches (on by default: adaptive BN, Li et al. "
        "2020; off shows what it is worth)",
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
    p.add_argument("--lr", type=C["lr"], help=f"fine-tune learning rate (default {FT.lr:g})")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, help=f"fine-tune optimizer (default {FT.optimizer})"
    )
    p.add_argument(
        "--batch-size", type=C["batch_size"], help=f"fine-tune batch size (default {FT.batch_size})"
    )
    p.add_argument(
        "--weight-decay",
        type=C["weight_decay"],
        help=f"fine-tune weight decay, >= 0 (default {FT.weight_decay:g})",
    )
    add_step_args(p, structured=True, fill=False)
    p.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="distil from the dense model while fine-tuning (default "
        f"{'on' if FT.distill_weight > 0 else 'off'})",
    )
    p.add_argument(
        "--keep-best",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hand back the fine-tune epoch with the best validation accuracy, the pruned model "
        f"itself included (default {'on' if FT.keep_best else 'off'}); off: the last epoch",
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


def _budget(text: str) -> Budget:
    """argparse type: a budget (`macs=0.5`), refused in one line when malformed."""
    try:
        return parse_budget(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _recipe(args: argparse.Namespace) -> Recipe:
    """The run's recipe: the recipe file's (if any, checked) with command-line options on top."""
    given = {k: getattr(args, k) for k in RECIPE_KEYS if getattr(args, k, None) is not None}
    if getattr(args, "budget", None) is not None:
        if args.ratio is not None or args.ratios_file is not None:
            raise UserError("--budget chooses the ratios: give it without --ratio or --ratios-file")
        # The search replaces the ratios; the recipe needs one until then.
        given.setdefault("ratio", 0.0)
    recipe = (
        Recipe.read(args.recipe, given) if args.recipe is not None else Recipe.from_settings(given)
    )
    p = recipe.prune
    if getattr(args, "ratio", None) is not None:
        check_fixed_ratio(p.granularity, [args.ratio], "--ratio")
    elif getattr(args, "recipe", None) is not None and p.ratio:
        check_fixed_ratio(p.granularity, [p.ratio], f"{args.recipe}'s ratio")
    # Per-layer ratios (a --ratios-file, or the recipe's) that N:M would not use either.
    from_file = getattr(args, "ratios_file", None) is not None
    source = "--ratios-file" if from_file else f"{getattr(args, 'recipe', None)}'s layer_ratios"
    for name, r in p.layer_ratios:
        check_fixed_ratio(p.granularity, [r], f"{source} {name}")
    if not getattr(args, "recalibrate_bn", True):
        recipe = dataclasses.replace(recipe, prune=recipe.prune.replace(recalibrate_bn=False))
    if getattr(args, "budget", None) is not None and recipe.schedule.kind != "oneshot":
        # The search measures the one-shot result; a schedule prunes in steps to ratios the
        # search never measured, and "met" would describe another model.
        raise UserError(
            f"--budget searches one-shot ratios: give it without --schedule {recipe.schedule.kind}"
        )
    return recipe


def _executor(args: argparse.Namespace) -> tuple[str, str | None]:
    """The budget search's executor and address, checked before the model is loaded.

    Raises:
        UserError: --executor/--address without --budget, --address without ray, or Ray
            not installed.
    """
    name = getattr(args, "executor", None)
    address = getattr(args, "address", None)
    if (name is not None or address is not None) and getattr(args, "budget", None) is None:
        raise UserError("--executor and --address apply to --budget (the search) only")
    name = name or "inprocess"
    if address is not None and name != RayExecutor.name:
        raise UserError("--address applies to --executor ray only")
    check_executor(name, address)
    return name, address


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    """Prune, fine-tune, measure and save; returns the metrics."""
    recipe = _recipe(args)
    # Everything that can be checked without the model is checked before it is loaded.
    executor, address = _executor(args)
    check_output_dir(args.out)
    check_not_source(recipe.model, args.out)
    resolve_device(recipe.finetune.device)
    ns = argparse.Namespace(
        model=recipe.model, arch=recipe.arch, trust_pickle=args.trust_pickle, dataset=recipe.dataset
    )
    loaded, data = resolve(ns)
    if loaded.arch is None:
        raise UserError(
            "a pickled module has no known architecture, so its pruned result cannot be saved"
        )
    found = None
    search_s = 0.0
    if getattr(args, "budget", None) is not None and data is not None:
        t0 = time.perf_counter()
        with get_executor(executor, address) as ex:
            found = budget_search(
                loaded, data, args.budget, config=recipe.prune, device=recipe.finetune.device,
                executor=ex, progress=stderr_progress("budget", args.quiet),
            )  # fmt: skip
        search_s = time.perf_counter() - t0
        # The searched ratios become the recipe's: `prune --recipe` repeats them, no search.
        recipe = dataclasses.replace(recipe, prune=found.config)
    # A pruned folder read again (shrunk, or holding zeros): its accuracy is the input's, not
    # a dense model's.
    has_zeros = measured_model_sparsity(loaded.model, counted_weights(loaded.model)) > 0
    before = "input" if loaded.meta.get("surgery") or has_zeros else "dense"
    result = run_recipe(
        recipe, model=loaded, data=data, progress=stderr_progress("fine-tune", args.quiet)
    )
    if found is not None:
        result.extra["budget"] = {**found.to_dict(), "seconds": round(search_s, 1)}
    metrics = result.save(args.out)
    if args.json:
        return {**metrics, "out": str(args.out)}
    summary = _summary(metrics, args.out, before=before)
    if found is not None:
        # Predicted against measured, beside the run's accuracy line.
        at = list(summary).index("accuracy") + 1
        items = list(summary.items())
        summary = dict(items[:at] + list(found.summary().items()) + items[at:])
        summary["seconds"] = f"{summary['seconds']} (and {search_s:.1f} for the budget search)"
    return summary


def _summary(m: dict[str, Any], out: Path, before: str = "dense") -> dict[str, Any]:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    return {
        "pruned": f"{m['model']} on {m['dataset']}: {method_phrase(m['method'], m['granularity'])}, "
        + (f"ratio {r:g} -> " if isinstance(r := m.get("target_ratio"), int | float) else "")
        + f"sparsity {pct(m['sparsity'])} of all Linear/Conv weights",
        "accuracy": f"{before} {pct(m['dense_accuracy'])}, pruned {pct(m['pruned_accuracy'])}, "
        f"fine-tuned {pct(m['finetuned_accuracy'])}",
        "fine-tune": finetune_outcome(m) or "-",
        "params": f"{m['params_before']:,} -> {m['params_after']:,} non-zero",
        "macs": _macs_words(m),
        "notes": "; ".join(m["notes"]) or "-",
        "out": str(out),
        "seconds": round(m["seconds"], 1),
    }


def _macs_words(m: dict[str, Any]) -> str:
    """MACs before -> after; for masked zeros also the MACs on non-zero weights, the number a
    MACs budget counts (dense kernels still do the first)."""
    words = f"{m['macs_before']:,} -> {m['macs_after']:,}"
    eff = m.get("macs_effective_after")
    if isinstance(eff, int | float) and eff < m["macs_after"]:
        words += f" on dense kernels; {eff:,.0f} on non-zero weights (what a sparse kernel does)"
    return words
