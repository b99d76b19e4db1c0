"""The Trade-offs sweep's Methods box offers the criteria that score its granularity and the
model; ones kept from another granularity or model are left out before a run, and said."""

from __future__ import annotations

from apptest_helpers import app_on, pick_model


def _notes(at) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.value for c in at.caption if c.value.startswith("Left out:")]


def test_methods_follow_the_granularity_and_the_model() -> None:
    at = app_on("shapes-resnet", "shapes", "pages/5_tradeoffs.py")
    at.selectbox(key="tradeoff_granularity").set_value("channel").run()
    methods = at.multiselect(key="tradeoff_methods")
    assert "BN scale (network slimming)" in methods.options, methods.options
    methods.set_value(["magnitude", "bn-scale"]).run()
    assert not at.exception, at.exception
    assert _notes(at) == []

    # bn-scale scores channels only: not a weight criterion.
    at.selectbox(key="tradeoff_granularity").set_value("unstructured").run()
    assert not at.exception, at.exception
    methods = at.multiselect(key="tradeoff_methods")
    assert methods.value == ["magnitude"]
    assert "BN scale (network slimming)" not in methods.options
    assert _notes(at) == [
        "Left out: BN scale (network slimming) (does not score Unstructured (single weights))."
    ], _notes(at)
    said = " ".join(i.value for i in at.info)
    assert "Magnitude (L1/L2);" in said and "BN scale" not in said, said

    # Back to channels, bn-scale picked again, then a model without BatchNorm.
    at.selectbox(key="tradeoff_granularity").set_value("channel").run()
    at.multiselect(key="tradeoff_methods").set_value(["bn-scale", "random"]).run()
    pick_model(at, "digits-mlp", then="pages/5_tradeoffs.py")
    assert not at.exception, at.exception
    assert at.multiselect(key="tradeoff_methods").value == ["random"]
    assert _notes(at) == ["Left out: BN scale (network slimming) (does not apply to digits-mlp)."]
