"""Cached loading: shared read-only models and datasets, and the dense baseline.

Latency is not cached here: `ui.latency_panel` keeps it per context, for a bounded time.

`st.cache_resource` objects are shared by every session, so they are never mutated: whatever
prunes, trains or scores with gradients works on its own `pruning_core.layers.trainable_copy`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pruning_core.data import DataBundle, load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.models import LoadedModel, load_model
from pruning_core.stats import model_summary


@st.cache_resource(show_spinner="Loading model...", max_entries=8)
def shared_model(ref: str) -> LoadedModel:
    """The model as loaded once per server (read-only: never mutate it)."""
    loaded = load_model(ref)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded


@st.cache_resource(show_spinner="Loading dataset...", max_entries=4)
def shared_data(ref: str) -> DataBundle:
    """The dataset as loaded once per server (read-only)."""
    return load_dataset(ref)


@st.cache_data(show_spinner="Measuring the baseline...", max_entries=32)
def baseline(model_ref: str, dataset_ref: str) -> dict[str, Any]:
    """Accuracy, size and cost of the unpruned model on the dataset (cached per pair)."""
    loaded, data = shared_model(model_ref), shared_data(dataset_ref)
    data.check_spec(loaded.spec)
    ev = evaluate(loaded.model, data, loaded.spec)
    return {
        **model_summary(loaded.model, loaded.spec),
        **ev.to_dict(),
        "class_names": list(data.class_names),
    }
