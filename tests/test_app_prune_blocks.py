"""AppTest of the Prune page with block granularity: beside the preview, how many blocks the
ratio removes and which ratios give the same model (a move inside that range changes nothing,
and the page says why)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_prune.py")


def _macs(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label.startswith("Effective MACs"))


def _notes(at: AppTest, word: str) -> list[str]:
    return [c.value for c in at.caption if word in c.value]


def _page(model_ref: str, dataset_ref: str, granularity: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["model_ref"] = model_ref
    at.session_state["dataset_ref"] = dataset_ref
    at.session_state["prune_granularity"] = granularity
    at.session_state["prune_estimate"] = False  # counts only: no forward pass per move
    at.session_state["prune_ratio"] = 0.6
    at.run()
    assert not at.exception
    return at


def test_block_ratio_says_how_many_blocks_and_which_ratios_give_the_same_model() -> None:
    at = _page("shapes-resnet", "shapes", "block")
    # shapes-resnet has 4 removable blocks (layer1.0, layer1.1, layer2.1, layer3.1).
    assert _notes(at, "removable blocks") == [
        "0.60 removes 2 of the 4 removable blocks (ratios 0.50–0.74 give the same model)."
    ]
    at_60 = _macs(at)
    at.slider(key="prune_ratio").set_value(0.7).run()
    assert not at.exception
    assert _macs(at) == at_60  # the same model...
    assert _notes(at, "removable blocks") == [  # ...and the page says so
        "0.70 removes 2 of the 4 removable blocks (ratios 0.50–0.74 give the same model)."
    ]
    at.slider(key="prune_ratio").set_value(0.75).run()
    assert _macs(at) != at_60
    assert _notes(at, "removable blocks") == [
        "0.75 removes 3 of the 4 removable blocks (ratios 0.75–0.99 give the same model; no "
        "ratio removes more: one block always stays)."
    ]
    at.slider(key="prune_ratio").set_value(0.2).run()
    assert _notes(at, "removable blocks") == [
        "0.20 removes none of the 4 removable blocks (ratios 0.00–0.24 give the same model)."
    ]


def test_blocks_chosen_by_name_say_the_slider_does_not_apply() -> None:
    at = _page("shapes-resnet", "shapes", "block")
    pick = next(m for m in at.multiselect if str(m.key).startswith("prune_blocks_"))
    pick.set_value([pick.options[0]]).run()
    assert not at.exception
    assert _notes(at, "removable blocks") == []
    assert _notes(at, "chosen by name") == [
        "The 1 block chosen by name is removed; the share slider does not apply while blocks "
        "are chosen."
    ]


def test_other_granularities_have_no_block_note() -> None:
    at = _page("digits-mlp", "digits", "channel")
    assert _notes(at, "removable blocks") == [] and _notes(at, "chosen by name") == []
