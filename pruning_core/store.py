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

A `running` row names the process that owns it (`owner`, `OWNER_FORMAT`). When a store opens,
rows left `running` by a process of this host that is gone (killed, crashed, the machine
rebooted) are marked `failed` with the error `INTERRUPTED_ERROR`, so no run stays `running`
forever; rows owned by another host are left alone (their process cannot be checked from here).
A home that cannot be written and a database file that is not one are refused in one line
(`UserError`) before anything is written; nothing of the user's is changed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pruning_core.errors import UserError, first_line
from pruning_core.fsio import (
    atomic_path,
    check_writable_dir,
    clean_stale,
    output_dir,
    to_jsonable,
)

__all__ = [
    "CURVE_COLUMNS",
    "INTERRUPTED_ERROR",
    "KINDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "CurvePointError",
    "RunRecord",
    "RunStore",
    "check_curve_point",
    "data_home",
    "process_owner",
    "split_encodable",
]

SCHEMA_VERSION = 2
KINDS = ("prune", "sweep", "sensitivity", "train", "finetune")
STATUSES = ("running", "done", "cancelled", "failed")
# Curve columns with their own SQL column; any other key of a point goes into `extra` (JSON).
CURVE_COLUMNS = ("step", "epoch", "loss", "accuracy", "sparsity", "lr", "seconds")
DB_FILE = "runs.sqlite3"
BUSY_TIMEOUT_S = 30.0
# The error of a `running` row whose process is gone; its status becomes `failed`. A status of
# its own would need a rebuild of the runs table (SQLite cannot alter a CHECK) and a case in
# every reader; `failed` with this reason is already shown and filtered everywhere.
INTERRUPTED_ERROR = "interrupted: the process running it ended"
# `owner` of a running row: which process on which host writes it (see `process_owner`).
OWNER_FORMAT = "HOST:PID:BOOT.START"

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
    # version 2: the process that owns a running row. Version-1 rows keep NULL: see
    # `RunStore._mark_interrupted` for what that means for a row still `running`.
    """
    ALTER TABLE runs ADD COLUMN owner TEXT
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


def _dumps(o: Any) -> str:
    # Lenient: a metric the store cannot encode becomes its str() and must not lose the whole
    # run; NaN/inf are stored as null so any reader can parse the row.
    return json.dumps(to_jsonable(o, lenient=True), allow_nan=False)


class CurvePointError(UserError, ValueError):
    """A curve point the store cannot keep (a value that is not a number, say).

    A `ValueError` as well, for callers that catch bad values generically.
    """


def _short(v: Any, limit: int = 60) -> str:
    try:
        r = repr(v)
    except Exception:  # a hostile __repr__ must not hide the real message
        r = f"<{type(v).__name__}>"
    r = " ".join(r.split())
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _point_row(p: Any) -> tuple[list[Any], str | None]:
    """The column values and the JSON `extra` of one curve point, or `CurvePointError`."""
    if not isinstance(p, Mapping):
        raise CurvePointError(
            f"a curve point must be a mapping of names to values, got {_short(p)}"
        )
    vals: list[Any] = []
    for c in CURVE_COLUMNS:
        v = p.get(c)
        if v is not None:
            try:
                v = int(v) if c == "step" else float(v)
            except (TypeError, ValueError, OverflowError, RuntimeError):
                # RuntimeError: torch refuses float() of a tensor with several elements.
                kind = "an integer" if c == "step" else "a number"
                raise CurvePointError(f"curve point {c}={_short(p.get(c))} is not {kind}") from None
            if isinstance(v, float) and not math.isfinite(v):
                v = None
        vals.append(v)
    extra = {k: v for k, v in p.items() if k not in CURVE_COLUMNS}
    if not extra:
        return vals, None
    try:
        return vals, _dumps(extra)
    except (TypeError, ValueError, RecursionError) as e:
        raise CurvePointError(
            f"curve point {', '.join(map(str, extra))} cannot be stored: {first_line(e)}"
        ) from None


def check_curve_point(point: Mapping[str, Any]) -> None:
    """Refuse, before it is logged, a curve point that the store could not keep.

    Known keys (`CURVE_COLUMNS`) must be numbers (`step` an integer; NaN is kept as null);
    other keys must be JSON-encodable (leniently: tensors, paths and sets are converted).

    Raises:
        CurvePointError: Which key holds what, in one line.
    """
    _point_row(point)


# -- which process owns a running row -------------------------------------------------------

_OWNER_CACHE: dict[int, str] = {}


def _boot_id() -> str:
    # Process start times count from boot: the boot id tells two boots apart.
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _start_marker(pid: int) -> str | None:
    """`BOOT.START` of a live process (its start time in clock ticks since boot), "" where
    /proc does not say, None when there is no such live process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else ""
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return ""
    if fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id()}.{fields[19]}"


