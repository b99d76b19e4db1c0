"""Reusable widgets: they read and write session state and return plain values."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pruning_core.data import DataBundle, list_datasets
from pruning_core.errors import UserError
from pruning_core.models import LoadedModel, list_models
from ui.loaders import baseline, shared_data, shared_model
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


def baseline_or_stop(model_ref: str, dataset_ref: str) -> dict[str, Any]:
    """The dense model's measured baseline (`ui.loaders.baseline`); when the model and the
    dataset do not fit together, says so and stops the page."""
    try:
        return baseline(model_ref, dataset_ref)
    except UserError as e:
        st.error(f"This model and dataset do not fit together: {e}")
        st.stop()


def model_and_data_or_stop(model_ref: str, dataset_ref: str) -> tuple[LoadedModel, DataBundle]:
    """The shared model and dataset, checked to fit together without measuring anything;
    when they do not fit, says so and stops the page."""
    try:
        loaded, data = shared_model(model_ref), shared_data(dataset_ref)
        data.check_spec(loaded.spec)
    except UserError as e:
        st.error(f"This model and dataset do not fit together: {e}")
        st.stop()
    return loaded, data


def explain(text: str, label: str = "What is this?") -> None:
    """A collapsed explanation beside a control."""
    with st.expander(label):
        st.markdown(text)


def sidebar_frame() -> None:
    """What every page shows in the sidebar: the current model and dataset."""
    init_state()
    with st.sidebar:
        st.caption("Current selection")
        st.markdown(
            f"**Model** `{st.session_state['model_ref']}`  \n**Dataset** `{st.session_state['dataset_ref']}`"
        )
