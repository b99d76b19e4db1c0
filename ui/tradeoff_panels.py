"""Panels of the Trade-offs page: size against accuracy (from the sweep), the run store side by
side (the settings, metrics and curves of the runs picked), ratio strategies at one budget
(`pruning_core.strategies`, a background job) and the per-class accuracy change of any stored
run against dense (`pruning_core.per_class`, Hooker et al. 2019)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pruning_core import plots
from pruning_core.data import DataBundle
from pruning_core.errors import UserError
from pruning_core.export import csv_bytes, pruning_report
from pruning_core.models import LoadedModel
from pruning_core.per_class import change_headline
from pruning_core.store import RunStore
from pruning_core.strategies import STRATEGY_LABELS
from ui.choices import criterion_label, granularity_label, plan_of
from ui.jobs_panel import job_runner, measurement_panel, measurement_result, start_button
from ui.state import keep_settings, remember, restore_settings, session_cached
from ui.tradeoff_jobs import (
    parse_ratios,
    per_class_job,
    run_model_source,
    size_points,
    strategies_job,
)
from ui.widgets import criterion_select, data_table, granularity_select

__all__ = ["compare_runs_panel", "per_class_panel", "size_accuracy_panel", "strategies_panel"]

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
        "Runs to compare",
        list(labels),
        key="tradeoff_compare",
        persist_state="session",
        format_func=labels.__getitem__,
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


# --- ratio strategies at one budget -----------------------------------------------------------

# The panels' own settings: kept under a plain key across page changes (Streamlit forgets the
# value of a widget a run does not draw), restored before their widgets are drawn.
_KEPT = "_tradeoff_strategy_settings"
_SETTINGS: dict[str, Any] = {
    "tradeoff_strat_quantity": "macs",
    "tradeoff_strat_share": 0.5,
    "tradeoff_strat_granularity": "channel",
    "tradeoff_strat_method": "magnitude",
    "tradeoff_strat_epochs": 1,
    "tradeoff_perclass_run": None,
}
_QUANTITY_LABELS = {
    "macs": "MACs (multiply-accumulates per image)",
    "params": "non-zero parameters",
    "size": "size of the weights file (bytes)",
}


def _ratio_granularities() -> list[str]:
    """Granularities with a ratio per unit (uniform and global differ only there)."""
    out = []
    for g in ("unstructured", "channel", "head"):
        try:
            plan = plan_of(g)
        except UserError:
            continue
        if plan.per_layer and not plan.fixed_ratio:
            out.append(g)
    return out


def strategies_panel(
    loaded: LoadedModel, data: DataBundle, selection: tuple[str, str], device: str
) -> None:
    """Uniform, global, sensitivity-suggested and budget-searched ratios at one budget: the
    settings, a Run button (a background job that survives page changes), then the figure and
    the table, or an empty state before any run."""
    st.markdown(
        "How should the pruning be spread over the layers? Four answers at **the same measured "
        "budget**: **uniform** (one ratio in every layer), **global threshold** (one score "
        "cut-off over all layers), **sensitivity-suggested** (the Prune page's suggestion, "
        "scaled until it meets the budget) and **budget-searched** (ratios searched for the "
        "least predicted loss). Each is pruned and fine-tuned the same way, and each run lands "
        "in the run store."
    )
    restore_settings(_KEPT, _SETTINGS)
    c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 2, 2])
    quantity = c1.selectbox(
        "Budget on", list(_QUANTITY_LABELS), key="tradeoff_strat_quantity",
        format_func=_QUANTITY_LABELS.__getitem__,
        help="Measured on the pruned model: MACs of the shrunk model (unstructured: the MACs a "
        "sparse kernel would do), non-zero parameters, or bytes of the saved weights file.",
    )  # fmt: skip
    share = c2.number_input(
        "Share of dense", 0.05, 0.95, step=0.05, key="tradeoff_strat_share",
        help="What the pruned model may cost, as a share of the dense model's cost.",
    )  # fmt: skip
    gran = granularity_select(
        c3,
        selection[0],
        _ratio_granularities(),
        key="tradeoff_strat_granularity",
        fallback=_SETTINGS["tradeoff_strat_granularity"],
    )
    method = criterion_select(
        c4,
        selection[0],
        gran,
        key="tradeoff_strat_method",
        fallback=_SETTINGS["tradeoff_strat_method"],
    )
    epochs = c5.number_input(
        "Fine-tune epochs", 0, 5, key="tradeoff_strat_epochs",
        help="The same default fine-tune after every strategy (0: compare before fine-tune "
        "only). It keeps its best epoch by validation accuracy.",
    )  # fmt: skip
    keep_settings(_KEPT, _SETTINGS)
    budget = f"{quantity}={float(share):g}"
    start_button(
        "Compare ratio strategies", "strategies", lambda: strategies_job(
            loaded, data, budget, str(gran), str(method), int(epochs), device, selection,
        ), selection, key="tradeoff_run_strategies",
        help="Finds each strategy's ratios (the budget search and the suggestion measure "
        "per-layer sensitivity first), then prunes four copies and fine-tunes each for the "
        "epochs set (0: none); a progress bar follows it.",
    )  # fmt: skip
    measurement_panel("strategies", selection)
    res = measurement_result("strategies", selection)
    if res is None or res["df"].empty:
        st.info(
            "Run the comparison to see the four strategies side by side: accuracy before and "
            "after the same fine-tune, at the same measured cost. The button runs the settings "
            f"above ({_QUANTITY_LABELS[quantity].split(' (')[0]} at {float(share):g} of dense, "
            f"{granularity_label(str(gran))}, {_finetune_words(int(epochs))}): it measures "
            "per-layer sensitivity, then prunes four copies"
            + (
                f" and fine-tunes each for {int(epochs)} epoch{'s' if int(epochs) != 1 else ''}."
                if int(epochs)
                else "."
            )
        )
        return
    df, a = res["df"], res["attrs"]
    ep = int(a.get("epochs", 0))
    sub = (
        f"{a.get('budget_words', a.get('budget'))}; {a.get('method')} {a.get('granularity')}; "
        f"{_finetune_words(ep)}"
        f"; validation split, {data.num_examples('val'):,} images"
        + ("; cancelled: partial" if res.get("cancelled") else "")
    )
    st.plotly_chart(plots.strategies_figure(df, subtitle=sub), key="tradeoff_strat_chart")
    st.caption(_strategies_words(df))
    data_table(_strategies_table(df), key="tradeoff_strat_table")
    st.download_button(
        "Download CSV", csv_bytes(df), "strategies.csv", "text/csv", key="tradeoff_strat_csv"
    )


def sweep_empty_state(methods: list[str], ratios_text: str, granularity: str, epochs: int) -> str:
    """What the sweep's Run button will do, from the settings above it (shown before a run)."""
    fixed = plan_of(granularity).fixed_ratio
    if fixed:
        points = "one point per criterion (the pattern fixes the share removed)"
    else:
        try:
            n = len(parse_ratios(ratios_text))
            points = f"{n} ratio{'s' if n != 1 else ''}"
        except UserError as e:
            points = f"no ratios yet: {e}"
    names = ", ".join(criterion_label(m) for m in methods) or "no criterion picked yet"
    return (
        "Run the sweep to see accuracy against sparsity. The button runs the settings above "
        f"({names}; {granularity_label(granularity)}; {points}; {_finetune_words(epochs)}): "
        f"each criterion{'' if fixed else ' at each ratio'} on a fresh copy of the dense model."
    )


