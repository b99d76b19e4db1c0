"""What the pages compute once and keep: per server (`st.cache_*`) or per session.

Per-server caches hold what depends only on the dense shared model; per-session caches
(`ui.state.session_cached`) hold what depends on the session's own model or choices, one
entry each so a session never keeps two model copies.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.budget import saved_bytes
from pruning_core.evaluate import evaluate
from pruning_core.experiments import DEFAULT_SENSITIVITY_RATIOS, sensitivity
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressReport
from pruning_core.prune import PruneConfig
from pruning_core.slider import EstimateCache, SliderPreview
from pruning_core.stats import ActivationStats, activation_stats, layer_table
from ui.choices import unfit_criteria, unfit_granularities
from ui.loaders import shared_data, shared_model
from ui.state import session_cached

# Per selection; an entry is three numbers, so a server keeps 32 x 512 at most.
SHARED_ESTIMATES_KEPT = 512

__all__ = [
    "dense_activations",
    "dense_estimate",
    "dense_layer_table",
    "dense_size",
    "dense_unfit_criteria",
    "dense_unfit_granularities",
    "model_layer_table",
    "preview_for",
    "sensitivity_for",
    "session_activations",
    "shared_estimates",
]


@st.cache_data(show_spinner="Measuring every layer...", max_entries=16)
def dense_layer_table(ref: str) -> pd.DataFrame:
    """`stats.layer_table` of the dense shared model (computed once per server)."""
    loaded = shared_model(ref)
    return layer_table(loaded.model, loaded.spec)


@st.cache_data(show_spinner=False, max_entries=16)
def dense_unfit_granularities(ref: str) -> dict[str, str]:
    """The granularities the dense shared model cannot take, with why
    (`ui.choices.unfit_granularities`; once per server)."""
    loaded = shared_model(ref)
    return unfit_granularities(loaded.model, loaded.spec)


@st.cache_data(show_spinner=False, max_entries=64)
def dense_unfit_criteria(ref: str, granularity: str | None = None) -> dict[str, str]:
    """The criteria the dense shared model cannot be scored by at `granularity`, with why
    (`ui.choices.unfit_criteria`; once per server and granularity)."""
    loaded = shared_model(ref)
    return unfit_criteria(loaded.model, loaded.spec, granularity)


def model_layer_table(loaded: LoadedModel, token: Any) -> pd.DataFrame:
    """`stats.layer_table` of this session's model, measured once per version (`token`)."""
    return session_cached("_inspect_table", token, lambda: layer_table(loaded.model, loaded.spec))


@st.cache_data(show_spinner="Recording activations on calibration images...", max_entries=16)
def dense_activations(model_ref: str, dataset_ref: str, batches: int = 2) -> ActivationStats:
    """Activation statistics of the dense shared model (computed once per server)."""
    loaded = shared_model(model_ref)
    return activation_stats(loaded.model, shared_data(dataset_ref), loaded.spec, batches=batches)


def session_activations(
    loaded: LoadedModel, dataset_ref: str, token: Any, batches: int = 2
) -> ActivationStats:
    """Activation statistics of this session's pruned model, cached until it changes (`token`)."""

    def record() -> ActivationStats:
        with st.spinner("Recording activations of the pruned model..."):
            return activation_stats(
                loaded.model, shared_data(dataset_ref), loaded.spec, batches=batches
            )

    return session_cached("_inspect_acts", token, record)


def preview_for(
    model_ref: str,
    dataset_ref: str,
    method: str,
    granularity: str,
    *,
    ignore: tuple[str, ...] | None = None,
    slot: str = "_prune_preview",
) -> tuple[SliderPreview, LoadedModel]:
    """This session's slider engine for the selection (scores computed once, then cached).

    Only the latest engine is kept per session and `slot`, so memory stays one model copy per
    slot (the page's, and for blocks chosen by name a second: `ui.actions.block_choice`).

    Args:
        model_ref, dataset_ref, method, granularity: The selection.
        ignore: Layers or blocks kept out of the plan (None: the classifier, the default).
        slot: The session key the engine is kept under.

    Raises:
        UserError: The criterion/granularity does not fit the model (e.g. heads without
            attention).
    """
    base = shared_model(model_ref)

    def build() -> SliderPreview:
        config = PruneConfig(criterion=method, granularity=granularity, ignore=ignore)
        data = shared_data(dataset_ref)  # calibration for data-driven criteria, and estimates
        estimates = shared_estimates(
            model_ref, dataset_ref, method, granularity, ignore, id(base.model)
        )
        with st.spinner(
            f"Scoring every weight with {method} (once; sliders then only threshold)..."
        ):
            return SliderPreview(base, config, data, estimates)

    key = (model_ref, dataset_ref, method, granularity, ignore)
    return session_cached(slot, key, build), base


@st.cache_resource(show_spinner=False, max_entries=32)
def shared_estimates(
    model_ref: str,
    dataset_ref: str,
    method: str,
    granularity: str,
    ignore: tuple[str, ...] | None,
    model_id: int,
) -> EstimateCache:
    """The slider's accuracy estimates for one selection, shared by every session of the
    server (a class steps through the same positions: each is evaluated once). `model_id` is
    the shared model object's identity, so a reloaded model never meets estimates of the one
    it replaced."""
    return EstimateCache(maxsize=SHARED_ESTIMATES_KEPT)


@st.cache_data(show_spinner=False, max_entries=16)
def dense_size(model_ref: str) -> int:
    """Bytes of the dense shared model's weights file (`budget.saved_bytes`; once per server)."""
    return saved_bytes(shared_model(model_ref).model)


def sensitivity_for(
    model_ref: str,
    dataset_ref: str,
    method: str,
    granularity: str,
    limit: int = 500,
    ratios: tuple[float, ...] = DEFAULT_SENSITIVITY_RATIOS,
) -> pd.DataFrame:
    """Per-layer sensitivity of the dense model, measured once per session and selection.

    Shows a progress bar while it runs, and removes it however the measurement ends.

    Raises:
        UserError: The granularity has no per-layer ratios, or nothing is prunable.
    """
    store: dict[tuple[Any, ...], pd.DataFrame] = st.session_state.setdefault(
        "_prune_sensitivity", {}
    )
    key = (model_ref, dataset_ref, method, granularity, limit, ratios)
    if key in store:
        return store[key]
    base = shared_model(model_ref)
    bar = st.progress(0.0, text="Measuring sensitivity: pruning one layer at a time...")

    def progress(p: ProgressReport) -> None:
        bar.progress(min(max(p.fraction, 0.0), 1.0), text=f"Sensitivity: {p.message}")

    try:
        df = sensitivity(
            trainable_copy(base.model),
            shared_data(dataset_ref),
            base.spec,
            ratios=ratios,
            method=method,
            granularity=granularity,
            limit=limit,
            progress=progress,
        )
    finally:
        bar.empty()
    store[key] = df
    return df


@st.cache_data(show_spinner=False, max_entries=64)
def dense_estimate(model_ref: str, dataset_ref: str, n_eval: int) -> float:
    """The dense model's top-1 on the first `n_eval` validation images (once per server: it
    depends only on the shared dense model), so the Prune page's estimate compares like with
    like."""
    base = shared_model(model_ref)
    return evaluate(base.model, shared_data(dataset_ref), base.spec, limit=n_eval).accuracy
