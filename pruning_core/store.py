"""The run store: every prune, sweep, sensitivity analysis and fine-tune, kept in SQLite.

DESIGN puts the run store under `experiments`; it lives in this small module of its own so that
the job runner, the CLI and the app can record runs without importing the experiment code.

Layout of the data directory (`PRUNING_LAB_HOME`, default `$XDG_DATA_HOME/pruning-lab` or
`~/.local/share/pruning-lab`)::

    runs.sqlite3         tables runs, curves, artifacts (schema version in PRAGMA user_version)
    runs/<id>/...        artifact files of run <id>, each written atomically

Every multi-row write is one transaction, so a failure half-way leaves nothing behind. The
database runs in WAL mode with a busy timeout, and each operation opens its own short-lived
connection, so several threads and processes (a classroom on one server) can share one store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pruning_core.errors import UserError
from pruning_core.fsio import atomic_path, output_dir

__all__ = [
    "CURVE_COLUMNS",
    "KINDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunRecord",
    "RunStore",
    "data_home",
]

SCHEMA_VERSION = 1
KINDS = ("prune", "sweep", "sensitivity", "train", "finetune")
STATUSES = ("running", "done", "cancelled", "failed")
# Curve columns with their own SQL column; any other key of a point goes into `extra` (JSON).
CURVE_COLUMNS = ("step", "epoch", "loss", "accuracy", "sparsity", "lr", "seconds")
DB_FILE = "runs.sqlite3"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS runs (
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
    CREATE TABLE IF NOT EXISTS curves (
        run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        step     INTEGER,
        epoch    REAL,
        loss     REAL,
        accuracy REAL,
        sparsity REAL,
        lr       REAL,
        seconds  REAL,
        extra    TEXT,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE IF NOT EXISTS artifacts (
        run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name     TEXT NOT NULL,
        path     TEXT NOT NULL,
        created  TEXT NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, id);
    """,
]


