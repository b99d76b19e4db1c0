"""Pure functions from DataFrames to plotly figures.

Used by the app, the HTML report and notebooks alike: no Streamlit, no I/O, no model code.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def latency_figure(df: pd.DataFrame, title: str = "Latency per batch") -> go.Figure:
    """Median latency with a p10-p90 bar for each configuration.

    Args:
        df: Columns `label`, `median_ms`, `p10_ms`, `p90_ms` (one row per configuration).
        title: Figure title.
    """
    fig = go.Figure(
        go.Bar(
            x=df["label"],
            y=df["median_ms"],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (df["p90_ms"] - df["median_ms"]).tolist(),
                "arrayminus": (df["median_ms"] - df["p10_ms"]).tolist(),
            },
            text=[f"{v:.2f} ms" for v in df["median_ms"]],
            textposition="outside",
            marker_color="#4C78A8",
            name="median",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        yaxis_title="ms per batch (median, p10-p90)",
        height=360,
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def confusion_figure(
    confusion: list[list[int]], class_names: list[str], title: str = "Confusion matrix"
) -> go.Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted)."""
    fig = go.Figure(
        go.Heatmap(
            z=confusion,
            x=class_names,
            y=class_names,
            colorscale="Blues",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="predicted",
        yaxis_title="true",
        height=420,
        yaxis={"autorange": "reversed"},
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def per_class_figure(
    per_class: list[float], class_names: list[str], title: str = "Accuracy per class"
) -> go.Figure:
    """Bar chart of per-class accuracy."""
    fig = go.Figure(go.Bar(x=class_names, y=per_class, marker_color="#72B7B2"))
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        yaxis={"range": [0, 1], "title": "accuracy"},
        height=320,
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig
