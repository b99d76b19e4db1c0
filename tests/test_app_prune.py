"""AppTest of the Prune page: controls, live preview, suggestion and Apply."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_prune.py")


def _chart(at: AppTest, key: str) -> dict[str, Any]:
    el = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(el.proto.spec)


def _values(v: Any) -> np.ndarray:
    """A plotly array from a chart spec (plain list or plotly's binary {dtype, bdata})."""
    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            dims = [int(d) for d in str(shape).split(",")] if isinstance(shape, str) else shape
            arr = arr.reshape(dims)
        return arr
    return np.asarray(v, dtype=float)


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _mlp_with_layers_open() -> AppTest:
    """The Prune page on digits-mlp (units fc1, fc2) with the per-layer sliders drawn."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.session_state["prune_layers_open"] = True
    return at.run()


def _unit(at: AppTest, name: str) -> Any:
    """The per-layer slider of unit `name`."""
    return next(s for s in at.slider if str(s.key).endswith(f"_{name}"))


def test_slider_moves_the_live_preview() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    bars = _chart(at, "prune_layer_chart")["data"]
    assert len(bars) == 1
    # digits-cnn: conv1, conv2, fc1, fc2 -> one bar per Linear/Conv layer
    assert bars[0]["x"] == ["conv1", "conv2", "fc1", "fc2"]
    params_50 = _int(_metric(at, "Remaining params"))
    macs_50 = float(_metric(at, "Effective MACs").replace(",", ""))
    sparsity_50 = _values(bars[0]["y"])
    assert any(m.label == "Accuracy on 359 val images" for m in at.metric)

    at.slider(key="prune_ratio").set_value(0.8).run()
    assert not at.exception
    params_80 = _int(_metric(at, "Remaining params"))
    assert params_80 < params_50
    assert float(_metric(at, "Effective MACs").replace(",", "")) < macs_50
    sparsity_80 = _values(_chart(at, "prune_layer_chart")["data"][0]["y"])
    assert sum(sparsity_80) > sum(sparsity_50)
    assert sparsity_80[-1] == 0.0  # the classifier stays dense
    # The before/after histogram and the mask picture follow the selected layer.
    hist = _chart(at, "prune_hist_chart")["data"]
    assert [t["name"] for t in hist] == ["before", "after (kept weights)"]
    assert _values(hist[1]["y"]).sum() < _values(hist[0]["y"]).sum()
    z = _values(_chart(at, "prune_mask_chart")["data"][0]["z"])
    assert z.ndim == 2 and 0.0 < z.mean() < 1.0


def test_structured_preview_then_apply_shrinks_the_session_model() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.selectbox(key="prune_granularity").set_value("channel").run()
    assert not at.exception
    at.slider(key="prune_ratio").set_value(0.25).run()
    at_25 = _int(_metric(at, "Remaining params"))
    at.slider(key="prune_ratio").set_value(0.5).run()
    assert _int(_metric(at, "Remaining params")) < at_25 < 151_306
    at.button(key="prune_apply").click().run()
    assert not at.exception
    committed = at.session_state["prune_committed"]
    assert committed.config.granularity == "channel"
    assert committed.summary["params"] < 151_306  # physically smaller than dense digits-cnn
    assert committed.masks == {}
    assert "pruned" in at.success[0].value
    # The history names the ratio as one, beside the sparsity the preview showed.
    preview_sparsity = _metric(at, "Sparsity")
    assert "channel, ratio 0.50" in at.success[0].value
    assert f"sparsity {committed.result['sparsity']:.1%}" in at.success[0].value
    assert f"{committed.result['sparsity']:.1%}" == preview_sparsity
    # Reset goes back to the dense model.
    at.button(key="prune_reset").click().run()
    assert "prune_committed" not in at.session_state


def test_suggest_from_sensitivity_fills_the_per_layer_table() -> None:
    at = _mlp_with_layers_open()  # Suggest is inside the per-layer expander
    at.slider(key="prune_ratio").set_value(0.6).run()
    at.button(key="prune_suggest").click().run()
    assert not at.exception
    over = at.session_state["prune_overrides"]
    sizes = {"fc1": 64 * 128, "fc2": 128 * 64}  # the classifier (fc3) stays dense
    assert set(over) == set(sizes)
    overall = sum(over[n] * s for n, s in sizes.items()) / sum(sizes.values())
    assert abs(overall - 0.6) < 0.01
    assert "sensitivity" in " ".join(c.value for c in at.caption)


def test_page_runs_through_the_app_and_reports_bad_granularity() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/3_prune.py").run()
    assert not at.exception
    at.selectbox(key="prune_granularity").set_value("head").run()
    assert not at.exception
    assert any("attention" in i.value for i in at.info)


def test_per_layer_sliders_override_one_unit_and_follow_the_global_ratio() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.run()
    at.slider(key="prune_ratio").set_value(0.5).run()
    # Closed (the default without overrides): no per-layer slider is drawn or sent.
    assert not [s for s in at.slider if str(s.key).startswith("prune_unit_")]
    at.session_state["prune_layers_open"] = True  # the user opens the expander
    at.run()
    units = [s for s in at.slider if str(s.key).startswith("prune_unit_")]
    assert len(units) == 2 and all(abs(s.value - 0.5) < 1e-9 for s in units)  # fc1, fc2
    before = _metric(at, "Sparsity")
    fc1 = _unit(at, "fc1")
    fc1.set_value(0.9).run()
    assert not at.exception
    assert at.session_state["prune_overrides"] == {"fc1": 0.9}
    assert _metric(at, "Sparsity") != before  # the preview redrew with the override
    # Moving the global ratio moves fc2's slider and keeps fc1's override, with the same
    # widgets (keys): new keys would make the browser rebuild every slider on each move.
    keys = sorted(str(s.key) for s in at.slider if str(s.key).startswith("prune_unit_"))
    at.slider(key="prune_ratio").set_value(0.3).run()
    assert keys == sorted(str(s.key) for s in at.slider if str(s.key).startswith("prune_unit_"))
    values = {
        s.key.rsplit("_", 1)[-1]: s.value for s in at.slider if str(s.key).startswith("prune_unit_")
    }
    assert values == {"fc1": 0.9, "fc2": 0.3}


def test_a_global_move_with_stale_per_layer_values_sets_no_override() -> None:
    """Two quick presses on the global slider: the second run gets the per-layer sliders as the
    browser still showed them before the first run's values arrived; they follow the global
    ratio, not become overrides (seen in Chromium: every slider froze at 0.50)."""
    at = _mlp_with_layers_open()
    at.slider(key="prune_ratio").set_value(0.55).run()
    units = [s for s in at.slider if str(s.key).startswith("prune_unit_")]
    assert len(units) == 2 and all(abs(s.value - 0.55) < 1e-9 for s in units)
    at.slider(key="prune_ratio").set_value(0.6)
    for s in units:  # the browser's stale values: those before the 0.55 run
        s.set_value(0.5)
    at.run()
    assert not at.exception
    assert not at.session_state["prune_overrides"]
    values = [s.value for s in at.slider if str(s.key).startswith("prune_unit_")]
    assert values == [0.6, 0.6]
    # A per-layer move afterwards (global unchanged) is still the user's override.
    fc1 = _unit(at, "fc1")
    fc1.set_value(0.2).run()
    assert at.session_state["prune_overrides"] == {"fc1": 0.2}


def test_a_moved_per_layer_slider_is_not_sent_back_to_the_browser() -> None:
    """The page sets no value on a slider the user is moving (a value set by the page is sent
    with `set_value` and snaps the browser's slider back while arrow presses go on)."""
    at = _mlp_with_layers_open()
    fc1 = _unit(at, "fc1")
    fc1.set_value(0.45).run()
    assert not at.exception
    fc1 = _unit(at, "fc1")
    assert fc1.value == 0.45 and not fc1.proto.set_value
    # A slider that follows a global move is set by the page (and shows the new ratio).
    at.slider(key="prune_ratio").set_value(0.6).run()
    fc2 = _unit(at, "fc2")
    assert fc2.value == 0.6 and fc2.proto.set_value


def test_overrides_of_one_granularity_do_not_carry_to_another() -> None:
    # digits-mlp's units are fc1 and fc2 under unstructured and channel pruning alike: a share
    # of weights set (or suggested) for one is not a share of channels for the other.
    at = _mlp_with_layers_open()
    fc1 = _unit(at, "fc1")
    fc1.set_value(0.9).run()
    assert at.session_state["prune_overrides"] == {"fc1": 0.9}
    at.selectbox(key="prune_granularity").set_value("channel").run()
    assert not at.exception
    assert not at.session_state["prune_overrides"]
    assert not any(s.value == 0.9 for s in at.slider if str(s.key).startswith("prune_unit_"))
    # Back to unstructured: nothing comes back either (the user set it for the other one).
    at.selectbox(key="prune_granularity").set_value("unstructured").run()
    assert not at.session_state["prune_overrides"]


def _layers_label(at: AppTest) -> str:
    """The label of the per-layer expander."""
    return next(e.label for e in at.expander if e.label.startswith("Per-layer ratios"))


def _layers_count(at: AppTest) -> str:
    """The open expander's count ("N of M with their own ratio")."""
    return next(c.value for c in at.caption if "with their own ratio" in c.value).split(".")[0]


def test_the_per_layer_count_is_that_of_the_current_run() -> None:
    # The count was drawn before the sliders turned a move into an override: it showed the
    # previous run's ("0 set" after the first move, "1 set" after moving it back).
    at = _mlp_with_layers_open()
    assert _layers_count(at) == "0 of 2 with their own ratio"
    _unit(at, "fc1").set_value(0.9).run()
    assert not at.exception
    assert at.session_state["prune_overrides"] == {"fc1": 0.9}
    assert _layers_count(at) == "1 of 2 with their own ratio"
    _unit(at, "fc2").set_value(0.2).run()
    assert _layers_count(at) == "2 of 2 with their own ratio"
    # Open, the label stays the same while sliders move (it is the expander's identity: a new
    # one took the keyboard focus from the slider being moved).
    assert _layers_label(at) == "Per-layer ratios"
    # Cleared: none set, and the expander stays open (its sliders are drawn).
    at.button(key="prune_clear_overrides").click().run()
    assert _layers_count(at) == "0 of 2 with their own ratio"
    assert len([s for s in at.slider if str(s.key).startswith("prune_unit_")]) == 2
    # Closed, the label counts what is set.
    _unit(at, "fc1").set_value(0.7).run()
    at.session_state["prune_layers_open"] = False
    at.run()
    assert _layers_label(at) == "Per-layer ratios (1 set)"


def test_the_table_count_takes_this_runs_edits() -> None:
    # Models with more units than sliders fit get a table: its label counts the edits the
    # browser sent in this run too (Streamlit's documented data_editor state).
    from ui.prune_widgets import _table_edits

    units = ["a", "b", "c"]
    state = {"edited_rows": {1: {"ratio": 0.3}, 0: {"ratio": None}}, "added_rows": []}
    assert _table_edits(units, {"a": 0.5}, state) == {"b": 0.3}
    assert _table_edits(units, {"a": 0.5}, None) == {"a": 0.5}


def test_the_block_pickers_count_is_that_of_the_current_run() -> None:
    # The label was drawn before the picker read the browser's pick: "(0 chosen)" after the
    # first pick, "(1 chosen)" after the second.
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["model_ref"] = "shapes-resnet"
    at.session_state["dataset_ref"] = "shapes"
    at.session_state["prune_estimate"] = False
    at.session_state["prune_granularity"] = "block"
    at.run()
    assert not at.exception

    def label() -> str:
        return next(e.label for e in at.expander if e.label.startswith("Blocks to remove"))

    picker = next(m for m in at.multiselect if str(m.key).startswith("prune_blocks_"))
    options = list(picker.options)
    assert label() == "Blocks to remove (0 chosen)" and len(options) >= 2
    picker.set_value(options[:1]).run()
    assert label() == "Blocks to remove (1 chosen)"
    picker = next(m for m in at.multiselect if str(m.key).startswith("prune_blocks_"))
    picker.set_value(options[:2]).run()
    assert not at.exception
    assert label() == "Blocks to remove (2 chosen)"
    assert at.session_state["prune_overrides"] == dict.fromkeys(options[:2], 1.0)
