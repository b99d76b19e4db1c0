"""Shared fixtures: an isolated data/home directory and small helpers."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator

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


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """Streamlit's AppTest installs its script as `__main__`; a later `spawn` child would run that
    script. Each test starts and ends with the real `__main__`."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main
