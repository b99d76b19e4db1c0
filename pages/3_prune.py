"""Page 3: choose how to prune, move the sliders, watch the live preview, apply."""

from __future__ import annotations

from functools import partial

import streamlit as st

from pruning_core.errors import UserError
from pruning_core.prune import SCOPES
from pruning_core.slider import SliderPreview
from ui.actions import apply_pruning, block_choice
from ui.budget_panel import budget_panel
from ui.choices import (
    criteria_help,
    criterion_caption,
    criterion_choices,
    criterion_label,
    granularities_help,
    granularity_choices,
    granularity_label,
    plan_of,
    ratio_help,
    ratio_label,
    scope_applies,
    scope_caption,
    scope_help,
    scope_label,
    scored_by_criterion,
)
from ui.latency_panel import applied_latency_panel
from ui.prune_widgets import (
    committed_panel,
    overrides_editor,
    preview_or_stop,
    preview_panel,
    ratio_note,
)
from ui.session import pruned
from ui.state import init_state, keep, selection, yield_to_newer_run
from ui.texts import CRITERIA_EXPLAINED
from ui.texts_companions import LOWRANK_EXPLAINED
from ui.widgets import baseline_or_stop, explain

init_state()
st.title("Prune")
st.caption(
    "Pick a criterion and a granularity, then move the sliders: the preview below is measured "
    "on your own copy of the model after every move. Nothing is committed until you click "
    "**Apply pruning**."
)
model_ref, dataset_ref = selection()
base_stats = baseline_or_stop(model_ref, dataset_ref)

# ------------------------------------------------------------------ controls
c1, c2, c3 = st.columns([1.1, 1.4, 0.9])
with c1:
    granularity = st.selectbox(
        "Granularity",
        granularity_choices(),
        key="prune_granularity",
        persist_state="session",
        format_func=granularity_label,
        help="What is removed:\n" + granularities_help(),
    )
    plan = plan_of(granularity)
    st.caption(f"{granularity_label(granularity)}: {plan.help}.")
    if granularity.startswith("lowrank"):
        explain(LOWRANK_EXPLAINED, "What low rank is")
with c2:
    options = criterion_choices(granularity)
    if st.session_state.get("prune_method") not in options:
        st.session_state["prune_method"] = options[0]
    method = st.selectbox(
        "Criterion",
        options,
        key="prune_method",
        persist_state="session",
        format_func=partial(criterion_label, granularity=granularity),
        help="How importance is scored; the least important go first.\n"
        + criteria_help(options, granularity),
        disabled=len(options) == 1,
    )
    st.caption(criterion_caption(method, granularity))
    if scored_by_criterion(granularity):
        explain(CRITERIA_EXPLAINED, "Magnitude vs activation criteria")
with c3:
    scope = st.radio(
        "Scope",
        list(SCOPES),
        key="prune_scope",
        persist_state="session",
        format_func=partial(scope_label, granularity),
        help=scope_help(granularity),
        disabled=not scope_applies(granularity),
    )
    st.caption(scope_caption(granularity))

preview, base = preview_or_stop(model_ref, dataset_ref, method, granularity)

recalibrate_bn = st.toggle(
    "BatchNorm recalibration",
    key="prune_bn_recal",
    persist_state="session",
    disabled=not plan.structured,
    help="After structured pruning, re-estimate BatchNorm running statistics on calibration "
    "images (no gradient steps); the estimate and Apply follow this switch. Unstructured and "
    "N:M pruning leave BatchNorm as it is.",
)
budget_panel(preview, model_ref, dataset_ref, recalibrate_bn)


@st.fragment
def live_preview(
    preview: SliderPreview, model_ref: str, dataset_ref: str, scope: str, recalibrate_bn: bool
) -> tuple[SliderPreview, float, dict[str, float]]:
    """The sliders and what they show. A slider move reruns only this function, with the
    arguments of the last whole-page run (Streamlit sends, and the browser redraws, only its
    elements); what changes the rest of the page ("Suggest", "Clear", a search taken into the
    sliders, Apply) reruns the whole page.

    Returns:
        (preview, ratio, overrides) as Apply takes them (blocks chosen by name: their own
        preview and ratio, `ui.actions.block_choice`).
    """
    plan = preview.engine.plan
    granularity = preview.config.granularity
    ratio = st.slider(
        ratio_label(granularity),
        min_value=0.0,
        max_value=0.95,
        step=0.05,
        key="prune_ratio",
        persist_state="session",
        disabled=plan.fixed_ratio,
        help=ratio_help(granularity),
    )
    # Per-layer overrides: one slider per unit (a table for many); "suggest" fills them from
    # measured sensitivity.
    overrides = overrides_editor(preview, model_ref, dataset_ref, ratio)
    # A fragment run calls no `init_state`: hold the slider's value for a page change that
    # follows (before the work below, which such a change interrupts).
    keep("prune_ratio")
    try:  # blocks chosen by name prune with their own config
        chosen, ratio, overrides = block_choice(preview, model_ref, dataset_ref, ratio, overrides)
    except UserError as e:
        st.error(f"These blocks cannot be removed: {e}")
        st.stop()
    yield_to_newer_run()  # the slider moved again meanwhile: draw that position instead
    try:
        stats = chosen.update(ratio, overrides or None, scope)
    except UserError as e:
        st.error(f"These ratios cannot be applied: {e}")
        st.stop()
    note = ratio_note(preview, chosen, ratio, scope)
    preview_panel(chosen, stats, model_ref, dataset_ref, recalibrate_bn, note)
    return chosen, ratio, overrides


chosen, ratio, overrides = live_preview(preview, model_ref, dataset_ref, scope, recalibrate_bn)

# ------------------------------------------------------------------ apply
st.divider()
committed = pruned()
a1, a2 = st.columns([1, 3])
if a1.button("Apply pruning", type="primary", key="prune_apply"):
    try:
        committed = apply_pruning(
            chosen, base, dataset_ref, ratio=ratio, scope=scope, overrides=overrides,
            recalibrate_bn=recalibrate_bn,
        )  # fmt: skip
    except UserError as e:
        st.error(f"Pruning failed: {e}")
with a2:
    committed_panel(committed, base_stats)
applied_latency_panel(committed)
