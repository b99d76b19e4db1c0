"""The Trade-offs page's ratio-strategies panel after its granularity stopped fitting the
model: it falls back to the panel's own default (channels), not to the first offered, and its
empty state names the settings the button will run, not fixed defaults."""

from __future__ import annotations

from apptest_helpers import app_on, pick_model


def test_strategies_fall_back_to_their_default_and_say_what_will_run() -> None:
    at = app_on("shapes-vit", "shapes", "pages/5_tradeoffs.py")
    at.selectbox(key="tradeoff_strat_granularity").set_value("head").run()
    at.number_input(key="tradeoff_strat_epochs").set_value(0).run()
    assert not at.exception, at.exception
    said = " ".join(i.value for i in at.info)
    assert "Attention heads, no fine-tune" in said, said

    pick_model(at, "digits-mlp", then="pages/5_tradeoffs.py")
    assert not at.exception, at.exception
    box = at.selectbox(key="tradeoff_strat_granularity")
    assert box.value == "channel"
    assert "Attention heads" not in box.options
    notes = [c.value for c in at.caption if c.value.startswith("Attention heads")]
    assert notes == [
        "Attention heads does not apply to digits-mlp: Channels (filters / neurons) instead."
    ], notes
    said = " ".join(i.value for i in at.info)
    assert "MACs at 0.5 of dense" in said and "Attention heads" not in said, said


def test_strategies_criterion_falls_back_when_the_model_has_no_batchnorm() -> None:
    """bn-scale picked on a model with BatchNorm, then a model without any: the criterion box
    no longer offers it, falls back to the panel's default (magnitude) and says why."""
    at = app_on("shapes-resnet", "shapes", "pages/5_tradeoffs.py")
    box = at.selectbox(key="tradeoff_strat_method")
    assert "BN scale (network slimming)" in box.options, box.options
    box.set_value("bn-scale").run()
    assert not at.exception, at.exception

    pick_model(at, "digits-mlp", then="pages/5_tradeoffs.py")
    assert not at.exception, at.exception
    box = at.selectbox(key="tradeoff_strat_method")
    assert box.value == "magnitude"
    assert "BN scale (network slimming)" not in box.options, box.options
    notes = [c for c in at.caption if c.value.startswith("BN scale")]
    assert [c.value for c in notes] == [
        "BN scale (network slimming) does not apply to digits-mlp: Magnitude (L1/L2) instead."
    ], [c.value for c in notes]


def test_strategies_criterion_a_granularity_does_not_score_is_replaced_and_said() -> None:
    at = app_on("shapes-resnet", "shapes", "pages/5_tradeoffs.py")
    at.selectbox(key="tradeoff_strat_method").set_value("bn-scale").run()
    at.selectbox(key="tradeoff_strat_granularity").set_value("unstructured").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="tradeoff_strat_method").value == "magnitude"
    notes = [c.value for c in at.caption if c.value.startswith("BN scale")]
    assert notes == [
        "BN scale (network slimming) does not score Unstructured (single weights): "
        "Magnitude (L1/L2) instead."
    ], notes
