"""Page 3: choose how to prune, move the sliders, watch the live preview, apply."""

from __future__ import annotations

import streamlit as st

from pruning_core.errors import UserError
from pruning_core.plots import histogram_figure, layer_sparsity_figure, mask_figure
from pruning_core.prune import SCOPES
from pruning_core.slider import mask_grid, mask_is_averaged
from ui.actions import apply_pruning, block_choice
from ui.budget_panel import budget_panel
from ui.caches import dense_estimate, preview_for
from ui.choices import (
    criteria_help,
    criterion_caption,
    criterion_choices,
    criterion_label,
    granularities_help,
    granularity_choices,
    granularity_label,
    plan_of,
)
from ui.latency_panel import applied_latency_panel
from ui.prune_widgets import (
    bn_estimate_caption,
    committed_panel,
    estimate_metric,
    overrides_editor,
)
from ui.session import pruned
from ui.state import init_state, selection
from ui.texts import CRITERIA_EXPLAINED, SCOPE_HELP, SCOPE_LABELS, ZEROS_NO_SPEEDUP
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
        format_func=granularity_label,
        help="What is removed:\n" + granularities_help(),
    )
    plan = plan_of(granularity)
    st.caption(f"{granularity_label(granularity)}: {plan.help}.")
with c2:
    options = criterion_choices(granularity)
    if st.session_state.get("prune_method") not in options:
        st.session_state["prune_method"] = options[0]
    method = st.selectbox(
        "Criterion",
        options,
        key="prune_method",
        format_func=criterion_label,
        help="How importance is scored; the least important go first.\n" + criteria_help(options),
    )
    st.caption(criterion_caption(method))
    explain(CRITERIA_EXPLAINED, "Magnitude vs activation criteria")
with c3:
    scope = st.radio(
        "Scope",
        list(SCOPES),
        key="prune_scope",
        format_func=SCOPE_LABELS.__getitem__,
        help=SCOPE_HELP,
        disabled=plan.fixed_ratio,
    )
    st.caption(
        SCOPE_HELP if not plan.fixed_ratio else f"{granularity} is a fixed pattern in every layer."
    )

try:
    preview, base = preview_for(model_ref, dataset_ref, method, granularity)
except UserError as e:
    st.info(f"{granularity_label(granularity)} pruning does not apply here: {e}")
    st.stop()

ratio = st.slider(
    "Share to remove" + (f" (fixed by the {granularity} pattern)" if plan.fixed_ratio else ""),
    min_value=0.0,
    max_value=0.95,
    step=0.05,
    key="prune_ratio",
    disabled=plan.fixed_ratio,
    help="The target share of weights (or channels, heads, blocks) removed from the pruned "
    "layers. The classifier (last layer) is kept dense.",
)
# Per-layer overrides: an editable table; "suggest" fills it from measured sensitivity.
overrides = overrides_editor(preview, model_ref, dataset_ref, ratio)
recalibrate_bn = st.toggle(
    "BatchNorm recalibration",
    key="prune_bn_recal",
    disabled=not plan.structured,
    help="After structured pruning, re-estimate BatchNorm running statistics on calibration "
    "images (no gradient steps); the estimate and Apply follow this switch. Unstructured and "
    "N:M pruning leave BatchNorm as it is.",
)
budget_panel(preview, model_ref, dataset_ref, recalibrate_bn)
try:  # blocks chosen by name prune with their own config
    preview, ratio, overrides = block_choice(preview, model_ref, dataset_ref, ratio, overrides)
except UserError as e:
    st.error(f"These blocks cannot be removed: {e}")
    st.stop()

# ------------------------------------------------------------------ live preview
try:
    stats = preview.update(ratio, overrides or None, scope)
except UserError as e:
    st.error(f"These ratios cannot be applied: {e}")
    st.stop()