def process_owner() -> str:
    """This process as the owner of a running row: `HOST:PID:BOOT.START`.

    The start marker (boot id and start time) tells this process from a later one that reuses
    its pid; it is empty where /proc is not available, and only the pid is checked then.
    """
    pid = os.getpid()
    owner = _OWNER_CACHE.get(pid)  # keyed by pid: a forked child is a new owner
    if owner is None:
        owner = f"{socket.gethostname()}:{pid}:{_start_marker(pid) or ''}"
        _OWNER_CACHE[pid] = owner
    return owner


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


def _owner_alive(owner: str | None) -> bool:
    """False only when `owner` is certainly gone: a version-1 row (no owner), an owner that is
    not in `OWNER_FORMAT`, or a process of this host that no longer runs."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, marker = parts[0], int(parts[1]), parts[2]
    if host != socket.gethostname():
        return True  # another machine sharing the home: its processes cannot be checked here
    if pid == os.getpid():
        return owner == process_owner()
    now = _start_marker(pid)
    if now is None:
        return False
    if now and marker:
        return now == marker
    return _pid_exists(pid)


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

    Attributes:
        root: The store directory.
        db_path: The database file.
        interrupted: Ids of the runs this open found `running` with their process gone and
            marked `failed` (`INTERRUPTED_ERROR`).

    Raises:
        UserError: The directory cannot be created or written, the database file is not a
            database (or is damaged, locked for too long, read-only), or it was written by a
            newer version of Pruning Lab. Nothing is written then.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        p = Path(path).expanduser() if path is not None else data_home()
        # PRUNING_LAB_HOME always names a folder; only a path given in code may name the file.
        if path is not None and p.suffix in (".sqlite3", ".sqlite", ".db"):
            self.root, self.db_path = p.parent, p
        else:
            self.root, self.db_path = p, p / DB_FILE
        from_env = path is None and bool(os.environ.get("PRUNING_LAB_HOME"))
        what = "PRUNING_LAB_HOME" if from_env else "run store folder"
        # A real write probe: permission bits say nothing about read-only mounts or /proc.
        check_writable_dir(self.root, what)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the run store directory {self.root}: {e.strerror or e}"
            ) from None
        if self.db_path.exists() and not self.db_path.is_file():
            raise UserError(f"run store {self.db_path} is not a file")
        self.interrupted: list[int] = self._init_schema()
        for rid in self.interrupted:
            # A killed run may have left half-written artifact temporaries behind.
            clean_stale(self.run_dir(rid))

    # -- connections and transactions -------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str = "") -> Iterator[None]:
        """The database's own failures (not a database, damaged, locked, read-only, disk full)
        as one-line `UserError`s; errors that mean a bug in this module pass unchanged."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise
            raise UserError(f"{doing}run store {self.db_path}: {first_line(e)}") from None

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: safe across threads and processes.
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all or nothing."""
        with self._errors():
            con = self._connect()
            try:
                # IMMEDIATE takes the write lock up front, so two writers never deadlock on
                # upgrade.
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    # SQLite may already have rolled back (disk full): keep the first error.
                    with suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            con = self._connect()
            try:
                yield con
            finally:
                con.close()

    def _init_schema(self) -> list[int]:
        """Create or migrate the schema, then mark runs whose process is gone; returns their
        ids. One transaction: a killed open leaves the old schema or the new one."""
        with self._errors("cannot open the "):
            con = self._connect()
            try:
                self._refuse_foreign(con)
                # A file system without shared memory refuses WAL; the rollback journal still
                # works.
                with suppress(sqlite3.OperationalError):
                    con.execute("PRAGMA journal_mode = WAL")
                con.execute("BEGIN IMMEDIATE")
                try:
                    self._migrate(con)
                    marked = self._mark_interrupted(con)
                except BaseException:
                    with suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                return marked
            finally:
                con.close()

    def _refuse_foreign(self, con: sqlite3.Connection) -> None:
        """Someone's own database at this path: changing anything in it (tables, even its
        journal mode) would change their file."""
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and tables - {"runs", "curves", "artifacts", "sqlite_sequence"}:
            raise UserError(
                f"{self.db_path} is a database that pruning-lab did not create; "
                "set PRUNING_LAB_HOME to another folder"
            )

    def _migrate(self, con: sqlite3.Connection) -> None:
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
        if version != SCHEMA_VERSION:
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _mark_interrupted(con: sqlite3.Connection) -> list[int]:
        """Mark `failed` (`INTERRUPTED_ERROR`) the running rows whose process is gone.

        Gone means: a process of this host that no longer runs (or whose pid now belongs to a
        later process), or no owner at all. Rows without an owner were written by a version-1
        Pruning Lab, which this store has replaced by opening (and migrating) the database, so
        no process is left to finish them. Should a live writer finish such a run after all,
        its final `update_status` still wins: marking never blocks a later honest status.
        """
        rows = con.execute("SELECT id, owner FROM runs WHERE status = 'running'").fetchall()
        dead = [(r["id"], r["owner"]) for r in rows if not _owner_alive(r["owner"])]
        now = _now()
        for rid, owner in dead:
            con.execute(
                "UPDATE runs SET status = 'failed', error = ?, updated = ?"
                " WHERE id = ? AND status = 'running' AND owner IS ?",
                (INTERRUPTED_ERROR, now, rid, owner),
            )
        return [rid for rid, _ in dead]

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

        The run is owned by this process (`process_owner`): should the process end while the
        run is `running`, the next open of the store marks it interrupted.

        Raises:
            UserError: Unknown kind or status, or the database cannot be written.
            CurvePointError: A curve point that cannot be stored (nothing is recorded).
        """
        _check_kind(kind)
        _check_status(status)
        cfg, met = _dumps(dict(config or {})), _dumps(dict(metrics or {}))
        now = _now()
        with self._tx() as con:
            cur = con.execute(
                "INSERT INTO runs (created, updated, kind, status, name, model, dataset, config,"
                " metrics, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, now, kind, status, name, model, dataset, cfg, met, process_owner()),
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

        Setting `running` makes this process the run's owner. Metrics are encoded before the
        transaction starts, so metrics that cannot be encoded change nothing.

        Raises:
            UserError: Unknown run or status, or the database cannot be written.
            TypeError, ValueError: `metrics` cannot be encoded as JSON (a key that is not a
                string or number, a circular reference).
        """
        _check_status(status)
        new = json.loads(_dumps(dict(metrics or {})))
        owner = process_owner() if status == "running" else None
        with self._tx() as con:
            row = con.execute("SELECT metrics FROM runs WHERE id = ?", (run,)).fetchone()
            if row is None:
                raise UserError(f"no run {run} in the store")
            try:
                merged = json.loads(row["metrics"])
            except ValueError:  # damaged by hand: the new metrics replace what cannot be read
                merged = {}
            if not isinstance(merged, dict):
                merged = {}
            merged.update(new)
            con.execute(
                "UPDATE runs SET status = ?, metrics = ?, error = COALESCE(?, error), updated = ?,"
                " owner = COALESCE(?, owner) WHERE id = ?",
                (status, _dumps(merged), error, _now(), owner, run),
            )

    def add_curve_points(self, run: int, points: Iterable[Mapping[str, Any]]) -> int:
        """Append curve points in one transaction (all or none); returns how many.

        Known keys (`CURVE_COLUMNS`) get their own column, the others are kept as JSON.

        Raises:
            UserError: Unknown run, or the database cannot be written.
            CurvePointError: A point that cannot be stored (`check_curve_point`); none of the
                batch is kept.
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
            vals, extra = _point_row(p)  # a bad point fails the whole batch
            rows.append((run, seq + i, *vals, extra))
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
        with output_dir(target, f"run {run} artifact") as tmp:
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


def split_encodable(metrics: Mapping[Any, Any]) -> tuple[dict[Any, Any], list[str]]:
    """The entries of `metrics` that the store can encode, and the names of the others.

    Encoding is lenient (tensors, paths, sets and other objects become JSON values), so what
    is left out is what no JSON can hold: a key that is not a string or number, a circular
    reference, an object whose conversion itself fails.
    """
    ok: dict[Any, Any] = {}
    dropped: list[str] = []
    for k, v in metrics.items():
        try:
            _dumps({k: v})
        except Exception:  # any failure of a value's own conversion leaves that entry out
            dropped.append(k if isinstance(k, str) else _short(k, 40))
        else:
            ok[k] = v
    return ok, dropped
