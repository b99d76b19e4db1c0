"""The README's Python example runs as written, using only the public API."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pruning_core

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert blocks, "README.md: the Python API section has no ```python block"
    return str(blocks[0])


def test_readme_example_uses_only_public_names() -> None:
    tree = ast.parse(_api_example())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    ]
    assert all(m in ("torch", "pruning_core") for m in imported), imported
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "pl"
    }
    assert used and used <= set(pruning_core.__all__), used - set(pruning_core.__all__)


def test_readme_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_api_example())
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=README.parent,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "removed: accuracy" in r.stdout and "ms per batch of 32" in r.stdout, r.stdout