st.subheader("Live preview")
m = st.columns([1, 1, 0.9, 1.3])
params_nz = stats.params_nonzero
m[0].metric(
    "Remaining params",
    f"{params_nz:,}",
    delta=f"{params_nz - preview.params_nonzero_dense:,}",
    delta_color="off",
    help=f"Non-zero parameters of the whole model (dense: {preview.params_nonzero_dense:,}).",
)
m[1].metric(
    "Effective MACs / image",
    f"{stats.macs_effective:,.0f}",
    delta=f"{stats.macs_effective / preview.macs_dense - 1:+.1%}",
    delta_color="off",
    help="Multiply-accumulates left when the removed weights are skipped. Structured pruning "
    "gets this for real once applied; unstructured zeros need sparse kernels (a dense kernel "
    f"still does all {preview.macs_dense:,}).",
)
m[2].metric(
    "Sparsity",
    f"{stats.sparsity:.1%}",
    help="Share of zero weights over all Linear/Conv layers, the classifier included "
    "(biases and BatchNorm not counted).",
)
# Filled last: the charts show first, the estimate (a forward pass) follows.
estimate_slot = m[3].empty()
bn_slot = m[3].empty()
e1, e2 = st.columns([1, 2])
estimate_on = e1.toggle(
    "Accuracy estimate on every move",
    key="prune_estimate",
    help="Evaluates the masked copy on the first validation images after each move.",
)
n_est = e2.select_slider(
    "Images for the estimate",
    options=[100, 200, 500, 1000, 2000],
    key="prune_estimate_n",
    disabled=not estimate_on,
    help="More images: a steadier estimate, a slower redraw.",
)
timing_slot = st.empty()
for note in stats.notes:
    st.caption(f"Note: {note}")

left, right = st.columns([1.1, 1])
with left:
    st.plotly_chart(
        layer_sparsity_figure(stats.layers, "Sparsity per layer (preview)"),
        key="prune_layer_chart",
    )
    explain(ZEROS_NO_SPEEDUP, "Why zeros alone give no speedup")
with right:
    layers = list(stats.layers["layer"])
    if st.session_state.get("prune_layer") not in layers:
        st.session_state["prune_layer"] = next(
            (n for n in layers if n in stats.masks), layers[0] if layers else None
        )
    layer = st.selectbox("Layer to look at", layers, key="prune_layer")
    if layer is not None:
        view = preview.layer_view(stats, layer)
        st.plotly_chart(
            histogram_figure(
                view.histogram,
                f"{layer}: weights before / after ({view.zeros_added:,} set to zero)",
                "weight value",
            ),
            key="prune_hist_chart",
        )
        st.plotly_chart(
            mask_figure(mask_grid(view.mask), f"{layer}: mask (dark = kept)"),
            key="prune_mask_chart",
        )
        if view.mask.dim() > 2:
            st.caption(
                f"Conv weight {tuple(view.mask.shape)} drawn as out_ch x (in_ch x k x k)"
                + (" averaged into cells." if mask_is_averaged(view.mask) else ".")
            )

# ------------------------------------------------------------------ the estimate, last
if estimate_on:
    # Shown after the first 100 images, then refined; a slider move meanwhile stops it.
    for step in preview.estimate_steps(stats, int(n_est), recalibrate_bn=recalibrate_bn):
        estimate_metric(estimate_slot, step, dense_estimate(model_ref, dataset_ref, step.n_eval))
    bn_estimate_caption(bn_slot, preview, stats, int(n_est), recalibrate_bn)
else:
    estimate_slot.metric("Accuracy estimate", "off")
timing_slot.caption(
    f"Preview computed in {stats.seconds * 1000:.0f} ms"
    + (
        f" + {stats.eval_seconds * 1000:.0f} ms for the estimate (95% interval "
        f"{stats.accuracy_interval[0]:.1%} to {stats.accuracy_interval[1]:.1%})"
        if estimate_on and stats.accuracy_interval
        else ""
    )
    + f" (scores were computed once in {preview.build_seconds:.2f} s, on CPU)."
    + (
        " Structured preview: weights are masked; Apply removes them physically."
        if plan.structured
        else ""
    )
)

# ------------------------------------------------------------------ apply
st.divider()
committed = pruned()
a1, a2 = st.columns([1, 3])
if a1.button("Apply pruning", type="primary", key="prune_apply"):
    try:
        committed = apply_pruning(
            preview, base, dataset_ref, ratio=ratio, scope=scope, overrides=overrides,
            recalibrate_bn=recalibrate_bn,
        )  # fmt: skip
    except UserError as e:
        st.error(f"Pruning failed: {e}")
with a2:
    committed_panel(committed, base_stats)
applied_latency_panel(committed)
