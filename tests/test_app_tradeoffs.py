"""AppTest of the Trade-offs page: sweep, latency and sensitivity run as jobs and plot real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apptest_helpers import app_on, pick_model, plain, wait_job
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "5_tradeoffs.py")


def _chart(at: AppTest, key: str) -> dict[str, Any]:
    for c in at.get("plotly_chart"):
        if c.proto.id and key in c.proto.id:
            return plain(json.loads(c.proto.spec))
    raise AssertionError(f"no chart {key}: {[c.proto.id for c in at.get('plotly_chart')]}")


def test_sweep_plots_one_trace_per_method_and_finetune(monkeypatch: pytest.MonkeyPatch) -> None:
    # The page's fine-tune at its own batch size (45 steps of 32 on digits, not 288 of 5): the
    # fine-tune traces are drawn either way, and no value of theirs is checked here.
    import dataclasses

    import ui.tradeoff_jobs

    fast = dataclasses.replace(ui.tradeoff_jobs.DEFAULT_FINETUNE, min_steps_per_epoch=0)
    monkeypatch.setattr(ui.tradeoff_jobs, "DEFAULT_FINETUNE", fast)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    at.text_input(key="tradeoff_ratios").set_value("0.5, 0.9")
    at.button(key="tradeoff_run_sweep").click().run()
    assert not at.exception, at.exception
    wait_job(at, "sweep", 120.0)
    assert not at.exception
    spec = _chart(at, "tradeoff_acc_chart")
    names = [t["name"] for t in spec["data"]]
    assert names == ["magnitude", "magnitude + fine-tune", "random", "random + fine-tune"]
    mag = spec["data"][0]
    assert len(mag["x"]) == 2 and abs(mag["x"][-1] - 0.9) < 0.02  # measured sparsity
    rnd = spec["data"][2]
    # At 90% sparsity, magnitude keeps far more accuracy than random removal.
    assert mag["y"][-1] > rnd["y"][-1] + 0.1
    # The size-vs-accuracy tab uses the same points, plus the dense model, with a front.
    size = _chart(at, "tradeoff_size_chart")
    assert [t["name"] for t in size["data"]][-1] == "Pareto front"
    assert len(size["data"][-1]["x"]) >= 2


def test_latency_and_sensitivity_jobs() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.text_input(key="tradeoff_lat_ratios").set_value("0.5, 0.9")
    at.selectbox(key="tradeoff_lat_batch").set_value(8)
    at.button(key="tradeoff_run_latency").click().run()
    wait_job(at, "latency", 120.0)
    assert not at.exception
    spec = _chart(at, "tradeoff_lat_chart")
    names = {t["name"] for t in spec["data"]}
    assert {"dense (unpruned)", "masked (zeros, dense kernels)"} <= names
    assert "shrunk (channels removed)" in names
    assert "batch 8" in spec["layout"]["title"]["text"]
    assert all(len(t["y"]) == 2 for t in spec["data"])
    # 2:4 needs CUDA: without it the page says so instead of plotting it.
    import torch

    if not torch.cuda.is_available():
        assert any("semi24" in c.value for c in at.caption)

    at.text_input(key="tradeoff_sens_ratios").set_value("0.5, 0.9")
    at.button(key="tradeoff_run_sens").click().run()
    wait_job(at, "sensitivity", 120.0)
    assert not at.exception
    spec = _chart(at, "tradeoff_sens_chart")
    layers = [t["name"] for t in spec["data"]]
    assert layers and len(set(layers)) == len(layers)  # one trace per layer
    assert "conv1" in layers


def test_runs_are_recorded_and_comparable() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.text_input(key="tradeoff_ratios").set_value("0.5")
    at.number_input(key="tradeoff_ft_epochs").set_value(0)
    at.button(key="tradeoff_run_sweep").click().run()
    wait_job(at, "sweep", 120.0)
    from pruning_core.jobs import get_runner

    runs = get_runner().store.list_runs(kind="sweep")
    assert len(runs) >= 1 and runs.iloc[0]["status"] == "done"
    at.run()
    assert not at.exception
    assert at.multiselect(key="tradeoff_compare").value


def test_a_granularity_the_model_cannot_take_falls_back_with_a_note() -> None:
    # Heads picked on shapes-vit stayed picked on digits-mlp (no attention) until the sweep
    # failed; now the menu offers what the model takes and says, in one line, what it changed.
    at = app_on("shapes-vit", "shapes", "pages/5_tradeoffs.py")
    assert "Attention heads" in at.selectbox(key="tradeoff_granularity").options  # labels
    at.selectbox(key="tradeoff_granularity").set_value("head").run()
    assert not at.exception
    pick_model(at, "digits-mlp", then="pages/5_tradeoffs.py")
    assert at.session_state["dataset_ref"] == "digits"
    assert not at.exception, at.exception
    box = at.selectbox(key="tradeoff_granularity")
    assert box.value == "unstructured"
    assert "Attention heads" not in box.options
    assert not [o for o in box.options if o.startswith("Residual blocks")]
    notes = [c for c in at.caption if "Attention heads" in c.value]
    assert [c.value for c in notes] == [
        "Attention heads does not apply to digits-mlp: Unstructured (single weights) instead."
    ]
    assert "needs attention layers" in notes[0].proto.help  # the plan's own reason
    # The note goes once the user picks a granularity themselves.
    at.selectbox(key="tradeoff_granularity").set_value("channel").run()
    assert not [c.value for c in at.caption if "Attention heads" in c.value]
