"""AppTest of the Inspect page: layer table, histograms, APoZ/norms, sparsity heatmap."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from apptest_helpers import apply_prune
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _chart(at: AppTest, key: str) -> dict[str, Any]:
    el = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(el.proto.spec)


def _values(v: Any) -> np.ndarray:
    """A plotly array from a chart spec (plain list or plotly's binary {dtype, bdata})."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def test_inspect_standalone_shows_every_layer() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "2_inspect.py"), default_timeout=120).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["layer"]) == ["conv1", "conv2", "fc1", "fc2"]
    assert list(table["params"]) == [32 * 9, 64 * 32 * 9, 128 * 1024, 10 * 128]
    heat = _chart(at, "inspect_heatmap")["data"][0]
    assert list(heat["y"]) == ["conv1", "conv2", "fc1", "fc2"]
    # The dense model: one histogram series per chart, no "after" overlay yet.
    assert [t["name"] for t in _chart(at, "inspect_weight_hist")["data"]] == ["dense"]
    assert [t["name"] for t in _chart(at, "inspect_act_hist")["data"]] == ["dense"]
    at.selectbox(key="inspect_layer").set_value("conv2").run()
    assert not at.exception
    apoz = _chart(at, "inspect_apoz")["data"][0]
    norms = _chart(at, "inspect_norms")["data"][0]
    assert len(_values(apoz["x"])) == len(_values(norms["x"])) == 64  # one bar per filter
    assert ((_values(apoz["y"]) >= 0) & (_values(apoz["y"]) <= 1)).all()


def test_inspect_overlays_the_pruned_model() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    apply_prune(at, granularity="channel", ratio=0.5, then="pages/2_inspect.py")
    assert not at.exception
    assert any("pruned" in i.value for i in at.info)
    table = at.dataframe[0].value
    conv2 = table[table["layer"] == "conv2"].iloc[0]
    zero, channels = (int(v.replace(",", "")) for v in conv2["zero channels"].split(" / "))
    assert channels < 64 and zero == 0  # physically removed filters: none left all-zero
    names = [t["name"] for t in _chart(at, "inspect_weight_hist")["data"]]
    assert names == ["dense", "pruned (non-zero)"]
    assert len(_chart(at, "inspect_act_hist")["data"]) == 2
