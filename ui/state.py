"""Session state: one place for the keys every page reads, initialised idempotently.

Every page calls `init_state()` first, so a page also works when run on its own (Streamlit's
AppTest runs files in `pages/` without app.py).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

DEFAULTS: dict[str, Any] = {
    "model_ref": "digits-cnn",
    "dataset_ref": "digits",
}


def init_state() -> None:
    """Set every default key that is missing (safe to call on every run)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value


def selection() -> tuple[str, str]:
    """The (model, dataset) the user picked."""
    init_state()
    return st.session_state["model_ref"], st.session_state["dataset_ref"]
