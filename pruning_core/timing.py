"""Timing primitives: warm-up, repeats, percentiles, device synchronisation, CPU threads.

A leaf module (torch only), shared by the backend comparison (`latency`) and the per-layer
choice of sparse kernels (`sparse`): both time the same way.

- `sample_times`: untimed warm-up calls, then per-call times in ms (CUDA events and
  `torch.cuda.synchronize` on a GPU, `time.perf_counter` on the CPU) within a time budget;
- `summarise` / `Latency`: median and p10/p90 of those times;
- `torch_threads`: torch's CPU thread count set for a block and restored afterwards.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError

__all__ = ["Latency", "quantile", "sample_times", "summarise", "torch_threads"]


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


def quantile(xs: list[float], q: float) -> float:
    """The `q` quantile of `xs` (linear interpolation between the closest ranks)."""
    s = sorted(xs)
    i = q * (len(s) - 1)
    lo, hi = int(i), min(int(i) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


@torch.inference_mode()
def sample_times(
    model: nn.Module,
    example: torch.Tensor,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
) -> list[float]:
    """Per-call times in ms of `model(example)` on the example's device (model set to eval).

    Args:
        model: The module.
        example: One input batch, already on the target device.
        warmup: Untimed calls first (allocator, caches, lazy init).
        repeats: Timed calls (fewer if `max_seconds` runs out, at least 3).
        max_seconds: Budget for the timed calls.
    """
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
        p10_ms=quantile(times, 0.1),
        p90_ms=quantile(times, 0.9),
        repeats=len(times),
        batch_size=int(example.shape[0]),
        device=str(example.device),
        threads=torch.get_num_threads(),
    )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's CPU thread count set to `threads` inside the block (None: left as it is) and
    restored afterwards, whatever happens. Yields the count in use.

    Raises:
        UserError: `threads` below 1 (nothing is changed).
    """
    old = torch.get_num_threads()
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield threads if threads is not None else old
    finally:
        torch.set_num_threads(old)
