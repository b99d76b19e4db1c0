"""Honest latency: warm-up, repeats, median and spread, device synchronisation."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """Timing of one configuration, in milliseconds per batch.

    Attributes:
        median_ms: Median over repeats.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        repeats: Timed repeats.
        batch_size: Images per forward.
        device: Where it ran.
        threads: torch CPU threads during the measurement.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    i = q * (len(s) - 1)
    lo, hi = int(i), min(int(i) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
) -> Latency:
    """Time `model(example)` on the example's device.

    Args:
        model: Module in eval mode (set here).
        example: One input batch, already on the target device.
        warmup: Untimed calls first (allocator, caches, lazy init).
        repeats: Timed calls (fewer if `max_seconds` runs out, at least 3).
        max_seconds: Budget for the timed calls.
    """
    return summarise(
        sample_times(model, example, warmup=warmup, repeats=repeats, max_seconds=max_seconds),
        example,
    )


@torch.inference_mode()
def sample_times(
    model: nn.Module,
    example: torch.Tensor,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
) -> list[float]:
    """The raw per-call times in ms behind `measure_latency` (CUDA events on GPU)."""
    model.eval()
    cuda = example.device.type == "cuda"
    for _ in range(warmup):
        model(example)
    if cuda:
        torch.cuda.synchronize(example.device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for i in range(repeats):
        if cuda:
            start_ev = torch.cuda.Event(enable_timing=True)
            end_ev = torch.cuda.Event(enable_timing=True)
            start_ev.record()
            model(example)
            end_ev.record()
            torch.cuda.synchronize(example.device)
            times.append(start_ev.elapsed_time(end_ev))
        else:
            t0 = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - t0) * 1000)
        if i >= 2 and time.perf_counter() > budget_end:
            break
    return times


def summarise(times: list[float], example: torch.Tensor) -> Latency:
    """Median and p10/p90 of raw times for a batch like `example`."""
    return Latency(
        median_ms=statistics.median(times),
        p10_ms=_quantile(times, 0.1),
        p90_ms=_quantile(times, 0.9),
        repeats=len(times),
        batch_size=int(example.shape[0]),
        device=str(example.device),
        threads=torch.get_num_threads(),
    )


# ----------------------------------------------------------------------------- backends

BACKENDS = ("dense", "masked", "structured", "csr", "semi24")

BACKEND_HELP = {
    "dense": "the unpruned model (or, without one, the same tensors run by dense kernels)",
    "masked": "the pruned model as stored: zeros in dense tensors, dense kernels",
    "structured": "the physically shrunk model (structured pruning): fewer channels, dense kernels",
    "csr": "Linear (and 1x1 conv) layers converted to CSR sparse matmul",
    "semi24": "Linear layers converted to 2:4 semi-structured sparse kernels (CUDA, fp16)",
}


