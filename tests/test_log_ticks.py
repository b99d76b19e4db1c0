"""Log axes of the latency figures: every tick labelled in full with its unit, never a repeated
label, a readable count, and the unit in the axis title (`plots.log_axis`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pruning_core.plots import latency_sparsity_figure, log_axis
from pruning_core.plots_companions import companions_figure


def _companion_rows(medians: list[float]) -> pd.DataFrame:
    """A `compare_companions`-shaped frame: one measured row per median (ms), p10/p90 around it."""
    rows = []
    for i, med in enumerate(medians):
        rows.append(
            {"variant": ("dense", "channel", "lowrank", "int8")[i % 4], "label": f"v{i % 4}",
             "runtime": ("eager", "onnxruntime")[i % 2], "status": "ok",
             "accuracy": 0.9 - 0.01 * i, "size_bytes": 4096 * (i + 1), "params": 1000,
             "params_kind": "all", "macs": 10_000, "median_ms": med, "p10_ms": med * 0.9,
             "p90_ms": med * 1.3, "vs_dense": "1.0x", "pareto_size": i == 0,
             "pareto_latency": i == 0}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _check(axis: dict, lo: float, hi: float) -> None:
    vals, texts = list(axis["tickvals"]), list(axis["ticktext"])
    assert len(texts) == len(set(texts)), texts  # no label twice
    assert all(t.endswith(" ms") for t in texts), texts
    assert 2 <= len(vals) <= 8, texts
    a, b = axis["range"]
    assert a <= math.log10(lo) and math.log10(hi) <= b  # every point inside the frame
    assert all(a <= math.log10(v) <= b for v in vals)  # every tick shows
    for v, t in zip(vals, texts, strict=True):  # the label is the tick's value
        assert float(t.removesuffix(" ms").replace(",", "")) == pytest.approx(v)


@pytest.mark.parametrize(
    "medians",
    [[0.4, 1.1, 2.3, 6.0, 180.0],  # several decades: plotly's labels were "2", "5" in each
     [3.1, 3.15, 3.2, 3.25],  # a tenth of a decade: no 1-2-5 value inside but one
     [0.0005, 3.0, 2e5],  # nine decades: every k-th power of ten
     [12.0]],  # one point
)  # fmt: skip
def test_companions_latency_axis_has_unique_unit_labels(medians: list[float]) -> None:
    df = _companion_rows(medians)
    layout = companions_figure(df).to_dict()["layout"]
    axis = layout["xaxis2"]
    assert axis["type"] == "log"
    assert "(ms" in axis["title"]["text"]
    _check(axis, float(df["p10_ms"].min()), float(df["p90_ms"].max()))


def test_latency_sparsity_axis_has_unique_unit_labels() -> None:
    df = pd.DataFrame(
        {"ratio": [0.0, 0.5, 0.9], "backend": ["dense"] * 3, "status": ["ok"] * 3,
         "median_ms": [1.2, 2.5, 40.0], "p10_ms": [1.0, 2.2, 35.0], "p90_ms": [1.5, 3.0, 60.0],
         "vs_dense": ["", "", ""]}
    )  # fmt: skip
    axis = latency_sparsity_figure(df).to_dict()["layout"]["yaxis"]
    assert "ms" in axis["title"]["text"]
    _check(axis, 1.0, 60.0)


def test_log_axis_refuses_no_data_quietly() -> None:
    assert log_axis(float("nan"), 3.0, "ms") == {}
    assert log_axis(0.0, 3.0, "ms") == {}
    assert log_axis(5.0, 3.0, "ms") == {}
