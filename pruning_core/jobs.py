"""A bounded background job runner, independent of any UI.

The app submits long work (fine-tuning, sweeps, sensitivity) here and polls the returned `Job`
for progress; nothing in this module knows about Streamlit. A fixed number of worker threads
(`PRUNING_LAB_MAX_JOBS`, default half the cores) run jobs in order, and a bounded queue
(`PRUNING_LAB_MAX_QUEUE`, default 8) refuses more work with a clear message, so a classroom
sharing one server cannot overload it. Cancellation is cooperative: a job's function receives a
`JobContext` whose `cancel` event it passes on (e.g. to `train.fit(cancel=...)`); a queued job
that is cancelled never starts. With a `RunStore`, a job can record itself as a run: its status,
metrics and curve, also when it is cancelled (with the partial curve) or fails (with the error).

Every job ends: whatever its function raises (`SystemExit` and other `BaseException`s too),
whatever fails before it starts (the thread setting, recording the run) and whatever keeps its
result from being recorded (a curve point or metric the store cannot hold, a store that is gone,
locked or read-only) ends it `failed` with a one-line reason, and its store row with it; the
worker thread lives on and the queue moves on. A job is never `done` while its row says
otherwise. Settings (`max_workers`, `max_queue`, `torch_threads` and their environment
variables) are checked when the runner is made, before any job runs.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pruning_core.errors import UserError, first_line
from pruning_core.progress import ProgressReport
from pruning_core.store import RunStore, check_curve_point, split_encodable
from pruning_core.validate import number

__all__ = [
    "JOB_STATUSES",
    "Job",
    "JobCancelledError",
    "JobContext",
    "JobRunner",
    "QueueFullError",
    "default_max_jobs",
    "get_runner",
    "lower_thread_priority",
    "page_threads",
    "use_page_threads",
]

JOB_STATUSES = ("queued", "running", "done", "cancelled", "failed")
FINISHED = frozenset({"done", "cancelled", "failed"})
DEFAULT_MAX_QUEUE = 8
# The thread rule of a shared server (measured: benchmarks/job_threads.py, results.md "Jobs on
# a shared server"): torch's OpenMP pool is per calling thread, so every job and every page run
# brings its own team; more busy threads than cores make OpenMP threads spin and wait on each
# other, and a job then runs many times slower than its share of the CPU. So every job and
# every page computes on one thread, and jobs run at once on half the cores (at least one),
# leaving the rest to the pages students are looking at.
DEFAULT_JOB_THREADS = 1
DEFAULT_PAGE_THREADS = 1
# Job threads run at this OS niceness (Linux: per thread) so the pages students are looking at
# get the cores first and jobs take what is left: with 30 students moving sliders on 2 cores,
# a fine-tune at the pages' priority held one core and the redraws queued behind it
# (benchmarks/results.md, "App load test"). 0 turns it off; 19 is the lowest priority.
DEFAULT_JOB_NICE = 10
# Upper bounds that keep a mistyped setting from starting thousands of threads.
MAX_WORKERS = 256
MAX_TORCH_THREADS = 1024
# Curve points are written to the store in batches, at most this many seconds apart.
_FLUSH_SECONDS = 1.0
_FLUSH_POINTS = 64


class QueueFullError(UserError):
    """The job queue is full: the user should wait for a job to finish."""


class JobCancelledError(Exception):
    """Raise inside a job function to stop at once; the job ends as cancelled."""


@dataclass
class Job:
    """A unit of background work and what is known about it so far.

    Read the fields from any thread (the UI polls them); only the runner and the job's own
    context write them. `snapshot()` gives a consistent copy.

    Attributes:
        id: Unique id (`job-N`).
        name: A label for the UI.
        kind: What it does (`finetune`, `sweep`, ...).
        status: queued, running, done, cancelled or failed.
        progress: Fraction done, in [0, 1].
        message: The latest progress message.
        metrics: The latest metrics reported (merged).
        curve: Curve points logged so far (dicts, e.g. step, loss, accuracy).
        result: What the function returned (done jobs).
        error: One line saying what went wrong (failed) or why it stopped (cancelled).
        traceback: The full traceback of an unexpected failure (for logs, not for users).
        run_id: The run recorded in the store, if any.
        created, started, finished: `time.time()` stamps.
    """

    id: str
    name: str
    kind: str
    status: str = "queued"
    progress: float = 0.0
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    run_id: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _runner: JobRunner | None = field(default=None, repr=False)

    @property
    def is_finished(self) -> bool:
        """True once done, cancelled or failed."""
        return self.status in FINISHED

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked this job to stop."""
        return self._cancel.is_set()

    def queue_position(self) -> int | None:
        """1 for the next job to start, 2 for the one after...; None unless queued."""
        return self._runner.queue_position(self.id) if self._runner is not None else None

    def cancel(self) -> bool:
        """Ask the job to stop (see `JobRunner.cancel`)."""
        return self._runner.cancel(self.id) if self._runner is not None else False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finishes; False if `timeout` seconds passed first."""
        return self._done.wait(timeout)

    @property
    def elapsed(self) -> float:
        """Seconds running so far (or in total once finished)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the public fields, safe to render while the job runs."""
        lock = self._runner._lock if self._runner is not None else threading.Lock()
        with lock:
            return {
                "id": self.id,
                "name": self.name,
                "kind": self.kind,
                "status": self.status,
                "progress": self.progress,
                "message": self.message,
                "metrics": dict(self.metrics),
                "curve": [dict(p) for p in self.curve],
                "error": self.error,
                "run_id": self.run_id,
                "queue_position": self._runner._position_locked(self.id)
                if self._runner is not None
                else None,
                "elapsed": self.elapsed,
            }


class JobContext:
    """What a job function receives: report progress, log curve points, watch for cancel.

    Attributes:
        job: The job (read-only for the function).
        cancel: Event set when the job should stop; pass it to `train.fit(cancel=...)`.
        store: The run store the job records into, if any (for artifacts).
        run_id: The job's run in the store, if it records one.
    """

    def __init__(self, job: Job, runner: JobRunner, store: RunStore | None, run_id: int | None):
        self.job = job
        self.cancel = job._cancel
        self.store = store
        self.run_id = run_id
        self._runner = runner
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self.cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise `JobCancelledError` if cancellation was requested (for loops without fit)."""
        if self.cancel.is_set():
            raise JobCancelledError()

    def report(
        self, progress: float | None = None, message: str | None = None, **metrics: Any
    ) -> None:
        """Update progress (a fraction in [0, 1]), the message and metrics shown by the UI."""
        with self._runner._lock:
            if progress is not None:
                self.job.progress = min(max(float(progress), 0.0), 1.0)
            if message is not None:
                self.job.message = message
            self.job.metrics.update(metrics)

    def follow(self, p: ProgressReport) -> None:
        """A `progress=` callback (`progress.ProgressReport`) for any long-running function
        (`experiments.sweep`, `experiments.sensitivity`, `tradeoffs.latency_vs_sparsity`...):
        reports its `fraction` and `message` into this job."""
        self.report(p.fraction, p.message)

    def log(self, **point: Any) -> None:
        """Append a curve point (e.g. step=, epoch=, loss=, accuracy=); recorded in the store.

        Raises:
            CurvePointError: A value the store could not keep (`loss=[0.5, 0.4]`), raised here
                rather than when the run is recorded, so the job fails at the faulty line with
                the points before it kept.
        """
        check_curve_point(point)
        with self._runner._lock:
            self.job.curve.append(dict(point))
        if self.store is not None and self.run_id is not None:
            self._pending.append(dict(point))
            now = time.monotonic()
            if len(self._pending) >= _FLUSH_POINTS or now - self._last_flush >= _FLUSH_SECONDS:
                self.flush()

    def flush(self) -> None:
        """Write buffered curve points to the store (the runner also does this at the end)."""
        if self.store is not None and self.run_id is not None and self._pending:
            points, self._pending = self._pending, []
            self.store.add_curve_points(self.run_id, points)
        self._last_flush = time.monotonic()

    def fit_progress(self, every: int = 1, label: str = "fine-tune") -> Callable[[Any], None]:
        """A `progress=` callback for `train.fit` (and `run_schedule`, `run_recipe`) that reports
        and logs into this job.

        Unlike `follow`, it reads the training fields of `train.Progress` (epoch, step, loss,
        lr, val_accuracy): it logs the loss every `every` steps and each epoch's validation
        accuracy as curve points.
        """

        def on_progress(p: Any) -> None:
            # A linear/AGP schedule's epochs restart each cycle: say which cycle it is.
            where = getattr(p, "where", "")
            head = f"{label} {where} epoch" if where else f"{label} epoch"
            if p.val_accuracy is not None:
                self.log(step=p.step, epoch=p.epoch, loss=p.loss, accuracy=p.val_accuracy, lr=p.lr)
                msg = f"{head} {p.epoch}/{p.epochs}: val accuracy {p.val_accuracy:.4f}"
                self.report(p.fraction, msg, val_accuracy=p.val_accuracy)
                return
            if p.step % max(every, 1) == 0:
                self.log(step=p.step, epoch=p.epoch, loss=p.loss, lr=p.lr)
            self.report(p.fraction, f"{head} {p.epoch}/{p.epochs}, step {p.step}/{p.total_steps}")

        return on_progress


