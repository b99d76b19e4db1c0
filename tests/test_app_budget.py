"""AppTest of the Prune page's budget control and BatchNorm switch: "Suggest from sensitivity"
and "Fit a budget" work for unstructured, channel and block granularities on every sample
model (or the page says in words why the granularity does not apply), the searched ratios go
into the per-layer sliders within their caps, no progress bar stays behind, and the BN switch
changes the estimate of a model with BatchNorm."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import pruning_core.budget
import pruning_core.calibration
import ui.actions
from pruning_core.errors import UserError
from pruning_core.models import list_models

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_prune.py")
SAMPLES = {m.name: m.default_dataset for m in list_models() if m.sample}
GRANULARITIES = ("unstructured", "channel", "block")
# Where the model truly has no such structure (the page says so in words).
NO_BLOCKS = {"digits-mlp", "digits-cnn"}
# Budgets the smallest curves (one ratio per unit) reach: a share of the dense MACs.
BUDGETS = {"unstructured": 0.8, "channel": 0.8, "block": 0.95}
RATIO = 0.3


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smallest settings: few images and one ratio per curve (the app's take minutes), and
    BatchNorm re-estimated on 2 x 32 calibration images instead of 2 x 128 after each
    structured point (most of the shapes-resnet cases' time; nothing asserted here depends on
    how many)."""
    monkeypatch.setattr(ui.actions, "SENSITIVITY_IMAGES", 40)
    monkeypatch.setattr(ui.actions, "SENSITIVITY_RATIOS", (0.6,))
    monkeypatch.setattr(ui.actions, "BUDGET_IMAGES", 40)
    monkeypatch.setattr(ui.actions, "BUDGET_RATIOS", (0.5,))
    monkeypatch.setattr(ui.actions, "BUDGET_EVAL_IMAGES", 100)
    monkeypatch.setattr(pruning_core.calibration, "CALIB_BATCH_SIZE", 32)


