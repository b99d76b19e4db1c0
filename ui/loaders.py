"""Cached loading: shared read-only models and datasets, and the dense baseline.

`st.cache_resource` objects are shared by every session, so they are never mutated: whatever
prunes, trains or scores with gradients works on its own `pruning_core.layers.trainable_copy`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import torch

from pruning_core.data import DataBundle, load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.latency import measure_latency
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


@st.cache_data(show_spinner="Timing inference...", max_entries=32)
def baseline_latency(model_ref: str, batch_sizes: tuple[int, ...] = (1, 32)) -> pd.DataFrame:
    """Median / p10 / p90 CPU latency per batch size."""
    loaded = shared_model(model_ref)
    spec = loaded.spec
    rows = []
    for b in batch_sizes:
        x = torch.randn(b, spec.channels, spec.size, spec.size)
        lat = measure_latency(loaded.model, x, warmup=3, repeats=20, max_seconds=2.0)
        rows.append({"label": f"batch {b}", **lat.to_dict()})
    return pd.DataFrame(rows)
