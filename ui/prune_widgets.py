"""Streamlit glue of the Inspect, Prune and Fine-tune pages: per-session caches, the job runner,
and the plain-language explanations shown beside the controls."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.jobs import JobRunner, get_runner
from pruning_core.models import LoadedModel
from pruning_core.prune import PruneConfig, list_methods
from pruning_core.stats import ActivationStats, activation_stats
from ui.loaders import shared_data, shared_model
from ui.prune_preview import Preview

# --------------------------------------------------------------------------- explanations

GRANULARITIES: dict[str, str] = {
    "unstructured": "unstructured (single weights)",
    "2:4": "2:4 semi-structured",
    "channel": "channels / filters",
    "head": "attention heads",
    "block": "residual blocks",
}

GRANULARITY_HELP: dict[str, str] = {
    "unstructured": (
        "Any single weight can go. Keeps the most accuracy for a given sparsity, but the "
        "tensors keep their shape: on ordinary dense hardware the zeros are still multiplied, "
        "so it saves time only with sparse kernels (CSR) at high sparsity, and size only when "
        "stored in a sparse format."
    ),
    "2:4": (
        "In every group of 4 consecutive input weights exactly 2 are zero (50%). NVIDIA GPUs "
        "since Ampere have sparse tensor cores that run this pattern up to ~2x faster; on a CPU "
        "it is just 50% unstructured sparsity."
    ),
    "channel": (
        "Whole filters (conv output channels) or neurons go, and with them the inputs of the "
        "next layer. The network becomes physically smaller: fewer MACs and faster on any "
        "hardware, usually at a larger accuracy cost than unstructured pruning."
    ),
    "head": (
        "Whole attention heads of a transformer go (rows of the qkv projection, columns of the "
        "output projection): a smaller, faster attention on any hardware."
    ),
    "block": (
        "Whole residual blocks are replaced by their identity shortcut (layer pruning): a "
        "shallower network, faster everywhere; residual networks often survive losing a few."
    ),
}

METHOD_HELP: dict[str, str] = {
    "magnitude": (
        "Magnitude: small weights matter least. Data-free, fast, the classic baseline "
        "(Han et al. 2015)."
    ),
    "random": "Random: the baseline every criterion must beat.",
    "activation": (
        "Activation: looks at the data: a weight matters as much as the signal it carries "
        "(|weight| x mean |input|), a channel as much as its mean output."
    ),
    "apoz": (
        "APoZ: channels whose outputs are almost always zero after the ReLU do little "
        "(Average Percentage of Zeros, Hu et al. 2016)."
    ),
    "wanda": (
        "Wanda: |weight| x norm of its input activation, compared within each output row "
        "(Sun et al. 2023); strong for large models without retraining."
    ),
    "taylor": (
        "Taylor: weight x gradient estimates how much the loss would change without it "
        "(Molchanov et al. 2019)."
    ),
    "bn-scale": (
        "BN scale: a channel whose BatchNorm gamma is near zero is switched off already "
        "(network slimming, Liu et al. 2017)."
    ),
}

CRITERIA_EXPLAINED = (
    "**Magnitude vs activation criteria.** A *magnitude* criterion looks only at the weights: "
    "small ones are assumed unimportant, no data needed. *Activation* (data-driven) criteria "
    "run a few calibration batches through the network and score what each weight or channel "
    "actually does to the signal (its input size, how often it is zero, its gradient). They cost "
    "a forward (and for Taylor a backward) pass, and can keep accuracy better when weight sizes "
    "mislead, e.g. after BatchNorm rescales a channel."
)

SCOPE_HELP = (
    "Global: one threshold across all layers, so layers with many unimportant weights lose "
    "more. Per layer: every layer loses the same share. Overrides in the table below win in "
    "both cases."
)

ZEROS_NO_SPEEDUP = (
    "**Why masked zeros give no speedup on dense hardware.** A dense matrix multiply does the "
    "same work whether a weight is 0.37 or 0.0: the zeros are still loaded and multiplied. "
    "Unstructured sparsity pays off only with sparse kernels (worth it at roughly 90%+ "
    "sparsity), special hardware (2:4 on recent GPUs), or compressed storage. Structured "
    "pruning (channels, heads, blocks) removes whole rows and columns, so the remaining tensors "
    "are smaller and any hardware runs them faster. The 'effective MACs' here count what a "
    "kernel that skips zeros would do."
)

SCHEDULE_HELP: dict[str, str] = {
    "oneshot": "Prune to the target at once, then fine-tune: prune-train-retrain's simplest form.",
    "linear": (
        "Iterative: several prune -> fine-tune cycles, sparsity rising in equal steps; the "
        "network adapts a little at a time."
    ),
    "agp": (
        "Automated gradual pruning (Zhu & Gupta 2017): iterative, big steps first while the "
        "network has redundancy to spare, small steps at the end."
    ),
    "dynamic": (
        "Dynamic: prune once, then recompute the masks from the current weights every few "
        "steps during fine-tuning; pruned weights keep learning and can come back "
        "(Dynamic Network Surgery). Magnitude criterion, unstructured or 2:4 only."
    ),
}

PRUNE_TRAIN_RETRAIN = (
    "**Prune, then retrain.** Removing weights hurts accuracy; a short fine-tune lets the "
    "remaining weights take over their job (Han et al. 2015). The masks are re-applied after "
    "every optimizer step, so pruned weights stay exactly zero and the sparsity holds. "
    "*Iterative* schedules (linear, AGP) alternate small pruning steps with fine-tuning; "
    "*dynamic* pruning lets the mask itself change while training."
)

REG_HELP: dict[str, str] = {
    "none": "No sparsity regularisation.",
    "l1": "L1 on the weights pushes small weights to exactly zero: helps magnitude pruning.",
    "slim": (
        "L1 on BatchNorm scales (network slimming): channels the network can do without get "
        "gamma near zero, then channel pruning with bn-scale removes them cheaply."
    ),
    "group-lasso": (
        "Group lasso: the L2 norm of each whole filter, summed; zeroes whole filters, which "
        "suits channel pruning."
    ),
}

REGULARISATION_EXPLAINED = (
    "**Regularisation.** With a sparsity penalty, the network is first *trained* to need fewer "
    "weights (for the chosen number of epochs), then pruned and fine-tuned: pruning then "
    "removes weights that are already near zero, so it costs less accuracy."
)


def method_options(granularity: str) -> list[str]:
    """Criteria that support this granularity (N:M patterns count as `N:M`)."""
    family = "N:M" if ":" in granularity else granularity
    return [m.name for m in list_methods() if family in m.granularities]


def method_label(name: str) -> str:
    """`magnitude - smallest |weight| first` for select boxes."""
    info = {m.name: m for m in list_methods()}.get(name)
    return f"{name} - {info.summary}" if info else name


# --------------------------------------------------------------------------- per-session caches


def preview_for(
    model_ref: str, dataset_ref: str, method: str, granularity: str
) -> tuple[Preview, LoadedModel]:
    """This session's slider engine for the selection (scores computed once, then cached).

    Only the latest engine is kept per session, so memory stays one model copy.

    Raises:
        UserError: The method/granularity does not fit the model (e.g. heads without attention).
    """
    base = shared_model(model_ref)
    key = (model_ref, dataset_ref, method, granularity)
    cached = st.session_state.get("_prune_preview")
    if isinstance(cached, tuple) and cached[0] == key:
        return cached[1], base
    st.session_state.pop("_prune_preview", None)
    config = PruneConfig(method=method, granularity=granularity)
    data = shared_data(dataset_ref)  # calibration for data-driven criteria, and the estimate
    with st.spinner(f"Scoring every weight with {method} (once; sliders then only threshold)..."):
        preview = Preview(base, config, data)
    st.session_state["_prune_preview"] = (key, preview)
    return preview, base


@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    """The server's one job runner (bounded queue; `PRUNING_LAB_MAX_JOBS` run at once)."""
    return get_runner()