def data_home() -> Path:
    """The per-user data directory: `PRUNING_LAB_HOME`, else XDG data home / pruning-lab."""
    env = os.environ.get("PRUNING_LAB_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "pruning-lab"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _default(o: Any) -> Any:
    # Lenient: a metric the store cannot encode must not lose the whole run.
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # torch tensors, numpy arrays and scalars
        return o.tolist()
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    return str(o)


def _finite(o: Any) -> Any:
    # Strict JSON has no NaN/Infinity; store them as null so any reader can parse the row.
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def _dumps(o: Any) -> str:
    # Round-trip through the lenient encoder first so nested objects become plain JSON values.
    plain = json.loads(json.dumps(o, default=_default))
    return json.dumps(_finite(plain), allow_nan=False)


@dataclass
class RunRecord:
    """One run as stored.

    Attributes:
        id: Run id (also the artifact folder name `runs/<id>`).
        created, updated: ISO timestamps (UTC).
        kind: prune, sweep, sensitivity, train or finetune.
        status: running, done, cancelled or failed.
        name: A label for lists.
        model, dataset: What the run used.
        config: The settings (JSON object).
        metrics: The results (JSON object).
        error: What went wrong (failed) or why it stopped (cancelled).
        curve: Curve points in the order they were added.
        artifacts: Artifact name -> path.
    """

    id: int
    created: str
    updated: str
    kind: str
    status: str
    name: str
    model: str | None
    dataset: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    curve: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def curve_frame(self) -> pd.DataFrame:
        """The curve as a DataFrame (one row per point)."""
        return pd.DataFrame(self.curve)


class RunStore:
    """Runs, their curves and artifacts in one SQLite database.

    Args:
        path: The store directory (default `data_home()`), or the database file itself
            (`*.sqlite3`, `*.sqlite`, `*.db`; artifacts then go beside it).

    Raises:
        UserError: The directory cannot be created, or the database was written by a newer
            version of Pruning Lab.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        p = Path(path).expanduser() if path is not None else data_home()
        if p.suffix in (".sqlite3", ".sqlite", ".db"):
            self.root, self.db_path = p.parent, p
        else:
            self.root, self.db_path = p, p / DB_FILE
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run store directory {self.root}: {e}") from None
        self._init_schema()

    # -- connections and transactions -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: safe across threads and processes.
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA foreign_keys = ON")
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all or nothing."""
        con = self._connect()
        try:
            # IMMEDIATE takes the write lock up front, so two writers never deadlock on upgrade.
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def _init_schema(self) -> None:
        con = self._connect()
        try:
            # A file system without shared memory refuses WAL; the rollback journal still works.
            with suppress(sqlite3.OperationalError):
                con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise UserError(
                        f"run store {self.db_path} has schema version {version}, newer than this "
                        f"Pruning Lab understands ({SCHEMA_VERSION}); upgrade Pruning Lab"
                    )
                for v in range(version, SCHEMA_VERSION):
                    for stmt in _SCHEMA[v].split(";"):
                        if stmt.strip():
                            con.execute(stmt)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise UserError(f"cannot open run store {self.db_path}: {e}") from None
        finally:
            con.close()

    # -- writing ----------------------------------------------------------------------------

    def create_run(
        self,
        kind: str,
        *,
        model: str | None = None,
        dataset: str | None = None,
        config: Mapping[str, Any] | None = None,
        name: str = "",
        status: str = "running",
        metrics: Mapping[str, Any] | None = None,
        curve: Iterable[Mapping[str, Any]] = (),
    ) -> int:
        """Add a run (and optionally its whole curve) in one transaction; returns its id.

        Args:
            kind: prune, sweep, sensitivity, train or finetune.
            model, dataset: What the run uses.
            config: Its settings (anything JSON-able; objects with `to_dict` are converted).
            name: A label for lists.
            status: Usually `running`; a finished run can be recorded at once as `done`.
            metrics: Results known so far.
            curve: Curve points to record with it (a bad point aborts the whole run).
        """
        _check_kind(kind)
        _check_status(status)
        cfg, met = _dumps(dict(config or {})), _dumps(dict(metrics or {}))
        now = _now()
        with self._tx() as con:
            cur = con.execute(
                "INSERT INTO runs (created, updated, kind, status, name, model, dataset, config,"
                " metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, now, kind, status, name, model, dataset, cfg, met),
            )
            run_id = int(cur.lastrowid or 0)
            self._insert_points(con, run_id, curve)
        return run_id

    def update_status(
        self,
        run: int,
        status: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Set a run's status; `metrics` are merged into those stored, `error` replaces.

        Raises:
            UserError: Unknown run or status.
        """
        _check_status(status)
        with self._tx() as con:
            row = con.execute("SELECT metrics FROM runs WHERE id = ?", (run,)).fetchone()
            if row is None:
                raise UserError(f"no run {run} in the store")
            merged = json.loads(row["metrics"])
            merged.update(json.loads(_dumps(dict(metrics or {}))))
            con.execute(
                "UPDATE runs SET status = ?, metrics = ?, error = COALESCE(?, error), updated = ?"
                " WHERE id = ?",
                (status, _dumps(merged), error, _now(), run),
            )

    def add_curve_points(self, run: int, points: Iterable[Mapping[str, Any]]) -> int:
        """Append curve points in one transaction (all or none); returns how many.

        Known keys (`CURVE_COLUMNS`) get their own column, the others are kept as JSON.
        """
        with self._tx() as con:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", (run,)).fetchone() is None:
                raise UserError(f"no run {run} in the store")
            n = self._insert_points(con, run, points)
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (_now(), run))
        return n

    @staticmethod
    def _insert_points(
        con: sqlite3.Connection, run: int, points: Iterable[Mapping[str, Any]]
    ) -> int:
        seq = con.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM curves WHERE run_id = ?", (run,)
        ).fetchone()[0]
        rows = []
        for i, p in enumerate(points):
            vals: list[Any] = []
            for c in CURVE_COLUMNS:
                v = p.get(c)
                if v is not None:
                    v = int(v) if c == "step" else float(v)  # a non-number fails the batch
                    if isinstance(v, float) and not math.isfinite(v):
                        v = None
                vals.append(v)
            extra = {k: v for k, v in p.items() if k not in CURVE_COLUMNS}
            rows.append((run, seq + i, *vals, _dumps(extra) if extra else None))
        con.executemany(
            "INSERT INTO curves (run_id, seq, step, epoch, loss, accuracy, sparsity, lr, seconds,"
            " extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return len(rows)

    def run_dir(self, run: int) -> Path:
        """The folder of run `run`'s artifacts (not created)."""
        return self.root / "runs" / str(int(run))

    def add_artifact(self, run: int, name: str, path: str | Path) -> None:
        """Record an artifact path (a file or folder already written) under `name`."""
        with self._tx() as con:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", (run,)).fetchone() is None:
                raise UserError(f"no run {run} in the store")
            con.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, name, path, created)"
                " VALUES (?, ?, ?, ?)",
                (run, name, str(path), _now()),
            )

    def write_artifact(
        self,
        run: int,
        filename: str,
        content: bytes | str | Callable[[Path], None],
        *,
        name: str | None = None,
    ) -> Path:
        """Write a file into `runs/<id>/` atomically and record it.

        Args:
            run: The run.
            filename: File name inside the run folder (no directories).
            content: Bytes, text, or a function that writes the file at the path it is given.
            name: Artifact name (default: the file name).

        Returns:
            The final path.
        """
        target = self.run_dir(run) / _safe_name(filename)
        with atomic_path(target) as tmp:
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            elif isinstance(content, str):
                tmp.write_text(content)
            else:
                content(tmp)
        self.add_artifact(run, name or filename, target)
        return target

    @contextmanager
    def artifact_dir(self, run: int, dirname: str, *, name: str | None = None) -> Iterator[Path]:
        """Build a folder artifact (e.g. a pruned model directory) atomically and record it.

        Yields a temporary directory; on success it is moved to `runs/<id>/<dirname>`.
        """
        target = self.run_dir(run) / _safe_name(dirname)
        with output_dir(target) as tmp:
            yield tmp
        self.add_artifact(run, name or dirname, target)

    def delete_run(self, run: int) -> None:
        """Remove a run, its curve, its artifact records and its `runs/<id>/` folder.

        Raises:
            UserError: Unknown run.
        """
        with self._tx() as con:
            cur = con.execute("DELETE FROM runs WHERE id = ?", (run,))
            if cur.rowcount == 0:
                raise UserError(f"no run {run} in the store")
            # Explicit as well as ON DELETE CASCADE: a database opened without foreign keys
            # (an old sqlite3 shell) must not leave orphans either.
            con.execute("DELETE FROM curves WHERE run_id = ?", (run,))
            con.execute("DELETE FROM artifacts WHERE run_id = ?", (run,))
        shutil.rmtree(self.run_dir(run), ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------

    def get_run(self, run: int) -> RunRecord:
        """One run with its curve and artifacts.

        Raises:
            UserError: Unknown run.
        """
        with self._read() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run,)).fetchone()
            if row is None:
                raise UserError(f"no run {run} in the store")
            points = con.execute(
                "SELECT * FROM curves WHERE run_id = ? ORDER BY seq", (run,)
            ).fetchall()
            arts = con.execute(
                "SELECT name, path FROM artifacts WHERE run_id = ? ORDER BY name", (run,)
            ).fetchall()
        rec = _record(row)
        rec.curve = [_point(p) for p in points]
        rec.artifacts = {a["name"]: a["path"] for a in arts}
        return rec

    def get_curve(self, run: int) -> pd.DataFrame:
        """A run's curve as a DataFrame (empty if it has none)."""
        return self.get_run(run).curve_frame()

    def list_runs(
        self, kind: str | None = None, limit: int | None = None, status: str | None = None
    ) -> pd.DataFrame:
        """Runs, newest first: id, created, updated, kind, status, name, model, dataset, error,
        curve_points, config and metrics (dicts), plus one column per scalar metric."""
        if kind is not None:
            _check_kind(kind)
        if status is not None:
            _check_status(status)
        sql = (
            "SELECT r.*, (SELECT COUNT(*) FROM curves c WHERE c.run_id = r.id) AS curve_points"
            " FROM runs r WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR status = ?)"
            " ORDER BY r.id DESC"
        )
        params: list[Any] = [kind, kind, status, status]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as con:
            rows = con.execute(sql, params).fetchall()
        base = [
            "id", "created", "updated", "kind", "status", "name", "model", "dataset", "error",
            "curve_points", "config", "metrics",
        ]  # fmt: skip
        records = []
        for r in rows:
            rec = _record(r)
            d = {k: getattr(rec, k) for k in base if k != "curve_points"}
            d["curve_points"] = r["curve_points"]
            for k, v in rec.metrics.items():
                if _scalar(v) and k not in base:
                    d[k] = v
            records.append(d)
        return pd.DataFrame(records, columns=None if records else base)

    def compare_runs(self, ids: Iterable[int]) -> pd.DataFrame:
        """Runs side by side, one row each in the order given: the identity columns, every
        scalar setting as `config.KEY`, every scalar result as `metrics.KEY`, and a summary of
        the curve (points, last loss, last and best accuracy)."""
        rows = []
        for i in ids:
            rec = self.get_run(i)
            d: dict[str, Any] = {
                "id": rec.id, "kind": rec.kind, "status": rec.status, "name": rec.name,
                "model": rec.model, "dataset": rec.dataset, "created": rec.created,
            }  # fmt: skip
            d.update({f"config.{k}": v for k, v in _flat(rec.config).items()})
            d.update({f"metrics.{k}": v for k, v in _flat(rec.metrics).items()})
            losses = [p["loss"] for p in rec.curve if p.get("loss") is not None]
            accs = [p["accuracy"] for p in rec.curve if p.get("accuracy") is not None]
            d["curve_points"] = len(rec.curve)
            d["last_loss"] = losses[-1] if losses else math.nan
            d["last_accuracy"] = accs[-1] if accs else math.nan
            d["best_accuracy"] = max(accs) if accs else math.nan
            d["error"] = rec.error
            rows.append(d)
        return pd.DataFrame(rows)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown run kind '{kind}' (choose from {', '.join(KINDS)})")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise UserError(f"unknown run status '{status}' (choose from {', '.join(STATUSES)})")


def _safe_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"artifact name must be a plain file name, got {name!r}")
    return name


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys; lists are left out (they are curves, not settings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif _scalar(v):
            out[f"{prefix}{k}"] = v
    return out


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created=row["created"],
        updated=row["updated"],
        kind=row["kind"],
        status=row["status"],
        name=row["name"],
        model=row["model"],
        dataset=row["dataset"],
        config=json.loads(row["config"]),
        metrics=json.loads(row["metrics"]),
        error=row["error"],
    )


def _point(row: sqlite3.Row) -> dict[str, Any]:
    d: dict[str, Any] = {c: row[c] for c in CURVE_COLUMNS if row[c] is not None}
    if row["extra"]:
        d.update(json.loads(row["extra"]))
    return d
