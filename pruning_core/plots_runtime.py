"""Pure figure functions for int8 quantization against float (the Export page's int8 section).

Numbers and DataFrames in, plotly figures out: no Streamlit, no I/O, no model code (the style of
`pruning_core.plots`). The batch-size sweep of eager PyTorch against ONNX Runtime is
`plots.batch_sweep_figure`.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pruning_core.plots import TEMPLATE

__all__ = ["FLOAT_COLOR", "INT8_COLOR", "int8_figure"]

FLOAT_COLOR = "#4C78A8"
INT8_COLOR = "#F58518"
_BAND_COLOR = "rgba(76, 120, 168, 0.15)"


def _kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB"


def int8_figure(
    *,
    float_accuracy: float,
    int8_accuracy: float,
    tolerance: float,
    float_bytes: int,
    int8_bytes: int,
    latency: pd.DataFrame,
    title: str = "Float vs int8",
    subtitle: str = "",
) -> go.Figure:
    """Three panels side by side: top-1 accuracy (float and int8, with the tolerance band around
    float), size of the ONNX graph in KiB, and ONNX Runtime latency per image at each timed batch
    (median with p10-p90 bars, the verdict above each pair).

    Accuracy is drawn as points on a zoomed axis rather than bars: a bar whose base is not zero
    would make a tenth of a point look like a collapse.

    Args:
        float_accuracy: Top-1 of the float model (fraction, e.g. 0.9705).
        int8_accuracy: Top-1 of the int8 model measured through ONNX Runtime, same images.
        tolerance: Allowed |int8 - float| accuracy (fraction; `quantize.INT8_ACCURACY_TOLERANCE`).
        float_bytes: Size of the float ONNX graph (bytes).
        int8_bytes: Size of the int8 ONNX graph (bytes).
        latency: One row per (model, batch): `model` (`float` or `int8`), `batch_size`,
            `median_ms`, `p10_ms`, `p90_ms` (ms per call of that batch) and, on int8 rows,
            `vs_float` (`timing.compare`'s words: "no measurable difference" or "1.9x faster").
        title: Figure title.
        subtitle: What was measured (split, images, protocol).
    """
    fig = make_subplots(
        rows=1, cols=3, column_widths=[0.28, 0.24, 0.48], horizontal_spacing=0.1,
        subplot_titles=("Top-1 accuracy (validation)", "Size of the ONNX graph",
                        "ONNX Runtime latency per image"),
    )  # fmt: skip
    names = ("float", "int8")
    colors = (FLOAT_COLOR, INT8_COLOR)
    # Accuracy: two points and the band of the stated tolerance around float.
    lo, hi = float_accuracy - tolerance, float_accuracy + tolerance
    fig.add_shape(
        type="rect", xref="x domain", yref="y", x0=0, x1=1, y0=lo, y1=min(hi, 1.0),
        fillcolor=_BAND_COLOR, line={"width": 0}, row=1, col=1,
    )  # fmt: skip
    fig.add_annotation(
        xref="x domain", yref="y", x=0.5, y=lo, yanchor="top", showarrow=False, row=1, col=1,
        text=f"tolerance ±{100 * tolerance:g} points", font={"size": 11, "color": "#555"},
    )  # fmt: skip
    for name, acc, color, how in zip(
        names, (float_accuracy, int8_accuracy), colors, ("PyTorch", "ONNX Runtime"), strict=True
    ):
        fig.add_trace(
            go.Scatter(
                x=[name], y=[acc], mode="markers+text", marker={"size": 14, "color": color},
                text=[f"{acc:.2%}"], textposition="top center", showlegend=False,
                cliponaxis=False,
                hovertemplate=f"{name} ({how}): %{{y:.2%}}<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
    span = max(abs(int8_accuracy - float_accuracy), tolerance)
    y0, y1 = max(0.0, float_accuracy - 2 * span), min(1.0, float_accuracy + 1.5 * span)
    fig.update_yaxes(range=[y0, y1 + 0.002], tickformat=".1%", title="top-1", row=1, col=1)
    # Size: bars from zero (a ratio of sizes is what people read).
    ratio = float_bytes / int8_bytes if int8_bytes else math.nan
    for name, b, color in zip(names, (float_bytes, int8_bytes), colors, strict=True):
        label = _kib(b) + (f"<br>{ratio:.1f}x smaller" if name == "int8" else "")
        fig.add_trace(
            go.Bar(
                x=[name], y=[b / 1024], marker_color=color, text=[label],
                textposition="outside", showlegend=False, cliponaxis=False,
                hovertemplate=f"{name}: {b:,} bytes<extra></extra>",
            ),
            row=1, col=2,
        )  # fmt: skip
    fig.update_yaxes(title="KiB", rangemode="tozero", range=[0, float_bytes / 1024 * 1.25],
                     row=1, col=2)  # fmt: skip
    # Latency: per image, so batch 1 and batch 32 share one axis; p10-p90 bars.
    lat = latency.copy()
    for name, color in zip(names, colors, strict=True):
        g = lat[lat["model"] == name].sort_values("batch_size")
        if g.empty:
            continue
        per = g["batch_size"].astype(float)
        med, p10, p90 = g["median_ms"] / per, g["p10_ms"] / per, g["p90_ms"] / per
        fig.add_trace(
            go.Bar(
                x=[f"batch {int(b)}" for b in g["batch_size"]], y=med, name=f"{name}, ONNX Runtime",
                marker_color=color, customdata=g["median_ms"],
                # The median as text: on a busy machine p90 can be many medians high, which
                # leaves the bars short; the number stays readable.
                text=[f"{v:.3g} ms" for v in med], textposition="outside", cliponaxis=False,
                error_y={"type": "data", "symmetric": False, "array": (p90 - med).tolist(),
                         "arrayminus": (med - p10).tolist(), "thickness": 1, "color": "#333"},
                hovertemplate="%{x}: %{y:.4f} ms per image (%{customdata:.3f} ms per batch)"
                f"<extra>{name}</extra>",
            ),
            row=1, col=3,
        )  # fmt: skip
    int8_rows = lat[lat["model"] == "int8"].sort_values("batch_size")
    top = (lat["p90_ms"] / lat["batch_size"]).max() if len(lat) else 1.0
    for _, r in int8_rows.iterrows():
        fig.add_annotation(
            x=f"batch {int(r['batch_size'])}", y=top * 1.08, yref="y3", xref="x3",
            text=str(r.get("vs_float", "")), showarrow=False, font={"size": 11},
        )  # fmt: skip
    fig.update_yaxes(title="ms per image (median, p10-p90)", rangemode="tozero",
                     range=[0, top * 1.2 if top == top else 1.0], row=1, col=3)  # fmt: skip
    fig.update_layout(
        title={"text": title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")},
        template=TEMPLATE, barmode="group", height=420,
        margin={"t": 90, "b": 60, "l": 60, "r": 20},
        legend={"orientation": "h", "y": -0.15, "x": 0.55},
    )  # fmt: skip
    return fig
