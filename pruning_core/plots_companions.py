"""Pure figure function for the one view of pruning and its companions (Trade-offs page and the
HTML report): accuracy against size and against measured latency, eager PyTorch and ONNX Runtime.

Numbers and DataFrames in, plotly figures out: no Streamlit, no I/O, no model code (the style of
`pruning_core.plots`). The frame is `companions.compare_companions`'s.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pruning_core.plots import TEMPLATE, log_axis, percent_axis

__all__ = [
    "RUNTIME_LABELS",
    "RUNTIME_SYMBOLS",
    "VARIANT_COLORS",
    "companions_figure",
    "low_rank_figure",
]

# One colour per variant (the dense model grey, as in the other trade-off figures).
VARIANT_COLORS = {
    "dense": "#888888",
    "unstructured": "#4C78A8",
    "channel": "#54A24B",
    "lowrank": "#B279A2",
    "prune_int8": "#E45756",
    "int8": "#F58518",
    "dynamic": "#72B7B2",
    "dynamic_learned": "#2F6F6B",  # the magnitude gate's teal, darker: the same idea, trained
}
RUNTIME_SYMBOLS = {"eager": "circle", "onnxruntime": "diamond"}
RUNTIME_LABELS = {"eager": "eager PyTorch", "onnxruntime": "ONNX Runtime"}
_FRONT = {"color": "#222", "dash": "dash", "shape": "hv", "width": 1.5}


def _hover(df: pd.DataFrame) -> np.ndarray:
    """One line of words per row for the hover: variant, runtime, the numbers, vs dense."""
    out = []
    for r in df.to_dict("records"):
        med = float(r["median_ms"])
        lat = (
            f"{med:,.2f} ms (p10 {float(r['p10_ms']):,.2f}, p90 {float(r['p90_ms']):,.2f}), "
            f"{r['vs_dense']} against dense eager"
            if math.isfinite(med)
            else "latency not measured"
        )
        out.append(
            f"<b>{r['label']}</b>, {RUNTIME_LABELS.get(str(r['runtime']), r['runtime'])}<br>"
            f"accuracy {float(r['accuracy']):.2%}<br>"
            f"size {float(r['size_bytes']) / 1024:,.1f} KiB<br>"
            f"{int(r['params']):,} parameters ({r['params_kind']}), "
            f"{int(r['macs']):,} MACs/image<br>{lat}"
        )
    return np.array(out, dtype=object)


def companions_figure(
    df: pd.DataFrame,
    *,
    title: str = "Pruning and its companions: accuracy against size and latency",
    subtitle: str = "",
) -> go.Figure:
    """Two panels sharing the accuracy axis: accuracy against size (KiB) and against median
    latency (ms on a log axis, every tick labelled in full with its unit by `plots.log_axis`;
    bars from p10 to p90), one colour per variant, a circle for eager PyTorch and a diamond for
    ONNX Runtime, each panel's Pareto front as a dashed step line.

    Args:
        df: `companions.compare_companions` rows: `variant`, `label`, `runtime`, `status`,
            `accuracy` (fraction), `size_bytes`, `params`, `params_kind`, `macs`, `median_ms`,
            `p10_ms`, `p90_ms`, `vs_dense`, `pareto_size`, `pareto_latency`. Rows whose status
            is not `ok` are not drawn (the table says why).
        title: Figure title.
        subtitle: What was measured (protocol: threads, batch, device; validation images).

    Returns:
        The figure (its traces: one per variant per panel, two legend-only runtime markers,
        and the fronts named `Pareto front` (size; the legend entry of both) and
        `Pareto front (latency)`).
    """
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
        subplot_titles=("Accuracy vs size of the saved model", "Accuracy vs latency"),
    )  # fmt: skip
    ok = df[df["status"] == "ok"].copy()
    ok["size_kib"] = ok["size_bytes"].astype(float) / 1024
    ok["hover"] = _hover(ok) if len(ok) else []
    for variant, g in ok.groupby("variant", sort=False):
        color = VARIANT_COLORS.get(str(variant), "#333")
        symbols = [RUNTIME_SYMBOLS.get(str(r), "circle") for r in g["runtime"]]
        marker = {"color": color, "size": 11, "symbol": symbols, "line": {"width": 1,
                  "color": "#fff"}}  # fmt: skip
        name = str(g["label"].iloc[0])
        fig.add_trace(
            go.Scatter(
                x=g["size_kib"], y=g["accuracy"], mode="markers", name=name, marker=marker,
                legendgroup=name, text=g["hover"], hovertemplate="%{text}<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
        timed = g[g["median_ms"].notna()]
        if len(timed):
            fig.add_trace(
                go.Scatter(
                    x=timed["median_ms"], y=timed["accuracy"], mode="markers", name=name,
                    marker=marker, legendgroup=name, showlegend=False, text=timed["hover"],
                    hovertemplate="%{text}<extra></extra>",
                    error_x={"type": "data", "symmetric": False,
                             "array": timed["p90_ms"] - timed["median_ms"],
                             "arrayminus": timed["median_ms"] - timed["p10_ms"],
                             "color": color, "thickness": 1},
                ),
                row=1, col=2,
            )  # fmt: skip
    for col, (flag, x) in enumerate(
        (("pareto_size", "size_kib"), ("pareto_latency", "median_ms")), 1
    ):
        front = ok[ok[flag].astype(bool)].sort_values(x) if flag in ok else ok.iloc[0:0]
        if len(front):
            fig.add_trace(
                go.Scatter(
                    x=front[x], y=front["accuracy"], mode="lines",
                    name="Pareto front" if col == 1 else "Pareto front (latency)", line=_FRONT,
                    hoverinfo="skip", showlegend=col == 1, legendgroup="front",
                ),
                row=1, col=col,
            )  # fmt: skip
    for runtime, symbol in RUNTIME_SYMBOLS.items():
        # Legend-only entries that say what the marker shapes mean.
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=RUNTIME_LABELS[runtime],
                marker={"color": "#555", "size": 10, "symbol": symbol}, legendgroup="runtime",
            ),
            row=1, col=1,
        )  # fmt: skip
    fig.update_xaxes(title_text="size of the saved model (KiB)", rangemode="tozero", row=1, col=1)
    # Log scale: int8 in ONNX Runtime and eager PyTorch differ by several times, and a busy
    # machine's p90 can be many times its median; on a linear axis the fast points merge.
    # Every tick labelled in full with its unit ("2 ms", not plotly's bare "2" and "5" in each
    # decade), over the drawn range: medians and their p10-p90 bars.
    drawn = ok[ok["median_ms"].notna()]
    lat = pd.concat([drawn["p10_ms"], drawn["median_ms"], drawn["p90_ms"]]).astype(float)
    ticks = log_axis(float(lat.min()), float(lat.max()), "ms") if len(lat) else {}
    fig.update_xaxes(title_text="median latency per batch (ms, log scale), bars p10-p90",
                     **{"type": "log", **ticks}, row=1, col=2)  # fmt: skip
    fig.update_yaxes(title_text="top-1 accuracy (validation split)",
                     **percent_axis(ok["accuracy"]), row=1, col=1)  # fmt: skip
    fig.update_layout(
        title={"text": title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")},
        template=TEMPLATE, height=480, margin={"t": 90, "b": 60, "l": 70, "r": 20},
        legend={"orientation": "h", "y": -0.22},
    )  # fmt: skip
    return fig


def low_rank_figure(
    df: pd.DataFrame, title: str = "What low rank kept, per factorised layer"
) -> go.Figure:
    """Horizontal bars per factorised layer: the share of its rank kept (r / full rank) and the
    share of its weights kept (r x (in + out) / (out x in)), each bar labelled with its counts.

    Args:
        df: `stats.low_rank_table` rows: `layer`, `rank`, `full_rank`, `rank_share`, `params`,
            `params_dense`, `params_share`.
        title: Figure title.

    Returns:
        The figure: traces `rank kept` and `weights kept`, layers top to bottom in model order.
    """
    layers = [str(n) for n in df["layer"]]
    fig = go.Figure()
    for name, share, text, color in (
        ("rank kept", "rank_share",
         [f"rank {r:,} of {f:,}" for r, f in zip(df["rank"], df["full_rank"], strict=True)],
         VARIANT_COLORS["lowrank"]),
        ("weights kept", "params_share",
         [f"{p:,} of {d:,} weights" for p, d in zip(df["params"], df["params_dense"],
                                                      strict=True)],
         "#4C78A8"),
    ):  # fmt: skip
        fig.add_trace(
            go.Bar(
                y=layers, x=df[share].astype(float), orientation="h", name=name, text=text,
                textposition="auto", marker_color=color,
                hovertemplate="%{y}<br>%{x:.1%} " + name + " (%{text})<extra></extra>",
            )
        )  # fmt: skip
    top = max(1.0, float(df["params_share"].max()) if len(df) else 1.0)
    fig.update_layout(
        title=title, template=TEMPLATE, barmode="group",
        xaxis={"title": "share kept of the dense layer (100% = not factorised)",
               "tickformat": ".0%", "range": [0, top * 1.02]},
        yaxis={"autorange": "reversed"},
        height=max(240, 80 + 48 * len(layers)),
        margin={"t": 50, "b": 40, "l": 140, "r": 20},
        legend={"orientation": "h", "y": -0.2},
    )  # fmt: skip
    return fig
