"""Page 2: look inside the model, layer by layer (before and after pruning)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.plots import channel_bars_figure, histogram_figure
from pruning_core.slider import binned
from pruning_core.stats import weight_layers
from ui.caches import dense_activations, dense_layer_table, model_layer_table, session_activations
from ui.dynamic_panel import dynamic_panel
from ui.inspect_panels import zeros_and_rank_panel
from ui.loaders import shared_model
from ui.session import pruned
from ui.state import init_state, selection
from ui.widgets import baseline_or_stop, data_table

init_state()
st.title("Inspect")
st.caption(
    "What the network is made of: every Linear/Conv layer, its weights and what its outputs "
    "look like on calibration images. Once you apply pruning, the pruned model is drawn over "
    "the dense one."
)
model_ref, dataset_ref = selection()
baseline_or_stop(model_ref, dataset_ref)

dense = shared_model(model_ref)
committed = pruned()
current = committed.loaded if committed is not None else dense
if committed is not None:
    st.info(
        f"Showing your **{committed.stage}** model ({'; '.join(committed.history)}) over the "
        "dense one. Reset it on the Prune page."
    )

# This session's model is measured once per commit.
table = (
    dense_layer_table(model_ref)
    if committed is None
    else model_layer_table(current, committed.created)
)

st.subheader("Layers")
show = table[
    ["layer", "type", "shape", "params", "nonzero", "sparsity", "macs", "macs_effective",
     "size_dense", "size_csr", "w_abs_mean"]
].rename(
    columns={
        "macs": "MACs/image",
        "macs_effective": "effective MACs",
        "size_dense": "bytes dense",
        "size_csr": "bytes CSR",
        "w_abs_mean": "mean |w|",
    }
)  # fmt: skip
# One column for the output channels, "zero / all", so the table fits a 1400 px page.
show["zero channels"] = [
    f"{z:,} / {c:,}" if c == c else "-"  # NaN: a layer without channels
    for z, c in zip(table["zero_channels"], table["channels"], strict=True)
]
data_table(
    show,
    column_config={
        "sparsity": st.column_config.ProgressColumn(
            "sparsity", min_value=0.0, max_value=1.0, format="percent", width="small"
        ),
        "mean |w|": st.column_config.NumberColumn(format="%.4f"),
        "zero channels": st.column_config.TextColumn(
            help="Output channels whose weights are all zero, of all output channels"
        ),
    },
    key="inspect_table",
)
st.caption(
    "Measured on the model itself: MACs from one forward pass at batch 1; 'effective MACs' is "
    "what a kernel that skips zero weights would do; 'bytes CSR' is the weight stored as "
    "compressed sparse rows (values + column indices + row pointers), smaller than dense only "
    "above roughly 50% sparsity."
)

# Zeros by layer; for a factorised model, the rank each layer kept (it has no zeros).
zeros_and_rank_panel(current.model)

# ------------------------------------------------------------------ one layer
st.subheader("One layer")
layers = [n for n, _ in weight_layers(current.model)]
if st.session_state.get("inspect_layer") not in layers:
    st.session_state["inspect_layer"] = layers[0]
layer = st.selectbox("Layer", layers, key="inspect_layer", persist_state="session")
log_y = st.toggle("Log count axis", key="inspect_log", persist_state="session")

dense_mods = dict(dense.model.named_modules())
cur_mods = dict(current.model.named_modules())
w_dense = dense_mods[layer].weight.detach() if layer in dense_mods else None
w_cur = cur_mods[layer].weight.detach()

left, right = st.columns(2)
with left:
    ref = w_dense if w_dense is not None else w_cur
    lo, hi = float(ref.min()), float(ref.max())
    parts = [binned(ref, lo, hi, series="dense")]
    if committed is not None:
        kept = w_cur[w_cur != 0]
        parts.append(binned(kept, lo, hi, series=f"{committed.stage} (non-zero)"))
    n_zero = int((w_cur == 0).sum())
    st.plotly_chart(
        histogram_figure(
            pd.concat(parts, ignore_index=True),
            f"{layer}: weights ({n_zero:,} of {w_cur.numel():,} zero)",
            "weight value",
            log_y=log_y,
        ),
        key="inspect_weight_hist",
    )

try:
    acts_dense = dense_activations(model_ref, dataset_ref)
    acts_cur = (
        session_activations(current, dataset_ref, committed.created)
        if committed is not None
        else acts_dense
    )
except UserError as e:
    st.error(f"Cannot record activations: {e}")
    st.stop()

with right:
    parts = []
    for name, acts in [("dense", acts_dense)] + (
        [(committed.stage, acts_cur)] if committed is not None else []
    ):
        if layer in acts.histograms:
            edges, counts = acts.histograms[layer]
            parts.append(
                pd.DataFrame(
                    {"series": name, "left": edges[:-1], "right": edges[1:], "count": counts}
                )
            )
    info = acts_cur.table[acts_cur.table["layer"] == layer]
    what = "after its BatchNorm" if len(info) and bool(info["after_bn"].iloc[0]) else "output"
    if parts:
        st.plotly_chart(
            histogram_figure(
                pd.concat(parts, ignore_index=True),
                f"{layer}: activations ({what})",
                "activation value",
                log_y=log_y,
            ),
            key="inspect_act_hist",
        )
        st.caption(
            f"Sampled from {acts_cur.batches} calibration batches (training images held out for "
            "calibration), at most 65,536 values per layer."
        )

c1, c2 = st.columns(2)
channels = acts_cur.channels.get(layer)
zero_rows = (w_cur.reshape(w_cur.shape[0], -1) == 0).all(1)
with c1:
    if channels is not None:
        df = channels.assign(removed=zero_rows[: len(channels)].tolist())
        st.plotly_chart(
            channel_bars_figure(
                df,
                "apoz",
                f"{layer}: APoZ per output channel (mean {df['apoz'].mean():.1%})",
                "share of activations <= 0",
            ),
            key="inspect_apoz",
        )
        st.caption(
            "APoZ (Average Percentage of Zeros, Hu et al. 2016): how often a channel's output is "
            "zero after the ReLU. A channel that is almost always zero passes little on: a "
            "candidate for channel pruning. Grey: channels whose weights are all zero."
        )
with c2:
    norms = w_cur.float().reshape(w_cur.shape[0], -1).abs().sum(1)
    df = pd.DataFrame(
        {"channel": range(len(norms)), "l1": norms.tolist(), "removed": zero_rows.tolist()}
    )
    st.plotly_chart(
        channel_bars_figure(
            df, "l1", f"{layer}: L1 norm of each filter / neuron", "sum of |weight|"
        ),
        key="inspect_norms",
    )
    st.caption(
        "Magnitude channel pruning removes the filters with the smallest norms first (Li et al. "
        "2017). Compare with APoZ: data-free and data-driven views of the same channels."
    )

dynamic_panel(model_ref, dataset_ref)
