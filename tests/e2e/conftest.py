"""The served app for browser tests: `streamlit run app.py` headless on a free port.

Skips cleanly (with the reason) when Playwright or the system Chromium is missing; a browser is
never downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.local_server import free_port, healthy

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PRUNING_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless system Chromium through Playwright (skipped when either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is a dev dependency: uv sync --group dev)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"no Chromium at {CHROMIUM} (install the system package, or set PRUNING_LAB_CHROMIUM)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served by `streamlit run app.py --server.headless true` on a free port."""
    if shutil.which("streamlit", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("streamlit is not installed in this environment")
    home = tmp_path_factory.mktemp("e2e-home")
    port = free_port()
    # Two jobs at once: the tests share this server, and a sweep left running by one test
    # must not keep the next test's jobs waiting in the queue past its timeouts.
    env = {**os.environ, "PRUNING_LAB_HOME": str(home / "home"),
           "PRUNING_LAB_DATA": str(home / "data"), "PYTHONUNBUFFERED": "1",
           "PRUNING_LAB_MAX_JOBS": "2"}  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "e2e-streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy in 60 s; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
