"""Honest latency of a model, and of one model under several execution backends side by side.

The timing itself (warm-up, repeats, percentiles, device synchronisation, CPU threads) and the
one protocol every number follows (`PROTOCOL`: threads, batch sizes, warm-up, repeats) are
`timing`'s; this module adds the backends: the dense original, the masked model, the physically
shrunk one and the sparse-kernel conversions of `sparse` (`LATENCY_BACKENDS`, the eager ones,
timed by default; not to be confused with `sparse.SPARSE_BACKENDS`, the kernels one layer can be
converted to), the model as deployed in ONNX Runtime (`onnxruntime`, when named:
`ALL_BACKENDS`), the per-batch timing of Model & data (`measure_batches`), the batch-size sweep
of eager PyTorch against ONNX Runtime (`batch_sweep`) and `MeasurementCache`, which keeps a
measurement only for its context (what was timed, with which protocol, where) and for a
bounded time.

The `onnxruntime` backend follows the same protocol as the eager ones: the same warm-up,
repeats, time budget and interleaved rounds, p10/p90, and the protocol's threads as ONNX
Runtime's `intra_op_num_threads` (one inter-op thread, sequential execution). It runs the
structured model when there is one, else the pruned model as given: dense, shrunk, low-rank
(exported with `export.export_onnx`, checked against PyTorch) or an int8 ONNX model
(`quantize.QuantizedModel`) as it is; CPU execution provider, the CUDA one when onnxruntime
reports it and the input is on a GPU (host input and output: the copies are timed, as a service
feeding ONNX Runtime from host memory pays them).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from pruning_core import sparse
from pruning_core.errors import UserError
from pruning_core.ort import OrtModule, cuda_provider_available, provider_names, to_ort
from pruning_core.timing import (
    NO_DIFFERENCE,
    PROTOCOL,
    Difference,
    Latency,
    LatencyProtocol,
    compare,
    sample_times,
    summarise,
    torch_threads,
)

__all__ = [
    "ALL_BACKENDS",
    "LATENCY_BACKENDS",
    "LATENCY_BACKEND_HELP",
    "NOISY_SPREAD",
    "NO_DIFFERENCE",
    "ORT_BACKEND",
    "PROTOCOL",
    "SWEEP_BATCH_SIZES",
    "Difference",
    "Latency",
    "LatencyProtocol",
    "Measured",
    "MeasurementCache",
    "batch_sweep",
    "benchmark_backends",
    "check_backends",
    "compare",
    "is_noisy",
    "measure_batches",
    "measure_latency",
    "time_interleaved",
]


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    protocol: LatencyProtocol = PROTOCOL,
    warmup: int | None = None,
    repeats: int | None = None,
    max_seconds: float | None = None,
    threads: int | None = None,
) -> Latency:
    """Time `model(example)` on the example's device, following `protocol`.

    Args:
        model: Module in eval mode (set here).
        example: One input batch, already on the target device.
        protocol: Threads, warm-up, repeats and time budget (default: `PROTOCOL`, 1 thread).
        warmup, repeats, max_seconds, threads: Overrides of the protocol's settings.

    Raises:
        UserError: A setting out of range.
    """
    p = protocol.with_(warmup=warmup, repeats=repeats, max_seconds=max_seconds, threads=threads)
    with torch_threads(p.threads):
        times = sample_times(
            model, example, warmup=p.warmup, repeats=p.repeats, max_seconds=p.max_seconds
        )
        return summarise(times, example)


def measure_batches(
    model: nn.Module,
    example: Callable[[int], torch.Tensor],
    *,
    protocol: LatencyProtocol = PROTOCOL,
) -> pd.DataFrame:
    """The dense latency of `model` at each of the protocol's batch sizes (Model & data).

    Each batch is timed exactly as `pruning-lab bench --backends dense --batch-size N` times
    it (`benchmark_backends` with the same protocol), so the two agree within their p10-p90.

    Args:
        model: The model (put in eval mode; not modified).
        example: Returns one input batch of a given size, on the target device.
        protocol: The settings (default `PROTOCOL`).

    Returns:
        One row per batch size: label (`batch N`), median_ms, p10_ms, p90_ms, repeats,
        batch_size, threads, device; `attrs["protocol"]` says the settings in words.
    """
    rows = []
    device = "cpu"
    for b in protocol.batch_sizes:
        x = example(b)
        device = str(x.device)
        df = benchmark_backends(model, x, backends=("dense",), protocol=protocol)
        row = df.iloc[0]
        rows.append(
            {"label": f"batch {b}", **{k: row[k] for k in ("median_ms", "p10_ms", "p90_ms",
                                                          "repeats", "batch_size", "threads",
                                                          "device")}}
        )  # fmt: skip
    out = pd.DataFrame(rows)
    out.attrs["protocol"] = protocol.describe(device=device)
    return out


NOISY_SPREAD = 3.0
"""p90 / p10 above which a timing is too disturbed to keep for others (`is_noisy`)."""


def is_noisy(table: pd.DataFrame, spread: float = NOISY_SPREAD) -> bool:
    """Whether any row of a timing table was disturbed: its p90 more than `spread` times its
    p10 (on a quiet 2-core machine, sub-millisecond calls of the same work spread up to about
    1.8x; a busy one's up to 6x and more).

    Args:
        table: Rows with `p10_ms` and `p90_ms` (e.g. `measure_batches`' output).
        spread: The largest p90 / p10 of an undisturbed timing.

    Returns:
        True when a row's ratio exceeds `spread` (or a row has no positive p10).
    """
    for p10, p90 in zip(table["p10_ms"], table["p90_ms"], strict=True):
        if not (float(p10) > 0 and float(p90) <= spread * float(p10)):
            return True
    return False


@dataclass(frozen=True)
class Measured:
    """A measurement and when it was taken.

    Attributes:
        table: What was measured (e.g. `measure_batches`' rows).
        taken_at: Wall-clock time it was taken (seconds since the epoch).
    """

    table: pd.DataFrame
    taken_at: float

    def when(self, now: float | None = None) -> str:
        """`measured at 14:03:12 (2 min ago)` in local time."""
        now = time.time() if now is None else now
        age = max(0.0, now - self.taken_at)
        ago = "just now" if age < 60 else f"{age / 60:.0f} min ago"
        return f"measured at {time.strftime('%H:%M:%S', time.localtime(self.taken_at))} ({ago})"


class MeasurementCache:
    """Measurements kept only for their context, and not for long.

    The key is the whole context of a number: what was timed (a model's name and version),
    the protocol, the device. A different context measures anew; an entry older than
    `max_age_s` is measured again (the load of a shared machine changes), and `refresh=True`
    (a re-measure button) always does. Thread-safe, one measurement of a context at a time; at
    most `max_entries` kept (oldest dropped).

    Args:
        max_entries: Entries kept.
        max_age_s: Seconds an entry stays valid.
        clock: Time source (seconds), replaceable in tests.
    """

    def __init__(
        self,
        max_entries: int = 64,
        max_age_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, Measured] = OrderedDict()
        self._flights: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, context: Hashable) -> Measured | None:
        """The valid measurement for `context`, or None."""
        with self._lock:
            return self._valid_locked(context)

    def _valid_locked(self, context: Hashable) -> Measured | None:
        hit = self._entries.get(context)
        if hit is not None and self._clock() - hit.taken_at > self.max_age_s:
            del self._entries[context]
            hit = None
        return hit

    def discard(self, context: Hashable) -> bool:
        """Forget the measurement of `context` (the next `measure` times anew).

        Returns:
            True when one was kept.
        """
        with self._lock:
            return self._entries.pop(context, None) is not None

    def measure(
        self, context: Hashable, fn: Callable[[], pd.DataFrame], *, refresh: bool = False
    ) -> Measured:
        """The measurement for `context`: kept one if valid (and not `refresh`), else `fn()`.

        One measurement of a context at a time (single flight): callers who ask while another
        one times the same context wait for its result instead of timing it again alongside
        (thirty students opening one model would otherwise run thirty timing loops at once,
        each slowing the others and every page). `fn` runs outside the lock; a `refresh`
        accepts a measurement that finished after it was asked for. When `fn` raises, its
        caller gets the error and a waiting caller measures itself.
        """
        asked = self._clock()
        while True:
            with self._lock:
                hit = self._valid_locked(context)
                if hit is not None and (not refresh or hit.taken_at > asked):
                    return hit
                flight = self._flights.get(context)
                if flight is None:
                    flight = self._flights[context] = threading.Event()
                    break
            flight.wait()
        try:
            got = Measured(fn(), self._clock())
            with self._lock:
                self._entries[context] = got
                self._entries.move_to_end(context)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return got
        finally:
            with self._lock:
                del self._flights[context]
            flight.set()


# ----------------------------------------------------------------------------- backends

LATENCY_BACKENDS = ("dense", "masked", "structured", "csr", "semi24")
"""The eager PyTorch backends, timed when no backends are named."""
ORT_BACKEND = "onnxruntime"
# Named only when asked for: it exports the model first (about a second), and callers that time
# "every backend" by default (the Trade-offs latency sweep) label rows by their own rules.
ALL_BACKENDS = (*LATENCY_BACKENDS, ORT_BACKEND)
"""Every backend `benchmark_backends` knows: the eager ones and ONNX Runtime."""

LATENCY_BACKEND_HELP = {
    "dense": "the unpruned model (or, without one, the same tensors run by dense kernels)",
    "masked": "the pruned model as stored: zeros in dense tensors, dense kernels",
    "structured": "the physically shrunk model (structured pruning): fewer channels, dense kernels",
    "csr": "Linear (and 1x1 conv) layers converted to CSR sparse matmul",
    "semi24": "Linear layers converted to 2:4 semi-structured sparse kernels (CUDA, fp16)",
    "onnxruntime": "the model as deployed, exported to ONNX and run by ONNX Runtime (an int8 "
    "model as it is)",
}
# Eager backends an int8 ONNX model (`quantize.QuantizedModel`) cannot run.
_ORT_ONLY = (
    "an int8 ONNX model runs only in ONNX Runtime (the onnxruntime backend); there are no "
    "PyTorch weights to run eagerly"
)


def check_backends(names: Iterable[str]) -> list[str]:
    """`names` as a list of latency backends (duplicates dropped, order kept).

    Raises:
        UserError: A name not in `ALL_BACKENDS`.
    """
    names = list(names)
    unknown = [b for b in names if b not in ALL_BACKENDS]
    if unknown:
        raise UserError(f"unknown backend '{unknown[0]}' (choose from {', '.join(ALL_BACKENDS)})")
    return list(dict.fromkeys(names))


def benchmark_backends(
    pruned: nn.Module,
    example: torch.Tensor,
    *,
    backends: Sequence[str] = LATENCY_BACKENDS,
    dense: nn.Module | None = None,
    structured: nn.Module | None = None,
    protocol: LatencyProtocol = PROTOCOL,
    threads: int | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    max_seconds: float | None = None,
    sparse_options: dict[str, Any] | None = None,
    rounds: int | None = None,
    onnx: OrtModule | None = None,
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
        backends: Names from `ALL_BACKENDS` (default: the eager `LATENCY_BACKENDS`).
        dense: The unpruned original. Without it, `dense` times `pruned` itself and says so
            (the same dense kernels do the same work whatever the values).
        structured: The physically shrunk model, when there is one.
        protocol: Threads, warm-up, repeats, time budget and rounds (default `PROTOCOL`).
        threads: Override of the protocol's torch CPU threads (restored afterwards).
        warmup: Override: untimed calls per backend.
        repeats: Override: timed calls per backend.
        max_seconds: Override: time budget per backend.
        sparse_options: Extra keyword arguments for `sparse.to_sparse_`.
        rounds: Override: interleaving rounds (1 below 9 repeats); `rounds=repeats`
            alternates the backends call by call, the most robust on a busy machine.
        onnx: The ONNX Runtime model the `onnxruntime` backend times (default: `structured`
            when given, else `pruned`, exported here; a `pruned` that is an `ort.OrtModule`,
            such as an int8 model, is run as it is). Its session is re-made with the
            protocol's threads.

    Returns:
        DataFrame with columns backend, status, reason (plain words, for skipped rows),
        median_ms, p10_ms, p90_ms, speedup (dense median / this median, whatever the noise),
        vs_dense (`timing.compare`: "no measurable difference" when the p10-p90 ranges
        overlap, else e.g. "1.92x faster"; what to show people), repeats, batch_size,
        threads, device, detail. `attrs["protocol"]` is the settings in words.

    Raises:
        UserError: Unknown backend names or a setting out of range.
    """
    check_backends(backends)
    p = protocol.with_(threads=threads, warmup=warmup, repeats=repeats,
                       max_seconds=max_seconds, rounds=rounds)  # fmt: skip
    device = example.device
    rows: dict[str, dict[str, Any]] = {}
    runnable: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    on_ort = isinstance(pruned, OrtModule)
    with torch_threads(p.threads if device.type == "cpu" else None) as threads_used:
        for b in backends:
            row: dict[str, Any] = {
                "backend": b,
                "status": "ok",
                "reason": "",
                "detail": LATENCY_BACKEND_HELP[b],
            }
            rows[b] = row
            if on_ort and b not in ("dense", "onnxruntime"):
                row.update(status="skipped", reason=_ORT_ONLY)
            elif b == "onnxruntime":
                smaller = structured is not None or _is_shrunk(pruned, dense)
                reason, runner, detail = _ort_variant(
                    onnx, pruned, structured, example, p.threads, smaller
                )
                if runner is None:
                    row.update(status="skipped", reason=reason)
                else:
                    row["detail"] = detail
                    runnable[b] = (runner, example.cpu())
            elif b == "dense" and dense is None and on_ort:
                row.update(
                    status="skipped",
                    reason="no PyTorch model to time eagerly: an int8 ONNX model runs only in "
                    "ONNX Runtime; give the float original as the dense model (bench: --model)",
                )  # fmt: skip
            elif b == "dense":
                if dense is None:
                    row["detail"] = (
                        "no unpruned original given: the pruned tensors run by dense kernels"
                    )
                runnable[b] = ((dense if dense is not None else pruned).to(device).eval(), example)
            elif b == "masked":
                if _is_shrunk(pruned, dense):
                    row.update(
                        status="skipped",
                        reason=(
                            "this model was physically shrunk, so there is no copy with zeros "
                            "in full-size tensors to time"
                        ),
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
                        reason=(
                            "nothing was physically removed: single-weight and 2:4 pruning only "
                            "set weights to zero (channel, head or block pruning shrinks a model)"
                        ),
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
        timings = _interleaved(runnable, p.warmup, p.repeats, p.max_seconds, p.rounds)
    out = []
    base = timings.get("dense")
    for b, row in rows.items():
        lat = timings.get(b)
        diff = compare(base, lat) if (lat and base) else None
        row.update(
            median_ms=lat.median_ms if lat else math.nan,
            p10_ms=lat.p10_ms if lat else math.nan,
            p90_ms=lat.p90_ms if lat else math.nan,
            speedup=diff.ratio if diff else math.nan,
            vs_dense=("the reference" if b == "dense" else diff.text) if diff else "",
            repeats=lat.repeats if lat else 0,
            batch_size=int(example.shape[0]),
            threads=threads_used if device.type == "cpu" else None,
            device=str(device),
        )
        out.append(row)
    cols = ["backend", "status", "reason", "median_ms", "p10_ms", "p90_ms", "speedup", "vs_dense",
            "repeats", "batch_size", "threads", "device", "detail"]  # fmt: skip
    df = pd.DataFrame(out, columns=cols)
    df.attrs["protocol"] = p.describe(batch_size=int(example.shape[0]), device=str(device))
    return df


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
            return (
                "2:4 sparse kernels run only on a CUDA GPU (NVIDIA, compute capability 8.0 or newer); "
                "this was timed on the CPU (bench: --device cuda)",
                None,
                None,
                "",
            )
        major, minor = torch.cuda.get_device_capability(example.device)
        if major < 8:
            return (
                f"2:4 sparse kernels need an NVIDIA GPU of compute capability 8.0 or newer "
                f"(this one is {major}.{minor})",
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
        return f"no layer could use the {backend} kernel ({reasons})", None, None, ""
    detail = report.summary() + (" (fp16; compare with dense fp16)" if backend == "semi24" else "")
    return "", model, ex, detail


def _ort_variant(
    onnx: OrtModule | None,
    pruned: nn.Module,
    structured: nn.Module | None,
    example: torch.Tensor,
    threads: int,
    smaller: bool,
) -> tuple[str, OrtModule | None, str]:
    """(skip reason, ONNX Runtime model with `threads`, detail) for the onnxruntime backend."""
    import onnxruntime as ort

    kind = example.device.type
    if kind not in ("cpu", "cuda"):
        return f"ONNX Runtime runs on the CPU or a CUDA GPU, not on {kind}", None, ""
    if kind == "cuda" and not cuda_provider_available():
        return (
            "this onnxruntime has no CUDA execution provider (it comes with the onnxruntime-gpu "
            "package); time it on the CPU (bench: --device cpu)",
            None,
            "",
        )
    target: nn.Module = onnx if onnx is not None else (
        structured if structured is not None else pruned
    )  # fmt: skip
    if isinstance(target, OrtModule):
        what = "int8 ONNX model" if hasattr(target, "spec") else "ONNX model"
        runner = target.with_settings(threads=threads, device=kind)
    else:
        what = "smaller (shrunk or factorized) model" if smaller else "model as given"
        try:
            runner = to_ort(target, example, threads=threads, device=kind)
        except UserError as e:
            return f"this model cannot run in ONNX Runtime: {e}", None, ""
    copies = "; host input and output, copies timed" if kind == "cuda" else ""
    return (
        "",
        runner,
        (
            f"ONNX Runtime {ort.__version__}, {provider_names(runner.providers)} execution provider, "
            f"{threads} intra-op thread{'s' if threads != 1 else ''}: the {what}{copies}"
        ),
    )


SWEEP_BATCH_SIZES = (1, 8, 32, 64)
"""Batch sizes of `batch_sweep` (and `pruning-lab bench --batch-sizes`'s example)."""


def batch_sweep(
    pruned: nn.Module,
    example: Callable[[int], torch.Tensor],
    *,
    batch_sizes: Sequence[int] = SWEEP_BATCH_SIZES,
    backends: Sequence[str] = ("dense", "onnxruntime"),
    dense: nn.Module | None = None,
    structured: nn.Module | None = None,
    protocol: LatencyProtocol = PROTOCOL,
    onnx: OrtModule | None = None,
) -> pd.DataFrame:
    """Latency of each backend at each batch size: speedups change with the batch, and a
    pruned model that is not faster at batch 1 may be at batch 64 (or the reverse).

    Each batch is one `benchmark_backends` call (the same protocol: warm-up, repeats,
    interleaved rounds, p10/p90, threads); the model is exported to ONNX once for all batches.

    Args:
        pruned: The model (as in `benchmark_backends`; an int8 `QuantizedModel` too).
        example: Returns an input batch of a given size on the target device.
        batch_sizes: Images per timed call, each >= 1 (default 1, 8, 32, 64).
        backends: Names from `ALL_BACKENDS` (default eager dense and onnxruntime).
        dense: The unpruned original (the eager reference).
        structured: The physically shrunk model, when there is one.
        protocol: Threads, warm-up, repeats, time budget, rounds.
        onnx: The ONNX Runtime model to time (default: exported here once).

    Returns:
        `benchmark_backends`' columns for every (batch, backend), plus `ms_per_image`,
        `p10_ms_per_image`, `p90_ms_per_image` (ms per batch / batch size);
        `attrs["protocol"]` says the settings in words.

    Raises:
        UserError: Unknown backends, no batch size or one below 1, a setting out of range.
    """
    names = check_backends(backends)
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise UserError(f"batch sizes must be >= 1, got {sizes}")
    first = example(sizes[0])
    if "onnxruntime" in names and onnx is None and not isinstance(pruned, OrtModule):
        target = structured if structured is not None else pruned
        kind = first.device.type
        if kind == "cpu" or (kind == "cuda" and cuda_provider_available()):
            try:
                onnx = to_ort(target, first, threads=protocol.threads, device=kind)
            except UserError:
                onnx = None  # each batch's row then says why (the export is retried there)
    frames = []
    for b in sizes:
        x = first if b == sizes[0] else example(b)
        frames.append(
            benchmark_backends(pruned, x, backends=names, dense=dense, structured=structured,
                               protocol=protocol, onnx=onnx)
        )  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    for col, src in (("ms_per_image", "median_ms"), ("p10_ms_per_image", "p10_ms"),
                     ("p90_ms_per_image", "p90_ms")):  # fmt: skip
        out[col] = out[src] / out["batch_size"]
    out.attrs["protocol"] = protocol.with_(batch_sizes=tuple(sizes)).describe(
        device=str(first.device)
    )
    return out


def time_interleaved(
    models: Mapping[str, tuple[nn.Module, torch.Tensor]],
    *,
    protocol: LatencyProtocol = PROTOCOL,
) -> dict[str, Latency]:
    """Time several models side by side in the same interleaved rounds, exactly as
    `benchmark_backends` times its backends (the protocol's threads, warm-up, repeats, time
    budget per model and rounds), for comparing many models with one reference timed once in
    those rounds (the one view: every variant against dense eager PyTorch).

    Args:
        models: name -> (model, one input batch on its device), timed in this order in each
            round. An `ort.OrtModule` runs with the threads its session was made with: give it
            the protocol's (`OrtModule.with_settings`).
        protocol: Threads, warm-up, repeats, time budget, rounds.

    Returns:
        name -> `Latency` (compare two with `timing.compare`).
    """
    with torch_threads(protocol.threads):
        return _interleaved(dict(models), protocol.warmup, protocol.repeats,
                            protocol.max_seconds, protocol.rounds)  # fmt: skip


def _interleaved(
    runnable: dict[str, tuple[nn.Module, torch.Tensor]],
    warmup: int,
    repeats: int,
    max_seconds: float,
    rounds: int,
) -> dict[str, Latency]:
    """Time the models in alternating rounds and pool each one's samples."""
    if not runnable:
        return {}
    # Below 9 repeats a round would time too few calls to re-warm and still count.
    # Below 9 repeats a round would time too few calls to count, unless alternating call by
    # call (rounds == repeats) was asked for.
    if repeats < 9 and rounds != repeats:
        rounds = 1
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
