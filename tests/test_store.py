"""The run store: transactions, concurrency, partial curves, artifacts, listing and comparing."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest

from pruning_core.errors import UserError
from pruning_core.store import SCHEMA_VERSION, RunStore, data_home


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "home")


def test_data_home_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "lab"))
    assert data_home() == tmp_path / "lab"
    assert RunStore().root == tmp_path / "lab"
    assert (tmp_path / "lab" / "runs.sqlite3").exists()
    monkeypatch.delenv("PRUNING_LAB_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "pruning-lab"


def test_roundtrip_and_status(store: RunStore) -> None:
    rid = store.create_run(
        "finetune", model="digits-cnn", dataset="digits", config={"lr": 0.01, "epochs": 2}
    )
    store.add_curve_points(rid, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "grad": 0.3}])
    store.update_status(rid, "done", metrics={"accuracy": 0.97, "nan_metric": math.nan})
    run = store.get_run(rid)
    assert (run.kind, run.status, run.model, run.dataset) == (
        "finetune",
        "done",
        "digits-cnn",
        "digits",
    )
    assert run.config == {"lr": 0.01, "epochs": 2}
    assert run.metrics["accuracy"] == 0.97 and run.metrics["nan_metric"] is None
    assert run.curve == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "grad": 0.3}]
    # metrics merge rather than replace
    store.update_status(rid, "done", metrics={"seconds": 3.0})
    assert store.get_run(rid).metrics["accuracy"] == 0.97
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failure_mid_write_leaves_no_partial_run(store: RunStore) -> None:
    good = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(5)]
    bad = [*good, {"step": "not a number", "loss": 0.1}]
    with pytest.raises(ValueError):
        store.create_run("prune", model="m", curve=bad)
    assert store.list_runs().empty
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM curves").fetchone()[0] == 0
    # and appending a batch with a bad point keeps none of that batch
    rid = store.create_run("prune", model="m", curve=good)
    with pytest.raises(ValueError):
        store.add_curve_points(rid, bad)
    assert len(store.get_run(rid).curve) == 5


def test_cancelled_run_keeps_partial_curve(store: RunStore) -> None:
    rid = store.create_run("finetune", model="m")
    store.add_curve_points(rid, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8}])
    store.update_status(rid, "cancelled", error="cancelled by the user at step 2")
    run = store.get_run(rid)
    assert run.status == "cancelled"
    assert run.error == "cancelled by the user at step 2"
    assert [p["step"] for p in run.curve] == [1, 2]


def test_bad_input_is_a_user_error(store: RunStore) -> None:
    with pytest.raises(UserError, match="kind"):
        store.create_run("dance")
    rid = store.create_run("prune")
    with pytest.raises(UserError, match="status"):
        store.update_status(rid, "exploded")
    with pytest.raises(UserError, match="no run 999"):
        store.get_run(999)
    with pytest.raises(UserError, match="no run 999"):
        store.update_status(999, "done")
    with pytest.raises(UserError, match="plain file name"):
        store.write_artifact(rid, "../escape.txt", "x")


def _write_runs(root: str, tag: str, n: int) -> None:
    s = RunStore(root)
    for i in range(n):
        rid = s.create_run("sweep", name=f"{tag}-{i}")
        s.add_curve_points(rid, [{"step": k, "loss": float(k)} for k in range(10)])
        s.update_status(rid, "done", metrics={"i": i})


def test_concurrent_writers_threads(store: RunStore) -> None:
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            _write_runs(str(store.root), tag, 15)
        except BaseException as e:  # collected: an assert in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    runs = store.list_runs()
    assert len(runs) == 60
    assert set(runs["status"]) == {"done"}
    assert (runs["curve_points"] == 10).all()


def test_concurrent_writers_processes(store: RunStore) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_runs, args=(str(store.root), f"p{k}", 5)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(store.list_runs(kind="sweep")) == 10


def test_artifacts_atomic_and_deleted_with_run(store: RunStore) -> None:
    rid = store.create_run("prune")
    path = store.write_artifact(rid, "rows.csv", "a,b\n1,2\n")
    assert path == store.run_dir(rid) / "rows.csv" and path.read_text() == "a,b\n1,2\n"

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.write_artifact(rid, "broken.bin", broken)
    assert not (store.run_dir(rid) / "broken.bin").exists()
    assert [p.name for p in store.run_dir(rid).iterdir()] == ["rows.csv"]

    with store.artifact_dir(rid, "model") as tmp:
        (tmp / "metrics.json").write_text("{}")
    run = store.get_run(rid)
    assert set(run.artifacts) == {"rows.csv", "model"}
    assert Path(run.artifacts["model"]).joinpath("metrics.json").exists()

    store.delete_run(rid)
    assert not store.run_dir(rid).exists()
    with pytest.raises(UserError):
        store.get_run(rid)
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 0


def test_list_and_compare(store: RunStore) -> None:
    a = store.create_run("prune", model="m", config={"method": "magnitude", "ratio": 0.5})
    store.update_status(a, "done", metrics={"accuracy": 0.9, "history": [1, 2]})
    b = store.create_run("finetune", model="m", config={"method": "random", "ratio": 0.9})
    store.add_curve_points(b, [{"step": 1, "accuracy": 0.5}, {"step": 2, "accuracy": 0.7}])
    store.update_status(b, "failed", error="boom")

    runs = store.list_runs()
    assert list(runs["id"]) == [b, a]  # newest first
    assert list(store.list_runs(kind="prune")["id"]) == [a]
    assert list(store.list_runs(limit=1)["id"]) == [b]
    assert list(store.list_runs(status="failed")["id"]) == [b]
    assert runs.set_index("id").loc[a, "accuracy"] == 0.9

    cmp = store.compare_runs([a, b])
    assert list(cmp["id"]) == [a, b]
    assert list(cmp["config.method"]) == ["magnitude", "random"]
    assert cmp.loc[1, "best_accuracy"] == 0.7 and cmp.loc[1, "curve_points"] == 2
    assert math.isnan(cmp.loc[0, "best_accuracy"])
    assert "metrics.history" not in cmp.columns  # lists are curves, not comparable scalars
    assert cmp.loc[1, "error"] == "boom"


def test_newer_schema_refused(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "x.sqlite3")
    with sqlite3.connect(s.db_path) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="newer"):
        RunStore(tmp_path / "x.sqlite3")
