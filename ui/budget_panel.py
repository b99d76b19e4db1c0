"""The Prune page's "Fit a budget" panel: say what the pruned model may cost, search per-layer
ratios (or blocks) that meet it, see predicted against measured cost and accuracy, and take
the result into the per-layer sliders.

The search is `pruning_core.budget.search` (through `ui.actions.search_budget`); its result is
kept in the session (`_RESULT`) with the selection it was made for, so it survives reruns and
visits to other pages, and is shown only while that selection is current.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from pruning_core.budget import QUANTITIES, Budget, BudgetResult, format_cost
from pruning_core.errors import UserError
from pruning_core.slider import SliderPreview
from ui.actions import MAX_UNIT_RATIO, block_names, search_budget
from ui.caches import dense_size
from ui.prune_widgets import take_overrides

__all__ = ["QUANTITY_LABELS", "budget_panel", "budget_result"]

_RESULT = "_budget_result"
QUANTITY_LABELS = {
    "macs": "MACs",
    "params": "Parameters (non-zero)",
    "size": "Size on disk",
    "latency": "Latency (this CPU)",
}
# Absolute budgets are typed in these units: (label, factor to the quantity's base unit).
_UNITS = {
    "macs": ("millions of MACs per image", 1e6),
    "params": ("thousands of non-zero parameters", 1e3),
    "size": ("KB of weights file", 1e3),
    "latency": ("ms per batch", 1.0),
}


def _selection(preview: SliderPreview, model_ref: str, dataset_ref: str) -> tuple[str, ...]:
    c = preview.config
    return (model_ref, dataset_ref, c.method, c.granularity)


def budget_result(
    preview: SliderPreview, model_ref: str, dataset_ref: str
) -> tuple[BudgetResult, bool] | None:
    """The session's last budget search, if it was made for this selection, and whether it
    recalibrated BatchNorm (the switch as it was at its Search)."""
    kept = st.session_state.get(_RESULT)
    if isinstance(kept, tuple) and kept[0] == _selection(preview, model_ref, dataset_ref):
        return kept[1], bool(kept[2])
    return None


def _dense_text(preview: SliderPreview, model_ref: str, quantity: str) -> str:
    """The dense model's cost in the absolute input's unit (latency: not known before timing)."""
    label, scale = _UNITS[quantity]
    if quantity == "macs":
        return f"dense: {preview.macs_dense / scale:,.3g} {label}"
    if quantity == "params":
        return f"dense: {preview.params_nonzero_dense / scale:,.4g} {label}"
    if quantity == "size":
        return f"dense: {dense_size(model_ref) / scale:,.4g} {label}"
    return "the dense model is timed beside the result"


def _budget_inputs(preview: SliderPreview, model_ref: str) -> Budget:
    """The quantity, value and (latency) batch size and threads, as a `Budget`.

    Raises:
        UserError: A value the budget refuses.
    """
    c1, c2, c3 = st.columns([1.2, 1, 1.2])
    quantity = c1.selectbox(
        "Quantity",
        list(QUANTITIES),
        key="budget_quantity",
        persist_state="session",
        format_func=QUANTITY_LABELS.__getitem__,
        help="What the pruned model may cost, measured on this machine: MACs per image (the "
        "shrunk model's; unstructured: what a sparse kernel would do), non-zero parameters, "
        "bytes of the saved weights file, or ms per batch on this server's CPU.",
    )
    relative = c2.toggle(
        "Relative to dense",
        key="budget_relative",
        persist_state="session",
        help="On: a share of the dense model's cost. Off: an amount.",
    )
    if relative:
        value = c3.number_input(
            "Share of dense allowed",
            min_value=0.05,
            max_value=1.0,
            step=0.05,
            key="budget_share",
            persist_state="session",
            format="%.2f",
        )
        scale = 1.0
    else:
        label, scale = _UNITS[quantity]
        value = c3.number_input(
            f"Allowed ({label})",
            min_value=0.001,
            step=0.1,
            key="budget_amount",
            persist_state="session",
            format="%.3f",
        )
        c3.caption(_dense_text(preview, model_ref, quantity))
    batch = threads = None
    if quantity == "latency":
        l1, l2, l3 = st.columns([1, 1, 2])
        batch = l1.number_input(
            "Batch size", min_value=1, max_value=4096, key="budget_batch", persist_state="session"
        )
        threads = l2.number_input(
            "CPU threads",
            min_value=1,
            max_value=max(os.cpu_count() or 1, 1),
            key="budget_threads",
            persist_state="session",
        )
        l3.caption(
            f"Timed here with the latency protocol: batch {int(batch)}, {int(threads)} "
            "thread(s), warm-up calls then the median of timed calls, the dense model timed in "
            "the same rounds (p10/p90 shown with the result)."
        )
    return Budget(
        quantity,
        float(value) * scale,
        relative=bool(relative),
        batch_size=int(batch or 32),
        threads=int(threads or 1),
    )


def _show(result: BudgetResult, preview: SliderPreview, recalibrate_bn: bool) -> None:
    """Predicted against measured cost and accuracy, the ratios, and the notes."""
    q, b = result.budget.quantity, result.budget
    line = (
        f"{b.describe(result.dense_cost)}: measured "
        f"**{format_cost(q, result.measured_cost)}**, predicted "
        f"{format_cost(q, result.predicted_cost)}"
    )
    if result.met:
        st.success(f"Budget met. {line}.")
    else:
        st.warning(f"Budget not met. {line}.")
    m = st.columns(4)
    m[0].metric(
        f"{QUANTITY_LABELS[q]}, measured",
        format_cost(q, result.measured_cost),
        delta=f"{result.measured_cost / result.dense_cost - 1:+.1%} vs dense",
        delta_color="off",
        help=f"Measured on the pruned model (dense {format_cost(q, result.dense_cost)}, target "
        f"{format_cost(q, result.target_cost)}).",
    )
    m[1].metric(
        f"{QUANTITY_LABELS[q]}, predicted",
        format_cost(q, result.predicted_cost),
        help="The search's additive model: each unit's measured saving, summed.",
    )
    m[2].metric(
        "Accuracy, measured",
        f"{result.measured_accuracy:.1%}",
        delta=f"{(result.measured_accuracy - result.dense_accuracy) * 100:+.1f} pts",
        help=f"The pruned model on the validation split, before any fine-tuning (dense "
        f"{result.dense_accuracy:.1%}); BatchNorm "
        f"{'recalibrated' if recalibrate_bn else 'not recalibrated'}.",
    )
    m[3].metric(
        "Accuracy, predicted",
        f"{result.predicted_accuracy:.1%}",
        help="Dense accuracy minus the sum of each unit's measured drop (units assumed "
        "independent; measured on calibration images).",
    )
    if result.latency is not None:
        lat = result.latency
        st.caption(
            f"Latency {lat.median_ms:.2f} ms (p10 {lat.p10_ms:.2f}, p90 {lat.p90_ms:.2f}) against "
            f"dense {lat.dense_median_ms:.2f} ms (p10 {lat.dense_p10_ms:.2f}, p90 "
            f"{lat.dense_p90_ms:.2f}); {lat.protocol}."
        )
    if block_names(preview):
        removed = result.removed_blocks
        st.caption(f"Blocks removed: {', '.join(removed) if removed else 'none'}.")
    else:
        rows = [
            {"unit": str(u["unit"]), "ratio": float(u.get("ratio", 0.0)),
             "predicted drop (pts)": 100 * float(u.get("predicted_drop", 0.0))}
            for u in result.units
        ]  # fmt: skip
        st.dataframe(pd.DataFrame(rows), hide_index=True, height=min(36 * (len(rows) + 1), 260))
    for note in result.notes:
        st.caption(f"Note: {note}")


def _take(result: BudgetResult, preview: SliderPreview) -> None:
    """The searched ratios (or blocks) into the per-layer sliders, capped as they are."""
    if block_names(preview):
        overrides = dict.fromkeys(result.removed_blocks, 1.0)
    else:
        units = set(preview.unit_names)
        overrides = {u: min(r, MAX_UNIT_RATIO) for u, r in result.ratios.items() if u in units}
    take_overrides(
        overrides,
        f"From the budget search ({result.budget.describe(result.dense_cost)}): measured "
        f"{format_cost(result.budget.quantity, result.measured_cost)}, accuracy "
        f"{result.measured_accuracy:.1%} before fine-tuning.",
    )


def budget_panel(
    preview: SliderPreview, model_ref: str, dataset_ref: str, recalibrate_bn: bool
) -> None:
    """The "Fit a budget" expander: inputs, Search (with a progress bar), the result and
    "Take into sliders"."""
    kept = budget_result(preview, model_ref, dataset_ref)
    result, recal_used = kept if kept is not None else (None, recalibrate_bn)
    with st.expander("Fit a budget", expanded=result is not None):
        st.caption(
            "Say what the pruned model may cost; per-layer ratios (blocks: which blocks) that "
            "meet it with the least predicted accuracy loss are searched from measured "
            "sensitivity and cost curves, then the pruned model is measured."
        )
        if preview.engine.plan.fixed_ratio:
            st.caption("This granularity removes a fixed share everywhere: nothing to search.")
            return
        if preview.engine.plan.no_budget_search:
            st.caption(f"No budget search here: {preview.engine.plan.no_budget_search}.")
            return
        try:
            budget = _budget_inputs(preview, model_ref)
        except UserError as e:
            st.error(f"Bad budget: {e}")
            return
        if st.button("Search", key="budget_search", type="primary"):
            try:
                result = search_budget(
                    preview, model_ref, dataset_ref, budget, recalibrate_bn=recalibrate_bn
                )
            except UserError as e:
                st.error(f"Budget search failed: {e}")
                return
            st.session_state[_RESULT] = (
                _selection(preview, model_ref, dataset_ref),
                result,
                recalibrate_bn,
            )
            recal_used = recalibrate_bn
        if result is None:
            return
        if result.budget != budget or recal_used != recalibrate_bn:
            # A kept result read as current would answer a question nobody asks any more.
            searched = result.budget.describe(result.dense_cost)
            bn = "recalibrated" if recal_used else "not recalibrated"
            st.info(
                f"This result is for the earlier settings ({searched}, BatchNorm {bn}): click "
                "**Search** for the settings above."
            )
        _show(result, preview, recal_used)
        if st.button("Take into sliders", key="budget_take"):
            _take(result, preview)
