"""Pure figure functions for dynamic (per-input) channel gating.

DataFrames and arrays in, plotly figures out: no Streamlit, no I/O, no model code (the style of
`pruning_core.plots`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from pruning_core.plots import TEMPLATE

__all__ = ["channel_use_figure", "skipped_share_figure"]

_MARGIN = {"t": 50, "b": 50, "l": 150, "r": 20}


def channel_use_figure(
    masks: Mapping[str, np.ndarray],
    title: str,
    usage: Mapping[str, np.ndarray] | None = None,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of channel use: one row per gated layer, one column per output channel.

    Args:
        masks: Layer -> `(C,)` bool, True where the image computed the channel (rows in
            this order; layers narrower than the widest are padded with blank cells).
        title: Figure title.
        usage: Layer -> `(C,)` share of validation images that used each channel, shown on
            hover beside this image's choice.
        height: Pixels (default grows with the number of layers).
    """
    layers = list(masks)
    width = max((len(m) for m in masks.values()), default=0)
    z = np.full((len(layers), width), np.nan)
    share = np.full((len(layers), width), np.nan)
    for i, name in enumerate(layers):
        m = np.asarray(masks[name], dtype=float)
        z[i, : len(m)] = m
        if usage is not None and name in usage:
            share[i, : len(m)] = np.asarray(usage[name], dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=layers,
            customdata=share,
            zmin=0,
            zmax=1,
            colorscale=[[0, "#e6e6e6"], [1, "#4C78A8"]],
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate=(
                "%{y}, channel %{x}: %{z:used|skipped}"
                + ("<br>used by %{customdata:.0%} of validation images" if usage else "")
                + "<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="output channel (blue: computed for this image, grey: skipped)",
        yaxis={"title": "gated layer", "autorange": "reversed"},
        height=height or max(260, 80 + 22 * len(layers)),
        margin=_MARGIN,
    )
    return fig


def skipped_share_figure(
    df: pd.DataFrame, title: str = "Share of channels skipped per layer", height: int = 320
) -> go.Figure:
    """Bars of the share of output channels skipped per gated layer.

    Args:
        df: Columns `layer` and `skipped` (share in [0, 1]) for this image; optional
            `skipped_mean` (the validation average) drawn as a second series.
        title: Figure title.
        height: Pixels.
    """
    fig = go.Figure(
        go.Bar(
            x=df["layer"],
            y=df["skipped"],
            name="this image",
            marker_color="#4C78A8",
            hovertemplate="%{x}: %{y:.0%} skipped<extra></extra>",
        )
    )
    if "skipped_mean" in df:
        fig.add_trace(
            go.Bar(
                x=df["layer"],
                y=df["skipped_mean"],
                name="validation average",
                marker_color="#9ecae9",
                hovertemplate="%{x}: %{y:.0%} skipped on average<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        barmode="group",
        xaxis_title="gated layer",
        yaxis={"title": "channels skipped", "tickformat": ".0%", "range": [0, 1]},
        height=height,
        margin={"t": 50, "b": 90, "l": 60, "r": 20},
        legend={"orientation": "h", "y": 1.08},
    )
    return fig
