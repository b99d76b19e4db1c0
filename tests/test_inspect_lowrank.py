"""Inspect page on a factorised model: what low rank kept per layer (rank, weights), and no
zeros map reading 0% where the saving is the rank (`stats.low_rank_table`,
`ui.inspect_panels.zeros_and_rank_panel`)."""

from __future__ import annotations

import math
from pathlib import Path

from apptest_helpers import apply_prune, find_chart
from streamlit.testing.v1 import AppTest
from torch import nn

from pruning_core.plans.lowrank import factorize
from pruning_core.stats import low_rank_table

ROOT = Path(__file__).resolve().parents[1]


def _tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 12))


def test_low_rank_table_counts_rank_and_weights() -> None:
    model = _tiny()
    assert low_rank_table(model).empty  # dense: nothing factorised
    model[0] = factorize(model[0], 5)  # 16 x 27 weight, full rank 16
    model[3] = factorize(model[3], 4)  # 12 x 256 weight, full rank 12
    t = low_rank_table(model).set_index("layer")
    assert list(t.index) == ["0", "3"]
    assert list(t["type"]) == ["Conv2d", "Linear"]
    assert list(t["rank"]) == [5, 4] and list(t["full_rank"]) == [16, 12]
    assert list(t["params"]) == [5 * (27 + 16), 4 * (256 + 12)]
    assert list(t["params_dense"]) == [16 * 27, 12 * 256]
    assert t.loc["0", "rank_share"] == 5 / 16
    assert math.isclose(float(t.loc["3", "params_share"]), 4 * 268 / (12 * 256))


def _panel_with_zeros() -> None:
    """A factorised model pruned afterwards: zeros map and rank bars both."""
    import torch
    from torch import nn

    from pruning_core.plans.lowrank import factorize
    from ui.inspect_panels import zeros_and_rank_panel

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model[0] = factorize(model[0], 8)
    with torch.no_grad():
        model[2].weight[:, :32] = 0
    zeros_and_rank_panel(model)


def test_panel_keeps_the_zeros_map_when_there_are_zeros() -> None:
    at = AppTest.from_function(_panel_with_zeros, default_timeout=60).run()
    assert not at.exception, at.exception
    assert find_chart(at, "inspect_heatmap") is not None
    bars = find_chart(at, "inspect_lowrank")
    assert bars is not None and list(bars["data"][0]["y"]) == ["0"]
    assert not at.info  # no "no zeros" note: there are zeros


def test_inspect_shows_the_rank_kept_after_low_rank() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    apply_prune(at, granularity="lowrank", ratio=0.6, then="pages/2_inspect.py")
    assert not at.exception, at.exception
    # The history names no criterion low rank did not use (it ranks by singular values).
    banner = next(i.value for i in at.info if "Showing your" in i.value)
    assert "lowrank, ratio 0.60, global scope" in banner and "magnitude" not in banner
    # No map of zeros reading 0% everywhere: a note says why, the rank bars say what was kept.
    assert find_chart(at, "inspect_heatmap") is None
    assert any("no map of zeros" in i.value for i in at.info)
    bars = find_chart(at, "inspect_lowrank")
    assert bars is not None
    rank, weights = bars["data"]
    assert rank["name"] == "rank kept" and weights["name"] == "weights kept"
    # Every pair the layer table lists (name.0, name.1) has its bar, and the bar's share and
    # counts are those of the table's shapes: r x in..., out x r -> rank r of min(out, in...).
    table = at.dataframe[0].value.set_index("layer")
    pairs = [n[:-2] for n in table.index if n.endswith(".0") and f"{n[:-2]}.1" in table.index]
    assert pairs and list(rank["y"]) == pairs
    for name, share, text in zip(pairs, rank["x"], rank["text"], strict=True):
        head = [int(d) for d in str(table.loc[f"{name}.0", "shape"]).split("x")]
        out = int(str(table.loc[f"{name}.1", "shape"]).split("x")[0])
        r, full = head[0], min(out, math.prod(head[1:]))
        assert text == f"rank {r:,} of {full:,}" and math.isclose(share, r / full)
        assert r < full
    assert all(0 < s < 1 for s in weights["x"])
