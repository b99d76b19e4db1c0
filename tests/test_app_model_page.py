"""AppTest of the Model & data page (run through app.py and on its own)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_page_shows_measured_baseline_and_reacts_to_model_change() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    acc = float(_metric(at, "Accuracy (top-1)").rstrip("%")) / 100
    assert acc > 0.95  # digits-cnn on digits
    assert _metric(at, "Parameters") == "151,306"
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) >= 2
    at.selectbox(key="model_ref").set_value("digits-mlp").run()
    assert not at.exception
    assert _metric(at, "Parameters") == "17,226"


def test_page_runs_standalone_and_reports_mismatch(tmp_path: Path) -> None:
    from PIL import Image

    for c in range(3):  # a 3-class image folder: digits-cnn predicts 10 classes
        (tmp_path / f"c{c}").mkdir()
        for i in range(2):
            Image.new("L", (8, 8), color=40 * c + i).save(tmp_path / f"c{c}" / f"{i}.png")
    at = AppTest.from_file(str(ROOT / "pages" / "1_model_and_data.py"), default_timeout=120).run()
    assert not at.exception and at.metric
    at = AppTest.from_file(str(ROOT / "pages" / "1_model_and_data.py"), default_timeout=120)
    at.session_state["dataset_ref"] = f"folder:{tmp_path}"
    at.run()
    assert not at.exception
    # The engine's reason, as it gave it (not a guess that the pair is a mismatch).
    assert any(
        e.value.startswith("Cannot use digits-cnn on folder:")
        and "has 3 classes but the model predicts 10" in e.value
        for e in at.error
    )
