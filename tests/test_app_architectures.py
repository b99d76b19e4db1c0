"""The app's architectures from torchvision and timm: a search box, built for the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pruning_core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "1_model_and_data.py")


def _params(at: AppTest) -> int:
    return int(next(m.value for m in at.metric if m.label == "Parameters").replace(",", ""))


def test_search_and_use_an_architecture_built_for_the_dataset() -> None:
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.text_input(key="arch_query").set_value("mobilenetv3_small_05").run()
    assert not at.exception
    pick = at.selectbox(key="arch_pick")
    assert "timm:mobilenetv3_small_050" in pick.options
    pick.set_value("timm:mobilenetv3_small_050")
    at.button(key="arch_use").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    ref = at.session_state["model_ref"]
    meta = json.loads((Path(ref) / "model.json").read_text())
    assert meta["arch"] == "timm:mobilenetv3_small_050"
    assert meta["spec"]["num_classes"] == 10  # digits' classes; grey images feed RGB stems
    assert meta["prepared"]["dataset"] == "digits"
    assert _params(at) > 100_000  # the page measures the built model, not digits-cnn
    # Another dataset rebuilds it for that one (32-px shapes).
    at.selectbox(key="dataset_ref").set_value("shapes").run()
    assert not at.exception and not at.error
    assert at.session_state["model_ref"] != ref
    again = json.loads((Path(at.session_state["model_ref"]) / "model.json").read_text())
    assert again["prepared"]["dataset"] == "shapes" and again["arch"] == meta["arch"]


def test_suggested_architecture_in_the_model_box_is_built_for_the_dataset() -> None:
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.selectbox(key="model_ref").set_value("torchvision:resnet18").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    meta = json.loads((Path(at.session_state["model_ref"]) / "model.json").read_text())
    assert meta["arch"] == "torchvision:resnet18" and meta["spec"]["num_classes"] == 10


def test_an_architecture_that_cannot_be_built_shows_one_error_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ui.architectures

    def refuse(*a: object, **k: object) -> None:
        raise UserError("could not fetch pretrained weights (offline)\nsecond line")

    monkeypatch.setattr(ui.architectures, "build_for_data", refuse)
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.text_input(key="arch_query").set_value("timm:lcnet_050").run()
    at.checkbox(key="arch_pretrained").check()
    at.button(key="arch_use").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "timm:lcnet_050" in errors[0] and "\n" not in errors[0]
    assert at.session_state["model_ref"] == "digits-cnn"  # nothing changed
    assert at.metric  # the page still shows the model it had
