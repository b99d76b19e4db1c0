"""AppTest: picking a low-rank granularity on the Prune page explains low rank beside it."""

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
