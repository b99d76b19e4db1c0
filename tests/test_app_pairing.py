"""AppTest: picking a model switches to the dataset it was trained for (said in one line), and
a model shown on another dataset is flagged in one line, on every page that measures it."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui.pairing import home_dataset, mismatch

ROOT = Path(__file__).resolve().parents[1]
MODEL_PAGE = str(ROOT / "pages" / "1_model_and_data.py")


def _accuracy(at: AppTest) -> float:
    value = next(m.value for m in at.metric if m.label == "Accuracy (top-1)")
    return float(value.rstrip("%")) / 100


def test_picking_a_model_switches_to_its_dataset_and_a_mismatch_is_flagged() -> None:
    # Cheap models on purpose: the same rule moves shapes-resnet from digits to shapes.
    at = AppTest.from_file(MODEL_PAGE, default_timeout=300)
    at.session_state["dataset_ref"] = "shapes"
    at.run()
    assert not at.exception
    assert at.session_state["model_ref"] == "digits-cnn"
    assert [w.value for w in at.warning] == [mismatch("digits-cnn", "shapes")]
    assert "digits-cnn was trained on digits, not on shapes" in at.warning[0].value

    at.selectbox(key="model_ref").set_value("digits-mlp").run()
    assert not at.exception
    assert at.session_state["dataset_ref"] == "digits"
    assert [i.value for i in at.info if "switched" in i.value] == [
        "digits-mlp was trained on digits, so the dataset switched from shapes to digits."
    ]
    assert not at.warning
    assert _accuracy(at) > 0.9  # measured where it was trained

    # Choosing another dataset by hand is the user's call: kept, and flagged.
    at.selectbox(key="dataset_ref").set_value("shapes").run()
    assert not at.exception
    assert at.session_state["dataset_ref"] == "shapes"
    assert not [i for i in at.info if "switched" in i.value]
    assert [w.value for w in at.warning] == [mismatch("digits-mlp", "shapes")]
    assert _accuracy(at) < 0.5


def test_other_pages_flag_the_mismatch_too() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "3_prune.py"), default_timeout=300)
    at.session_state["model_ref"] = "shapes-vit"
    at.session_state["dataset_ref"] = "digits"
    at.session_state["prune_estimate"] = False
    at.run()
    assert not at.exception
    assert any("shapes-vit was trained on shapes, not on digits" in w.value for w in at.warning)


def test_home_dataset_of_names_folders_and_files(tmp_path: Path) -> None:
    assert home_dataset("digits-cnn") == "digits"
    assert home_dataset("shapes-vit") == "shapes"
    assert home_dataset("no-such-model") is None
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"dataset": "shapes"}), encoding="utf-8")
    assert home_dataset(str(folder)) == "shapes"
    assert mismatch(str(folder), "digits") is not None
    assert mismatch(str(folder), "shapes") is None
    (folder / "model.json").write_text("{not json", encoding="utf-8")
    assert home_dataset(str(folder)) is None  # unreadable: nothing flagged
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"")
    assert home_dataset(str(ckpt)) is None