@st.cache_data(show_spinner="Recording activations on calibration images...", max_entries=16)
def dense_activations(model_ref: str, dataset_ref: str, batches: int = 2) -> ActivationStats:
    """Activation statistics of the dense shared model (computed once per server)."""
    loaded = shared_model(model_ref)
    return activation_stats(loaded.model, loaded.spec, shared_data(dataset_ref), batches=batches)


def session_activations(
    loaded: LoadedModel, dataset_ref: str, token: Any, batches: int = 2
) -> ActivationStats:
    """Activation statistics of this session's pruned model, cached until it changes (`token`)."""
    cached = st.session_state.get("_inspect_acts")
    if isinstance(cached, tuple) and cached[0] == token:
        return cached[1]
    with st.spinner("Recording activations of the pruned model..."):
        acts = activation_stats(
            loaded.model, loaded.spec, shared_data(dataset_ref), batches=batches
        )
    st.session_state["_inspect_acts"] = (token, acts)
    return acts


def sensitivity_for(
    model_ref: str, dataset_ref: str, method: str, granularity: str, limit: int = 500
) -> pd.DataFrame:
    """Per-layer sensitivity of the dense model, measured once per session and selection.

    Shows a progress bar while it runs.
    """
    from pruning_core.experiments import sensitivity

    store = st.session_state.setdefault("_prune_sensitivity", {})
    key = (model_ref, dataset_ref, method, granularity, limit)
    if key in store:
        return store[key]
    base = shared_model(model_ref)
    bar = st.progress(0.0, text="Measuring sensitivity: pruning one layer at a time...")

    def progress(frac: float, msg: str) -> None:
        bar.progress(min(max(frac, 0.0), 1.0), text=f"Sensitivity: {msg}")

    df = sensitivity(
        copy.deepcopy(base.model),
        base.spec,
        shared_data(dataset_ref),
        method=method,
        granularity=granularity,
        limit=limit,
        progress=progress,
    )
    bar.empty()
    store[key] = df
    return df


def explain(text: str, label: str = "What is this?") -> None:
    """A collapsed explanation beside a control."""
    with st.expander(label):
        st.markdown(text)


def user_error(e: UserError, prefix: str = "") -> None:
    """Show a UserError as one clear line."""
    st.error(f"{prefix}{e}")
