"""The applied model's latency panel says what its timing can show for the kind of model
pruning made: zeros in full-size tensors, a physically smaller model, or a factorised one (low
rank: no zeros at all, a smaller dense model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import apply_prune
from streamlit.testing.v1 import AppTest

from ui.latency_panel import applied_model_kind

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_masked_models_are_told_zeros_are_still_multiplied(granularity: str) -> None:
    said = applied_model_kind(granularity)
    assert "zeros" in said and "sparse kernels" in said
    assert "factorised" not in said and "physically smaller" not in said


@pytest.mark.parametrize(
    ("granularity", "what"),
    [("channel", "channels"), ("head", "attention heads"), ("block", "residual blocks")],
)
def test_shrunk_models_are_told_they_are_smaller(granularity: str, what: str) -> None:
    said = applied_model_kind(granularity)
    assert "physically smaller" in said and f"removed {what}" in said
    assert "zero" not in said


@pytest.mark.parametrize("granularity", ["lowrank", "lowrank-energy"])
def test_factorised_models_are_not_told_about_zeros_in_their_tensors(granularity: str) -> None:
    said = applied_model_kind(granularity)
    assert "factorised" in said and "has no zeros" in said and "smaller dense model" in said
    assert "multiply every zero" not in said and "sparse kernels" not in said


def _latency_captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if "Your model" in c.value]


def test_prune_page_latency_caption_follows_the_applied_model() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["model_ref"] = "digits-mlp"
    at.session_state["prune_estimate"] = False
    at.run()
    apply_prune(at, granularity="lowrank", ratio=0.5)
    assert _latency_captions(at) == [f"Not measured yet. {applied_model_kind('lowrank')}"]
    at.button(key="prune_measure_latency").click().run()
    assert not at.exception
    measured = _latency_captions(at)
    assert len(measured) == 1 and measured[0].endswith(applied_model_kind("lowrank"))
    assert "zeros in" not in measured[0]

    apply_prune(at, granularity="unstructured", ratio=0.5)
    assert _latency_captions(at) == [f"Not measured yet. {applied_model_kind('unstructured')}"]
