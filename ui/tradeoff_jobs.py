"""The Trade-offs page's measurements as background jobs, without Streamlit (they run in a
runner thread).

Each builder takes a private trainable copy of the dense model when it is called (the shared
one stays frozen) and returns a `Measurement`: the job function, its name and the settings the
run store records. A job returns its table as `{"frame", "attrs", "points"}` and keeps it as a
CSV artifact of its run (`frame_result`). `size_points` turns a sweep into the size-vs-accuracy
points with their Pareto front.
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
from pruning_core.spec import InputSpec
from pruning_core.tradeoffs import latency_vs_sparsity, pareto_front
from pruning_core.train import DEFAULT_FINETUNE

__all__ = [
    "Measurement",
    "default_device",
    "frame_result",
    "latency_job",
    "parse_ratios",
    "sensitivity_job",
    "size_points",
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
