"""Shared fixtures: an isolated data/home directory, the served app and small helpers."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Keep caches and run stores of the test session away from the user's own.
_TMP_HOME = tempfile.mkdtemp(prefix="pruning-lab-tests-")
os.environ.setdefault("PRUNING_LAB_HOME", os.path.join(_TMP_HOME, "home"))
os.environ.setdefault("PRUNING_LAB_DATA", os.path.join(_TMP_HOME, "data"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the CLI in-process: returns (exit status, stdout, stderr)."""
    from pruning_core.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def serve_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[float], str]]:
    """Serve the app on a free 127.0.0.1 port for the load test's websocket client
    (`benchmarks.load_test.Server`, home and log in a session temporary folder): call it with
    the seconds to wait for a healthy server (`RuntimeError` past them); it returns the
    server's URL. One server for the test session, started by the first call (a later call
    starts it again only if it has exited): each websocket client is its own Streamlit
    session, and starting and stopping a server per test cost seconds each on CI. It stops
    when the session ends.

    Skips when `websockets` is missing or nothing can be bound on 127.0.0.1.
    """
    pytest.importorskip("websockets")
    from benchmarks.local_server import free_port

    try:
        free_port()
    except OSError as e:
        pytest.skip(f"cannot bind a port on 127.0.0.1: {e}")
    from benchmarks.load_test import Server

    # No file watcher: it would walk the whole checkout (the virtual environment included). No
    # start-up warm-up of every sample model (ui.prewarm): these tests use the default model,
    # and on CI's 2 cores the other models' baselines and timings only slow the test's steps.
    tmp_path = tmp_path_factory.mktemp("served-app")
    server = Server(
        home=tmp_path / "home",
        log=tmp_path / "server.log",
        code=Path(__file__).resolve().parents[1],
        env={"STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", "PRUNING_LAB_PREWARM": "0"},
    )

    def start(timeout: float) -> str:
        if server.proc is None or server.proc.poll() is not None:
            server.start(timeout=timeout)
        return server.url

    try:
        yield start
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """Streamlit's AppTest installs its script as `__main__`; a later `spawn` child would run that
    script. Each test starts and ends with the real `__main__`."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main
