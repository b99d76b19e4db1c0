"""Timing primitives: warm-up, repeats, percentiles, device synchronisation, CPU threads.

A leaf module (torch only), shared by the backend comparison (`latency`) and the per-layer
choice of sparse kernels (`sparse`): both time the same way.

- `sample_times`: untimed warm-up calls, then per-call times in ms (CUDA events and
  `torch.cuda.synchronize` on a GPU, `time.perf_counter` on the CPU) within a time budget;
- `summarise` / `Latency`: median and p10/p90 of those times;
- `torch_threads`: torch's CPU thread count set for a block and restored afterwards;
- `LatencyProtocol` / `PROTOCOL`: the one set of timing settings every latency shown by the app,
  the report and `pruning-lab bench` uses, with `describe()` for the words beside the number;
- `compare` / `Difference`: whether two timings differ measurably (p10-p90 ranges apart), the
  one verdict the app, the report and the CLI print instead of a bare ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError

__all__ = [
    "NO_DIFFERENCE",
    "PROTOCOL",
    "Difference",
    "Latency",
    "LatencyProtocol",
    "compare",
    "quantile",
    "sample_times",
    "summarise",
    "torch_threads",
]


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


# ----------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class LatencyProtocol:
    """How a latency is measured, wherever Pruning Lab shows one.

    One thread by default: the app's server shares its cores with background jobs and other
    sessions, and with several threads a timing measures the scheduler (OpenMP threads waiting
    for a busy core: 51 ms for a 0.5 ms model was seen) rather than the model. `pruning-lab
    bench` uses the same defaults, so its numbers and the app's agree.

    Attributes:
        threads: torch CPU threads while timing (restored afterwards).
        batch_sizes: Images per timed call on Model & data (one bar each); the last one is
            `batch_size`, the batch of every comparison (backends, trade-offs, report, bench).
        warmup: Untimed calls first (allocator, caches, lazy initialisation).
        repeats: Timed calls (fewer when `max_seconds` runs out, at least 3).
        max_seconds: Time budget for the timed calls of one configuration.
        rounds: Backends compared side by side are timed in this many interleaved rounds, so a
            slow drift of a shared machine hits them all alike (1 below 9 repeats).
    """

    threads: int = 1
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 5
    repeats: int = 30
    max_seconds: float = 3.0
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if self.warmup < 0 or self.repeats < 1 or self.rounds < 1 or not self.max_seconds > 0:
            raise UserError(
                "warm-up must be >= 0, repeats and rounds >= 1 and the time budget > 0 "
                f"(got {self.warmup}, {self.repeats}, {self.rounds}, {self.max_seconds})"
            )

    @property
    def batch_size(self) -> int:
        """The batch of comparisons (the last of `batch_sizes`)."""
        return self.batch_sizes[-1]

    def with_(self, **changes: Any) -> LatencyProtocol:
        """A copy with `changes` (None values ignored); `self` itself when nothing changes.

        `batch_size=N` makes `batch_sizes` `(N,)`.

        Raises:
            UserError: A setting out of range.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "batch_size" in changes:
            changes["batch_sizes"] = (int(changes.pop("batch_size")),)
        new = replace(self, **changes)
        return self if new == self else new

    def describe(self, batch_size: int | None = None, device: str = "cpu") -> str:
        """The settings in words, for beside a number.

        Args:
            batch_size: The batch the number is for (default: all of `batch_sizes`).
            device: Where it ran (`cpu`, `cuda:0`...); threads are named on the CPU only.
        """
        batches = [batch_size] if batch_size is not None else list(self.batch_sizes)
        where = (
            f"CPU, {self.threads} thread{'s' if self.threads != 1 else ''}"
            if device == "cpu"
            else device
        )
        return (
            f"{where}, batch {' and '.join(str(b) for b in batches)}, random input; median of "
            f"{self.repeats} timed calls after {self.warmup} warm-up calls, bar p10-p90"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}


PROTOCOL = LatencyProtocol()
"""The protocol of the app (every page), the report and `pruning-lab bench`'s defaults."""

NO_DIFFERENCE = "no measurable difference"


@dataclass(frozen=True)
class Difference:
    """How a timing compares with a baseline.

    Attributes:
        ratio: Baseline median / this median (above 1: faster than the baseline).
        measurable: Whether the p10-p90 ranges are apart; when they overlap, the medians'
            ratio is within the noise of this machine and `text` says so.
        text: `NO_DIFFERENCE`, or e.g. `1.92x faster` / `1.31x slower`.
    """

    ratio: float
    measurable: bool
    text: str


def compare(base: Latency, other: Latency) -> Difference:
    """Whether `other` is measurably faster or slower than `base`.

    The two differ measurably only when their p10-p90 ranges do not overlap; otherwise the
    verdict is "no measurable difference", whatever the medians' ratio.

    Args:
        base: The reference timing (e.g. the dense model).
        other: The timing to judge, same batch and protocol.

    Returns:
        The `Difference` (ratio of medians, whether measurable, the words to show).
    """
    ratio = base.median_ms / other.median_ms if other.median_ms > 0 else float("nan")
    apart = other.p90_ms < base.p10_ms or other.p10_ms > base.p90_ms
    if not apart or ratio != ratio:
        return Difference(ratio, False, NO_DIFFERENCE)
    if ratio >= 1:
        return Difference(ratio, True, f"{ratio:.2f}x faster")
    return Difference(ratio, True, f"{1 / ratio:.2f}x slower")
