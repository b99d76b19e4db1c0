"""Which dataset goes with a model: picking a model switches to the dataset it was trained for,
and a model shown on another dataset is flagged in one line (its accuracy there means little).

A model's *home* dataset and the one-line mismatch are `pruning_core.pairing`'s, shared with
the CLI.
"""

from __future__ import annotations

import streamlit as st

from pruning_core.data import list_datasets
from pruning_core.pairing import dataset_mismatch as mismatch
from pruning_core.pairing import home_dataset

__all__ = ["follow_model", "home_dataset", "mismatch", "switch_note"]

_NOTE = "_pairing_note"


def follow_model() -> None:
    """Model select-box callback: switch the dataset to the new model's home dataset (when it
    is one the app offers by name) and keep a one-line note saying so."""
    model_ref, dataset_ref = st.session_state["model_ref"], st.session_state["dataset_ref"]
    home = home_dataset(model_ref)
    if home is None or home == dataset_ref or home not in {d.name for d in list_datasets()}:
        return
    st.session_state["dataset_ref"] = home
    st.session_state[_NOTE] = (
        (model_ref, home),
        f"{model_ref} was trained on {home}, so the dataset switched from {dataset_ref} to {home}.",
    )


def switch_note(model_ref: str, dataset_ref: str) -> str | None:
    """The note of the last automatic switch, while the selection is still the one it made."""
    held = st.session_state.get(_NOTE)
    if isinstance(held, tuple) and held[0] == (model_ref, dataset_ref):
        return str(held[1])
    return None