def _finetune_words(epochs: int) -> str:
    """The strategies' shared fine-tune in words: "fine-tune 3 epochs", or "no fine-tune"."""
    return f"fine-tune {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "no fine-tune"


def _strategies_words(df: pd.DataFrame) -> str:
    """One sentence on who won, before and after the fine-tune."""
    col = "finetuned_accuracy" if df["finetuned_accuracy"].notna().any() else "accuracy"
    order = df.sort_values(col, ascending=False, kind="stable")
    best = order.iloc[0]
    when = "after the fine-tune" if col == "finetuned_accuracy" else "before fine-tuning"
    lead = float(best[col] - order[col].iloc[1]) if len(df) > 1 else 0.0
    return (
        f"Best {when}: {best['label']}, {best[col]:.2%} ({100 * lead:+.2f} points over the next). "
        "Every strategy meets the same budget, each at its own measured cost (the table's: a "
        "cheaper one had less to work with); differences of a few tenths of a point are "
        "within the spread of one fine-tune (seeds), so rerun before concluding."
    )


def _strategies_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: whole costs (thousands separators), accuracies in percent."""
    out = pd.DataFrame({
        "strategy": df["label"],
        "cost": df["cost"].round().astype("int64"),
        "target": df["target_cost"].round().astype("int64"),
        "share of dense": (100 * df["cost_share"]).round(2),
        "met": df["met"],
        "sparsity %": (100 * df["sparsity"]).round(2),
        "before fine-tune %": (100 * df["accuracy"]).round(2),
        "after fine-tune %": (100 * df["finetuned_accuracy"]).round(2),
        "recovered (points)": df["recovered"].round(2),
        "worst class": df["worst_class"],
        "its change (points)": df["worst_class_change"].round(2),
        "run": df["run_id"],
        "how": df["note"],
    })  # fmt: skip
    return out


# --- per-class change of any run ----------------------------------------------------------------


def _matching_runs(selection: tuple[str, str], limit: int = 200) -> dict[int, str]:
    """Runs of the current model and dataset with one pruned model: id -> label."""
    try:
        runs = RunStore().list_runs(limit=limit)
    except UserError as e:
        st.error(f"The run store cannot be read: {e}")
        return {}
    out: dict[int, str] = {}
    for r in runs.to_dict("records"):
        if (r["model"], r["dataset"]) != selection or r["status"] not in ("done", "cancelled"):
            continue
        # The listing has no artifacts; runs that save a model keep per-class rows anyway.
        if run_model_source(r["metrics"], {}, r["config"]):
            acc = r["metrics"].get("accuracy")
            tail = f", accuracy {acc:.2%}" if isinstance(acc, float) else ""
            out[int(r["id"])] = f"#{r['id']} {r['kind']}: {r['name']}{tail}"
    return out


def _start_per_class(
    run_id: int, loaded: LoadedModel, data: DataBundle, selection: tuple[str, str], device: str
) -> None:
    """The Measure button's callback: queue the per-class job (not recorded as a run: it
    measures a run that is) in the `perclass` slot."""
    ss = st.session_state
    try:
        m = per_class_job(run_id, loaded, data, device)
        job = job_runner().submit(m.fn, name=m.name, kind="sweep", record=False)
    except UserError as e:
        ss["tradeoff_perclass_refused"] = str(e)
        return
    ss["tradeoff_perclass_job"] = job.id
    ss["tradeoff_perclass_for"] = tuple(selection)
    ss["tradeoff_perclass_error"] = None
    ss["tradeoff_perclass_refused"] = None
    remember()


def per_class_panel(
    loaded: LoadedModel, data: DataBundle, selection: tuple[str, str], device: str
) -> None:
    """Pick a stored run of this model and dataset and see its per-class accuracy change
    against dense (figure, table, and an HTML report of the run with the per-class section)."""
    st.markdown(
        "Overall accuracy hides **which classes pay** for pruning: a model can lose one point "
        "overall and ten on a single class (Hooker et al. 2019, *What do compressed deep neural "
        "networks forget?*). Pick a run of this model and see each class's change against the "
        "dense model on the validation split."
    )
    restore_settings(_KEPT, _SETTINGS)
    runs = _matching_runs(selection)
    if not runs:
        st.info(
            "No run of this model and dataset with a pruned model yet: compare ratio "
            "strategies above, or fine-tune on the Fine-tune page, and it appears here."
        )
        return
    if st.session_state.get("tradeoff_perclass_run") not in runs:
        st.session_state["tradeoff_perclass_run"] = next(iter(runs))
    c1, c2 = st.columns([4, 1])
    run_id = c1.selectbox(
        "Run", list(runs), key="tradeoff_perclass_run", format_func=runs.__getitem__,
        help="Ratio-strategy runs keep their per-class accuracies; a fine-tune run is run "
        "again from its recipe (same seed) to measure them.",
    )  # fmt: skip
    keep_settings(_KEPT, _SETTINGS)
    c2.button(
        "Per-class change", key="tradeoff_run_perclass", type="primary",
        on_click=_start_per_class, args=(int(run_id), loaded, data, selection, device),
    )  # fmt: skip
    measurement_panel("perclass", selection)
    res = measurement_result("perclass", selection)
    if res is None or res["df"].empty:
        st.info("Pick a run and measure: its per-class change against dense is drawn here.")
        return
    df, a = res["df"], res["attrs"]
    df.attrs.update(change=float(a.get("change", float("nan"))))
    rid = int(a.get("run_id", -1))
    sub = (
        f"run #{rid} ({a.get('how', '')}); validation split, {int(df['n'].sum()):,} images; "
        f"overall {100 * float(a.get('dense_accuracy', 0)):.2f}% → "
        f"{100 * float(a.get('pruned_accuracy', 0)):.2f}%"
    )
    st.plotly_chart(plots.per_class_change_figure(df, subtitle=sub), key="tradeoff_perclass_chart")
    worst = df.iloc[0]
    st.caption(
        f"{change_headline(df)}, against {float(a.get('change', 0)):+.2f} overall. A class of n "
        f"images moves in steps of 100/n points ({100 / max(int(worst['n']), 1):.1f} here), so "
        "small gaps are noise."
    )
    data_table(df, key="tradeoff_perclass_table")
    report = session_cached(
        "_tradeoff_perclass_report", (rid, res.get("seconds")), lambda: _report(rid, df)
    )
    if report:
        st.download_button(
            "HTML report of this run (with the per-class section)", report,
            f"run-{rid}-report.html", "text/html", key="tradeoff_perclass_report",
        )  # fmt: skip


def _report(run_id: int, df: pd.DataFrame) -> bytes:
    """The run's HTML report (`export.pruning_report`) with its per-class section."""
    try:
        rec = RunStore().get_run(run_id)
    except UserError:
        return b""
    labels = STRATEGY_LABELS.get(str(rec.metrics.get("strategy")), "")
    page = pruning_report(
        rec.metrics, title=f"Pruning report: run #{run_id}" + (f" ({labels})" if labels else ""),
        per_class=df, notes=[f"Run #{run_id} of the run store: {rec.name}."],
    )  # fmt: skip
    return page.encode("utf-8")
