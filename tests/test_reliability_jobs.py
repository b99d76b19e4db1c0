"""Background jobs always end (issue 8, kind 6), and the run store's part of kind 8.

Whatever a job raises, whatever fails before it starts and whatever keeps its result from being
recorded ends it `failed` with a one-line reason, its store row with it, and the queue moves on.
A row left `running` by a process that is gone is marked when the store opens; a home that
cannot be written and a database file that is not one are refused in one line.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import pruning_core.jobs as jobs_mod
import pruning_core.store as store_mod
from pruning_core.errors import UserError
from pruning_core.jobs import JobContext, JobRunner
from pruning_core.store import INTERRUPTED_ERROR, SCHEMA_VERSION, RunStore, process_owner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "home")


@pytest.fixture
def runner(store: RunStore) -> Iterator[JobRunner]:
    r = JobRunner(max_workers=1, max_queue=8, store=store, torch_threads=1)
    yield r
    r.shutdown(timeout=5)


def _row(store: RunStore, run_id: int | None) -> tuple[str, str | None]:
    assert run_id is not None
    with sqlite3.connect(store.db_path) as con:
        status, error = con.execute(
            "SELECT status, error FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    return status, error


def _statuses(store: RunStore) -> dict[int, str]:
    with sqlite3.connect(store.db_path) as con:
        return dict(con.execute("SELECT id, status FROM runs").fetchall())


def _submit(r: JobRunner, fn: Any, name: str = "job") -> Any:
    return r.submit(fn, name=name, kind="finetune", record=True)


def _ends_and_queue_moves_on(r: JobRunner, store: RunStore, job: Any) -> None:
    """The job finished failed, its row agrees, and the next job still runs to done."""
    assert job.wait(10), "the job never ended"
    assert job.status == "failed" and job.is_finished
    assert job.error and "\n" not in job.error
    if job.run_id is not None:
        assert _row(store, job.run_id) == ("failed", job.error)
    nxt = _submit(r, lambda ctx: {"ok": 1}, "next")
    assert nxt.wait(10) and nxt.status == "done", nxt.error
    assert _row(store, nxt.run_id)[0] == "done"


# -- whatever a job raises ------------------------------------------------------------------


class _Custom(BaseException):
    pass


class _HostileStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (SystemExit(3), "SystemExit: 3"),
        (SystemExit(), "SystemExit"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (GeneratorExit("closed"), "GeneratorExit: closed"),
        (_Custom("custom\nsecond line"), "_Custom: custom"),
        (_HostileStrError(), "_HostileStrError"),
        (ValueError(""), "ValueError"),
    ],
    ids=["exit3", "exit", "keyboard", "generator", "custom-base", "hostile-str", "empty"],
)
def test_any_exception_fails_the_job_and_the_queue_moves_on(
    runner: JobRunner, store: RunStore, exc: BaseException, expected: str
) -> None:
    def fn(ctx: JobContext) -> None:
        ctx.log(step=0, loss=1.0)
        raise exc

    job = _submit(runner, fn, "raises")
    _ends_and_queue_moves_on(runner, store, job)
    assert job.error == expected
    assert job.traceback and type(exc).__name__ in job.traceback
    assert store.get_run(job.run_id).curve == [{"step": 0, "loss": 1.0}]  # partial curve kept


def test_sys_exit_does_not_kill_the_worker_even_without_a_store() -> None:
    r = JobRunner(max_workers=1, max_queue=4, torch_threads=1)
    try:
        jobs = [r.submit(lambda ctx, i=i: sys.exit(i), name=f"x{i}") for i in range(3)]
        last = r.submit(lambda ctx: "ok", name="ok")
        assert all(j.wait(10) for j in [*jobs, last])
        assert [j.status for j in jobs] == ["failed"] * 3
        assert [j.error for j in jobs] == ["SystemExit: 0", "SystemExit: 1", "SystemExit: 2"]
        assert (last.status, last.result) == ("done", "ok")
    finally:
        r.shutdown(timeout=5)


# -- failures before the job starts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_workers": 0}, "max_workers must be"),
        ({"max_workers": -2}, "max_workers must be"),
        ({"max_workers": 1.5}, "max_workers must be an integer"),
        ({"max_workers": True}, "max_workers must be an integer"),
        ({"max_workers": 10_000}, "max_workers must be"),
        ({"max_queue": -1}, "max_queue must be"),
        ({"max_queue": "many"}, "max_queue must be an integer"),
        ({"torch_threads": 0}, "torch_threads must be"),
        ({"torch_threads": -1}, "torch_threads must be"),
        ({"torch_threads": "abc"}, "torch_threads must be an integer"),
        ({"keep_finished": -1}, "keep_finished must be"),
    ],
)
def test_bad_runner_settings_are_refused_up_front(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError, match=named) as err:
        JobRunner(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PRUNING_LAB_JOB_THREADS", "0"),
        ("PRUNING_LAB_JOB_THREADS", "abc"),
        ("PRUNING_LAB_JOB_THREADS", "-4"),
        ("PRUNING_LAB_JOB_THREADS", "1.5"),
        ("PRUNING_LAB_MAX_JOBS", "0"),
        ("PRUNING_LAB_MAX_JOBS", "nan"),
        ("PRUNING_LAB_MAX_QUEUE", "-1"),
        ("PRUNING_LAB_MAX_QUEUE", "lots"),
    ],
)
def test_bad_environment_settings_are_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(UserError, match=f"environment variable {var} must be") as err:
        JobRunner()
    assert repr(value) in str(err.value) and "\n" not in str(err.value)


def test_good_environment_settings_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNING_LAB_JOB_THREADS", " 2 ")
    monkeypatch.setenv("PRUNING_LAB_MAX_QUEUE", "0")
    r = JobRunner(max_workers=1)
    assert (r.torch_threads, r.max_queue) == (2, 0)
    assert JobRunner(torch_threads=3).torch_threads == 3  # an explicit value wins


@pytest.mark.parametrize("threads", [0, -1, "abc", None])
def test_a_bad_thread_setting_at_start_fails_the_job(
    runner: JobRunner, store: RunStore, threads: Any
) -> None:
    started = threading.Event()
    runner.torch_threads = threads  # changed after the runner checked it
    job = _submit(runner, lambda ctx: started.set(), "threads")
    assert job.wait(10)
    runner.torch_threads = 1
    _ends_and_queue_moves_on(runner, store, job)
    assert job.error.startswith("cannot start: torch_threads must be")
    assert not started.is_set()  # the function never ran


def test_torch_refusing_the_thread_count_fails_the_job(
    runner: JobRunner, store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(n: int) -> None:
        raise RuntimeError("set_num_threads: not now")

    monkeypatch.setattr(jobs_mod, "_set_torch_threads", refuse)
    job = _submit(runner, lambda ctx: 1, "threads")
    assert job.wait(10)
    monkeypatch.undo()
    _ends_and_queue_moves_on(runner, store, job)
    assert job.error == "cannot start: RuntimeError: set_num_threads: not now"


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        UserError("run store x: attempt to write a readonly database"),
        SystemExit(4),
    ],
)
def test_a_run_that_cannot_be_created_fails_the_job(
    runner: JobRunner, store: RunStore, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    real = store.create_run
    calls = [0]

    def create_once_broken(*a: Any, **kw: Any) -> int:
        calls[0] += 1
        if calls[0] == 1:
            raise exc
        return real(*a, **kw)

    monkeypatch.setattr(store, "create_run", create_once_broken)
    ran = threading.Event()
    job = _submit(runner, lambda ctx: ran.set(), "norun")
    _ends_and_queue_moves_on(runner, store, job)
    assert job.error.startswith("cannot record the run: ")
    assert job.run_id is None and not ran.is_set()


# -- results that cannot be recorded --------------------------------------------------------


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("point", "key"),
    [
        ({"loss": [0.5, 0.4]}, "loss"),
        ({"step": "abc"}, "step"),
        ({"step": float("inf")}, "step"),
        ({"accuracy": object()}, "accuracy"),
        ({"lr": {"a": 1}}, "lr"),
        ({"note": _circular()}, "note"),
    ],
    ids=["list", "step-text", "step-inf", "object", "dict", "circular-extra"],
)
def test_a_bad_curve_point_fails_the_job_and_keeps_the_good_ones(
    runner: JobRunner, store: RunStore, point: dict[str, Any], key: str
) -> None:
    def fn(ctx: JobContext) -> dict[str, float]:
        ctx.log(step=0, loss=1.0)
        ctx.log(**{"step": 1, **point})
        ctx.log(step=2, loss=0.1)  # never reached
        return {"acc": 0.9}

    job = _submit(runner, fn, "badpoint")
    _ends_and_queue_moves_on(runner, store, job)
    assert key in job.error and "curve point" in job.error
    assert store.get_run(job.run_id).curve == [{"step": 0, "loss": 1.0}]
    assert job.curve == [{"step": 0, "loss": 1.0}]  # memory and store agree


def test_a_tensor_with_several_values_is_not_a_curve_point(
    runner: JobRunner, store: RunStore
) -> None:
    import torch

    def fn(ctx: JobContext) -> None:
        ctx.log(step=0, loss=torch.tensor(0.5))  # one value: fine
        ctx.log(step=1, loss=torch.tensor([0.5, 0.4]))

    job = _submit(runner, fn, "tensor")
    _ends_and_queue_moves_on(runner, store, job)
    assert "curve point loss=" in job.error
    assert store.get_run(job.run_id).curve == [{"step": 0, "loss": 0.5}]


class _BadToDict:
    def to_dict(self) -> dict[str, Any]:
        raise RuntimeError("cannot convert")


class _BadMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("result", "reported", "note"),
    [
        ({("a", "b"): 1, "acc": 0.9}, {}, "cannot be stored"),
        ({"loop": _circular(), "acc": 0.9}, {}, "metrics loop cannot be stored"),
        ({"obj": _BadToDict(), "acc": 0.9}, {}, "metrics obj cannot be stored"),
        ({"acc": 0.9}, {"loop": _circular()}, "metrics loop cannot be stored"),
        (_BadMapping(), {"acc": 0.9}, "its result could not be read"),
    ],
    ids=["tuple-key", "circular", "to_dict-raises", "reported-circular", "bad-mapping"],
)
def test_unencodable_metrics_fail_the_job_and_close_the_row(
    runner: JobRunner,
    store: RunStore,
    result: Any,
    reported: dict[str, Any],
    note: str,
) -> None:
    def fn(ctx: JobContext) -> Any:
        ctx.report(0.5, "half", **reported)
        return result

    job = _submit(runner, fn, "metrics")
    _ends_and_queue_moves_on(runner, store, job)
    assert job.error.startswith("finished, but ") and note in job.error
    assert store.get_run(job.run_id).metrics.get("acc") == 0.9  # what could be kept is kept


def test_a_run_deleted_while_running_fails_the_job(runner: JobRunner, store: RunStore) -> None:
    def fn(ctx: JobContext) -> dict[str, int]:
        assert ctx.run_id is not None
        store.delete_run(ctx.run_id)
        return {"x": 1}

    job = _submit(runner, fn, "deleted")
    assert job.wait(10)
    assert job.status == "failed" and f"no run {job.run_id} in the store" in (job.error or "")
    assert job.run_id not in _statuses(store)
    nxt = _submit(runner, lambda ctx: 1, "next")
    assert nxt.wait(10) and nxt.status == "done"


def test_a_status_update_that_fails_once_still_closes_the_row(
    runner: JobRunner, store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.update_status
    calls: list[dict[str, Any]] = []

    def flaky(run: int, status: str, **kw: Any) -> None:
        calls.append(kw)
        if len(calls) == 1:
            raise UserError("run store x: disk I/O error")
        real(run, status, **kw)

    monkeypatch.setattr(store, "update_status", flaky)
    job = _submit(runner, lambda ctx: {"acc": 0.9}, "flaky")
    assert job.wait(10)
    assert job.status == "failed"
    assert (
        job.error == "finished, but its result could not be recorded (run store x: disk I/O error)"
    )
    assert _row(store, job.run_id) == ("failed", job.error)
    assert "metrics" not in calls[1]  # the second try writes the status and reason alone


def test_a_locked_store_fails_the_job_and_the_row_is_closed_later(
    runner: JobRunner, store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.1)
    release = threading.Event()
    job = _submit(runner, lambda ctx: release.wait(5) and {"acc": 1.0}, "locked")
    end = time.monotonic() + 5
    while job.run_id is None and time.monotonic() < end:
        time.sleep(0.005)
    con = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # another writer holds the store
        release.set()
        assert job.wait(10)
        assert job.status == "failed" and "database is locked" in (job.error or "")
        assert _row(store, job.run_id)[0] == "running"  # nothing could be written yet
    finally:
        con.execute("ROLLBACK")
        con.close()
    nxt = _submit(runner, lambda ctx: 1, "next")
    assert nxt.wait(10) and nxt.status == "done"
    assert _row(store, job.run_id) == ("failed", job.error)  # closed before the next job


def test_rows_agree_with_jobs_after_every_path(runner: JobRunner, store: RunStore) -> None:
    release = threading.Event()

    def cancelled(ctx: JobContext) -> None:
        while not ctx.cancelled:
            time.sleep(0.005)

    fns = {
        "done": lambda ctx: {"acc": 1.0},
        "user": lambda ctx: (_ for _ in ()).throw(UserError("ratio must be in [0, 1)")),
        "exit": lambda ctx: sys.exit("bye"),
        "point": lambda ctx: ctx.log(step=[1]),
        "metrics": lambda ctx: {(1, 2): 3},
        "cancelled": cancelled,
        "queued": lambda ctx: release.wait(5),
    }
    jobs = {name: _submit(runner, fn, name) for name, fn in fns.items()}
    end = time.monotonic() + 10
    while jobs["cancelled"].status != "running" and time.monotonic() < end:
        time.sleep(0.005)
    jobs["cancelled"].cancel()
    jobs["queued"].cancel()  # never starts: never recorded
    assert all(j.wait(10) for j in jobs.values())
    rows = _statuses(store)
    assert {n: j.status for n, j in jobs.items()} == {
        "done": "done", "user": "failed", "exit": "failed", "point": "failed",
        "metrics": "failed", "cancelled": "cancelled", "queued": "cancelled",
    }  # fmt: skip
    for name, job in jobs.items():
        if name == "queued":
            assert job.run_id is None
        else:
            assert rows[job.run_id] == job.status, name
    assert "running" not in rows.values()


# -- the store: rows of processes that are gone ---------------------------------------------


def _insert_running(store: RunStore, owner: str | None, name: str = "r") -> int:
    rid = store.create_run("finetune", name=name)
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET owner = ? WHERE id = ?", (owner, rid))
    return rid


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_rows_of_gone_processes_are_marked_on_open(store: RunStore) -> None:
    host = socket.gethostname()
    mine = store.create_run("finetune", name="mine")
    other_host = _insert_running(store, "another-host:1:abc.1", "other host")
    dead = _insert_running(store, f"{host}:{_dead_pid()}:x.1", "dead pid")
    reused = _insert_running(store, f"{host}:1:not-init.0", "pid reused by init")
    my_pid_earlier = _insert_running(store, f"{host}:{os.getpid()}:old-boot.1", "old me")
    no_owner = _insert_running(store, None, "version 1")
    garbled = _insert_running(store, "garbled", "garbled")
    finished = store.create_run("finetune", name="done")
    store.update_status(finished, "done")
    _insert_running(store, None)  # overwritten just below: only running rows are marked
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET status = 'done' WHERE name = 'r'")

    again = RunStore(store.root)
    marked = {dead, reused, my_pid_earlier, no_owner, garbled}
    assert sorted(again.interrupted) == sorted(marked)
    rows = _statuses(store)
    for rid in marked:
        assert _row(store, rid) == ("failed", INTERRUPTED_ERROR)
    assert rows[mine] == rows[other_host] == "running"
    assert rows[finished] == "done"
    assert RunStore(store.root).interrupted == []  # marking is done once
    # A live writer that was wrongly thought gone still has the last word.
    store.update_status(no_owner, "done")
    assert _row(store, no_owner)[0] == "done"


def test_a_run_of_a_killed_process_is_marked_on_open(store: RunStore) -> None:
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pruning_core.store import RunStore\n"
        "s = RunStore(sys.argv[1])\n"
        "print(s.create_run('finetune', name='killed'), flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        rid = int(p.stdout.readline())
        assert RunStore(store.root).interrupted == []  # alive: left running
        assert _row(store, rid)[0] == "running"
        os.kill(p.pid, signal.SIGKILL)
        # Not reaped yet: a zombie counts as gone too.
        end = time.monotonic() + 5
        while time.monotonic() < end:
            stat = Path(f"/proc/{p.pid}/stat").read_text()
            if stat[stat.rfind(")") + 2] == "Z":
                break
            time.sleep(0.01)
        assert RunStore(store.root).interrupted == [rid]
        assert _row(store, rid) == ("failed", INTERRUPTED_ERROR)
    finally:
        p.kill()
        p.wait()


def test_open_cleans_temporaries_of_an_interrupted_run(store: RunStore) -> None:
    rid = _insert_running(store, None)
    left = store.run_dir(rid) / f".model.pt.pl-tmp-{_dead_pid()}-abc"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half")
    keep = store.run_dir(rid) / "rows.csv"
    keep.write_text("a\n")
    RunStore(store.root)
    assert not left.exists() and keep.read_text() == "a\n"


def test_owner_names_this_process() -> None:
    host, pid, marker = process_owner().rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert marker  # /proc is there on Linux: the start marker tells pid reuse apart


# -- the store: migration from version 1 ----------------------------------------------------

_V1 = """
CREATE TABLE runs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    created  TEXT NOT NULL,
    updated  TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('prune','sweep','sensitivity','train','finetune')),
    status   TEXT NOT NULL CHECK (status IN ('running','done','cancelled','failed')),
    name     TEXT NOT NULL DEFAULT '',
    model    TEXT,
    dataset  TEXT,
    config   TEXT NOT NULL DEFAULT '{}',
    metrics  TEXT NOT NULL DEFAULT '{}',
    error    TEXT
);
CREATE TABLE curves (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    step     INTEGER, epoch REAL, loss REAL, accuracy REAL, sparsity REAL, lr REAL,
    seconds  REAL, extra TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE artifacts (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name     TEXT NOT NULL, path TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX runs_kind ON runs(kind, id);
INSERT INTO runs VALUES (1, 't0', 't0', 'prune', 'done', 'a', 'm', 'd', '{"ratio": 0.5}',
                         '{"accuracy": 0.9}', NULL);
INSERT INTO runs VALUES (2, 't1', 't1', 'finetune', 'running', 'b', 'm', 'd', '{}', '{}', NULL);
INSERT INTO runs VALUES (3, 't2', 't2', 'sweep', 'failed', 'c', NULL, NULL, '{}', '{}', 'boom');
INSERT INTO curves VALUES (2, 0, 1, 0.0, 2.5, NULL, NULL, NULL, NULL, '{"grad": 1}');
INSERT INTO artifacts VALUES (1, 'csv', '/x/rows.csv', 't0');
PRAGMA user_version = 1;
"""


def test_migration_from_version_1_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    with sqlite3.connect(db) as con:
        con.executescript(_V1)
    s = RunStore(tmp_path)
    assert SCHEMA_VERSION == 2
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    assert "owner" in cols
    a = s.get_run(1)
    assert (a.status, a.config, a.metrics, a.artifacts) == (
        "done", {"ratio": 0.5}, {"accuracy": 0.9}, {"csv": "/x/rows.csv"},
    )  # fmt: skip
    b = s.get_run(2)  # running under version 1: no process of this Pruning Lab owns it
    assert (b.status, b.error) == ("failed", INTERRUPTED_ERROR)
    assert b.curve == [{"step": 1, "epoch": 0.0, "loss": 2.5, "grad": 1}]
    assert (s.get_run(3).status, s.get_run(3).error) == ("failed", "boom")
    assert s.interrupted == [2]
    new = s.create_run("train")
    with sqlite3.connect(db) as con:
        owner = con.execute("SELECT owner FROM runs WHERE id = ?", (new,)).fetchone()[0]
    assert owner == process_owner() and new == 4
    assert RunStore(tmp_path).get_run(new).status == "running"  # this process is alive


# -- the store: homes that cannot be used ---------------------------------------------------


def _no_new_files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("where", ["file", "under-file", "proc", "proc-self"])
def test_an_unwritable_home_is_a_one_line_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "afile").write_text("mine")
    home = {
        "file": tmp_path / "afile",
        "under-file": tmp_path / "afile" / "lab",
        "proc": Path("/proc/pruning-lab-x"),
        "proc-self": Path("/proc/self/pruning-lab"),
    }[where]
    before = _no_new_files(tmp_path)
    monkeypatch.setenv("PRUNING_LAB_HOME", str(home))
    with pytest.raises(UserError, match="PRUNING_LAB_HOME") as err:
        RunStore()
    assert str(home) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="run store folder"):
        RunStore(home)
    assert _no_new_files(tmp_path) == before
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(
    "content",
    [b"\x00garbage" * 512, b"SQLite format 3\x00" + b"\xff" * 4000, b"not a database at all\n"],
    ids=["random", "bad-header", "text"],
)
def test_a_corrupt_database_is_a_one_line_user_error(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "runs.sqlite3"
    db.write_bytes(content)
    with pytest.raises(UserError, match="cannot open the run store") as err:
        RunStore(tmp_path)
    assert str(db) in str(err.value) and "\n" not in str(err.value)
    assert db.read_bytes() == content  # nothing of the user's is changed
    assert [p.name for p in tmp_path.iterdir()] == ["runs.sqlite3"]


def test_a_folder_where_the_database_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite3").mkdir()
    with pytest.raises(UserError, match="is not a file"):
        RunStore(tmp_path)


def test_a_runner_over_an_unwritable_home_is_refused_before_any_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "afile"))
    monkeypatch.setattr(jobs_mod, "_RUNNER", None)
    with pytest.raises(UserError, match="PRUNING_LAB_HOME"):
        jobs_mod.get_runner()
    assert jobs_mod._RUNNER is None
