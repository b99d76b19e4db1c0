"""The served app keeps Python's cyclic garbage collector off the slider's path: Streamlit's
forced full collection after every script run is off, and what the warm-up imported is frozen
out of later collections (`ui/serve.py`)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_reads_the_project_config_with_post_script_gc_off() -> None:
    # Streamlit reads .streamlit/config.toml from the folder it starts in, as `pruning-lab app`
    # does; asked through Streamlit itself so a misspelt option or section would fail here.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from streamlit import config; print(config.get_option('runner.postScriptGC'))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_warm_up_freezes_what_it_imported() -> None:
    from ui.serve import warm_up

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        warm_up()
        frozen = gc.get_freeze_count()
        # torch, plotly and the project's modules: hundreds of thousands of objects, none of
        # which a later full collection walks.
        assert frozen > 50_000
    finally:
        gc.unfreeze()
