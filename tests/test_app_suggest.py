"""AppTest of "Suggest from sensitivity" on the Prune page: every granularity on every sample
model either suggests per-unit ratios that reach the slider's share, or says in one line why it
cannot; the progress bar never stays on screen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import pruning_core.calibration
import ui.actions
import ui.caches
from pruning_core.errors import UserError
from pruning_core.models import list_models
from ui.choices import granularity_choices

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_prune.py")
SAMPLES = {m.name: m.default_dataset for m in list_models() if m.sample}
RATIO = 0.3
# What each granularity does on each sample model: "suggest" (per-unit ratios), "one line"
# (no per-layer ratios: N:M patterns, blocks) or "n/a" (the granularity does not apply).
# Blocks are suggested by name (the least sensitive ones, each mapped to 1.0); low rank
# suggests a share of each layer's rank.
EXPECTED = {
    "digits-mlp": {"channel": "suggest", "head": "n/a", "block": "n/a"},
    "digits-cnn": {"channel": "suggest", "head": "n/a", "block": "n/a"},
    "shapes-resnet": {"channel": "suggest", "head": "n/a", "block": "suggest"},
    "shapes-vit": {"channel": "suggest", "head": "suggest", "block": "suggest"},
}
LOW_RANK = {"lowrank": "suggest", "lowrank-energy": "suggest"}


@pytest.fixture
def fast_sensitivity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few images and one ratio: the app's defaults (500 images, four ratios) take minutes.
    Each structured point re-estimates BatchNorm on the calibration batches: 2 x 32 images
    instead of 2 x 128 (most of the shapes-resnet case's time); what is asserted here (ratios
    reaching the slider's share, one-line reasons) does not depend on how many."""
    monkeypatch.setattr(ui.actions, "SENSITIVITY_IMAGES", 40)
    monkeypatch.setattr(ui.actions, "SENSITIVITY_RATIOS", (0.6,))
    monkeypatch.setattr(pruning_core.calibration, "CALIB_BATCH_SIZE", 32)


def _page(model_ref: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["model_ref"] = model_ref
    at.session_state["dataset_ref"] = SAMPLES[model_ref]
    at.session_state["prune_estimate"] = False
    at.session_state["prune_ratio"] = RATIO
    at.session_state["prune_layers_open"] = True  # Suggest is inside the per-layer expander
    return at.run()


@pytest.mark.usefixtures("fast_sensitivity")
@pytest.mark.parametrize("model_ref", sorted(SAMPLES))
def test_suggest_works_for_every_granularity(model_ref: str) -> None:
    at = _page(model_ref)
    assert not at.exception
    seen: dict[str, str] = {}
    for g in granularity_choices():
        at.selectbox(key="prune_granularity").set_value(g).run()
        assert not at.exception
        if any("does not apply here" in i.value for i in at.info):
            seen[g] = "n/a"
            continue
        preview = at.session_state["_prune_preview"][1]
        why = ui.actions.suggest_unavailable(preview)
        if why is not None:
            assert why in [c.value for c in at.caption]  # said in one line
            buttons = [b for b in at.button if b.key == "prune_suggest"]
            assert all(b.disabled for b in buttons)
            seen[g] = "one line"
            continue
        at.button(key="prune_suggest").click().run()
        assert not at.exception
        assert not at.error, [e.value for e in at.error]
        assert not at.get("progress")  # the bar is gone
        over = at.session_state["prune_overrides"]
        if g == "block":
            # Blocks chosen by name: some removed, each mapped to 1.0.
            assert over and all(v == 1.0 for v in over.values())
            seen[g] = "suggest"
            continue
        assert set(over) == set(preview.unit_names)
        sizes = preview.unit_sizes
        if g.startswith("lowrank"):
            # Shares of each layer's rank (a layer stays dense below its break-even rank).
            assert all(0.0 <= v <= 1.0 for v in over.values())
            assert any(v > 0 for v in over.values())
        elif preview.engine.plan.structured:
            # Whole channels or heads: the plan removes the slider's share (rounded down).
            removed = preview.engine.select(RATIO, over, "global")
            want = math.floor(RATIO * sum(sizes.values()) + 1e-9)
            assert sum(len(v) for v in removed.values()) == want
        else:
            overall = sum(over[u] * sizes[u] for u in over) / sum(sizes.values())
            assert abs(overall - RATIO) < 0.01
        assert any("sensitivity, measured on 40" in c.value for c in at.caption)
        seen[g] = "suggest"
    assert seen == {"unstructured": "suggest", "2:4": "one line", **EXPECTED[model_ref], **LOW_RANK}


def test_a_failing_measurement_says_so_and_removes_its_progress_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fails(*args: object, progress: object = None, **kwargs: object) -> None:
        assert callable(progress)
        raise UserError("the calibration split is empty")

    monkeypatch.setattr(ui.caches, "sensitivity", fails)
    at = _page("digits-mlp")
    at.button(key="prune_suggest").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Cannot suggest ratios: the calibration split is empty"]
    assert not at.get("progress")
    assert "prune_overrides" not in at.session_state or not at.session_state["prune_overrides"]
