"""Which dataset goes with a model: picking a model switches to the dataset it was trained for,
and a model shown on another dataset is flagged in one line (its accuracy there means little).

A model's *home* dataset is the registry's `default_dataset` for a named model, or the
`dataset` its folder's model.json names (sample models, `train` and `prune` outputs, prepared
architectures). Unknown homes (a bare checkpoint) are never flagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from pruning_core.checkpoint import META_FILE
from pruning_core.data import list_datasets
from pruning_core.errors import UserError
from pruning_core.models import get_entry

__all__ = ["follow_model", "home_dataset", "mismatch", "switch_note"]

_NOTE = "_pairing_note"


def home_dataset(model_ref: str) -> str | None:
    """The dataset `model_ref` was trained or built for, or None when nothing says.

    Never raises: an unreadable folder or an unknown name has no known home.
    """
    path = Path(model_ref)
    if path.is_dir():
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        named = meta.get("dataset") if isinstance(meta, dict) else None
        return named if isinstance(named, str) and named else None
    if path.exists() or ":" in model_ref:  # a checkpoint file or a library architecture
        return None
    try:
        return get_entry(model_ref).default_dataset
    except UserError:
        return None


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


def mismatch(model_ref: str, dataset_ref: str) -> str | None:
    """One line when `dataset_ref` is not the dataset the model was trained for, else None."""
    home = home_dataset(model_ref)
    if home is None or home == dataset_ref:
        return None
    name = Path(model_ref).name if Path(model_ref).is_dir() else model_ref
    return (
        f"{name} was trained on {home}, not on {dataset_ref}: its accuracy here says little "
        f"about pruning (pick {home}, or fine-tune it on {dataset_ref} first)."
    )
