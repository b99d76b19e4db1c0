"""pruning_core is headless: no streamlit, no CUDA initialisation, no network at import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "pruning_core"


def test_no_streamlit_import_in_core_sources() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+streamlit", re.M)
    offenders = [str(p) for p in CORE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_core_touches_neither_streamlit_nor_cuda() -> None:
    code = (
        "import importlib, pkgutil, sys, torch\n"
        "import pruning_core\n"
        "for m in pkgutil.walk_packages(pruning_core.__path__, 'pruning_core.'):\n"
        "    if m.name != 'pruning_core.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "assert 'streamlit' not in sys.modules, 'streamlit imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
