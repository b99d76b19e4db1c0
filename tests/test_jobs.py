"""The job runner: bounds, queue positions, cancelling queued and running jobs, failures, store."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from pruning_core.errors import UserError
from pruning_core.jobs import JobContext, JobRunner, QueueFullError, get_runner
from pruning_core.store import RunStore


def _blocker(release: threading.Event, started: list[str] | None = None):
    def fn(ctx: JobContext) -> str:
        if started is not None:
            started.append(ctx.job.id)
        while not release.is_set() and not ctx.cancelled:
            time.sleep(0.005)
        return ctx.job.id

    return fn


@pytest.fixture
def runner():
    r = JobRunner(max_workers=1, max_queue=2, torch_threads=1)
    yield r
    r.shutdown(timeout=5)


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_runs_and_returns_result(runner: JobRunner) -> None:
    def fn(ctx: JobContext) -> int:
        for i in range(4):
            ctx.report((i + 1) / 4, f"step {i}", loss=1.0 / (i + 1))
            ctx.log(step=i, loss=1.0 / (i + 1))
        return 42

    job = runner.submit(fn, name="add", kind="test")
    assert job.wait(5)
    assert (job.status, job.result, job.progress, job.error) == ("done", 42, 1.0, None)
    assert [p["step"] for p in job.curve] == [0, 1, 2, 3]
    assert job.metrics["loss"] == 0.25
    snap = job.snapshot()
    assert snap["status"] == "done" and len(snap["curve"]) == 4 and snap["queue_position"] is None


def test_queue_bound_positions_and_max_workers(runner: JobRunner) -> None:
    release = threading.Event()
    started: list[str] = []
    first = runner.submit(_blocker(release, started), name="a")
    assert _wait(lambda: first.status == "running")
    second = runner.submit(_blocker(release, started), name="b")
    third = runner.submit(_blocker(release, started), name="c")
    assert (second.queue_position(), third.queue_position()) == (1, 2)
    assert first.queue_position() is None
    with pytest.raises(QueueFullError, match="queue is full"):
        runner.submit(_blocker(release), name="d")
    time.sleep(0.1)
    assert started == [first.id]  # one worker: the others wait
    assert runner.running == 1 and runner.queued == 2
    release.set()
    for j in (first, second, third):
        assert j.wait(5)
    assert started == [first.id, second.id, third.id]  # FIFO
    assert all(j.status == "done" for j in (first, second, third))


def test_two_workers_run_two_at_once() -> None:
    r = JobRunner(max_workers=2, max_queue=4, torch_threads=1)
    try:
        release = threading.Event()
        running_now: list[int] = []
        peak = [0]
        lock = threading.Lock()

        def fn(ctx: JobContext) -> None:
            with lock:
                running_now.append(1)
                peak[0] = max(peak[0], len(running_now))
            release.wait(5)
            with lock:
                running_now.pop()

        jobs = [r.submit(fn, name=f"j{i}") for i in range(5)]
        assert _wait(lambda: r.running == 2)
        time.sleep(0.05)
        assert r.running == 2 and r.queued == 3
        release.set()
        assert all(j.wait(5) for j in jobs)
        assert peak[0] == 2
    finally:
        r.shutdown(timeout=5)


def test_cancel_queued_never_starts(runner: JobRunner) -> None:
    release = threading.Event()
    started: list[str] = []
    first = runner.submit(_blocker(release, started), name="a")
    queued = runner.submit(_blocker(release, started), name="b")
    assert runner.cancel(queued.id)
    assert queued.status == "cancelled" and queued.wait(0)
    assert "before it started" in (queued.error or "")
    release.set()
    assert first.wait(5)
    time.sleep(0.05)
    assert started == [first.id]
    assert not runner.cancel(queued.id)  # already finished


def test_cancel_running_is_cooperative(runner: JobRunner) -> None:
    job = runner.submit(_blocker(threading.Event()), name="forever")
    assert _wait(lambda: job.status == "running")
    assert job.cancel()
    assert job.wait(5)
    assert job.status == "cancelled" and job.cancel_requested

    def raises(ctx: JobContext) -> None:
        while True:
            ctx.check_cancelled()
            time.sleep(0.005)

    j2 = runner.submit(raises, name="raises")
    assert _wait(lambda: j2.status == "running")
    runner.cancel(j2.id)
    assert j2.wait(5) and j2.status == "cancelled"


def test_failures_are_captured(runner: JobRunner) -> None:
    def bad(ctx: JobContext) -> None:
        raise ValueError("tensor on fire\nmore detail")

    def user(ctx: JobContext) -> None:
        raise UserError("ratio must be in [0, 1)")

    j1 = runner.submit(bad, name="bad")
    j2 = runner.submit(user, name="user")
    assert j1.wait(5) and j2.wait(5)
    assert j1.status == "failed" and j1.error == "ValueError: tensor on fire"
    assert j1.traceback and "ValueError" in j1.traceback
    assert j2.status == "failed" and j2.error == "ratio must be in [0, 1)"
    # the worker survives failures
    j3 = runner.submit(lambda ctx: "ok", name="ok")
    assert j3.wait(5) and j3.result == "ok"


def test_records_into_store_with_partial_curve_on_cancel(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    r = JobRunner(max_workers=1, max_queue=2, store=store, torch_threads=1)
    try:

        def train(ctx: JobContext) -> dict[str, float]:
            for step in range(10_000):
                if ctx.cancelled:
                    break
                ctx.log(step=step, loss=1.0 / (step + 1))
                ctx.report(step / 10_000, f"step {step}")
                time.sleep(0.002)
            return {"steps": step}

        job = r.submit(train, name="ft", kind="finetune", record=True, model="m", config={"lr": 1})
        assert _wait(lambda: len(job.curve) >= 5)
        job.cancel()
        assert job.wait(5) and job.status == "cancelled"
        run = store.get_run(job.run_id or -1)
        assert run.status == "cancelled" and "cancelled" in (run.error or "")
        assert run.config == {"lr": 1} and run.model == "m"
        assert len(run.curve) == len(job.curve) >= 5  # every logged point was flushed
        assert run.metrics["steps"] == len(job.curve)  # cancelled before logging step N

        def ok(ctx: JobContext) -> dict[str, float]:
            ctx.log(step=1, accuracy=0.5)
            return {"accuracy": 0.5}

        done = r.submit(ok, name="ok", kind="finetune", record=True)
        assert done.wait(5)
        assert store.get_run(done.run_id or -1).status == "done"
        assert store.get_run(done.run_id or -1).metrics["accuracy"] == 0.5

        def fail(ctx: JobContext) -> None:
            ctx.log(step=1, loss=3.0)
            raise RuntimeError("out of memory")

        failed = r.submit(fail, name="f", kind="finetune", record=True)
        assert failed.wait(5)
        run = store.get_run(failed.run_id or -1)
        assert run.status == "failed" and "out of memory" in (run.error or "")
        assert run.curve == [{"step": 1, "loss": 3.0}]

        with pytest.raises(UserError, match="cannot record"):
            r.submit(ok, name="x", kind="party", record=True)
    finally:
        r.shutdown(timeout=5)


def test_fit_progress_and_torch_threads(tmp_path: Path) -> None:
    import torch

    from pruning_core.data import load_dataset
    from pruning_core.models import create_model, model_spec
    from pruning_core.train import TrainConfig, fit

    data = load_dataset("digits")
    spec = model_spec("digits-mlp")
    model = create_model("digits-mlp")
    seen_threads: list[int] = []
    r = JobRunner(max_workers=1, max_queue=1, torch_threads=1)
    before = torch.get_num_threads()
    try:

        def job(ctx: JobContext):
            seen_threads.append(torch.get_num_threads())
            cfg = TrainConfig(epochs=1, batch_size=256, device="cpu", val_limit=100)
            return fit(model, data, spec, cfg, progress=ctx.fit_progress(), cancel=ctx.cancel)

        j = r.submit(job, name="fit", kind="finetune")
        assert j.wait(60), j.message
        assert j.status == "done", j.error
        assert seen_threads == [1]
        epoch_points = [p for p in j.curve if "accuracy" in p]
        assert len(epoch_points) == 1 and 0.0 <= epoch_points[0]["accuracy"] <= 1.0
        assert len(j.curve) == j.result.steps + 1
    finally:
        r.shutdown(timeout=5)
        torch.set_num_threads(before)


def test_env_and_singleton(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNING_LAB_MAX_JOBS", "3")
    monkeypatch.setenv("PRUNING_LAB_MAX_QUEUE", "5")
    r = JobRunner()
    assert (r.max_workers, r.max_queue) == (3, 5)
    monkeypatch.setenv("PRUNING_LAB_MAX_JOBS", "many")
    with pytest.raises(UserError, match="PRUNING_LAB_MAX_JOBS"):
        JobRunner()
    monkeypatch.setenv("PRUNING_LAB_MAX_JOBS", "1")
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path))
    import pruning_core.jobs as jobs_mod

    monkeypatch.setattr(jobs_mod, "_RUNNER", None)
    a = get_runner()
    assert get_runner() is a and a.store is not None and a.store.root == tmp_path
    a.shutdown()
    assert get_runner() is not a  # a shut-down runner is replaced
    get_runner().shutdown()


def test_thread_rule_defaults_and_page_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared-server rule: one torch thread per job and per page run, jobs at once on half
    the cores (at least one); each setting can be overridden and is checked."""
    import threading

    import torch

    from pruning_core.jobs import default_max_jobs, page_threads, use_page_threads

    assert [default_max_jobs(c) for c in (1, 2, 3, 16)] == [1, 1, 1, 8]
    for name in ("PRUNING_LAB_MAX_JOBS", "PRUNING_LAB_JOB_THREADS", "PRUNING_LAB_PAGE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    r = JobRunner(max_queue=1)
    assert r.torch_threads == 1 and r.max_workers == default_max_jobs()
    r.shutdown()
    assert page_threads() == 1
    monkeypatch.setenv("PRUNING_LAB_PAGE_THREADS", "0")
    with pytest.raises(UserError, match="PRUNING_LAB_PAGE_THREADS"):
        page_threads()
    monkeypatch.setenv("PRUNING_LAB_PAGE_THREADS", "2")
    seen: list[int] = []

    def page_run() -> None:  # a script run: a thread of its own
        seen.append(use_page_threads())
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=page_run)
    t.start()
    t.join()
    assert seen == [2, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux")
def test_job_threads_run_at_the_job_niceness_and_the_caller_keeps_its_own() -> None:
    import os
    import threading

    from pruning_core.jobs import JobRunner

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runner = JobRunner(max_workers=1, max_queue=2, job_nice=min(mine + 5, 19))
    try:
        job = runner.submit(
            lambda ctx: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), name="nice"
        )
        job.wait(30)
        assert job.status == "done", job.error
        assert job.result == min(mine + 5, 19)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    finally:
        runner.shutdown(wait=True, timeout=10)


