"""Commands: sweep (accuracy vs sparsity per method) and sensitivity (per-unit drop curves).

`register(sub, common)` is called by the `measure` command module. Both commands validate their
input before any work, report progress on stderr, and write their CSV atomically at the end.
With `--record` the run (settings, rows as metrics, the CSV as an artifact) goes into the run
store (`PRUNING_LAB_HOME`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pruning_core.cli.common import (
    add_model_args,
    add_step_args,
    check_fixed_ratio,
    criterion_name,
    granularity_name,
    resolve,
)
from pruning_core.criteria import CRITERIA, Magnitude, Random
from pruning_core.errors import UserError
from pruning_core.executor import (
    InProcess,
    RayExecutor,
    check_executor,
    get_executor,
    list_executors,
)
from pruning_core.fsio import check_output_file
from pruning_core.plans import get_plan, list_granularities
from pruning_core.plans.masks import UnstructuredPlan
from pruning_core.progress import ProgressFn, ProgressReport
from pruning_core.prune import PruneConfig, criteria_for
from pruning_core.recipe import SETTING_CHECKS as C
from pruning_core.train import DEFAULT_FINETUNE as FT
from pruning_core.validate import POSITIVE_INT, RATIO

__all__ = [
    "DEFAULT_TARGET_RATIO",
    "SWEEP_RATIOS",
    "cmd_sensitivity",
    "cmd_sweep",
    "parse_ratios",
    "register",
]

DEFAULT_TARGET_RATIO = 0.8
# `sweep --ratios` when none are given.
SWEEP_RATIOS = "0.5,0.7,0.9"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the `sweep` and `sensitivity` commands."""
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="accuracy vs sparsity for several methods and ratios (CSV)",
        description="Prune a fresh copy of the model for every (method, ratio), measure it, "
        "optionally fine-tune it, and write one CSV row per point.",
    )
    add_model_args(p)
    p.add_argument(
        "--methods",
        "--criteria",
        dest="methods",
        help="comma-separated criteria ("
        + ", ".join(CRITERIA)
        + f"; default {Magnitude.name},{Random.name}, those the granularity takes)",
    )
    p.add_argument(
        "--ratios",
        help=f"comma-separated ratios in [0, 1) (default {SWEEP_RATIOS}; N:M fixes its own, "
        "N/M, and takes no other)",
    )
    p.add_argument(
        "--granularity",
        default=UnstructuredPlan.name,
        type=granularity_name,
        help=", ".join(g.example for g in list_granularities()),
    )
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument(
        "--finetune-epochs",
        type=C["finetune_epochs"],
        default=0,
        help="fine-tune each point (0: no)",
    )
    p.add_argument(
        "--lr", type=C["lr"], default=FT.lr, help=f"fine-tune learning rate (default {FT.lr:g})"
    )
    p.add_argument(
        "--batch-size",
        type=C["batch_size"],
        default=FT.batch_size,
        help=f"fine-tune batch size (default {FT.batch_size})",
    )
    add_step_args(p, structured=False, fill=True)
    p.add_argument(
        "--eval-limit", type=POSITIVE_INT, help="evaluate on the first N validation images"
    )
    _common_tail(p)
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser(
        "sensitivity",
        parents=[common],
        help="per-unit sensitivity: prune one layer, channel group or block at a time (CSV) "
        "and suggest ratios",
        description="Prune each unit alone over several ratios (a layer; a channel group of "
        "layers coupled by residual additions or concatenations; an attention layer; a residual "
        "block, removed whole), record the accuracy drop, and suggest per-unit ratios reaching "
        "--target-ratio with the least predicted loss (checked against the uniform ratio "
        "--target-ratio in every unit; not for blocks, which take one ratio). The target is a "
        "ratio as --ratio counts it, a share of the units' weights (for channels and heads, of "
        "their elements), weighted by size; the measured sparsity of both, a share of all "
        "Linear/Conv weights, is printed beside it. The points run in this "
        "process or, with --executor ray, on a Ray cluster.",
    )
    add_model_args(p)
    p.add_argument("--ratios", default="0.25,0.5,0.75,0.9", help="comma-separated ratios")
    p.add_argument(
        "--criterion", "--method", dest="method", default=Magnitude.name, type=criterion_name
    )
    p.add_argument(
        "--granularity",
        default=UnstructuredPlan.name,
        type=granularity_name,
        help="a granularity with a choice per unit: "
        + ", ".join(g.example for g in list_granularities() if not g.fixed_ratio),
    )
    p.add_argument(
        "--target-ratio",
        type=RATIO,
        help=f"overall ratio to suggest per-unit ratios for, as --ratio counts it (default "
        f"{DEFAULT_TARGET_RATIO}, or the largest measured ratio if smaller)",
    )
    # Its former name, still taken, with a warning that it is a ratio, not the model's sparsity.
    p.add_argument("--target-sparsity", dest="target_sparsity", type=RATIO, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate on the first N images of the split")
    p.add_argument(
        "--split",
        default="val",
        choices=["val", "calib"],
        help="where drops are measured (calib keeps val unseen by the ratio choice)",
    )
    p.add_argument(
        "--executor",
        default=InProcess.name,
        choices=list_executors(),
        help="where the points run: inprocess (default) or ray (a Ray cluster with --address, "
        "else a local Ray runtime; needs `uv sync --group ray` or pip install pruning-lab[ray])",
    )
    p.add_argument(
        "--address",
        help="with --executor ray: the cluster to join (auto, HOST:PORT or ray://HOST:PORT)",
    )
    _common_tail(p)
    p.set_defaults(handler=cmd_sensitivity)


def _common_tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=C["seed"], default=0)
    p.add_argument("--record", action="store_true", help="also record the run in the run store")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")


