"""Issue 13's polish: icons, axes whose labels never repeat, empty states instead of empty
charts, cancelling shown as a choice, per-layer order, readable numbers in tables."""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pruning_core import plots

ROOT = Path(__file__).resolve().parents[1]


def _labels(axis: dict, lo: float, hi: float) -> list[str]:
    """The tick labels plotly writes for `axis` (tick0 + k * dtick, d3 `.N%`) over [lo, hi]."""
    decimals = int(axis["tickformat"][1:-1])
    step, k = axis["dtick"], math.ceil((lo - axis["tick0"]) / axis["dtick"] - 1e-9)
    out = []
    while axis["tick0"] + k * step <= hi + 1e-12:
        out.append(f"{(axis['tick0'] + k * step) * 100:.{decimals}f}%")
        k += 1
    return out


@pytest.mark.parametrize(
    "values",
    [[0.978, 0.981, 0.985, 0.989], [0.9889, 0.9889], [0.1, 0.97], [0.5, 0.5004], [-0.02, 0.013]],
)
def test_percent_ticks_never_repeat_a_label(values: list[float]) -> None:
    axis = plots.percent_axis(values)
    labels = _labels(axis, min(values) - axis["dtick"], max(values) + axis["dtick"])
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels


@pytest.mark.parametrize("values", [[0.9749], [0.9749, 0.9749], [0.5, 0.5004], [0.0, 0.0]])
def test_a_flat_percent_axis_has_a_range_of_a_few_ticks(values: list[float]) -> None:
    # Plotly would autorange a flat series to +-1 around it: thousands of ticks at this step,
    # each label measured in the browser (a 90 s freeze of the page).
    axis = plots.percent_axis(values)
    lo, hi = axis["range"]
    assert lo <= min(values) and hi >= max(values)
    assert 3 <= (hi - lo) / axis["dtick"] <= 8
    labels = _labels(axis, lo, hi)
    assert len(set(labels)) == len(labels) >= 3


def test_a_spread_percent_axis_leaves_the_range_to_plotly() -> None:
    assert "range" not in plots.percent_axis([0.1, 0.97])
    # A flat run curve gets the bounded axis in the figure the page draws.
    curve = pd.DataFrame({"step": [250, 500], "accuracy": [0.9749, 0.9749], "loss": [0.1, 0.1]})
    y = plots.runs_curves_figure({"#1 finetune": curve}).layout.yaxis
    assert y.range is not None and (y.range[1] - y.range[0]) / y.dtick <= 8


def test_report_accuracy_axis_on_a_narrow_range() -> None:
    df = pd.DataFrame({"method": ["m", "m"], "sparsity": [0.5, 0.9], "accuracy": [0.985, 0.981],
                       "finetuned_accuracy": [0.988, 0.983], "dense_accuracy": [0.9889] * 2})  # fmt: skip
    y = plots.accuracy_sparsity_figure(df).layout.yaxis
    axis = {"tickformat": y.tickformat, "dtick": y.dtick, "tick0": y.tick0}
    labels = _labels(axis, 0.981, 0.9889)
    assert len(set(labels)) == len(labels) >= 2 and y.title.text


def test_pages_use_bundled_material_icons() -> None:
    tree = ast.parse((ROOT / "app.py").read_text())
    icons = [
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "icon" and isinstance(kw.value, ast.Constant)
    ]
    assert len(icons) >= 6
    assert all(i.startswith(":material/") and i.endswith(":") for i in icons), icons


def test_favicon_is_a_local_file_not_a_download() -> None:
    """Streamlit turns a `:material/...:` page_icon into an SVG fetched from fonts.gstatic.com,
    which fails offline (a console error in every classroom without internet)."""
    tree = ast.parse((ROOT / "app.py").read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "set_page_config"
    ]
    assert calls and not any(
        kw.arg == "page_icon" and isinstance(kw.value, ast.Constant) for kw in calls[0].keywords
    )
    assert (ROOT / "assets" / "favicon.png").is_file()


def test_layers_listed_in_model_order() -> None:
    from pruning_core.layers import in_model_order
    from pruning_core.models import create_model

    model = create_model("shapes-resnet")
    names = [n for n, _ in model.named_modules() if n]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    ordered = in_model_order(model, {n: i for i, n in enumerate(shuffled)})
    assert list(ordered) == names
    assert list(in_model_order(model, {"not.there": 1, names[1]: 2, names[0]: 3})) == [
        names[0],
        names[1],
        "not.there",
    ]


def test_numbers_in_tables_get_thousands_separators() -> None:
    from ui.widgets import number_formats

    df = pd.DataFrame({"layer": ["a", "b"], "params": [151306, 2], "macs": [1180000.0, None],
                       "ratio": [0.5, 0.25], "ok": [True, False]})  # fmt: skip
    cfg = number_formats(df)
    assert cfg["params"]["type_config"]["format"] == "localized"
    assert cfg["macs"]["type_config"]["format"] == "localized"  # whole numbers stored as floats
    assert "layer" not in cfg and "ok" not in cfg and cfg["ratio"]["type_config"]["format"]


def _runs_panel() -> None:
    from ui.tradeoff_panels import compare_runs_panel

    compare_runs_panel()


def test_compare_runs_without_accuracy_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruning_core.store import RunStore

    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path))
    store = RunStore()
    rid = store.create_run("finetune", name="cancelled early", status="cancelled",
                           curve=[{"step": 1, "loss": 2.3}, {"step": 2, "loss": 2.1}])  # fmt: skip
    at = AppTest.from_function(_runs_panel, default_timeout=60)
    at.session_state["tradeoff_compare"] = [rid]
    at.run()
    assert not at.exception
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(keys) == 1  # the loss chart only: no empty accuracy axis
    assert any("No validation accuracy" in i.value for i in at.info)


def _measurement_panel() -> None:
    import streamlit as st

    from ui.jobs_panel import measurement_panel

    st.session_state.setdefault(
        "tradeoff_latency_error", "cancelled (cancelled before it started), no results"
    )
    measurement_panel("latency", ("digits-cnn", "digits"))


def test_cancelling_a_queued_measurement_is_not_an_error() -> None:
    at = AppTest.from_function(_measurement_panel, default_timeout=60).run()
    assert not at.exception and not at.error
    assert any("cancelled before it started" in i.value for i in at.info)
