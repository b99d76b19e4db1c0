"""Panels of the Trade-offs page that only read results: size against accuracy (from the
sweep), and the run store side by side (the settings, metrics and curves of the runs picked)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pruning_core import plots
from pruning_core.errors import UserError
from pruning_core.store import RunStore
from ui.tradeoff_jobs import size_points
from ui.widgets import data_table

__all__ = ["compare_runs_panel", "size_accuracy_panel"]

_COLUMNS = ("id", "kind", "status", "name", "model", "dataset", "created", "accuracy",
            "sparsity", "curve_points", "error")  # fmt: skip


def size_accuracy_panel(sweep: dict[str, Any] | None, dense_params: int) -> None:
    """Size against accuracy of the dense model and every swept model, with the Pareto front.

    Args:
        sweep: The sweep's result (`ui.jobs_panel.measurement_result`), or None.
        dense_params: Parameters of the dense model.
    """
    if sweep is None:
        st.info("Run the sweep (first tab): each of its pruned models becomes a point here.")
        return
    pts, front = size_points(sweep["df"], dense_params)
    st.plotly_chart(
        plots.size_accuracy_figure(
            pts, front, subtitle="size = non-zero weights x 4 bytes (fp32, values only); "
            "accuracy = best of pruned and fine-tuned, validation split",
        ),
        key="tradeoff_size_chart",
    )  # fmt: skip
    st.caption(
        "Points on the dashed line are Pareto-optimal: no other model is both smaller and "
        "more accurate. Storing only non-zero values needs a sparse format (CSR, bitmask) that "
        "adds index bytes; a physically shrunk model needs none."
    )
    st.dataframe(
        pts.loc[front, ["label", "size_kib", "best_accuracy"]], hide_index=True,
        column_config={"size_kib": st.column_config.NumberColumn("KiB", format="%.1f"),
                       "best_accuracy": st.column_config.NumberColumn("accuracy", format="%.4f")},
    )  # fmt: skip


def compare_runs_panel(limit: int = 100) -> None:
    """The latest `limit` runs as a table, and a multiselect to compare some of them.

    By default the two latest runs with a curve (or the two latest runs) are compared.
    """
    st.markdown(
        "Every fine-tune, sweep and sensitivity run of this server is kept in the run store, "
        "also when cancelled (with its partial curve). Pick runs to put them side by side."
    )
    try:
        store = RunStore()
        runs = store.list_runs(limit=limit)
    except UserError as e:
        st.error(f"The run store cannot be read: {e}")
        runs = pd.DataFrame()
    if runs.empty:
        st.info("No runs yet: fine-tune a model or run a sweep and it appears here.")
        return
    data_table(runs[[c for c in _COLUMNS if c in runs]])
    labels = {
        int(i): f"#{i} {k} {s}: {n}"
        for i, k, s, n in zip(runs["id"], runs["kind"], runs["status"], runs["name"], strict=True)
    }
    wanted = [i for i in st.session_state.get("tradeoff_compare", []) if i in labels]
    if not wanted:
        with_curve = [int(i) for i in runs.loc[runs["curve_points"] > 0, "id"]]
        wanted = (with_curve or list(labels))[:2]
    st.session_state["tradeoff_compare"] = wanted
    chosen = st.multiselect(
        "Runs to compare", list(labels), key="tradeoff_compare", format_func=labels.__getitem__
    )
    if not chosen:
        return
    st.dataframe(store.compare_runs(chosen).set_index("id").T.astype(str))
    curves = {labels[i]: store.get_curve(i) for i in chosen}
    c1, c2 = st.columns(2)
    # An empty chart would draw a meaningless axis (-100% to 400%): say what is missing instead.
    with_acc = {k: v for k, v in curves.items() if _has(v, "accuracy")}
    with_loss = {k: v for k, v in curves.items() if _has(v, "loss")}
    if with_acc:
        c1.plotly_chart(
            plots.runs_curves_figure(with_acc, "accuracy", "Validation accuracy"),
            key="tradeoff_runs_acc",
        )
    else:
        c1.info(
            "No validation accuracy to draw: these runs ended or were cancelled before their "
            "first epoch was validated."
        )
    if with_loss:
        c2.plotly_chart(
            plots.runs_curves_figure(with_loss, "loss", "Training loss"), key="tradeoff_runs_loss"
        )
    else:
        c2.info("No training loss to draw: these runs recorded no training step.")


def _has(curve: pd.DataFrame, column: str) -> bool:
    """Whether a run's curve has at least one value of `column`."""
    return column in curve and bool(curve[column].notna().any())
