"""Pure functions from DataFrames to plotly figures.

Used by the app, the HTML report and notebooks alike: no Streamlit, no I/O, no model code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from pruning_core.terms import SPARSITY_AXIS

__all__ = [
    "REPORT_TEMPLATE",
    "TEMPLATE",
    "accuracy_sparsity_figure",
    "batch_sweep_figure",
    "channel_bars_figure",
    "confusion_figure",
    "histogram_figure",
    "latency_figure",
    "latency_sparsity_figure",
    "layer_sparsity_figure",
    "log_axis",
    "mask_figure",
    "per_class_figure",
    "percent_axis",
    "runs_curves_figure",
    "sensitivity_figure",
    "size_accuracy_figure",
    "sparsity_heatmap_figure",
    "training_curves_figure",
]

# No plotly template in the figures: in the app Streamlit's theme styles every chart anyway,
# and plotly_white cost ~11 ms of validation per figure (three per slider move) and ~6.5 KB of
# JSON each. Standalone HTML (the report) applies REPORT_TEMPLATE when it writes a figure.
TEMPLATE = "none"
REPORT_TEMPLATE = "plotly_white"
_MARGIN = {"t": 50, "b": 40, "l": 60, "r": 20}
# Trade-off figures carry a subtitle (what was measured, where), so they need more room on top.
_MARGIN_SUBTITLED = {"t": 70, "b": 50, "l": 60, "r": 20}


def percent_axis(values: Iterable[float], *, max_ticks: int = 6) -> dict[str, Any]:
    """Tick settings for an axis of fractions shown as percentages, whose labels never repeat.

    A fixed `.0%` format over a narrow range (97.8% to 98.9%) writes "98%, 98%"; here the step
    is a 1-2-5 multiple chosen from the data's span and the number of decimals follows the step.

    Args:
        values: The fractions plotted on the axis (NaN ignored).
        max_ticks: About how many ticks to aim for.

    Returns:
        Plotly axis settings: `tickformat`, `dtick`, `tick0` (empty when there is no value), and
        `range` when the values span less than one step.
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {}
    lo, hi = min(xs), max(xs)
    span = hi - lo
    # A flat series still gets a readable step: a tenth of a point around its value.
    raw = max(span / max(max_ticks - 1, 1), 1e-3)
    exp = math.floor(math.log10(raw))
    step = next(m * 10.0**exp for m in (1, 2, 5, 10) if m * 10.0**exp >= raw)
    decimals = max(0, -math.floor(math.log10(step * 100) + 1e-9))
    axis: dict[str, Any] = {"tickformat": f".{decimals}%", "dtick": step, "tick0": 0}
    if span < step:
        # Plotly autoranges a flat series to its value +- 1: at this step that is 2,000 tick
        # labels, each measured by the browser (a fine-tune curve with equal epoch accuracies
        # froze the Trade-offs tab for 90 s). A range of a few steps around the data instead.
        axis["range"] = [lo - 2 * step, hi + 2 * step]
    return axis


# Tick mantissas per decade on a log axis, sparsest first: the densest set that keeps the axis
# under its tick budget is used.
_LOG_MANTISSAS: tuple[tuple[float, ...], ...] = ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 5, 7))


def _plain_number(v: float) -> str:
    """A tick value as people write it: shortest exact digits, no exponent ("0.015", "1,500")."""
    text = f"{v:,.0f}" if v >= 1000 and v == round(v) else f"{v:.15g}"
    if "e" in text:  # below 1e-4 `g` writes an exponent; write the digits instead
        text = f"{v:.{-math.floor(math.log10(v)) + 3}f}".rstrip("0").rstrip(".")
    return text


