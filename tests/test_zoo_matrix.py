"""The zoo: the committed matrix covers what it promises, and a representative subset of it
runs here (eight architectures, one of each kind of difficulty, every granularity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_committed_matrix_covers_the_zoo() -> None:
    from benchmarks.zoo import ARCHS, GRANULARITIES, TIMM, TORCHVISION

    doc = json.loads((ROOT / "docs" / "zoo.json").read_text(encoding="utf-8"))
    cells = doc["cells"]
    assert {(c["arch"], c["granularity"]) for c in cells} >= {
        (a, g) for a in ARCHS for g in GRANULARITIES
    }
    assert len(TORCHVISION) >= 20 and len({a.split("_")[0] for a in TIMM}) >= 25
    applicable = [c for c in cells if c["status"] != "n/a"]
    ok = [c for c in applicable if c["status"] == "ok"]
    assert len(ok) >= 0.9 * len(applicable)
    assert not [c for c in cells if c["status"] in ("error", "timeout")]
    for c in cells:
        if c["status"] == "refused":
            assert len(c["message"]) > 20 and "\n" not in c["message"]
        assert c.get("seconds", 0) <= 300
    md = (ROOT / "docs" / "zoo.md").read_text(encoding="utf-8")
    assert doc["date"] in md and all(f"`{a}`" in md for a in ARCHS)


@pytest.mark.timeout(900)
def test_ci_subset_of_the_zoo_runs() -> None:
    from benchmarks.zoo import CI_CELLS, CI_SUBSET, run_matrix, summarize

    cells = run_matrix(CI_SUBSET, CI_CELLS, jobs=2, timeout=300, progress=False)
    by = {(c["arch"], c["granularity"]): c for c in cells}
    assert set(by) == {(a, g) for a, gs in CI_CELLS.items() for g in gs}
    broken = [c for c in cells if c["status"] in ("error", "timeout")]
    assert not broken, broken
    # Each difficulty ends the way the matrix says.
    assert by[("torchvision:googlenet", "channel")]["status"] == "ok"  # auxiliary heads
    assert by[("torchvision:mnasnet0_5", "block")]["status"] == "ok"  # module versions
    shuffle = by[("torchvision:shufflenet_v2_x0_5", "channel")]
    assert shuffle["status"] == "refused" and "channel shuffle" in shuffle["message"]
    assert by[("timm:deit_tiny_patch16_224", "head")]["status"] == "ok"
    for c in cells:
        if c["status"] == "ok":
            assert c["reopen_diff"] <= 1e-5 and c["evaluate_exit"] == 0
    assert summarize(cells)["ok_share"] >= 0.75