def test_job_nice_outside_0_to_19_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pruning_core.errors import UserError
    from pruning_core.jobs import JobRunner

    with pytest.raises(UserError, match="job_nice"):
        JobRunner(job_nice=20)
    monkeypatch.setenv("PRUNING_LAB_JOB_NICE", "-1")
    with pytest.raises(UserError, match="PRUNING_LAB_JOB_NICE"):
        JobRunner()


def test_fit_progress_says_the_cycle_of_a_linear_schedule() -> None:
    # A linear/AGP schedule's epochs restart each cycle: the job's message says which cycle.
    from pruning_core.schedules import CycleProgress
    from pruning_core.train import Progress

    seen: list[str] = []
    r = JobRunner(max_workers=1, max_queue=1, torch_threads=1)
    try:

        def job(ctx: JobContext) -> None:
            on = ctx.fit_progress()
            on(CycleProgress(1, 1, 5, 10, 0.5, 1e-3, cycle=2, cycles=3, target_ratio=0.6))
            seen.append(ctx.job.message)
            on(CycleProgress(1, 1, 10, 10, 0.4, 1e-3, 0.9, cycle=2, cycles=3, target_ratio=0.6))
            seen.append(ctx.job.message)
            on(Progress(1, 2, 3, 20, 0.5, 1e-3))
            seen.append(ctx.job.message)

        j = r.submit(job, name="fit", kind="finetune")
        assert j.wait(30) and j.status == "done", j.error
    finally:
        r.shutdown(timeout=5)
    assert seen == [
        "fine-tune cycle 2/3 (ratio 0.6) epoch 1/1, step 5/10",
        "fine-tune cycle 2/3 (ratio 0.6) epoch 1/1: val accuracy 0.9000",
        "fine-tune epoch 1/2, step 3/20",
    ]