@dataclass(frozen=True)
class _Record:
    kind: str
    model: str | None
    dataset: str | None
    config: Mapping[str, Any]


class JobRunner:
    """Worker threads over a bounded FIFO queue.

    Args:
        max_workers: Jobs running at once, 1 to 256 (default: env `PRUNING_LAB_MAX_JOBS`,
            else `default_max_jobs()`: half the cores, at least one).
        max_queue: Jobs allowed to wait, >= 0 (default: env `PRUNING_LAB_MAX_QUEUE`, else 8).
        store: Where jobs submitted with `record=True` are recorded.
        torch_threads: CPU threads torch may use while a job runs, 1 to 1024 (default: env
            `PRUNING_LAB_JOB_THREADS`, else 1: the rule in this module). torch's thread count
            is per thread once a thread has computed, so each job sets it when it starts.
        keep_finished: Finished jobs kept for polling (>= 0); older ones are forgotten.
        job_nice: OS niceness of the worker threads, 0 to 19 (default: env
            `PRUNING_LAB_JOB_NICE`, else `DEFAULT_JOB_NICE`); applied where the OS sets it
            per thread (Linux), ignored elsewhere.

    Raises:
        UserError: A setting or its environment variable is not an integer in its range.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        max_queue: int | None = None,
        *,
        store: RunStore | None = None,
        torch_threads: int | None = None,
        keep_finished: int = 200,
        job_nice: int | None = None,
    ) -> None:
        self.max_workers: int = _setting(
            max_workers,
            "max_workers",
            "PRUNING_LAB_MAX_JOBS",
            default_max_jobs(),
            lo=1,
            hi=MAX_WORKERS,
        )
        self.max_queue: int = _setting(
            max_queue, "max_queue", "PRUNING_LAB_MAX_QUEUE", DEFAULT_MAX_QUEUE, lo=0
        )
        self.store = store
        # One thread per job (DEFAULT_JOB_THREADS: the rule above); PRUNING_LAB_JOB_THREADS
        # sets it explicitly, e.g. for a single user on a many-core machine.
        self.torch_threads: int = _setting(
            torch_threads,
            "torch_threads",
            "PRUNING_LAB_JOB_THREADS",
            DEFAULT_JOB_THREADS,
            lo=1,
            hi=MAX_TORCH_THREADS,
        )
        self.keep_finished: int = number(keep_finished, "keep_finished", integer=True, lo=0)
        self.job_nice: int = _setting(
            job_nice, "job_nice", "PRUNING_LAB_JOB_NICE", DEFAULT_JOB_NICE, lo=0, hi=19
        )
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[tuple[Job, Callable[[JobContext], Any], _Record | None]] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: set[str] = set()
        self._workers: list[threading.Thread] = []
        self._ids = itertools.count(1)
        self._closed = False
        # Runs whose end could not be written (store locked or gone): run id -> (status, error),
        # retried before each later job so a row does not stay `running` while this process
        # lives on (once it ends, the next open of the store marks the row anyway).
        self._unsynced: dict[int, tuple[str, str | None]] = {}

    # -- submitting and cancelling ----------------------------------------------------------

    def submit(
        self,
        fn: Callable[[JobContext], Any],
        *,
        name: str,
        kind: str = "job",
        record: bool = False,
        model: str | None = None,
        dataset: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue `fn(ctx)` to run in the background.

        Args:
            fn: The work; it receives a `JobContext`, should watch `ctx.cancel`, and returns the
                result (a dict of metrics is also stored as the run's metrics).
            name: A label for the UI.
            kind: What it does; with `record=True` one of the store's kinds (e.g. finetune).
            record: Record the job as a run in the runner's store when it starts.
            model, dataset, config: What the recorded run says it used.

        Raises:
            QueueFullError: `max_queue` jobs are already waiting.
            UserError: `record=True` without a store, or a kind the store does not know.
        """
        rec = None
        if record:
            if self.store is None:
                raise UserError("this job runner has no run store to record into")
            from pruning_core.store import KINDS

            if kind not in KINDS:
                raise UserError(f"cannot record a job of kind '{kind}' (one of {', '.join(KINDS)})")
            rec = _Record(kind, model, dataset, dict(config or {}))
        with self._lock:
            if self._closed:
                raise UserError("the job runner is shut down")
            # Capacity counts running and waiting jobs together, so idle workers that have not
            # yet picked up a job cannot let the queue grow past its bound.
            if len(self._queue) + len(self._running) >= self.max_workers + self.max_queue:
                raise QueueFullError(
                    f"the job queue is full ({len(self._running)} running, {len(self._queue)} "
                    "waiting); try again when a job has finished"
                )
            job = Job(id=f"job-{next(self._ids)}", name=name, kind=kind, _runner=self)
            self._jobs[job.id] = job
            self._queue.append((job, fn, rec))
            self._ensure_workers()
            self._wakeup.notify()
            self._forget_old()
        return job

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop. A queued job is removed and never starts; a running one sees its
        `cancel` event set and stops at its next check. Returns False for finished or unknown
        jobs."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.is_finished:
                return False
            job._cancel.set()
            if job.status == "queued":
                self._queue = deque(item for item in self._queue if item[0].id != job_id)
                job.status, job.error, job.finished = (
                    "cancelled",
                    "cancelled before it started",
                    time.time(),
                )
                job._done.set()
            elif not job.message.startswith("cancelling"):
                job.message = "cancelling..."
            return True

    # -- polling ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job with this id, if it is still known."""
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Known jobs, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def queue_position(self, job_id: str) -> int | None:
        """1-based place of a queued job (1 starts next); None if it is not waiting."""
        with self._lock:
            return self._position_locked(job_id)

    def _position_locked(self, job_id: str) -> int | None:
        for i, (job, _, _) in enumerate(self._queue):
            if job.id == job_id:
                return i + 1
        return None

    @property
    def running(self) -> int:
        """Jobs running now."""
        with self._lock:
            return len(self._running)

    @property
    def queued(self) -> int:
        """Jobs waiting."""
        with self._lock:
            return len(self._queue)

    def shutdown(
        self, *, cancel: bool = True, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Stop taking jobs; cancel queued and running ones (unless `cancel=False`), and wait
        for the workers to exit."""
        with self._lock:
            self._closed = True
            if cancel:
                for job in list(self._jobs.values()):
                    if not job.is_finished:
                        self.cancel(job.id)
            self._wakeup.notify_all()
            workers = list(self._workers)
        if wait:
            for t in workers:
                t.join(timeout)

    # -- workers ----------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        while len(self._workers) < self.max_workers:
            t = threading.Thread(
                target=self._work, name=f"pruning-lab-job-worker-{len(self._workers)}", daemon=True
            )
            self._workers.append(t)
            t.start()

    def _work(self) -> None:
        lower_thread_priority(self.job_nice)
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return  # closed and drained
                job, fn, rec = self._queue.popleft()
                self._running.add(job.id)
                job.status, job.started = "running", time.time()
            try:
                self._sync_unrecorded()
                self._run(job, fn, rec)
            except BaseException as e:  # a fault of the runner itself: the job still ends
                self._fail_unrecorded(job, f"internal error: {_describe(e)}", _traceback(e))
            finally:
                with self._lock:
                    self._running.discard(job.id)
                    if not job.is_finished:  # never wake a waiter on a job still "running"
                        job.status = "failed"
                        job.error = job.error or "internal error: the job ended without a status"
                    job.finished = time.time()
                    job._done.set()

    def _run(self, job: Job, fn: Callable[[JobContext], Any], rec: _Record | None) -> None:
        store = self.store if rec is not None else None
        ctx = JobContext(job, self, store, None)
        if store is not None and rec is not None:
            try:
                run_id = store.create_run(
                    rec.kind, model=rec.model, dataset=rec.dataset, config=rec.config, name=job.name
                )
            except BaseException as e:  # the store is unusable: the job fails, saying why
                self._finish(job, "failed", error=f"cannot record the run: {_describe(e)}")
                return
            job.run_id = ctx.run_id = run_id
        try:
            _set_torch_threads(self.torch_threads)
        except BaseException as e:
            reason = f"cannot start: {_describe(e)}"
            self._finish(job, "failed", error=reason, tb=_traceback(e), ctx=ctx)
            return
        status, error, result, tb = "done", None, None, None
        try:
            result = fn(ctx)
            if ctx.cancelled:
                status, error = "cancelled", "cancelled while running"
        except JobCancelledError:
            status, error = "cancelled", "cancelled while running"
        except BaseException as e:
            # SystemExit, KeyboardInterrupt and the like end the job, not the worker: in a
            # worker thread they can only come from the job's own code.
            status, error = "failed", _describe(e)
            tb = None if isinstance(e, UserError) else _traceback(e)
        self._finish(job, status, error=error, result=result, tb=tb, ctx=ctx)

    def _finish(
        self,
        job: Job,
        status: str,
        *,
        error: str | None = None,
        result: Any = None,
        tb: str | None = None,
        ctx: JobContext | None = None,
    ) -> None:
        # The store is written before the job says it is finished, so whoever waits on the job
        # finds its row final too.
        if ctx is not None and ctx.store is not None and ctx.run_id is not None:
            status, error = self._record(job, ctx, status, error, result)
        with self._lock:
            job.status, job.error, job.result, job.traceback = status, error, result, tb
            if status == "done":
                job.progress = 1.0
            if status != "done" and error:
                job.message = error

    def _record(
        self, job: Job, ctx: JobContext, status: str, error: str | None, result: Any
    ) -> tuple[str, str | None]:
        """Write the job's end into its run; returns the status and error the job ends with.

        What cannot be recorded turns `done` into `failed` (a cancelled or failed job keeps
        its status, with the note added to its reason), and the row is still closed: with
        what could be recorded, else with the status and the reason alone.
        """
        store, run_id = ctx.store, ctx.run_id
        if store is None or run_id is None:
            return status, error
        notes: list[str] = []
        try:
            ctx.flush()  # the partial curve of a cancelled or failed run is kept
        except BaseException as e:
            ctx._pending = []
            notes.append(f"its curve could not be recorded ({_describe(e)})")
        with self._lock:
            merged: dict[Any, Any] = dict(job.metrics)
        try:
            if isinstance(result, Mapping):
                merged.update(result)
        except BaseException as e:
            notes.append(f"its result could not be read ({_describe(e)})")
        metrics, dropped = split_encodable(merged)
        if dropped:
            notes.append(f"metrics {', '.join(dropped)} cannot be stored")
        status, error = _with_notes(status, error, notes)
        try:
            store.update_status(run_id, status, metrics=metrics, error=error)
            return status, error
        except BaseException as e:
            status, error = _with_notes(
                status, error, [f"its result could not be recorded ({_describe(e)})"]
            )
        try:
            store.update_status(run_id, status, error=error)
        except BaseException:  # the store is unreachable: the job ends all the same
            with self._lock:
                self._unsynced[run_id] = (status, error)
        return status, error

    def _sync_unrecorded(self) -> None:
        """Retry writing the end of runs whose store was unreachable when they ended."""
        if self.store is None:
            return
        with self._lock:
            pending = list(self._unsynced.items())
        for run_id, (status, error) in pending:
            try:
                self.store.update_status(run_id, status, error=error)
            except UserError as e:
                if not str(e).startswith("no run "):
                    continue  # still unreachable: try again before the next job
            except Exception:
                continue
            with self._lock:
                self._unsynced.pop(run_id, None)

    def _fail_unrecorded(self, job: Job, error: str, tb: str | None) -> None:
        """Last resort when the runner's own bookkeeping failed: fail the job and its row."""
        if self.store is not None and job.run_id is not None:
            try:
                self.store.update_status(job.run_id, "failed", error=error)
            except BaseException:
                with self._lock:
                    self._unsynced[job.run_id] = ("failed", error)
        with self._lock:
            job.status, job.error, job.traceback, job.message = "failed", error, tb, error

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.is_finished]
        for j in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[j.id]