def log_axis(lo: float, hi: float, unit: str, *, max_ticks: int = 8) -> dict[str, Any]:
    """Settings for a logarithmic axis whose every tick is labelled in full with its unit.

    Plotly's own log ticks label the minor ticks by their first digit only ("2", "5" in every
    decade, no unit): read alone they are ambiguous, and they repeat. Here the ticks are the
    densest of 1, 1-3, 1-2-5 or 1-1.5-2-3-5-7 per decade that stays within `max_ticks` over the
    data (every k-th power of ten when even one per decade is too many; evenly spaced steps when
    the data spans too little of a decade for three of them), each labelled "2 ms", "0.15 ms",
    "1,500 ms": distinct values, so the labels never repeat. The axis range is set to the data
    plus a small margin, so exactly these ticks show.

    Args:
        lo: Smallest value drawn (e.g. the lowest p10 in ms), > 0.
        hi: Largest value drawn (e.g. the highest p90), >= lo.
        unit: Written after each number ("ms").
        max_ticks: Most ticks shown (>= 2).

    Returns:
        Plotly axis settings `type` ("log"), `range` (log10 units), `tickvals`, `ticktext`;
        empty when lo or hi is not a finite positive number (plotly's defaults then apply).
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        return {}
    # A margin of 8% of the span (at least 0.04 decade) keeps end markers off the frame.
    a, b = math.log10(lo), math.log10(hi)
    pad = max(0.08 * (b - a), 0.04)
    a, b = a - pad, b + pad

    def within(vals: list[float]) -> list[float]:
        return sorted(v for v in set(vals) if a <= math.log10(v) <= b)

    decades = range(math.floor(a), math.ceil(b) + 1)
    vals: list[float] = []
    for mantissas in _LOG_MANTISSAS:
        cand = within([float(f"{m * 10.0**e:.6g}") for e in decades for m in mantissas])
        if len(cand) > max_ticks and vals:
            break
        vals = cand
    if len(vals) > max_ticks:  # many decades: every k-th power of ten
        k = math.ceil(len(vals) / max_ticks)
        vals = vals[::k]
    if len(vals) < 3:  # a narrow range: evenly spaced 1-2-5 steps inside it (3 to 6 of them)
        lin_lo, lin_hi = 10.0**a, 10.0**b
        raw = (lin_hi - lin_lo) / 5
        exp = math.floor(math.log10(raw))
        step = next(m * 10.0**exp for m in (1, 2, 5, 10) if m * 10.0**exp >= raw)
        first = math.ceil(lin_lo / step)
        vals = within([float(f"{i * step:.6g}") for i in range(first, first + max_ticks)])
    return {
        "type": "log",
        "range": [a, b],
        "tickvals": vals,
        "ticktext": [f"{_plain_number(v)} {unit}" for v in vals],
    }


def latency_figure(df: pd.DataFrame, title: str = "Latency per batch") -> go.Figure:
    """Median latency with a p10-p90 bar for each configuration.

    Args:
        df: Columns `label`, `median_ms`, `p10_ms`, `p90_ms` (one row per configuration),
            optionally `vs_dense` (`timing.compare`'s words, written under the number).
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
            text=[
                f"{v:.2f} ms" + (f"<br>{d}" if isinstance(d, str) and d else "")
                for v, d in zip(
                    df["median_ms"],
                    df["vs_dense"] if "vs_dense" in df else [""] * len(df),
                    strict=True,
                )
            ],
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
        margin=_MARGIN,
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
        margin=_MARGIN,
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
        xaxis={"title": "class", "type": "category"},
        yaxis={"range": [0, 1], "title": "top-1 accuracy (validation split)", "tickformat": ".0%"},
        height=320,
        margin=_MARGIN,
    )
    return fig


# --- Inspect & prune ---

_BEFORE, _AFTER, _DENSE = "#9DB4D0", "#E45756", "#BAB0AC"


def _figure(traces: list[dict[str, Any]], *, title: str, **layout: Any) -> go.Figure:
    """A figure from plain trace and layout dicts, validated once by plotly's constructor.

    The figures redrawn on every slider move are built this way: `add_trace` and
    `update_layout` with keyword paths validate piece by piece (magic-underscore paths split and
    checked per key), ~3x the CPU of one constructor call, and a server with a class on it runs
    three such figures per move.

    Args:
        traces: Plotly trace dicts (each with its `type`), drawn in order.
        title: Figure title.
        **layout: Other layout settings as plotly's nested dicts (no underscore paths).
    """
    return go.Figure(data=traces, layout={"title": {"text": title}, "template": TEMPLATE, **layout})