def parse_ratios(text: str, what: str) -> list[float]:
    """'0.5, 0.9' -> [0.5, 0.9], each in [0, 1); a UserError naming the option otherwise."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise UserError(f"{what} needs at least one number")
    out = []
    for t in parts:
        try:
            out.append(float(t))
        except ValueError:
            raise UserError(f"{what} must be comma-separated numbers, got '{t}'") from None
        if not 0.0 <= out[-1] < 1.0:
            raise UserError(f"{what} must be in [0, 1) (share of weights removed), got {t}")
    return out


def _check_out(out: Path) -> None:
    check_output_file(out, "--out", (".csv",))


def _progress(label: str, quiet: bool) -> ProgressFn:
    """A `progress=` callback printing `label  42.0%  message` lines on stderr."""
    tty = sys.stderr.isatty()

    def report(p: ProgressReport) -> None:
        step = "step" in p.message  # per-step fine-tune updates: only on a terminal
        if quiet or (step and not tty):
            return
        line = f"{label} {p.fraction * 100:5.1f}%  {p.message}"
        sys.stderr.write((f"\r{line}\033[K" + ("" if step else "\n")) if tty else line + "\n")
        sys.stderr.flush()

    return report


def _rows(df: Any) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from pruning_core.experiments import method_label, sweep, write_csv

    _check_out(args.out)
    if args.methods is None:
        # The default pair, less what the granularity cannot take (low rank: magnitude only).
        methods = [m for m in criteria_for(args.granularity) if m in (Magnitude.name, Random.name)]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ratios = parse_ratios(args.ratios or SWEEP_RATIOS, "--ratios")
    if args.ratios is not None:
        check_fixed_ratio(args.granularity, ratios, "--ratios")
    plan, canonical = get_plan(args.granularity)
    if plan.fixed_ratio:
        ratios = [plan.effective_ratio(canonical, 0.0)]  # the one point it runs (N/M)
    if not methods:
        raise UserError("--methods needs at least one criterion")
    for m in methods:
        PruneConfig(method=m, granularity=args.granularity, ratio=0.0, seed=args.seed)
    train_config = dataclasses.replace(
        FT,
        epochs=args.finetune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        warmup=args.warmup,
        min_steps_per_epoch=args.min_steps_per_epoch,
        device=args.device,
        seed=args.seed,
    )
    loaded, data = resolve(args)
    assert data is not None
    start = time.perf_counter()
    df = sweep(
        loaded,
        data,
        methods=methods,
        ratios=ratios,
        granularity=args.granularity,
        finetune_epochs=args.finetune_epochs,
        train_config=train_config,
        progress=_progress("sweep", args.quiet),
        scope=args.scope,
        device=args.device,
        eval_limit=args.eval_limit,
        seed=args.seed,
    )
    write_csv(df, args.out)
    rows = _rows(df)
    payload: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "granularity": args.granularity,
        # As the rows name them (low rank: "lowrank", `experiments.method_label`).
        "methods": list(dict.fromkeys(method_label(m, args.granularity) for m in methods)),
        "ratios": ratios,
        "finetune_epochs": args.finetune_epochs,
        "out": str(args.out),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    if args.record:
        payload["run_id"] = _record("sweep", args, payload, args.out)
    return payload


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    from pruning_core.experiments import sensitivity, write_csv

    _check_out(args.out)
    ratios = parse_ratios(args.ratios, "--ratios")
    if args.target_sparsity is not None:
        if args.target_ratio is not None:
            raise UserError("give --target-ratio only (--target-sparsity is its former name)")
        args.target_ratio = args.target_sparsity
        warnings.warn(
            f"--target-sparsity is now --target-ratio: {args.target_ratio:g} is taken as a ratio "
            "of the units' weights; the model's sparsity, which also counts the layers kept "
            "dense, is printed as 'sparsity'",
            stacklevel=2,
        )
    if args.target_ratio is not None and args.target_ratio > max(ratios):
        raise UserError(
            f"--target-ratio {args.target_ratio} is above the largest measured ratio "
            f"{max(ratios)}; add a larger value to --ratios"
        )
    config = PruneConfig(
        method=args.method, granularity=args.granularity, ratio=0.0, seed=args.seed
    )
    if args.address is not None and args.executor != RayExecutor.name:
        raise UserError("--address applies to --executor ray only")
    check_executor(args.executor, args.address)  # Ray installed, before any model is loaded
    loaded, data = resolve(args)
    assert data is not None
    start = time.perf_counter()
    with get_executor(args.executor, args.address) as executor:
        df = sensitivity(
            loaded,
            data,
            ratios=ratios,
            method=args.method,
            granularity=args.granularity,
            limit=args.limit,
            progress=_progress("sensitivity", args.quiet),
            split=args.split,
            device=args.device,
            seed=args.seed,
            executor=executor,
        )
    units = list(dict.fromkeys(df["layer"]))
    suggestion: dict[str, Any] | None = None
    if config.plan.per_layer:
        suggestion = _suggest(args, loaded, data, df, ratios, units)
    write_csv(df, args.out)
    members = df.drop_duplicates("layer").set_index("layer")["members"]
    payload: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "method": args.method,
        "granularity": args.granularity,
        "split": args.split,
        "executor": args.executor,
        "base_accuracy": df.attrs["base_accuracy"],
        "layers": units,
        # The layers each unit prunes together (a channel group's coupled convs, a block's).
        "units": {u: str(members[u]).split(",") for u in units},
        "ratios": ratios,
        "out": str(args.out),
        "seconds": time.perf_counter() - start,
        # Rows as before units had members (those are under "units").
        "rows": _rows(df.drop(columns=["members"])),
        # None for blocks: one ratio removes a share of all of them, no per-unit ratios.
        "suggestion": suggestion,
    }
    if args.record:
        payload["run_id"] = _record("sensitivity", args, payload, args.out)
    return payload


def _suggest(
    args: argparse.Namespace,
    loaded: Any,
    data: Any,
    df: Any,
    ratios: list[float],
    units: list[str],
) -> dict[str, Any]:
    """Per-unit ratios for the target ratio, predicted and measured against uniform."""
    from pruning_core.experiments import (
        check_suggestion,
        layer_sizes,
        predicted_drop,
        suggest_ratios,
    )
    from pruning_core.plans import get_plan

    target = args.target_ratio
    if target is None:
        target = min(DEFAULT_TARGET_RATIO, max(ratios))
    sizes = layer_sizes(loaded.model, units)
    suggested = suggest_ratios(df, sizes, target)
    uniform = dict.fromkeys(sizes, target)
    check = check_suggestion(
        loaded.model,
        data,
        loaded.spec,
        suggested,
        method=args.method,
        granularity=args.granularity,
        limit=args.limit,
        device=args.device,
    )
    return {
        "target_ratio": target,
        "ratios": suggested,
        "predicted_drop": predicted_drop(df, suggested),
        "uniform_predicted_drop": predicted_drop(df, uniform),
        "measured_on": "val",
        **check,
        **(
            {
                "note": "target_ratio and ratios are shares of channels (or heads); sparsity "
                "and uniform_sparsity are measured shares of all Linear/Conv weights, which a "
                "removed channel takes from the next layer too: suggested and uniform differ in "
                "cost, compare them by it"
            }
            if get_plan(args.granularity)[0].structured
            else {}
        ),
    }


def _record(kind: str, args: argparse.Namespace, payload: dict[str, Any], csv: Path) -> int:
    from pruning_core.store import RunStore

    store = RunStore()
    config = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("handler", "json", "quiet", "record")
    }
    metrics = {k: v for k, v in payload.items() if k not in ("model", "dataset", "out")}
    run = store.create_run(
        kind,
        model=args.model,
        dataset=args.dataset,
        config=config,
        name=f"{kind} {args.model}",
        status="done",
        metrics=metrics,
    )
    store.write_artifact(run, csv.name, csv.read_bytes(), name="csv")
    return run
