"""Run `pruning-lab` with a pause at one named point, for the kill test.

Usage: python tests/kill_driver.py POINT SIGNAL_FILE -- CLI ARGS...

At POINT the process writes SIGNAL_FILE and sleeps, so the test can SIGKILL it exactly there:
  train        the first fine-tune progress report (training under way, nothing written)
  write        after the model files are written into the temporary folder (half an output)
  before-swap  the complete new folder (marker included) waits beside the old one
  after-swap   the swap is done; the temporary name holds the old folder, not yet removed
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def _pause(signal_file: str) -> None:
    Path(signal_file).write_text("here")
    time.sleep(600)


def main() -> int:
    point, signal_file = sys.argv[1], sys.argv[2]
    args = sys.argv[sys.argv.index("--") + 1 :]
    from pruning_core import fsio, workflow
    from pruning_core.cli import main as cli_main
    from pruning_core.cli import prune as prune_cmd

    if point == "train":

        def progress(label: str, quiet: bool = False) -> Any:
            return lambda p: _pause(signal_file)

        prune_cmd.stderr_progress = progress  # type: ignore[assignment]
    elif point == "write":
        original_save = workflow.save_model_dir

        def save(*a: Any, **k: Any) -> None:
            original_save(*a, **k)
            _pause(signal_file)

        workflow.save_model_dir = save  # type: ignore[assignment]
    elif point in ("before-swap", "after-swap"):
        original_swap = fsio._swap_into_place

        def swap(new: Path, target: Path) -> None:
            if point == "after-swap":
                original_swap(new, target)
            _pause(signal_file)

        fsio._swap_into_place = swap  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown point {point}")
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