def layer_sparsity_figure(
    df: pd.DataFrame, title: str = "Sparsity per layer", height: int = 340
) -> go.Figure:
    """One bar per layer: the share of its weights removed.

    Args:
        df: Columns `layer`, `sparsity` (0-1), optional `params` (weights in the layer, for
            the hover) and `pruned` (bool; False draws the bar grey as "kept dense").
        title: Figure title.
        height: Figure height in pixels.
    """
    pruned = df["pruned"] if "pruned" in df else pd.Series(True, index=df.index)
    params = df["params"] if "params" in df else pd.Series(0, index=df.index)
    bar = {
        "type": "bar",
        "x": df["layer"],
        "y": df["sparsity"],
        "marker": {"color": [_AFTER if p else _DENSE for p in pruned]},
        "customdata": list(
            zip(params, ["pruned" if p else "kept dense" for p in pruned], strict=True)
        ),
        "hovertemplate": "%{x}<br>%{y:.1%} removed of %{customdata[0]:,} weights"
        "<br>%{customdata[1]}<extra></extra>",
        "name": "sparsity",
    }
    return _figure(
        [bar],
        title=title,
        yaxis={"range": [0, 1], "tickformat": ".0%", "title": {"text": "weights removed"}},
        height=height,
        margin=_MARGIN,
        showlegend=False,
    )


def histogram_figure(
    df: pd.DataFrame,
    title: str = "Weights",
    xaxis_title: str = "value",
    log_y: bool = False,
    height: int = 320,
) -> go.Figure:
    """Server-side binned histograms, overlaid (e.g. before and after pruning).

    Args:
        df: Columns `series` (legend name, e.g. "before"/"after"), `left`, `right`, `count`;
            one row per bin (bins already computed: no raw values reach the browser).
        title: Figure title.
        xaxis_title: What was binned.
        log_y: Logarithmic count axis (a pruned layer's spike at zero hides the rest otherwise).
        height: Figure height in pixels.
    """
    colors = ["#B8C4D6", _AFTER, "#54A24B", "#F58518"]
    bars = [
        {
            "type": "bar",
            "x": (part["left"] + part["right"]) / 2,
            "y": part["count"],
            "width": (part["right"] - part["left"]).tolist(),
            "name": str(name),
            "marker": {"color": colors[i % len(colors)]},
            "opacity": 0.9 if i == 0 else 0.7,
            "hovertemplate": "%{x:.3g}: %{y:,}<extra>" + str(name) + "</extra>",
        }
        for i, (name, part) in enumerate(df.groupby("series", sort=False))
    ]
    return _figure(
        bars,
        title=title,
        barmode="overlay",
        bargap=0,
        xaxis={"title": {"text": xaxis_title}},
        yaxis={"title": {"text": "count"}, "type": "log" if log_y else "linear"},
        height=height,
        margin=_MARGIN,
        legend={
            "x": 0.99,
            "y": 0.99,
            "xanchor": "right",
            "yanchor": "top",
            "bgcolor": "rgba(255,255,255,0.8)",
        },
    )


def mask_figure(grid: pd.DataFrame, title: str = "Mask", height: int = 320) -> go.Figure:
    """Picture of a layer's keep-mask: dark = kept, white = pruned.

    Args:
        grid: A 2-D frame of kept shares in [0, 1] (1 = kept); its index and columns give the
            first output channel / input position each cell stands for (cells of large layers
            average blocks of weights).
        title: Figure title.
        height: Figure height in pixels.
    """
    heatmap = {
        "type": "heatmap",
        "z": grid.to_numpy(),
        "x": list(grid.columns),
        "y": list(grid.index),
        "zmin": 0,
        "zmax": 1,
        "colorscale": [[0, "#FFFFFF"], [1, "#1F3B73"]],
        "colorbar": {"title": {"text": "kept"}, "tickformat": ".0%"},
        "hovertemplate": "out %{y}, in %{x}<br>kept %{z:.0%}<extra></extra>",
    }
    return _figure(
        [heatmap],
        title=title,
        xaxis={"title": {"text": "input (in_ch x k x k)"}},
        yaxis={"title": {"text": "output channel"}, "autorange": "reversed"},
        height=height,
        margin=_MARGIN,
    )


