"""Latency panels: the dense model's on Model & data, the applied model's on Prune.

Every number follows `pruning_core.timing.PROTOCOL` (the one `pruning-lab bench` and the report
use) and is shown with the protocol in words and the time it was taken. Measurements live in a
`MeasurementCache` shared by the server (the dense model's latency is the same for every
session), keyed by their whole context and valid for a bounded time; a button measures again.
"""

from __future__ import annotations

from collections.abc import Hashable

import pandas as pd
import streamlit as st

from pruning_core.latency import (
    PROTOCOL,
    Measured,
    MeasurementCache,
    benchmark_backends,
    measure_batches,
)
from pruning_core.layers import example_input
from pruning_core.plots import latency_figure
from ui.choices import plan_of, saves_zeros
from ui.loaders import shared_model
from ui.session import PrunedModel
from ui.widgets import data_table

__all__ = [
    "applied_latency_panel",
    "applied_model_kind",
    "dense_latency",
    "dense_latency_panel",
    "latency_cache",
    "measure_dense_latency",
]

# The measurements are taken on the CPU: the app's server is a CPU machine for a class.
DEVICE = "cpu"

# What the applied model's latency can show, by what pruning made of the model.
MASKED_KIND = (
    "Your model keeps its full-size tensors with zeros in them: dense kernels still multiply "
    "every zero, so expect no measurable difference from dense; only sparse kernels (CSR on "
    "CPU at high sparsity, 2:4 on recent NVIDIA GPUs) can skip them."
)
SHRUNK_KIND = (
    "Your model is physically smaller: the removed {what} are gone from its tensors, so dense "
    "kernels do less work; the time drops as far as that work was a large share of it."
)
FACTORISED_KIND = (
    "Your model is factorised, not masked: it has no zeros; each factorised layer is two "
    "thinner dense layers, a smaller dense model on the same kernels. It is faster only where "
    "rank x (in + out) is well below in x out, enough to pay for the extra layer call."
)
_SHRUNK_WHAT = {"channel": "channels", "head": "attention heads", "block": "residual blocks"}


@st.cache_resource
def latency_cache() -> MeasurementCache:
    """The server's latency measurements (one per context, ten minutes at most)."""
    return MeasurementCache(max_entries=64, max_age_s=600.0)


def dense_context(model_ref: str) -> Hashable:
    """What a dense latency of `model_ref` depends on: the model, the protocol, the device."""
    return ("dense", model_ref, PROTOCOL, DEVICE)


def measure_dense_latency(model_ref: str, *, refresh: bool = False) -> Measured:
    """The dense model's latency at each of the protocol's batch sizes (`measure_batches`),
    measured now unless a valid measurement of the same context is kept (no Streamlit
    elements: the server's start-up warm-up calls it too, `ui.prewarm`)."""
    loaded = shared_model(model_ref)

    def run() -> pd.DataFrame:
        return measure_batches(
            loaded.model,
            lambda b: example_input(loaded.model, loaded.spec, b, random=True),
            protocol=PROTOCOL,
        )

    return latency_cache().measure(dense_context(model_ref), run, refresh=refresh)


def dense_latency(model_ref: str, *, refresh: bool = False) -> Measured:
    """`measure_dense_latency` under a spinner (a page's call)."""
    with st.spinner("Timing inference..."):
        return measure_dense_latency(model_ref, refresh=refresh)


def dense_latency_panel(model_ref: str) -> None:
    """The dense model's CPU latency chart, the protocol, when it was measured, re-measure."""
    refresh = st.button(
        "Re-measure latency",
        key="latency_remeasure",
        help="Time the model again now (the machine's load changes; kept up to 10 minutes).",
    )
    got = dense_latency(model_ref, refresh=refresh)
    st.plotly_chart(
        latency_figure(got.table, "CPU latency of the dense model"), key="latency_chart"
    )
    st.caption(
        f"{got.table.attrs.get('protocol', PROTOCOL.describe())}; {got.when()}. "
        f"`pruning-lab bench --model {model_ref} --backends dense --batch-size N` times the same "
        "way. Pruning only pays off when this number drops, which masked zeros alone do not do."
    )


def applied_model_kind(granularity: str) -> str:
    """What timing the applied model can show, in one or two sentences, by what the pruning
    of `granularity` made of it: zeros in full-size tensors (single weights, N:M), a
    physically smaller model (channels, heads, blocks) or a factorised one (low rank: no
    zeros, two thinner dense layers per factorised layer)."""
    plan = plan_of(granularity)
    if not plan.structured:
        return MASKED_KIND
    if not saves_zeros(granularity):
        return FACTORISED_KIND
    return SHRUNK_KIND.format(what=_SHRUNK_WHAT.get(plan.name, "structures"))


def applied_latency_panel(pm: PrunedModel | None) -> None:
    """Dense against the session's applied model, timed on demand with the protocol: the
    medians, the p10-p90 range and the verdict (`timing.compare`), or why a backend was not
    timed."""
    if pm is None:
        return
    st.markdown("**Latency of the applied model**")
    context = ("applied", id(pm.loaded.model), pm.created, pm.stage, PROTOCOL, DEVICE)
    cache = latency_cache()
    got = cache.get(context)
    if st.button(
        "Measure latency" if got is None else "Re-measure latency",
        key="prune_measure_latency",
        help=f"Dense against your applied model: {PROTOCOL.describe(PROTOCOL.batch_size)}.",
    ):
        dense = shared_model(pm.model_ref).model
        x = example_input(dense, pm.loaded.spec, PROTOCOL.batch_size, random=True)

        def run() -> pd.DataFrame:
            return benchmark_backends(
                pm.model, x, backends=("dense", "masked", "structured"), dense=dense,
                protocol=PROTOCOL,
            )  # fmt: skip

        with st.spinner("Timing dense and applied models..."):
            got = cache.measure(context, run, refresh=True)
    kind = applied_model_kind(pm.config.granularity)
    if got is None:
        st.caption(f"Not measured yet. {kind}")
        return
    df = got.table
    ok = df[df["status"] == "ok"]
    data_table(
        pd.DataFrame(
            {
                "backend": ok["backend"],
                "median ms": ok["median_ms"],
                "p10-p90 ms": [
                    f"{a:.3g}-{b:.3g}" for a, b in zip(ok["p10_ms"], ok["p90_ms"], strict=True)
                ],
                "against dense": ok["vs_dense"],
            }
        )
    )
    for _, row in df[df["status"] != "ok"].iterrows():
        st.caption(f"Not timed: **{row['backend']}**: {row['reason']}.")
    st.caption(f"{df.attrs.get('protocol', '')}; {got.when()}. {kind}")
