"""Reusable widgets: they read and write session state and return plain values."""

from __future__ import annotations

import streamlit as st

from pruning_core.data import list_datasets
from pruning_core.models import list_models
from ui.state import init_state


def model_and_data_picker() -> tuple[str, str]:
    """Model and dataset select boxes bound to the session's selection."""
    init_state()
    models = [m.name for m in list_models()]
    labels = {m.name: f"{m.name} — {m.description}" for m in list_models()}
    if st.session_state["model_ref"] not in models:
        models.append(st.session_state["model_ref"])
    datasets = [d.name for d in list_datasets()]
    if st.session_state["dataset_ref"] not in datasets:
        datasets.append(st.session_state["dataset_ref"])
    c1, c2 = st.columns(2)
    c1.selectbox(
        "Model",
        models,
        key="model_ref",
        format_func=lambda n: labels.get(n, n),
        help="Sample models are trained and ship with the app; classic and torchvision ones start untrained.",
    )
    c2.selectbox(
        "Dataset",
        datasets,
        key="dataset_ref",
        help="digits and shapes work offline; the others download once or read a local copy.",
    )
    return st.session_state["model_ref"], st.session_state["dataset_ref"]


def sidebar_frame() -> None:
    """What every page shows in the sidebar: the current model and dataset."""
    init_state()
    with st.sidebar:
        st.caption("Current selection")
        st.markdown(
            f"**Model** `{st.session_state['model_ref']}`  \n**Dataset** `{st.session_state['dataset_ref']}`"
        )
