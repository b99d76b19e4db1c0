"""Honest latency: warm-up, repeats, median and spread, device synchronisation."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

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
    return Latency(
        median_ms=statistics.median(times),
        p10_ms=_quantile(times, 0.1),
        p90_ms=_quantile(times, 0.9),
        repeats=len(times),
        batch_size=int(example.shape[0]),
        device=str(example.device),
        threads=torch.get_num_threads(),
    )
