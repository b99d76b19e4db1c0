"""State that survives: selection, settings, the applied model and jobs outlive page changes.

Streamlit drops the value of a widget that a run does not draw (and, before the fix, lost the
kept copy too after a polling fragment ran: model, dataset and settings fell back to their
defaults after leaving Trade-offs while a sweep ran). `ui.state.init_state` keeps them.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui.state import DEFAULTS, KEEP

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def _widget_keys() -> set[str]:
    """Every literal widget key in pages/ and ui/."""
    keys: set[str] = set()
    for path in [*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py")]:
        keys |= set(re.findall(r"\bkey=\"([A-Za-z0-9_]+)\"", path.read_text(encoding="utf-8")))
    return keys


def test_every_setting_widget_is_kept() -> None:
    # A default that a widget edits is a setting: it must be kept across pages.
    settings = set(DEFAULTS) & _widget_keys()
    assert settings, "no widget keys found: the pattern no longer matches the sources"
    assert settings <= set(KEEP), sorted(settings - set(KEEP))
    assert set(KEEP) <= set(DEFAULTS), sorted(set(KEEP) - set(DEFAULTS))


def test_a_dropped_widget_value_comes_back() -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.run()
    at.switch_page("pages/5_tradeoffs.py").run()
    at.text_input(key="tradeoff_ratios").set_value("0.3, 0.8").run()
    at.number_input(key="tradeoff_ft_epochs").set_value(0).run()
    at.switch_page("pages/2_inspect.py").run()
    assert not at.exception
    # What Streamlit did after a polling fragment: the values are gone from the session.
    for key in ("model_ref", "tradeoff_ratios", "tradeoff_ft_epochs"):
        del at.session_state[key]
    at.run()
    at.switch_page("pages/5_tradeoffs.py").run()
    assert not at.exception
    assert at.session_state["model_ref"] == "digits-mlp"
    assert at.text_input(key="tradeoff_ratios").value == "0.3, 0.8"
    assert at.number_input(key="tradeoff_ft_epochs").value == 0