def channel_bars_figure(
    df: pd.DataFrame, value: str, title: str, yaxis_title: str, height: int = 300
) -> go.Figure:
    """One bar per output channel of a layer (APoZ, norms...).

    Args:
        df: Column `channel` and the column named by `value`; optional `removed` (bool) draws
            removed channels grey.
        value: The column to plot.
        title: Figure title.
        yaxis_title: What the value is.
        height: Figure height in pixels.
    """
    removed = df["removed"] if "removed" in df else pd.Series(False, index=df.index)
    fig = go.Figure(
        go.Bar(
            x=df["channel"],
            y=df[value],
            marker_color=[_DENSE if r else "#4C78A8" for r in removed],
            hovertemplate="channel %{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="output channel",
        yaxis_title=yaxis_title,
        height=height,
        margin=_MARGIN,
        bargap=0.1,
    )
    return fig


def sparsity_heatmap_figure(
    df: pd.DataFrame, title: str = "Sparsity by layer", height: int | None = None
) -> go.Figure:
    """Heatmap: one row per layer, columns are slices of its output channels.

    Args:
        df: Columns `layer`, `slice` (e.g. "0-7": the output channels a cell covers, or its
            index), `position` (0-based column), `sparsity` (share of zero weights in that slice).
        title: Figure title.
        height: Pixels (default grows with the number of layers).
    """
    layers = list(dict.fromkeys(df["layer"]))
    wide = df.pivot_table(index="layer", columns="position", values="sparsity", sort=False)
    wide = wide.reindex(layers)
    text = df.pivot_table(
        index="layer", columns="position", values="slice", aggfunc="first", sort=False
    ).reindex(layers)
    fig = go.Figure(
        go.Heatmap(
            z=wide.to_numpy(),
            x=[str(c) for c in wide.columns],
            y=layers,
            customdata=text.to_numpy(),
            zmin=0,
            zmax=1,
            colorscale="Reds",
            colorbar={"title": "zeros", "tickformat": ".0%"},
            hovertemplate="%{y}<br>channels %{customdata}<br>%{z:.1%} zero<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="output channels (left to right, in equal slices)",
        yaxis={"autorange": "reversed"},
        height=height or max(260, 60 + 24 * len(layers)),
        margin={"t": 50, "b": 40, "l": 140, "r": 20},
    )
    return fig


def training_curves_figure(df: pd.DataFrame, title: str = "Fine-tuning") -> go.Figure:
    """Training loss per step (raw and smoothed) and validation accuracy per epoch.

    Args:
        df: Columns `step`, `loss`, optional `accuracy` (set on the points that end an epoch;
            missing elsewhere).
        title: Figure title.
    """
    fig = go.Figure()
    if len(df) and "loss" in df:
        pts = df.dropna(subset=["loss"])
        pts = pts[pts["accuracy"].isna()] if "accuracy" in pts else pts
        fig.add_trace(
            go.Scatter(
                x=pts["step"],
                y=pts["loss"],
                mode="lines",
                name="train loss (batch)",
                line={"width": 1, "color": _BEFORE},
            )
        )
        window = max(1, len(pts) // 15)
        fig.add_trace(
            go.Scatter(
                x=pts["step"],
                y=pts["loss"].rolling(window, min_periods=1).mean(),
                mode="lines",
                name=f"train loss (mean of {window})",
                line={"width": 2, "color": "#4C78A8"},
            )
        )
    if len(df) and "accuracy" in df:
        acc = df.dropna(subset=["accuracy"])
        fig.add_trace(
            go.Scatter(
                x=acc["step"],
                y=acc["accuracy"],
                mode="lines+markers",
                name="val accuracy",
                yaxis="y2",
                line={"color": _AFTER},
            )
        )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="optimizer step",
        yaxis={"title": "loss", "rangemode": "tozero"},
        yaxis2={
            "title": "val accuracy",
            "overlaying": "y",
            "side": "right",
            "tickformat": ".0%",
            "range": [0, 1.02],
            "showgrid": False,
        },
        height=340,
        margin={"t": 50, "b": 40, "l": 60, "r": 60},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


# --- Trade-offs & report ---
# (A2's section: the figures of the Trade-offs page, the lesson and the HTML report.)

_METHOD_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D")
_BACKEND_COLORS = {
    "dense": "#4C78A8",
    "masked": "#BAB0AC",
    "structured": "#54A24B",
    "csr": "#F58518",
    "semi24": "#B279A2",
}
_BACKEND_LABELS = {
    "dense": "dense (unpruned)",
    "masked": "masked (zeros, dense kernels)",
    "structured": "shrunk (channels removed)",
    "csr": "CSR sparse kernels",
    "semi24": "2:4 sparse kernels (CUDA)",
}


def _color(i: int) -> str:
    return _METHOD_COLORS[i % len(_METHOD_COLORS)]


def _titled(title: str, subtitle: str) -> dict[str, str]:
    return {"text": title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")}


def accuracy_sparsity_figure(
    df: pd.DataFrame,
    title: str = "Accuracy vs sparsity",
    subtitle: str = "",
) -> go.Figure:
    """Accuracy against measured sparsity: one solid trace per method before fine-tune, one
    dashed trace per method after it (when fine-tuned), and the dense accuracy as a line.

    Args:
        df: Rows of `experiments.sweep`: `method`, `sparsity`, `accuracy`,
            `finetuned_accuracy` (NaN without fine-tune), optional `dense_accuracy`.
        title: Figure title.
        subtitle: What was measured (split, images, device), shown under the title.
    """
    fig = go.Figure()
    for i, (method, g) in enumerate(df.groupby("method", sort=False)):
        g = g.sort_values("sparsity")
        fig.add_trace(
            go.Scatter(
                x=g["sparsity"], y=g["accuracy"], mode="lines+markers", name=f"{method}",
                legendgroup=str(method), line={"color": _color(i)},
                hovertemplate="%{x:.1%} sparse<br>accuracy %{y:.2%}<extra>" + str(method)
                + " (pruned)</extra>",
            )
        )  # fmt: skip
        ft = g.dropna(subset=["finetuned_accuracy"]) if "finetuned_accuracy" in g else g.iloc[:0]
        if len(ft):
            fig.add_trace(
                go.Scatter(
                    x=ft["sparsity"], y=ft["finetuned_accuracy"], mode="lines+markers",
                    name=f"{method} + fine-tune", legendgroup=str(method),
                    line={"color": _color(i), "dash": "dash"}, marker={"symbol": "diamond"},
                    hovertemplate="%{x:.1%} sparse<br>accuracy %{y:.2%}<extra>" + str(method)
                    + " + fine-tune</extra>",
                )
            )  # fmt: skip
    if "dense_accuracy" in df and len(df) and pd.notna(df["dense_accuracy"].iloc[0]):
        dense = float(df["dense_accuracy"].iloc[0])
        fig.add_hline(
            y=dense, line={"color": "#888", "dash": "dot", "width": 1},
            annotation_text=f"dense {dense:.2%}", annotation_position="bottom left",
        )  # fmt: skip
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": SPARSITY_AXIS, "tickformat": ".0%"},
        yaxis={"title": "top-1 accuracy (validation split)", **percent_axis(_accuracies(df))},
        height=420,
        margin=_MARGIN_SUBTITLED,
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def _accuracies(df: pd.DataFrame) -> list[float]:
    """Every accuracy a sweep-like frame plots (pruned, fine-tuned, dense)."""
    cols = [c for c in ("accuracy", "finetuned_accuracy", "dense_accuracy") if c in df]
    return [float(v) for c in cols for v in df[c].dropna()]


def _log_ticks(df: pd.DataFrame) -> dict[str, Any]:
    """`log_axis` settings in ms over a latency frame's p10..p90 (and median) range."""
    if not len(df):
        return {}
    lo = pd.concat([df["p10_ms"], df["median_ms"]]).astype(float).min()
    hi = pd.concat([df["p90_ms"], df["median_ms"]]).astype(float).max()
    return log_axis(float(lo), float(hi), "ms")


def latency_sparsity_figure(
    df: pd.DataFrame,
    title: str = "Latency vs pruning ratio by backend",
    subtitle: str = "",
) -> go.Figure:
    """Median latency (p10-p90 bars) against the pruning ratio, one trace per backend that ran.

    Args:
        df: Rows of `tradeoffs.latency_vs_sparsity`: `ratio`, `backend`, `status`,
            `median_ms`, `p10_ms`, `p90_ms`, `vs_dense` (`timing.compare`'s words).
        title: Figure title.
        subtitle: Device, threads and batch size (say what was timed).
    """
    fig = go.Figure()
    ok = df[df["status"] == "ok"] if len(df) else df
    for b in [b for b in _BACKEND_LABELS if b in set(ok.get("backend", []))]:
        g = ok[ok["backend"] == b].sort_values("ratio")
        fig.add_trace(
            go.Scatter(
                x=g["ratio"], y=g["median_ms"], mode="lines+markers", name=_BACKEND_LABELS[b],
                line={"color": _BACKEND_COLORS[b], "dash": "dot" if b == "dense" else "solid"},
                error_y={"type": "data", "symmetric": False,
                         "array": (g["p90_ms"] - g["median_ms"]).tolist(),
                         "arrayminus": (g["median_ms"] - g["p10_ms"]).tolist(),
                         "thickness": 1},
                customdata=(g[["vs_dense"]] if "vs_dense" in g else g[["backend"]]).to_numpy(),
                hovertemplate="ratio %{x:.0%}<br>%{y:.3f} ms<br>%{customdata[0]}"
                "<extra>" + _BACKEND_LABELS[b] + "</extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": "pruning ratio (share of the pruned layers' weights; channels when shrunk)",
               "tickformat": ".0%"},
        # Log scale: backends differ by factors, and a busy machine's p90 spikes would
        # otherwise flatten every median to the floor.
        yaxis={"title": "ms per batch (median, p10-p90, log scale)", "type": "log",
               **_log_ticks(ok)},
        height=420,
        margin=_MARGIN_SUBTITLED,
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def size_accuracy_figure(
    df: pd.DataFrame,
    front: pd.Series,
    *,
    size_col: str = "size_kib",
    acc_col: str = "best_accuracy",
    title: str = "Size vs accuracy (Pareto front)",
    subtitle: str = "",
) -> go.Figure:
    """Each pruned model as a point (one trace per method) and the Pareto front as a line.

    Args:
        df: One row per model: `method`, `label`, the size and accuracy columns.
        front: Boolean Series (aligned with df) marking the Pareto-optimal rows.
        size_col, acc_col: Column names of the size (smaller is better) and accuracy.
        title, subtitle: Figure title and what was measured.
    """
    fig = go.Figure()
    # Methods keep the colours of the accuracy-vs-sparsity figure; the dense model is grey.
    methods = [m for m in df["method"].drop_duplicates() if m != "dense"]
    for method, g in df.groupby("method", sort=False):
        color = "#888" if method == "dense" else _color(methods.index(method))
        fig.add_trace(
            go.Scatter(
                x=g[size_col], y=g[acc_col], mode="markers", name=str(method),
                marker={"color": color, "size": 9}, text=g.get("label"),
                hovertemplate="%{text}<br>%{x:,.1f} KiB<br>accuracy %{y:.2%}<extra></extra>",
            )
        )  # fmt: skip
    f = df[front.reindex(df.index, fill_value=False)].sort_values(size_col)
    if len(f):
        fig.add_trace(
            go.Scatter(
                x=f[size_col], y=f[acc_col], mode="lines", name="Pareto front",
                line={"color": "#222", "dash": "dash", "shape": "hv", "width": 1.5},
                hoverinfo="skip",
            )
        )  # fmt: skip
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": "size: non-zero weights x 4 bytes (KiB)"},
        yaxis={"title": "top-1 accuracy (validation split)", **percent_axis(df[acc_col])},
        height=420,
        margin=_MARGIN_SUBTITLED,
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def sensitivity_figure(
    df: pd.DataFrame, title: str = "Per-layer sensitivity", subtitle: str = ""
) -> go.Figure:
    """Accuracy drop against the share of one layer removed: one trace per layer.

    Args:
        df: Rows of `experiments.sensitivity`: `layer`, `ratio`, `drop`.
        title, subtitle: Figure title and what was measured.
    """
    fig = go.Figure()
    for i, (layer, g) in enumerate(df.groupby("layer", sort=False)):
        g = g.sort_values("ratio")
        fig.add_trace(
            go.Scatter(
                x=g["ratio"], y=g["drop"], mode="lines+markers", name=str(layer),
                line={"color": _color(i)},
                hovertemplate="%{x:.0%} of the layer removed<br>accuracy drop %{y:.2%}"
                "<extra>" + str(layer) + "</extra>",
            )
        )  # fmt: skip
    fig.add_hline(y=0, line={"color": "#888", "width": 1})
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": "share of this layer removed (others dense)", "tickformat": ".0%"},
        yaxis={"title": "accuracy drop (points of top-1)", **percent_axis(df["drop"])},
        height=420,
        margin=_MARGIN_SUBTITLED,
    )  # fmt: skip
    return fig


def runs_curves_figure(
    curves: dict[str, pd.DataFrame], y: str = "accuracy", title: str = "Runs compared"
) -> go.Figure:
    """One trace per run: `y` (accuracy or loss) against the optimizer step.

    Args:
        curves: Run label -> its curve (columns `step` and `y`; rows without `y` are skipped).
        y: The column to plot.
        title: Figure title.
    """
    fig = go.Figure()
    for i, (label, c) in enumerate(curves.items()):
        if y not in c or "step" not in c:
            continue
        pts = c.dropna(subset=[y])
        fig.add_trace(
            go.Scatter(
                x=pts["step"], y=pts[y], mode="lines+markers" if len(pts) < 40 else "lines",
                name=label, line={"color": _color(i)},
            )
        )  # fmt: skip
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title="optimizer step",
        yaxis={
            "title": "validation accuracy" if y == "accuracy" else y,
            **(
                percent_axis([v for c in curves.values() if y in c for v in c[y].dropna()])
                if y == "accuracy"
                else {}
            ),
        },
        height=380,
        margin=_MARGIN,
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def batch_sweep_figure(
    df: pd.DataFrame,
    title: str = "Latency per image vs batch size",
    subtitle: str = "",
) -> go.Figure:
    """Milliseconds per image (median, p10-p90 bars) against the batch size, one line per
    backend that ran: eager PyTorch and ONNX Runtime side by side, so one sees where a pruned
    or int8 model is faster and where batching matters more.

    Args:
        df: Rows of `latency.batch_sweep`: `batch_size`, `backend`, `status`,
            `ms_per_image`, `p10_ms_per_image`, `p90_ms_per_image`; an optional `label`
            column names the lines instead of the backend (e.g. `int8, onnxruntime`).
        title: Figure title.
        subtitle: Device, threads, repeats (`LatencyProtocol.describe()`).
    """
    labels = {**_BACKEND_LABELS, "dense": "dense, eager PyTorch",
              "onnxruntime": "ONNX Runtime"}  # fmt: skip
    ok = df[df["status"] == "ok"] if len(df) else df
    key = "label" if "label" in ok else "backend"
    fig = go.Figure()
    for i, name in enumerate(dict.fromkeys(ok[key]) if len(ok) else []):
        g = ok[ok[key] == name].sort_values("batch_size")
        shown_name = labels.get(str(name), str(name)) if key == "backend" else str(name)
        fig.add_trace(
            go.Scatter(
                x=g["batch_size"], y=g["ms_per_image"], mode="lines+markers", name=shown_name,
                line={"color": _color(i)},
                error_y={"type": "data", "symmetric": False,
                         "array": (g["p90_ms_per_image"] - g["ms_per_image"]).tolist(),
                         "arrayminus": (g["ms_per_image"] - g["p10_ms_per_image"]).tolist(),
                         "thickness": 1},
                hovertemplate="batch %{x}<br>%{y:.3f} ms per image<extra>" + shown_name
                + "</extra>",
            )
        )  # fmt: skip
    sizes = sorted({int(b) for b in ok["batch_size"]}) if len(ok) else []
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": "batch size (images per call, log scale)", "type": "log",
               "tickvals": sizes, "ticktext": [str(b) for b in sizes]},
        yaxis={"title": "ms per image (median, p10-p90; ms per batch / batch size)",
               "rangemode": "tozero"},
        height=420,
        margin=_MARGIN_SUBTITLED,
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


# --- Ratio strategies and per-class change (Trade-offs) ---


def strategies_figure(
    df: pd.DataFrame, title: str = "Ratio strategies at one budget", subtitle: str = ""
) -> go.Figure:
    """Accuracy before and after the same fine-tune for each ratio strategy at one budget:
    grouped bars, one group per strategy, the measured cost in the hover.

    Args:
        df: Rows of `strategies.compare_strategies`: `label`, `accuracy`,
            `finetuned_accuracy` (NaN without fine-tune), `cost`, `cost_share`, `quantity`,
            `epochs`, optional `dense_accuracy`.
        title, subtitle: Figure title and what was measured (budget, split, fine-tune).
    """
    fig = go.Figure()
    costs = [
        f"{c:,.0f} {'bytes' if q == 'size' else q} ({s:.1%} of dense)"
        for c, s, q in zip(df["cost"], df["cost_share"], df["quantity"], strict=True)
    ]
    epochs = int(df["epochs"].iloc[0]) if len(df) else 0
    groups = [("accuracy", "before fine-tune", "#9DB4D0")]
    if "finetuned_accuracy" in df and df["finetuned_accuracy"].notna().any():
        groups.append(("finetuned_accuracy", f"after {epochs}-epoch fine-tune", "#4C78A8"))
    for col, name, color in groups:
        fig.add_trace(
            go.Bar(
                x=df["label"], y=df[col], name=name, marker_color=color, customdata=costs,
                text=[f"{v:.2%}" if pd.notna(v) else "" for v in df[col]],
                textposition="outside",
                hovertemplate="%{x}<br>" + name + ": %{y:.2%}<br>cost %{customdata}"
                "<extra></extra>",
            )
        )  # fmt: skip
    vals = [float(v) for c, _, _ in groups for v in df[c].dropna()]
    if "dense_accuracy" in df and len(df) and pd.notna(df["dense_accuracy"].iloc[0]):
        dense = float(df["dense_accuracy"].iloc[0])
        vals.append(dense)
        fig.add_hline(
            y=dense, line={"color": "#888", "dash": "dot", "width": 1},
            annotation_text=f"dense {dense:.2%}", annotation_position="top left",
        )  # fmt: skip
    # Differences are often tenths of a point: the axis spans the values, not 0 to 100%.
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = max((hi - lo) * 0.25, 0.005)
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        barmode="group",
        xaxis={"title": "how the per-layer ratios were chosen (each meets the same budget)",
               "type": "category"},
        yaxis={"title": "top-1 accuracy (validation split; axis not from 0)",
               **percent_axis(vals), "range": [max(lo - pad, 0.0), min(hi + pad, 1.0)]},
        height=440,
        margin=_MARGIN_SUBTITLED,
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def per_class_change_figure(
    df: pd.DataFrame, title: str = "Accuracy change per class against dense", subtitle: str = ""
) -> go.Figure:
    """Per-class accuracy change of a pruned model against dense, in points: one bar per class
    in the frame's order (worst first), losses red, gains blue (Hooker et al. 2019).

    Args:
        df: Rows of `per_class.per_class_change`: `class`, `n`, `dense`, `pruned`, `change`
            (percentage points); `attrs["change"]` (overall, points) draws a reference line.
        title, subtitle: Figure title and what was measured.
    """
    colors = ["#E45756" if c < 0 else "#4C78A8" for c in df["change"].fillna(0)]
    custom = list(zip(df["n"], df["dense"], df["pruned"], strict=True))
    fig = go.Figure(
        go.Bar(
            x=[str(c) for c in df["class"]], y=df["change"], marker_color=colors,
            customdata=custom, name="change",
            hovertemplate="class %{x}: %{customdata[0]:,} images<br>dense %{customdata[1]:.2%}"
            " → pruned %{customdata[2]:.2%}<br>change %{y:+.2f} points<extra></extra>",
        )
    )  # fmt: skip
    overall = df.attrs.get("change")
    if isinstance(overall, float) and math.isfinite(overall):
        fig.add_hline(
            y=overall, line={"color": "#888", "dash": "dot", "width": 1},
            annotation_text=f"overall {overall:+.2f} points", annotation_position="bottom right",
        )  # fmt: skip
    fig.add_hline(y=0, line={"color": "#444", "width": 1})
    fig.update_layout(
        title=_titled(title, subtitle),
        template=TEMPLATE,
        xaxis={"title": "class (worst change first)", "type": "category"},
        yaxis={"title": "accuracy change vs dense (percentage points)", "zeroline": True},
        height=380,
        margin=_MARGIN_SUBTITLED,
        showlegend=False,
    )  # fmt: skip
    return fig


__all__ += ["per_class_change_figure", "strategies_figure"]
