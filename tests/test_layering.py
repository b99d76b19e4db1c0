"""pruning_core is headless: no streamlit, no CUDA initialisation, no network at import."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# ----------------------------------------------------------------------------- import graph


def _module_files(root: Path = CORE) -> dict[str, Path]:
    """A package's modules by dotted name (a package by its own name, not `.__init__`)."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imported(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The dotted names an import statement may load (a from-import's names may be modules)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        package = parts if mods[module].name == "__init__.py" else parts[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(root: Path = CORE) -> dict[str, set[str]]:
    """Which modules of the package at `root` each one imports, read from the source.

    Every import statement counts, inside functions and under `if TYPE_CHECKING:` included.
    Importing `a.b.c` runs the packages `a` and `a.b` first, so it counts as importing them
    too, except a package the importer itself belongs to (already running) and the top
    package (pruning_core's lazy `__init__` imports nothing).
    """
    mods = _module_files(root)
    top = root.name
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(m, node, mods):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                while target and target != top:
                    if target != m and target in mods and not m.startswith(target + "."):
                        graph[m].add(target)
                    target = target.rpartition(".")[0]
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycle_finder_sees_function_level_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n"
    )
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg import d\n")
    (pkg / "sub" / "leaf.py").write_text("")
    (pkg / "d.py").write_text("from pkg.sub.leaf import thing\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.d"] == {"pkg.sub", "pkg.sub.leaf"}  # a.b.c runs the package a.b first
    assert graph["pkg.sub.leaf"] == set()
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.sub"]]


def test_no_import_cycles_inside_pruning_core() -> None:
    cycles = import_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "leaf", ["errors", "validate", "spec", "fsio", "timing", "attention", "layers", "surgery"]
)
def test_leaf_modules_import_only_leaves(leaf: str) -> None:
    allowed = {
        f"pruning_core.{m}"
        for m in ("errors", "validate", "spec", "fsio", "timing", "attention", "layers")
    }
    deps = import_graph()[f"pruning_core.{leaf}"]
    assert deps <= allowed, sorted(deps - allowed)


# ----------------------------------------------------------------------------- __all__ and API


def _defines_all(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, ast.Assign | ast.AnnAssign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in targets
        ):
            return True
    return False


def test_every_module_defines_all_and_its_names_exist() -> None:
    missing = sorted(m for m, f in _module_files().items() if not _defines_all(f))
    assert missing == [], f"modules without __all__: {missing}"
    absent = []
    for m in sorted(_module_files()):
        if m == "pruning_core.__main__":  # importing it runs the command line
            continue
        mod = importlib.import_module(m)
        absent += [f"{m}.{n}" for n in mod.__all__ if not hasattr(mod, n)]
    assert absent == [], f"names in __all__ that do not exist: {absent}"


def test_public_api_is_lazy_and_complete() -> None:
    code = (
        "import sys\n"
        "import pruning_core as pl\n"
        "assert [m for m in sys.modules if m.startswith('pruning_core.')] == [], 'eager'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import pruning_core.experiments\n"  # imports the module pruning_core.evaluate
        "assert callable(pl.evaluate) and pl.evaluate.__module__ == 'pruning_core.evaluate'\n"
        "assert set(dir(pl)) >= set(pl.__all__)\n"
        "print(' '.join(sorted(pl.__all__)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set(r.stdout.split())
    assert {
        "load_model", "load_dataset", "PruneConfig", "TrainConfig", "prune_", "Preview", "fit",
        "evaluate", "model_summary", "measure_latency", "sweep", "sensitivity", "UserError",
        "list_methods", "list_models",
    } <= names  # fmt: skip
