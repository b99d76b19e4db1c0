"""Inspect page panels: where a model's zero weights are, and for a factorised model what low
rank kept (a factorised layer has no zeros: its saving is its rank)."""

from __future__ import annotations

import streamlit as st
from torch import nn

from pruning_core.plots import sparsity_heatmap_figure
from pruning_core.plots_companions import low_rank_figure
from pruning_core.slider import channel_sparsity
from pruning_core.stats import low_rank_table
from ui.widgets import explain

__all__ = ["RANK_EXPLAINED", "ZEROS_EXPLAINED", "zeros_and_rank_panel"]

ZEROS_EXPLAINED = (
    "Each row is a layer; each cell covers an equal slice of its output channels (filters or "
    "neurons) and is coloured by the share of that slice's weights that are exactly zero. "
    "Unstructured pruning gives an even speckle; channel pruning leaves whole channels at 100% "
    "(mask preview) or removes them (applied: the row gets shorter)."
)

RANK_EXPLAINED = (
    "Low rank replaced each of these layers by two thinner ones through r channels (rows "
    "`name.0` and `name.1` in the table above). Rank kept: r of the most the layer could have, "
    "min(outputs, inputs x kernel positions). Weights kept: r x (inputs + outputs) against "
    "outputs x inputs; that, not zeros, is what makes the model smaller and faster on dense "
    "kernels."
)


def zeros_and_rank_panel(model: nn.Module) -> None:
    """For a model with factorised layers, the rank and weights each kept
    (`stats.low_rank_table`); the zeros heatmap (`slider.channel_sparsity`) when the model has
    no factorised layer or has zero weights too (pruned after factorising). A model whose only
    saving is low rank gets a note instead of a map that would read 0% in every layer."""
    ranks = low_rank_table(model)
    zeros = channel_sparsity(model)
    if len(ranks):
        kept, dense = int(ranks["params"].sum()), int(ranks["params_dense"].sum())
        st.plotly_chart(low_rank_figure(ranks), key="inspect_lowrank")
        st.caption(
            f"{len(ranks)} layer{'s' if len(ranks) > 1 else ''} factorised: their pairs hold "
            f"{kept:,} weights where the dense layers held {dense:,} ({kept / max(dense, 1):.0%})."
        )
        explain(RANK_EXPLAINED, "What the rank bars show")
        if not bool((zeros["sparsity"] > 0).any()):
            st.info(
                "No weight of this model is exactly zero, so there is no map of zeros: low-rank "
                "factorisation removes rank, not weights, and its saving is the bars above."
            )
            return
    st.plotly_chart(
        sparsity_heatmap_figure(
            zeros, "Share of zero weights by layer, across its output channels"
        ),
        key="inspect_heatmap",
    )
    explain(ZEROS_EXPLAINED)
