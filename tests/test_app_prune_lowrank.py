"""AppTest: picking a low-rank granularity on the Prune page explains low rank beside it, and
its controls say what low rank does (singular values, a share of rank or energy, the scope as
the plan reads it), not the words written for pruning weights."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "3_prune.py")


def test_low_rank_is_explained_when_picked() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    assert not any(e.label == "What low rank is" for e in at.expander)
    at.selectbox(key="prune_granularity").set_value("lowrank").run()
    assert not at.exception, at.exception
    boxes = [e for e in at.expander if e.label == "What low rank is"]
    assert len(boxes) == 1
    assert "rank" in boxes[0].markdown[0].value


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_low_rank_controls_speak_of_singular_values_and_rank() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    # Weight pruning first: the generic words are there (so their absence below means something).
    assert "Magnitude (L1/L2)" in at.selectbox(key="prune_method").options
    assert at.radio(key="prune_scope").options == ["global threshold", "same ratio per layer"]
    assert at.slider(key="prune_ratio").label == "Share to remove"
    assert any(e.label == "Magnitude vs activation criteria" for e in at.expander)

    at.selectbox(key="prune_granularity").set_value("lowrank").run()
    assert not at.exception, at.exception
    crit = at.selectbox(key="prune_method")
    assert crit.options == ["Singular values"] and crit.disabled
    assert "singular value" in crit.help and "Magnitude" not in crit.help
    scope = at.radio(key="prune_scope")
    assert scope.options == [
        "global threshold on normalised singular values",
        "same share of rank per layer",
    ]
    assert not scope.disabled and "S_i / ||S||" in scope.help
    assert at.slider(key="prune_ratio").label == "Share of rank to remove"
    assert "rank" in at.slider(key="prune_ratio").help
    text = _captions(at)
    assert "Singular values: " in text and "Magnitude:" not in text
    assert "loses that share of its rank" in text
    assert not any(e.label == "Magnitude vs activation criteria" for e in at.expander)


def test_low_rank_energy_says_the_scope_does_not_apply() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.selectbox(key="prune_granularity").set_value("lowrank-energy").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="prune_method").options == ["Singular values (energy kept)"]
    scope = at.radio(key="prune_scope")
    assert scope.disabled
    assert "scope changes nothing" in scope.help and "scope changes nothing" in _captions(at)
    assert at.slider(key="prune_ratio").label == "Share of energy to remove"


def test_low_rank_preview_counts_the_applied_model_not_zeros() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    sparsity = next(m for m in at.metric if m.label == "Sparsity")
    assert "shapes" not in sparsity.help
    assert any(c.key == "prune_mask_chart" for c in at.get("plotly_chart"))
    assert any(e.label == "Why zeros alone give no speedup" for e in at.expander)

    at.selectbox(key="prune_granularity").set_value("lowrank").run()
    assert not at.exception, at.exception
    # One label for one definition: low rank's sparsity is counted from the applied shapes.
    sparsity = next(m for m in at.metric if m.label == "Sparsity")
    assert "no weight to zero" in sparsity.help and "shapes" in sparsity.help
    # No all-kept mask and no lesson on zeros; the caption says what the preview does.
    assert not any(c.key == "prune_mask_chart" for c in at.get("plotly_chart"))
    assert not any(e.label == "Why zeros alone give no speedup" for e in at.expander)
    text = _captions(at)
    assert "rank-r approximation" in text and "weights are masked" not in text
