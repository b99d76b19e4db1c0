"""AppTest of the Inspect page's dynamic-pruning panel."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ui import dynamic_panel
from ui.texts_dynamic import DYNAMIC_EXPLAINED, DYNAMIC_NO_CONVS, LEARNED_GATE_EXPLAINED

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "2_inspect.py")


def _chart(at: AppTest, key: str) -> dict[str, Any]:
    el = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(el.proto.spec)


def _page(model: str, dataset: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["model_ref"] = model
    at.session_state["dataset_ref"] = dataset
    return at.run()


def _rows(heat: dict[str, Any]) -> dict[str, np.ndarray]:
    z = heat["z"]
    if isinstance(z, dict):  # plotly's binary array
        import base64

        flat = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        z = flat.reshape(len(heat["y"]), -1)
    return {name: np.asarray(row, dtype=float) for name, row in zip(heat["y"], z, strict=True)}


def test_the_panel_shows_which_channels_an_image_used() -> None:
    at = _page("digits-cnn", "digits")
    assert not at.exception
    assert any(m.value == DYNAMIC_EXPLAINED for m in at.markdown)
    rows = _rows(_chart(at, "dynamic_heatmap")["data"][0])
    assert list(rows) == ["conv1", "conv2"]
    # keep 0.5: exactly half of each layer's channels computed for this image.
    assert np.nansum(rows["conv1"]) == 16 and np.nansum(rows["conv2"]) == 32
    bars = _chart(at, "dynamic_skipped")["data"]
    assert [t["name"] for t in bars] == ["this image", "validation average"]
    labels = [m.label for m in at.metric]
    assert "Effective MACs, this image" in labels
    first = rows
    at.number_input(key="dynamic_image").set_value(7).run()
    at.slider(key="dynamic_keep").set_value(0.25).run()
    assert not at.exception
    rows = _rows(_chart(at, "dynamic_heatmap")["data"][0])
    assert np.nansum(rows["conv1"]) == math.ceil(0.25 * 32) == 8
    assert np.nansum(rows["conv2"]) == 16
    assert any(not np.array_equal(first[n] > 0, rows[n] > 0) for n in rows)


def test_a_model_without_convolutions_says_so() -> None:
    at = _page("digits-mlp", "digits")
    assert not at.exception
    assert DYNAMIC_NO_CONVS in [i.value for i in at.info]
    assert not [c for c in at.get("plotly_chart") if c.key == "dynamic_heatmap"]


def test_the_vit_gates_only_its_convolutional_stem() -> None:
    at = _page("shapes-vit", "shapes")
    assert not at.exception
    rows = _rows(_chart(at, "dynamic_heatmap")["data"][0])
    assert all(name.startswith("patch_embed.") for name in rows)
    assert any("always runs in full" in c.value for c in at.caption)


def test_the_learned_gate_trains_in_a_job_and_shows_the_trained_channel_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pruning_core.jobs import get_runner

    monkeypatch.setattr(dynamic_panel, "GATE_TRAIN_LIMIT", 64)  # one step of 64 images
    at = _page("digits-cnn", "digits")
    at.radio(key="dynamic_gate").set_value("learned").run()
    assert not at.exception
    assert any(m.value == LEARNED_GATE_EXPLAINED for m in at.markdown)
    assert any("untrained" in i.value for i in at.info)
    untrained = _rows(_chart(at, "dynamic_heatmap")["data"][0])
    assert np.nansum(untrained["conv1"]) == 16  # keep 0.5, as the magnitude gate
    at.button(key="dynamic_train_gates").click().run()
    assert not at.exception
    job_id = at.session_state["dynamic_gates_job"]
    if job_id:  # not yet handed over within the click's run
        job = get_runner().get(job_id)
        assert job is not None and job.wait(120), "the gate-training job did not finish"
        assert job.status == "done", job.error
        at.run()
    assert not at.exception
    trained = at.session_state["dynamic_trained"]
    assert trained["steps"] == 1 and not trained["cancelled"]
    assert trained["for"] == ("digits-cnn", "digits", 0.5)
    heat = _chart(at, "dynamic_heatmap")
    assert "trained learned gate" in json.dumps(heat["layout"]["title"])
    rows = _rows(heat["data"][0])
    assert np.nansum(rows["conv1"]) == 16 and np.nansum(rows["conv2"]) == 32
    assert any(
        "Trained gates: 1 step in" in c.value and "untrained, the same gates scored" in c.value
        for c in at.caption
    )
    assert not any("untrained" in i.value for i in at.info)
    # Back to the data-free gate: the untrained view again, the trained gates kept.
    at.radio(key="dynamic_gate").set_value("magnitude").run()
    assert not at.exception
    assert not any(m.value == LEARNED_GATE_EXPLAINED for m in at.markdown)
    assert at.session_state["dynamic_trained"]["steps"] == 1
