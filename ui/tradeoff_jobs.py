"""The Trade-offs page's measurements as background jobs, without Streamlit (they run in a
runner thread).

Each builder takes a private trainable copy of the dense model when it is called (the shared
one stays frozen) and returns a `Measurement`: the job function, its name and the settings the
run store records. A job returns its table as `{"frame", "attrs", "points"}` and keeps it as a
CSV artifact of its run (`frame_result`). `size_points` turns a sweep into the size-vs-accuracy
points with their Pareto front. `strategies_job` compares ratio strategies at one budget
(`pruning_core.strategies`), `per_class_job` measures a stored run's per-class accuracy change
against the dense model (`pruning_core.per_class`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from pruning_core.cli.experiments_cmds import parse_ratios as parse_ratio_list
from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.experiments import sensitivity, sweep
from pruning_core.export import csv_bytes
from pruning_core.jobs import JobContext
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel, load_model
from pruning_core.per_class import (
    change_from_records,
    per_class_accuracy,
    per_class_change,
)
from pruning_core.plans import get_plan
from pruning_core.recipe import Recipe
from pruning_core.spec import InputSpec
from pruning_core.store import RunStore
from pruning_core.strategies import STRATEGIES, compare_strategies
from pruning_core.tradeoffs import latency_vs_sparsity, pareto_front
from pruning_core.train import DEFAULT_FINETUNE
from pruning_core.workflow import run_recipe

__all__ = [
    "Measurement",
    "default_device",
    "frame_result",
    "latency_job",
    "parse_ratios",
    "per_class_job",
    "run_model_source",
    "sensitivity_job",
    "size_points",
    "strategies_job",
    "sweep_job",
]


@dataclass(frozen=True)
class Measurement:
    """A job ready to queue.

    Attributes:
        fn: The job function (`JobRunner.submit`).
        name: Its label.
        config: Its settings, as recorded in the run store.
        kind: The run store's kind, when it is not the page's slot name.
    """

    fn: Callable[[JobContext], dict[str, Any]]
    name: str
    config: dict[str, Any]
    kind: str | None = None


def default_device() -> str:
    """Where measurements run: the GPU when there is one, else the CPU."""
    return str(resolve_device("auto"))


def parse_ratios(text: str, lo: float = 0.0, hi: float = 0.98) -> list[float]:
    """Ratios typed as `0.5, 0.7, 0.9`, sorted and deduplicated (read as the command line
    reads `--ratios`), each in (lo, hi].

    Raises:
        UserError: Not numbers, none, or one outside (lo, hi].
    """
    vals = sorted(set(parse_ratio_list(text, "ratios")))
    if any(not lo < v <= hi for v in vals):
        raise UserError(f"give ratios in ({lo:g}, {hi:g}], e.g. 0.5, 0.7, 0.9")
    return vals


def sweep_ratios(text: str, granularity: str) -> list[float]:
    """The sweep's ratios from its Ratios box (`parse_ratios`); a pattern granularity (N:M)
    fixes its own share, so the box is not read (what it holds may be anything).

    Raises:
        UserError: Unreadable ratios for a granularity that takes them.
    """
    plan, canonical = get_plan(granularity)
    if plan.fixed_ratio:
        return [plan.effective_ratio(canonical, 0.0)]
    return parse_ratios(text)


def frame_result(ctx: JobContext, df: pd.DataFrame, csv_name: str) -> dict[str, Any]:
    """What a measurement job returns (and the store keeps), its table saved as a CSV artifact."""
    if ctx.store is not None and ctx.run_id is not None and len(df):
        ctx.store.write_artifact(ctx.run_id, csv_name, csv_bytes(df), name="csv")
    attrs = {k: v for k, v in df.attrs.items() if isinstance(v, str | int | float | bool)}
    return {"frame": df.to_dict("list"), "attrs": attrs, "points": len(df)}


def sweep_job(
    model: nn.Module,
    spec: InputSpec,
    data: DataBundle,
    methods: Sequence[str],
    ratios: Sequence[float],
    granularity: str,
    epochs: int,
    device: str,
) -> Measurement:
    """Accuracy against sparsity for each criterion (`experiments.sweep`), fine-tuned for
    `epochs` epochs when > 0 with the default fine-tune (`train.DEFAULT_FINETUNE`).

    Raises:
        UserError: No criterion picked.
    """
    methods, ratios = list(methods), list(ratios)
    if not methods:
        raise UserError("pick at least one method")
    tc = dataclasses.replace(DEFAULT_FINETUNE, epochs=max(epochs, 1), device=device)
    net = trainable_copy(model)

    def run(ctx: JobContext) -> dict[str, Any]:
        df = sweep(
            net, data, spec, methods=methods, ratios=ratios, granularity=granularity,
            finetune_epochs=epochs, train_config=tc, progress=ctx.follow, cancel=ctx.cancel,
            device=device,
        )  # fmt: skip
        return frame_result(ctx, df, "sweep.csv")

    config = {"methods": methods, "ratios": ratios, "granularity": granularity,
              "finetune_epochs": epochs, "device": device}  # fmt: skip
    return Measurement(run, f"sweep {', '.join(methods)} ({granularity})", config)


def latency_job(
    model: nn.Module,
    spec: InputSpec,
    ratios: Sequence[float],
    batch: int,
    threads: int,
    device: str,
) -> Measurement:
    """Latency of each backend against sparsity (`tradeoffs.latency_vs_sparsity`)."""
    ratios = list(ratios)
    net = trainable_copy(model)

    def run(ctx: JobContext) -> dict[str, Any]:
        df = latency_vs_sparsity(
            net, spec, ratios, batch_size=batch, device=device, threads=threads,
            progress=ctx.follow, cancel=ctx.cancel,
        )  # fmt: skip
        return frame_result(ctx, df, "latency.csv")

    config = {"measure": "latency", "ratios": ratios, "batch_size": batch, "threads": threads,
              "device": device}  # fmt: skip
    # The run store has no latency kind: a latency sweep is recorded as a sweep.
    return Measurement(run, "latency vs sparsity", config, kind="sweep")


def sensitivity_job(
    model: nn.Module,
    spec: InputSpec,
    data: DataBundle,
    ratios: Sequence[float],
    method: str,
    device: str,
) -> Measurement:
    """Accuracy drop when one layer at a time is pruned (`experiments.sensitivity`)."""
    ratios = list(ratios)
    net = trainable_copy(model)

    def run(ctx: JobContext) -> dict[str, Any]:
        df = sensitivity(
            net, data, spec, ratios, method=method, progress=ctx.follow, cancel=ctx.cancel,
            device=device,
        )  # fmt: skip
        return frame_result(ctx, df, "sensitivity.csv")

    config = {"method": method, "ratios": ratios, "device": device}
    return Measurement(run, f"sensitivity ({method})", config)


def size_points(sweep_df: pd.DataFrame, dense_params: int) -> tuple[pd.DataFrame, pd.Series]:
    """Size against accuracy: the dense model and every swept model, with the Pareto front.

    Size is non-zero weights x 4 bytes (fp32 values only); accuracy the best of pruned and
    fine-tuned.

    Returns:
        The points (label, size_kib, best_accuracy, and the sweep's columns) and the boolean
        front (`tradeoffs.pareto_front`).
    """
    df = sweep_df.copy()
    best = df["finetuned_accuracy"].where(df["finetuned_accuracy"].notna(), df["accuracy"])
    df["best_accuracy"] = best.combine(df["accuracy"], max)
    df["size_kib"] = df["params_nonzero"] * 4 / 1024
    df["label"] = [
        f"{m} at {r:.0%}" + (" + fine-tune" if pd.notna(f) else "")
        for m, r, f in zip(df["method"], df["ratio"], df["finetuned_accuracy"], strict=True)
    ]
    dense_acc = float(df["dense_accuracy"].iloc[0]) if len(df) else math.nan
    dense_row = {"method": "dense", "label": "dense model", "size_kib": dense_params * 4 / 1024,
                 "best_accuracy": dense_acc}  # fmt: skip
    pts = pd.concat([pd.DataFrame([dense_row]), df], ignore_index=True)
    return pts, pareto_front(pts, "size_kib", "best_accuracy")


def strategies_job(
    dense: LoadedModel,
    data: DataBundle,
    budget: str,
    granularity: str,
    method: str,
    epochs: int,
    device: str,
    refs: tuple[str, str],
    strategies: Sequence[str] = STRATEGIES,
) -> Measurement:
    """Uniform, global, sensitivity-suggested and budget-searched ratios at one budget, each
    pruned and fine-tuned for `epochs` epochs with the default fine-tune
    (`strategies.compare_strategies`); each strategy's run lands in the run store.

    Args:
        dense: The dense model (copied now; the shared one stays frozen).
        data: The dataset.
        budget: The budget's text (`macs=0.5`).
        granularity, method: How every strategy prunes.
        epochs: Fine-tune epochs (0: none).
        device: Where accuracy is measured and fine-tuning runs.
        refs: The (model, dataset) references the runs are recorded under.
        strategies: Which strategies, in order.
    """
    net = LoadedModel(
        trainable_copy(dense.model), dense.spec, dense.arch, dense.source, dict(dense.meta)
    )
    strategies = list(strategies)

    def run(ctx: JobContext) -> dict[str, Any]:
        df = compare_strategies(
            net, data, budget, granularity=granularity, method=method, epochs=epochs,
            strategies=strategies, store=ctx.store, model_ref=refs[0], dataset_ref=refs[1],
            device=device, progress=ctx.follow, cancel=ctx.cancel,
        )  # fmt: skip
        return frame_result(ctx, df, "strategies.csv")

    config = {"measure": "strategies", "budget": budget, "granularity": granularity,
              "method": method, "finetune_epochs": epochs, "strategies": strategies,
              "device": device}  # fmt: skip
    return Measurement(run, f"ratio strategies at {budget} ({granularity})", config, kind="sweep")


def run_model_source(rec_metrics: dict[str, Any], artifacts: dict[str, str],
                     config: dict[str, Any]) -> str | None:  # fmt: skip
    """Where a stored run's per-class change comes from: `stored` (its metrics keep it),
    `model` (its pruned model is saved with it), `recipe` (it can be run again from its
    recipe), or None (no single model: a sweep, a sensitivity run)."""
    if isinstance(rec_metrics.get("per_class"), list) and rec_metrics["per_class"]:
        return "stored"
    if "model" in artifacts:
        return "model"
    if isinstance(config.get("settings"), dict) or isinstance(rec_metrics.get("recipe"), dict):
        return "recipe"
    return None


def per_class_job(
    run_id: int, dense: LoadedModel, data: DataBundle, device: str, store: RunStore | None = None
) -> Measurement:
    """Per-class accuracy change against the dense model of stored run `run_id`
    (`per_class.per_class_change`, validation split): from its metrics when it kept them, else
    from its saved model, else by running its recipe again on a copy of the dense model.

    Raises:
        UserError: The run has no single model (a sweep or sensitivity run).
    """
    db = store or RunStore()
    rec = db.get_run(run_id)
    source = run_model_source(rec.metrics, rec.artifacts, rec.config)
    if source is None:
        raise UserError(
            f"run #{run_id} ({rec.kind}) has no single pruned model: pick a fine-tune or "
            "ratio-strategy run"
        )
    net = trainable_copy(dense.model)

    def run(ctx: JobContext) -> dict[str, Any]:
        if source == "stored":
            df = change_from_records(rec.metrics["per_class"])
            how = "measured when the run ended (after its fine-tune)"
        else:
            ctx.report(0.1, "measuring the dense model per class")
            base = per_class_accuracy(net, data, dense.spec)
            if source == "model":
                ctx.report(0.4, "measuring the run's saved model")
                pruned = load_model(rec.artifacts["model"]).model
                how = "its saved model, measured now"
            else:
                doc = (
                    rec.config
                    if isinstance(rec.config.get("settings"), dict)
                    else rec.metrics["recipe"]
                )
                recipe = Recipe.from_document(doc)
                student = LoadedModel(net, dense.spec, dense.arch, dense.source, dict(dense.meta))
                ctx.report(0.2, "running the run's recipe again (prune and fine-tune)")
                pruned = run_recipe(recipe, model=student, data=data, progress=ctx.follow,
                                    cancel=ctx.cancel).model  # fmt: skip
                how = "its recipe run again now (same seed)"
            df = per_class_change(base, per_class_accuracy(pruned, data, dense.spec))
        df.attrs.update(run_id=run_id, how=how, run_name=rec.name)
        return frame_result(ctx, df, "per_class.csv")

    return Measurement(
        run, f"per-class change of run #{run_id}", {"run_id": run_id, "device": device}
    )