def default_max_jobs(cores: int | None = None) -> int:
    """Jobs run at once by default: half the cores, at least one (the thread rule above).

    Args:
        cores: CPU cores (default: `os.cpu_count()`).
    """
    return max(1, (cores if cores is not None else os.cpu_count() or 1) // 2)


def page_threads() -> int:
    """torch threads of a page's script run: env `PRUNING_LAB_PAGE_THREADS`, else 1.

    Raises:
        UserError: The variable is not an integer from 1 to 1024.
    """
    return _env_int("PRUNING_LAB_PAGE_THREADS", DEFAULT_PAGE_THREADS, lo=1, hi=MAX_TORCH_THREADS)


def use_page_threads(n: int | None = None) -> int:
    """Set the calling thread's torch threads to `n` (default `page_threads()`): a page calls
    this when its script run starts, since Streamlit runs each in a thread of its own, which
    would otherwise take whatever count the process last set. Returns the count.

    Raises:
        UserError: A bad `n` or `PRUNING_LAB_PAGE_THREADS`.
    """
    n = page_threads() if n is None else n
    _set_torch_threads(n)
    return n


def _setting(
    value: Any, what: str, env: str, default: int, *, lo: int, hi: int | None = None
) -> int:
    """`value` if given, else the environment variable `env` if set, else `default`; each
    checked to be an integer in [lo, hi]."""
    if value is not None:
        checked: int = number(value, what, integer=True, lo=lo, hi=hi)
        return checked
    return _env_int(env, default, lo=lo, hi=hi)


def _env_int(name: str, default: int, *, lo: int = 0, hi: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    checked: int = number(raw.strip(), f"environment variable {name}", integer=True, lo=lo, hi=hi)
    return checked


def _describe(e: BaseException) -> str:
    """One line for a job's error: a `UserError`'s message as it is, anything else with its
    type (`SystemExit: 3`, `KeyboardInterrupt`)."""
    if isinstance(e, UserError):
        return first_line(e)
    line = first_line(e)
    name = type(e).__name__
    return name if line == name else f"{name}: {line}"


def _traceback(e: BaseException) -> str | None:
    try:
        return "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception:
        return None


def _with_notes(status: str, error: str | None, notes: list[str]) -> tuple[str, str | None]:
    if not notes:
        return status, error
    if status == "done":
        return "failed", "finished, but " + "; ".join(notes)
    return status, "; ".join([error or status, *notes])


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness to `nice` (Linux: a thread is a task with its own
    priority; threads it starts inherit it). Elsewhere, or without the right, nothing."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        if nice > now:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        pass


def _set_torch_threads(n: int) -> None:
    n = number(n, "torch_threads", integer=True, lo=1, hi=MAX_TORCH_THREADS)
    import torch  # imported here: the runner itself needs no torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_RUNNER: JobRunner | None = None
_RUNNER_LOCK = threading.Lock()


def get_runner() -> JobRunner:
    """The process-wide runner (the app keeps it in `st.cache_resource`), recording into the
    default run store. Sized by `PRUNING_LAB_MAX_JOBS` and `PRUNING_LAB_MAX_QUEUE`."""
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None or _RUNNER._closed:
            _RUNNER = JobRunner(store=RunStore())
        return _RUNNER
