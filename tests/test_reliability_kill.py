"""A prune + fine-tune killed with SIGKILL at any point leaves the old output or the complete new
one at `--out`, never neither and never half of one; the next run cleans up and succeeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruning_core.fsio import is_tool_output
from pruning_core.models import load_model

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "prune", "--model", "digits-mlp", "--dataset", "digits", "--method", "magnitude",
    "--granularity", "unstructured", "--quiet",
]  # fmt: skip


def _ratio(out: Path) -> float:
    return float(json.loads((out / "metrics.json").read_text())["target_ratio"])


def _assert_complete(out: Path) -> None:
    assert is_tool_output(out)
    assert {"model.safetensors", "model.json", "metrics.json", "recipe.json"} <= {
        p.name for p in out.iterdir()
    }
    load_model(str(out))  # reloads: nothing half-written


@pytest.fixture(scope="module")
def first_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `prune` output at ratio 0.5, made once: each kill starts from a copy of it."""
    from pruning_core.cli import main as cli_main

    out = tmp_path_factory.mktemp("first") / "out"
    assert cli_main([*ARGS, "--ratio", "0.5", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "expected"),
    [("train", 0.5), ("write", 0.5), ("before-swap", 0.5), ("after-swap", 0.7)],
)
def test_killed_prune_leaves_old_or_complete_new_output(
    point: str, expected: float, cli, tmp_path: Path, first_output: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    shutil.copytree(first_output, out)  # an earlier run's output, as `prune` left it
    signal_file = tmp_path / "signal"
    # Only the training point needs a fine-tune; the others pause where the files are written.
    train = ["--finetune-epochs", "1"] if point == "train" else []
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "kill_driver.py"), point, str(signal_file), "--",
         *ARGS, "--ratio", "0.7", *train, "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not signal_file.exists():
        if proc.poll() is not None:
            pytest.fail(f"driver ended early: {proc.stderr.read().decode() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the driver never reached its point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    _assert_complete(out)
    assert _ratio(out) == pytest.approx(expected)

    # The next run starts cleanly: it removes the killed run's temporaries and writes anew.
    code, _, err = cli(*ARGS, "--ratio", "0.6", "--out", str(out))
    assert code == 0, err
    _assert_complete(out)
    assert _ratio(out) == pytest.approx(0.6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "signal"]