def _page(model_ref: str, granularity: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["model_ref"] = model_ref
    at.session_state["dataset_ref"] = SAMPLES[model_ref]
    at.session_state["prune_estimate"] = False
    at.session_state["prune_ratio"] = RATIO
    at.session_state["prune_granularity"] = granularity
    at.session_state["prune_layers_open"] = True  # Suggest is inside the per-layer expander
    return at.run()


def _clean(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert not at.get("progress")  # no bar left behind


@pytest.mark.usefixtures("fast")
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("model_ref", sorted(SAMPLES))
def test_suggest_and_budget_search_work(model_ref: str, granularity: str) -> None:
    at = _page(model_ref, granularity)
    assert not at.exception
    if granularity == "block" and model_ref in NO_BLOCKS:
        said = [i.value for i in at.info]
        assert any("does not apply here" in s and "no residual block" in s for s in said), said
        return
    _clean(at)
    preview = at.session_state["_prune_preview"][1]
    blocks = ui.actions.block_names(preview)
    units = blocks or preview.unit_names

    # Suggest from sensitivity.
    at.button(key="prune_suggest").click().run()
    _clean(at)
    over = at.session_state["prune_overrides"]
    assert over and set(over) <= set(units)
    assert all(0.0 <= r <= ui.actions.MAX_UNIT_RATIO for r in over.values()) or blocks
    if blocks:
        assert set(over.values()) == {1.0} and ui.actions.kept_block(preview) not in over
        assert len(over) == len(preview.engine.select(RATIO, {}, "global")["blocks"])
        assert any("Blocks to remove" in e.label for e in at.expander)

    # Fit a budget: search, then take it into the sliders.
    at.session_state["budget_quantity"] = "macs"
    at.session_state["budget_relative"] = True
    at.session_state["budget_share"] = BUDGETS[granularity]
    at.run()
    at.button(key="budget_search").click().run()
    _clean(at)
    result = at.session_state["_budget_result"][1]
    assert result.met and result.measured_cost <= result.target_cost * (1 + 1e-9)
    assert result.measured_cost < result.dense_cost
    labels = [m.label for m in at.metric]
    assert {
        "MACs, measured",
        "MACs, predicted",
        "Accuracy, measured",
        "Accuracy, predicted",
    } <= set(labels)
    at.button(key="budget_take").click().run()
    _clean(at)
    over = at.session_state["prune_overrides"]
    if blocks:
        assert result.removed_blocks and set(over) == set(result.removed_blocks)
    else:
        assert over == {u: r for u, r in result.ratios.items() if u in units}
        assert all(r <= ui.actions.MAX_UNIT_RATIO for r in over.values())
    shown = float(next(m.value for m in at.metric if m.label == "Effective MACs / image")
                  .replace(",", ""))  # fmt: skip
    if blocks:
        # The page previews exactly those blocks removed (`block_choice` checks the plan's
        # selection); its MACs count Conv/Linear layers only, not attention's matmuls.
        assert at.session_state["_prune_block_preview"][1].config.ignore is not None
        assert shown < result.dense_cost
    else:
        # The page prunes what the search measured: its MACs are the searched model's.
        assert math.isclose(shown, result.measured_cost, rel_tol=1e-6)
    assert any("From the budget search" in c.value for c in at.caption)
    # The result survives a rerun.
    at.run()
    assert at.session_state["_budget_result"][1] is result


@pytest.mark.usefixtures("fast")
def test_a_failing_search_says_so_in_one_line_and_removes_its_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fails(*args: object, progress: object = None, **kwargs: object) -> None:
        assert callable(progress)
        raise UserError("the budget is out of reach")

    monkeypatch.setattr(ui.actions, "budget_search", fails)
    at = _page("digits-mlp", "channel")
    at.button(key="budget_search").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Budget search failed: the budget is out of reach"]
    assert not at.get("progress")
    assert "_budget_result" not in at.session_state


def test_a_refused_budget_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page("digits-mlp", "unstructured")
    at.session_state["budget_quantity"] = "size"
    at.run()
    at.button(key="budget_search").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Budget search failed:"), errors
    assert "structured" in errors[0]
    assert not at.get("progress")
    assert pruning_core.budget.QUANTITIES == ("macs", "params", "size", "latency")


@pytest.mark.usefixtures("fast")
def test_a_kept_result_says_when_the_settings_changed_since() -> None:
    at = _page("digits-mlp", "channel")
    at.button(key="budget_search").click().run()
    _clean(at)
    assert not [i for i in at.info if "earlier settings" in i.value]
    at.session_state["budget_share"] = 0.2  # another budget than the one searched
    at.run()
    stale = [i.value for i in at.info if "earlier settings" in i.value]
    assert len(stale) == 1 and "Search" in stale[0], stale
    assert at.success  # the kept result is still shown, under the hint
    at.session_state["budget_share"] = at.session_state["_budget_result"][1].budget.value
    at.run()
    assert not [i for i in at.info if "earlier settings" in i.value]


@pytest.mark.parametrize("granularity", ["lowrank", "lowrank-energy"])
def test_low_rank_says_why_there_is_no_budget_search(granularity: str) -> None:
    at = _page("digits-cnn", granularity)
    _clean(at)
    assert not any(b.key == "budget_search" for b in at.button)  # nothing to click and crash
    assert any("No budget search here" in c.value for c in at.caption)


def test_bn_switch_changes_the_estimate_of_a_model_with_batchnorm() -> None:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["model_ref"] = "shapes-resnet"
    at.session_state["dataset_ref"] = "shapes"
    at.session_state["prune_granularity"] = "channel"
    at.session_state["prune_ratio"] = 0.5
    at.session_state["prune_estimate"] = True
    at.session_state["prune_estimate_n"] = 200
    at.run()
    assert not at.exception
    with_bn = next(m.value for m in at.metric if m.label.startswith("Accuracy on 200"))
    other = [c.value for c in at.caption if "BN recalibration:" in c.value]
    assert len(other) == 1 and other[0].startswith("without BN recalibration: ")
    without = other[0].split(": ")[1].split(" on ")[0]
    assert float(with_bn.rstrip("%")) > float(without.rstrip("%"))  # recalibration helps

    at.toggle(key="prune_bn_recal").set_value(False).run()
    assert not at.exception
    now = next(m.value for m in at.metric if m.label.startswith("Accuracy on 200"))
    assert now == without
    other = [c.value for c in at.caption if "BN recalibration:" in c.value]
    assert other == [f"with BN recalibration: {with_bn} on 200 images"]

    # Apply follows the switch: the session model scores what the estimate said.
    at.button(key="prune_apply").click().run()
    assert not at.exception
    committed = at.session_state["prune_committed"]
    assert committed.config.recalibrate_bn is False
