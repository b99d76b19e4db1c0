"""Honest latency of a model, and of one model under several execution backends side by side.

The timing itself (warm-up, repeats, percentiles, device synchronisation, CPU threads) is
`timing`'s; this module adds the backends: the dense original, the masked model, the physically
shrunk one and the sparse-kernel conversions of `sparse` (`LATENCY_BACKENDS`; not to be confused
with `sparse.SPARSE_BACKENDS`, the kernels one layer can be converted to).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from pruning_core import sparse
from pruning_core.errors import UserError
from pruning_core.timing import Latency, sample_times, summarise, torch_threads

__all__ = [
    "LATENCY_BACKENDS",
    "LATENCY_BACKEND_HELP",
    "Latency",
    "benchmark_backends",
    "check_backends",
    "measure_latency",
]


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


# ----------------------------------------------------------------------------- backends

LATENCY_BACKENDS = ("dense", "masked", "structured", "csr", "semi24")

LATENCY_BACKEND_HELP = {
    "dense": "the unpruned model (or, without one, the same tensors run by dense kernels)",
    "masked": "the pruned model as stored: zeros in dense tensors, dense kernels",
    "structured": "the physically shrunk model (structured pruning): fewer channels, dense kernels",
    "csr": "Linear (and 1x1 conv) layers converted to CSR sparse matmul",
    "semi24": "Linear layers converted to 2:4 semi-structured sparse kernels (CUDA, fp16)",
}


def check_backends(names: Iterable[str]) -> list[str]:
    """`names` as a list of latency backends (duplicates dropped, order kept).

    Raises:
        UserError: A name not in `LATENCY_BACKENDS`.
    """
    names = list(names)
    unknown = [b for b in names if b not in LATENCY_BACKENDS]
    if unknown:
        raise UserError(
            f"unknown backend '{unknown[0]}' (choose from {', '.join(LATENCY_BACKENDS)})"
        )
    return list(dict.fromkeys(names))


def benchmark_backends(
    pruned: nn.Module,
    example: torch.Tensor,
    *,
    backends: Sequence[str] = LATENCY_BACKENDS,
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
        backends: Names from `LATENCY_BACKENDS`.
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
    check_backends(backends)
    device = example.device
    rows: dict[str, dict[str, Any]] = {}
    runnable: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    with torch_threads(threads) as threads_used:
        for b in backends:
            row: dict[str, Any] = {
                "backend": b,
                "status": "ok",
                "reason": "",
                "detail": LATENCY_BACKEND_HELP[b],
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
                    b, pruned, example, sparse_options or {}
                )
                if reason:
                    row.update(status="skipped", reason=reason)
                else:
                    assert model is not None and ex is not None
                    row["detail"] = detail
                    runnable[b] = (model, ex)
        timings = _interleaved(runnable, warmup, repeats, max_seconds, rounds)
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
    backend: str, pruned: nn.Module, example: torch.Tensor, options: dict[str, Any]
) -> tuple[str, nn.Module | None, torch.Tensor | None, str]:
    """(skip reason, converted copy, its input, detail) for csr / semi24."""
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