def benchmark_backends(
    pruned: nn.Module,
    example: torch.Tensor,
    *,
    backends: Sequence[str] = BACKENDS,
    dense: nn.Module | None = None,
    structured: nn.Module | None = None,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
    sparse_options: dict[str, Any] | None = None,
    rounds: int | None = None,
) -> pd.DataFrame:
    """Time one model under several execution backends, side by side.

    Backends that cannot run (no structured model, no CUDA for semi24, ...) appear as rows with
    status `skipped` and a reason, never as an error. Timed backends run interleaved in rounds,
    so slow drifts of a shared machine hit them all alike.

    Args:
        pruned: The pruned model (zeros in dense tensors, or physically shrunk). Its weights are
            not modified (sparse backends convert copies), but it, `dense` and `structured` are
            moved to the example's device and put in eval mode.
        example: One input batch on the target device (its first dimension is the batch size).
        backends: Names from `BACKENDS`.
        dense: The unpruned original. Without it, `dense` times `pruned` itself and says so
            (the same dense kernels do the same work whatever the values).
        structured: The physically shrunk model, when there is one.
        threads: torch CPU threads for the measurement (restored afterwards).
        warmup: Untimed calls per backend.
        repeats: Timed calls per backend.
        max_seconds: Time budget per backend.
        sparse_options: Extra keyword arguments for `sparse.to_sparse_`.
        rounds: Interleaving rounds (default 3, or 1 below 9 repeats); `rounds=repeats`
            alternates the backends call by call, the most robust on a busy machine.

    Returns:
        DataFrame with columns backend, status, reason, median_ms, p10_ms, p90_ms, speedup
        (dense median / this median), repeats, batch_size, threads, device, detail.

    Raises:
        UserError: Unknown backend names.
    """
    import copy

    from pruning_core.errors import UserError

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend '{unknown[0]}' (choose from {', '.join(BACKENDS)})")
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    device = example.device
    rows: dict[str, dict[str, Any]] = {}
    runnable: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    try:
        for b in backends:
            row: dict[str, Any] = {
                "backend": b,
                "status": "ok",
                "reason": "",
                "detail": BACKEND_HELP[b],
            }
            rows[b] = row
            if b == "dense":
                if dense is None:
                    row["detail"] = (
                        "no unpruned original given: the pruned tensors run by dense kernels"
                    )
                runnable[b] = ((dense if dense is not None else pruned).to(device).eval(), example)
            elif b == "masked":
                if _is_shrunk(pruned, dense):
                    row.update(
                        status="skipped",
                        reason="the model is physically shrunk: no masked twin is stored",
                    )
                else:
                    runnable[b] = (pruned.to(device).eval(), example)
            elif b == "structured":
                shrunk = (
                    structured
                    if structured is not None
                    else (pruned if _is_shrunk(pruned, dense) else None)
                )
                if shrunk is None:
                    row.update(
                        status="skipped",
                        reason="no physically shrunk model (unstructured or mask-mode prune)",
                    )
                else:
                    runnable[b] = (shrunk.to(device).eval(), example)
            else:
                reason, model, ex, detail = _sparse_variant(
                    b, pruned, example, sparse_options or {}, copy
                )
                if reason:
                    row.update(status="skipped", reason=reason)
                else:
                    assert model is not None and ex is not None
                    row["detail"] = detail
                    runnable[b] = (model, ex)
        timings = _interleaved(runnable, warmup, repeats, max_seconds, rounds)
    finally:
        torch.set_num_threads(old_threads)
    threads_used = threads if threads is not None else old_threads
    out = []
    base = timings.get("dense")
    for b, row in rows.items():
        lat = timings.get(b)
        row.update(
            median_ms=lat.median_ms if lat else math.nan,
            p10_ms=lat.p10_ms if lat else math.nan,
            p90_ms=lat.p90_ms if lat else math.nan,
            speedup=(base.median_ms / lat.median_ms) if (lat and base) else math.nan,
            repeats=lat.repeats if lat else 0,
            batch_size=int(example.shape[0]),
            threads=threads_used if device.type == "cpu" else None,
            device=str(device),
        )
        out.append(row)
    cols = ["backend", "status", "reason", "median_ms", "p10_ms", "p90_ms", "speedup", "repeats",
            "batch_size", "threads", "device", "detail"]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def _is_shrunk(pruned: nn.Module, dense: nn.Module | None) -> bool:
    if dense is None:
        return False
    return sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())


def _sparse_variant(
    backend: str, pruned: nn.Module, example: torch.Tensor, options: dict[str, Any], copy: Any
) -> tuple[str, nn.Module | None, torch.Tensor | None, str]:
    """(skip reason, converted copy, its input, detail) for csr / semi24."""
    from pruning_core import sparse

    if backend == "semi24":
        if example.device.type != "cuda":
            return "semi24 needs a CUDA GPU (run with --device cuda)", None, None, ""
        major, minor = torch.cuda.get_device_capability(example.device)
        if major < 8:
            return (
                f"semi24 needs compute capability >= 8.0 (this GPU has {major}.{minor})",
                None,
                None,
                "",
            )
        model = copy.deepcopy(pruned).to(example.device).half().eval()
        ex = example.half()
    else:
        model = copy.deepcopy(pruned).to(example.device).eval()
        ex = example
    report = sparse.to_sparse_(model, backend, example=ex, **options)
    if not report.converted:
        reasons = "; ".join(sorted({d.reason for d in report.decisions})) or "no Linear layer"
        return f"no layer converted to {backend} ({reasons})", None, None, ""
    detail = report.summary() + (" (fp16; compare with dense fp16)" if backend == "semi24" else "")
    return "", model, ex, detail


def _interleaved(
    runnable: dict[str, tuple[nn.Module, torch.Tensor]],
    warmup: int,
    repeats: int,
    max_seconds: float,
    rounds: int | None = None,
) -> dict[str, Latency]:
    """Time the models in alternating rounds and pool each one's samples."""
    if not runnable:
        return {}
    if rounds is None:
        rounds = 3 if repeats >= 9 else 1
    rounds = max(1, min(rounds, repeats))
    per_round = max(repeats // rounds, 1)
    samples: dict[str, list[float]] = {k: [] for k in runnable}
    for r in range(rounds):
        for name, (model, ex) in runnable.items():
            samples[name] += sample_times(
                model,
                ex,
                # later rounds re-warm briefly only when they are long enough to afford it
                warmup=warmup if r == 0 else (1 if per_round >= 5 else 0),
                repeats=per_round,
                max_seconds=max_seconds / rounds,
            )
    return {name: summarise(ts, runnable[name][1]) for name, ts in samples.items()}
