"""The Prune page when the criterion, not the granularity, cannot prune the model: the one
line names the criterion (bn-scale on a model without BatchNorm), not "Channels pruning does not
apply here"."""

from __future__ import annotations

from apptest_helpers import app_on
from streamlit.testing.v1 import AppTest


def _refused(model_ref: str, dataset_ref: str, granularity: str) -> tuple[AppTest, list[str]]:
    """The Prune page on `model_ref` with `granularity` and bn-scale picked: the app and its
    "does not apply here" lines."""
    at = app_on(model_ref, dataset_ref, "pages/3_prune.py")
    at.selectbox(key="prune_granularity").set_value(granularity).run()
    at.selectbox(key="prune_method").set_value("bn-scale").run()
    assert not at.exception, at.exception
    return at, _said(at)


def _said(at: AppTest) -> list[str]:
    return [i.value for i in at.info if "does not apply here" in i.value]


def test_a_criterion_the_model_refuses_is_named_as_the_cause() -> None:
    at, said = _refused("digits-mlp", "digits", "channel")
    assert said == [
        "BN scale (network slimming) does not apply here: bn-scale needs BatchNorm layers after "
        "the layers it prunes; this model has none; pick another criterion."
    ], said
    # Nothing below the refusal: no sliders for a preview that cannot exist.
    assert not [s for s in at.slider if s.key == "prune_ratio"]

    # Another criterion on the same granularity works at once.
    at.selectbox(key="prune_method").set_value("magnitude").run()
    assert not at.exception, at.exception
    assert not _said(at)
    assert [s for s in at.slider if s.key == "prune_ratio"]


def test_a_block_without_batchnorm_is_named_for_block_pruning() -> None:
    """shapes-vit has BatchNorm (its conv stem) but none in its transformer blocks: bn-scale
    fits its channels, not its blocks, and the page says which."""
    _, said = _refused("shapes-vit", "shapes", "block")
    assert len(said) == 1 and said[0].startswith("BN scale (network slimming) does not apply"), said
    assert "needs BatchNorm in every block; 'blocks.0' has none" in said[0], said


def test_a_granularity_the_model_refuses_is_named_before_any_criterion() -> None:
    """digits-mlp has no residual blocks: picking bn-scale there blames the granularity, since
    no other criterion would help."""
    _, said = _refused("digits-mlp", "digits", "block")
    assert len(said) == 1 and said[0].startswith("Residual blocks"), said
