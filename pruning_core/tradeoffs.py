"""Trade-off measurements the app and the report plot: latency against sparsity per backend,
and the Pareto front of size against accuracy.

`experiments.sweep` gives accuracy against sparsity; this module adds what it costs to run:
for each ratio it prunes copies of the model (unstructured masks for the masked/CSR/2:4
backends, physical channel pruning for the shrunk one) and times them side by side with
`latency.benchmark_backends`, so every point is measured on this machine, now.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.latency import LATENCY_BACKENDS, PROTOCOL, LatencyProtocol, benchmark_backends
from pruning_core.layers import example_input, trainable_copy
from pruning_core.progress import ProgressFn, Report
from pruning_core.prune import PruneConfig, prune_
from pruning_core.spec import InputSpec

__all__ = ["DEFAULT_LATENCY_RATIOS", "LATENCY_BACKENDS", "latency_vs_sparsity", "pareto_front"]

DEFAULT_LATENCY_RATIOS = (0.5, 0.7, 0.9, 0.95)


def latency_vs_sparsity(
    model: nn.Module,
    spec: InputSpec,
    ratios: Sequence[float] = DEFAULT_LATENCY_RATIOS,
    *,
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    backends: Sequence[str] = LATENCY_BACKENDS,
    protocol: LatencyProtocol = PROTOCOL,
    repeats: int | None = None,
    max_seconds: float | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Time dense, masked, shrunk, CSR and 2:4 versions of `model` at several sparsities.

    Args:
        model: The dense model (never modified).
        spec: Its input spec.
        ratios: Shares removed: of weights (L1 magnitude, global) for masked/CSR/2:4, of
            channels (L1 magnitude) for the physically shrunk model.
        batch_size: Images per timed call (random input of the model's shape; default the
            protocol's `batch_size`).
        device: `cpu`, `cuda` or `auto`.
        threads: torch CPU threads while timing (default: the protocol's).
        backends: A subset of `LATENCY_BACKENDS`.
        protocol: Warm-up, repeats, time budget, threads and batch (default `PROTOCOL`, the
            one the whole app uses); the arguments above and below override it.
        repeats, max_seconds: Timed calls and time budget per backend and ratio.
        progress: Called with a `progress.ProgressReport` (`fraction` of the ratios done,
            `message`) after each ratio.
        cancel: Stops after the current ratio when set (`df.attrs["cancelled"]`).

    Returns:
        The rows of `benchmark_backends` (backend, status, reason, median_ms, p10_ms, p90_ms,
        speedup, vs_dense, batch_size, threads, device, ...) with `ratio` and `sparsity`
        (measured, `terms.SPARSITY_MEANS`). `attrs`: cancelled, batch_size, device, threads and
        `protocol` (the settings in words).
    """
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise UserError("latency ratios must be in (0, 1)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    p = protocol.with_(batch_size=batch_size, threads=threads, repeats=repeats,
                       max_seconds=max_seconds)  # fmt: skip
    batch_size = p.batch_size
    dev = resolve_device(device)
    # A frozen (cached, shared) model has requires_grad off; structured pruning skips such
    # parameters, so the private copy is made trainable like any freshly loaded model.
    base = trainable_copy(model, dev).eval()
    example = example_input(base, spec, batch_size, random=True)
    frames: list[pd.DataFrame] = []
    cancelled = False
    for i, r in enumerate(ratios):
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        masked = copy.deepcopy(base).cpu()
        res = prune_(masked, PruneConfig(method="magnitude", ratio=r), spec=spec)
        shrunk, ch_ratio, why = None, float("nan"), ""
        if "structured" in backends:
            shrunk, ch_ratio, why = _shrunk(base, spec, r)
        df = benchmark_backends(
            masked.to(dev),
            example,
            backends=list(backends),
            dense=base,
            structured=shrunk.to(dev) if shrunk is not None else None,
            protocol=p,
        )
        df.insert(0, "ratio", r)
        df.insert(1, "sparsity", res.sparsity)
        is_struct = df["backend"] == "structured"
        df.loc[is_struct, "sparsity"] = ch_ratio
        if why:
            df.loc[is_struct, "reason"] = why
        frames.append(df)
        if progress is not None:
            progress(Report((i + 1) / len(ratios), f"latency at ratio {r:g} measured"))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs.update(cancelled=cancelled, batch_size=batch_size, device=str(dev),
                     threads=p.threads if dev.type == "cpu" else torch.get_num_threads(),
                     protocol=p.describe(batch_size=batch_size, device=str(dev)))  # fmt: skip
    return out


def _shrunk(base: nn.Module, spec: InputSpec, ratio: float) -> tuple[nn.Module | None, float, str]:
    """A physically channel-pruned copy, its measured sparsity (`terms.SPARSITY_MEANS`), or why
    not."""
    m = copy.deepcopy(base).cpu()
    try:
        res = prune_(m, PruneConfig(method="magnitude", granularity="channel", ratio=ratio),
                     spec=spec)  # fmt: skip
    except UserError as e:
        return None, float("nan"), f"channel pruning not possible: {e}"
    return m.eval(), float(res.sparsity), ""


def pareto_front(df: pd.DataFrame, cost: str, value: str) -> pd.Series:
    """Rows no other row beats: none is both cheaper (or equal) and better (or equal), with one
    strictly. Lower `cost` and higher `value` are better; rows with a missing value are never
    on the front.

    Returns:
        A boolean Series aligned with `df`.
    """
    c = df[cost].to_numpy(dtype=float)
    v = df[value].to_numpy(dtype=float)
    ok = np.isfinite(c) & np.isfinite(v)
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i]))
        front[i] = not others.any()
    return pd.Series(front, index=df.index)
