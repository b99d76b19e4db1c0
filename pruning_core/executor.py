"""Executors: where independent measurements run (this process, or a Ray cluster).

A sensitivity analysis (and the budget search built on it) is many independent points: prune
one unit at one ratio, measure, put the weights back. An `Executor` maps a picklable function
over such tasks and reports each result as it arrives:

- `InProcess` (`inprocess`, the default) calls the function here, one task after another, so
  the caller can keep one working copy of the model between tasks (nothing is pickled).
- `RayExecutor` (`ray`) runs each task as a Ray task (Moritz et al. 2018, "Ray: A Distributed
  Framework for Emerging AI Applications"; https://docs.ray.io), on a cluster
  (`ray.init(address=...)`) or on a local runtime this process starts. Ray is an optional
  dependency (`uv sync --group ray` or `pip install pruning-lab[ray]`), imported only when a
  RayExecutor is made: this module imports nothing beyond the standard library and
  `pruning_core.errors`.

`get_executor("inprocess" | "ray", address=...)` picks one by name from the registry; a new
backend is one class with `@register_executor`.

Tasks: `fn(shared, task)` must be a module-level function (Ray pickles it by reference) and
`shared` and every task must pickle; `shared` travels once per map (Ray's object store), each
task on its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pruning_core.errors import UserError, first_line

__all__ = [
    "EXECUTORS",
    "RAY_MISSING",
    "Executor",
    "InProcess",
    "RayExecutor",
    "TaskFn",
    "check_executor",
    "get_executor",
    "list_executors",
    "register_executor",
]

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

# fn(shared, task) -> result: what an executor maps over the tasks.
TaskFn = Callable[[Any, Any], Any]
# Called in the caller's thread as each task finishes: (task index, its result).
DoneFn = Callable[[int, Any], None]

RAY_MISSING = (
    "the ray executor needs Ray, which is not installed: run `uv sync --group ray` "
    "(or `pip install pruning-lab[ray]`), or use --executor inprocess"
)


@runtime_checkable
class Executor(Protocol):
    """Maps a function over independent tasks; see the module docstring.

    Attributes:
        name: The registry name.
        local: True when tasks run in this process (the function sees this process's objects:
            a caller may then share a working copy with it instead of pickling one).
    """

    @property
    def name(self) -> str: ...
    @property
    def local(self) -> bool: ...

    def map(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        *,
        shared: Any = None,
        on_done: DoneFn | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[int, Any]:
        """Run `fn(shared, task)` for every task.

        Args:
            fn: A module-level function (picklable by reference).
            tasks: Picklable tasks.
            shared: One picklable object every call receives (sent once per map).
            on_done: Called in the caller's thread with (task index, result) as each finishes.
            cancel: When set, no further task starts (Ray: pending tasks are cancelled) and the
                results finished so far are returned.

        Returns:
            {task index: result} in task order; indices missing were not run (cancelled).

        Raises:
            Whatever `fn` raised in the first failing task (a UserError stays a UserError).
        """
        ...

    def close(self) -> None:
        """Release what the executor started (idempotent)."""
        ...

    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc: object) -> None: ...


EXECUTORS: dict[str, type[Any]] = {}
_E = TypeVar("_E", bound=type)


def register_executor(cls: _E) -> _E:
    """Class decorator: add an executor to the registry under its `name`.

    Raises:
        ValueError: No name, or a name taken by another class.
    """
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"executor {cls.__name__} needs a name")
    old = EXECUTORS.get(name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"executor name '{name}' is taken by {old.__qualname__}")
    EXECUTORS[name] = cls
    return cls


def list_executors() -> list[str]:
    """Registered executor names, in registration order."""
    return list(EXECUTORS)


def check_executor(
    name: str = "inprocess", address: str | None = None, *, num_cpus: int | None = None
) -> type[Any]:
    """The executor class `get_executor` would make, checked without starting anything (for
    options checked before any work).

    Raises:
        UserError: An unknown name, an address or CPU count given to an executor without
            them, or Ray not installed.
    """
    key = str(name).strip().lower()
    cls = EXECUTORS.get(key)
    if cls is None:
        raise UserError(f"unknown executor '{name}' (choose from {', '.join(EXECUTORS)})")
    if cls is RayExecutor:
        if importlib.util.find_spec("ray") is None:
            raise UserError(RAY_MISSING)
    elif address is not None or num_cpus is not None:
        raise UserError(f"an address or CPU count applies to the ray executor, not to '{key}'")
    return cls


def get_executor(
    name: str = "inprocess", address: str | None = None, *, num_cpus: int | None = None
) -> Executor:
    """An executor by registry name (close it, or use it in a `with` block).

    Args:
        name: `inprocess` or `ray` (any registered name; case and spaces ignored).
        address: Ray only: the cluster to join (`auto`, `HOST:PORT` or `ray://HOST:PORT`);
            None starts a local runtime in this process.
        num_cpus: Ray only: CPUs of a local runtime (default: Ray's, all of this machine).

    Raises:
        UserError: An unknown name, an address or CPU count given to an executor without
            them, Ray missing, or a cluster that cannot be reached.
    """
    cls = check_executor(name, address, num_cpus=num_cpus)
    if cls is RayExecutor:
        return RayExecutor(address=address, num_cpus=num_cpus)
    return cls()


class _Closing:
    """Context-manager support shared by the executors."""

    def close(self) -> None:
        return None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@register_executor
class InProcess(_Closing):
    """Tasks run here, in order, one at a time (the default: no start-up, nothing pickled)."""

    name: ClassVar[str] = "inprocess"
    local: ClassVar[bool] = True

    def map(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        *,
        shared: Any = None,
        on_done: DoneFn | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for i, task in enumerate(tasks):
            if cancel is not None and cancel.is_set():
                break
            out[i] = fn(shared, task)
            if on_done is not None:
                on_done(i, out[i])
        return out


# Seconds to wait for a cluster's head to accept a connection: `ray.init` itself keeps trying
# for minutes before it gives up on an address where nothing listens.
CONNECT_SECONDS = 5.0


# HTTP/2's client preface and an empty SETTINGS frame (RFC 9113, section 3.4): a Ray head
# (its GCS, or the Ray Client server for ray://) is a gRPC server, which must answer with a
# SETTINGS frame of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def _check_reachable(address: str) -> None:
    """Refuse in seconds a `HOST:PORT` or `ray://HOST:PORT` where no Ray cluster answers:
    nothing accepts a TCP connection, or what accepts it does not answer HTTP/2's preface as a
    gRPC server does (a web server, or a port that never replies: `ray.init` would retry there
    for many minutes). `auto` and other forms are left to Ray.

    Raises:
        UserError: Nothing, or something other than a gRPC server, answers there.
    """
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    hint = "start one with `ray start --head`, or leave --address out for a local runtime"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS) as s:
            s.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        raise UserError(
            f"no Ray cluster answers at {address} (something accepts connections there but did "
            f"not reply within {CONNECT_SECONDS:g} s): {hint}"
        ) from None
    except OSError as e:
        raise UserError(
            f"no Ray cluster answers at {address} ({first_line(e, 80)}): {hint}"
        ) from None
    if len(head) < 9 or head[3] != _H2_SETTINGS:
        raise UserError(
            f"no Ray cluster answers at {address}: what listens there is not a gRPC server "
            f"(it answered {head[:16]!r}); {hint}"
        )


def _call(fn: TaskFn, shared: Any, task: Any) -> Any:
    """What each Ray task runs (module level, so workers import it by name)."""
    return fn(shared, task)


@register_executor
class RayExecutor(_Closing):
    """Tasks run as Ray tasks, one CPU each, on a cluster or on a local runtime.

    Joins the runtime this process already has (`ray.is_initialized()`), else the cluster at
    `address`, else starts a local runtime (bound to 127.0.0.1, no dashboard) with `num_cpus`
    CPUs; `close()` shuts down only a runtime this executor started. Cluster nodes need
    pruning-lab installed (the same version) and the data sets the tasks refer to.

    Args:
        address: `auto`, `HOST:PORT` or `ray://HOST:PORT` of a running cluster; None: local.
        num_cpus: CPUs of a local runtime (None: Ray's default, every CPU).
        init_options: More `ray.init` keyword arguments (runtime_env, namespace, ...).

    Raises:
        UserError: Ray is not installed (`RAY_MISSING`), a bad CPU count, nothing answering at
            `address` (within `CONNECT_SECONDS`), or `ray.init` fails.
    """

    name: ClassVar[str] = "ray"
    local: ClassVar[bool] = False

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(RAY_MISSING) from None
        if num_cpus is not None and (
            isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1
        ):
            raise UserError(f"num_cpus must be a positive integer, got {num_cpus!r}")
        self._ray = ray
        self._started = False
        self._remote: Any = None
        if ray.is_initialized():
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            _check_reachable(address)
            options["address"] = address
        else:
            # A runtime of our own talks to nothing but this machine.
            options.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        options.update(init_options or {})
        try:
            ray.init(**options)
        except Exception as e:  # connection refused, bad address, version mismatch...
            where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
            raise UserError(f"could not start {where}: {first_line(e, 160)}") from None
        self._started = True

    def map(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        *,
        shared: Any = None,
        on_done: DoneFn | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[int, Any]:
        ray = self._ray
        if not tasks:
            return {}
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1)(_call)
        shared_ref = ray.put(shared)  # once, not once per task
        pending = {self._remote.remote(fn, shared_ref, t): i for i, t in enumerate(tasks)}
        out: dict[int, Any] = {}
        try:
            while pending:
                if cancel is not None and cancel.is_set():
                    break
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
                for ref in done:
                    i = pending.pop(ref)
                    out[i] = self._get(ref)
                    if on_done is not None:
                        on_done(i, out[i])
        finally:
            for ref in pending:  # cancelled, or a task failed: the rest are not needed
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref)
        return dict(sorted(out.items()))

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            # The task's own exception, as if it had run here (a refusal stays one line).
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            if isinstance(cause, Exception):
                raise cause from e
            raise

    def close(self) -> None:
        if self._started:
            self._started = False
            self._ray.shutdown()
