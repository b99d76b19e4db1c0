"""Page 3: choose how to prune, move the sliders, watch the live preview, apply."""

from __future__ import annotations

import copy
import math

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.experiments import layer_sizes, predicted_drop, suggest_ratios
from pruning_core.models import LoadedModel
from pruning_core.plots import histogram_figure, layer_sparsity_figure, mask_figure
from pruning_core.prune import PruneConfig, ScoreCache, prune_
from pruning_core.stats import model_summary
from ui.loaders import baseline, shared_data
from ui.prune_preview import before_after, mask_grid
from ui.prune_widgets import (
    CRITERIA_EXPLAINED,
    GRANULARITIES,
    GRANULARITY_HELP,
    METHOD_HELP,
    SCOPE_HELP,
    ZEROS_NO_SPEEDUP,
    explain,
    method_label,
    method_options,
    preview_for,
    sensitivity_for,
)
from ui.session import clear_pruned, pruned, set_pruned
from ui.state import init_state, selection

init_state()
st.title("Prune")
st.caption(
    "Pick a criterion and a granularity, then move the sliders: the preview below is measured "
    "on your own copy of the model after every move. Nothing is committed until you click "
    "**Apply pruning**."
)
model_ref, dataset_ref = selection()
try:
    base_stats = baseline(model_ref, dataset_ref)
except UserError as e:
    st.error(f"This model and dataset do not fit together: {e}")
    st.stop()

# ------------------------------------------------------------------ controls
c1, c2, c3 = st.columns([1.1, 1.4, 0.9])
with c1:
    granularity = st.selectbox(
        "Granularity",
        list(GRANULARITIES),
        key="prune_granularity",
        format_func=lambda g: GRANULARITIES[g],
        help="What is removed: single weights, a fixed 2-of-4 pattern, or whole structures.",
    )
    st.caption(GRANULARITY_HELP[granularity])
with c2:
    options = method_options(granularity)
    if st.session_state.get("prune_method") not in options:
        st.session_state["prune_method"] = options[0]
    method = st.selectbox(
        "Criterion",
        options,
        key="prune_method",
        format_func=method_label,
        help="How importance is scored; the least important go first.",
    )
    st.caption(METHOD_HELP.get(method, ""))
    explain(CRITERIA_EXPLAINED, "Magnitude vs activation criteria")
with c3:
    scope = st.radio(
        "Scope",
        ["global", "layer"],
        key="prune_scope",
        format_func=lambda s: {"global": "global threshold", "layer": "same ratio per layer"}[s],
        help=SCOPE_HELP,
        disabled=granularity == "2:4",
    )
    st.caption(SCOPE_HELP if granularity != "2:4" else "2:4 is a fixed pattern in every layer.")

try:
    preview, base = preview_for(model_ref, dataset_ref, method, granularity)
except UserError as e:
    st.info(f"{GRANULARITIES[granularity].capitalize()} pruning does not apply here: {e}")
    st.stop()

units = preview.unit_names
is_nm = granularity == "2:4"
ratio = st.slider(
    "Share to remove" + (" (fixed by the 2:4 pattern)" if is_nm else ""),
    min_value=0.0,
    max_value=0.95,
    step=0.05,
    key="prune_ratio",
    disabled=is_nm,
    help="The target share of weights (or channels, heads, blocks) removed from the pruned "
    "layers. The classifier (last layer) is kept dense.",
)

# Per-layer overrides: an editable table; "suggest" fills it from measured sensitivity.
overrides: dict[str, float] = {
    k: v for k, v in st.session_state.get("prune_overrides", {}).items() if k in units
}
if not is_nm:
    with st.expander(f"Per-layer ratios ({len(overrides)} set)", expanded=bool(overrides)):
        st.caption(
            "Leave a ratio empty to use the slider. Sensitive layers (first conv, the "
            "classifier's input) usually deserve less pruning."
        )
        unit_kind = {"channel": "channels", "head": "heads", "block": "blocks"}.get(
            granularity, "weights"
        )
        table = pd.DataFrame(
            {
                "layer": units,
                unit_kind: [preview.unit_sizes[u] for u in units],
                "ratio": [overrides.get(u, math.nan) for u in units],
            }
        )
        version = st.session_state.get("_prune_editor_version", 0)
        edited = st.data_editor(
            table,
            key=f"prune_editor_{version}",
            hide_index=True,
            disabled=["layer", unit_kind],
            column_config={
                "ratio": st.column_config.NumberColumn(
                    "ratio override", min_value=0.0, max_value=0.95, step=0.01, format="%.2f"
                )
            },
            width="stretch",
        )
        overrides = {
            str(r["layer"]): float(r["ratio"]) for _, r in edited.iterrows() if pd.notna(r["ratio"])
        }
        st.session_state["prune_overrides"] = overrides
        b1, b2, _ = st.columns([1, 1, 2])
        sens_ok = granularity in ("unstructured", "channel", "head")
        suggest = b1.button(
            "Suggest from sensitivity",
            key="prune_suggest",
            disabled=not sens_ok,
            help="Prunes one layer at a time at 25/50/75/90% and measures the accuracy "
            "drop on up to 500 validation images, then gives each layer the ratio that reaches "
            "the slider's overall sparsity with the least predicted loss.",
        )
        if b2.button("Clear overrides", key="prune_clear_overrides"):
            st.session_state["prune_overrides"] = {}
            st.session_state["_prune_editor_version"] = version + 1
            st.rerun()
        if suggest:
            try:
                sens = sensitivity_for(model_ref, dataset_ref, method, granularity)
                sizes = layer_sizes(base.model, [u for u in units if u in set(sens["layer"])])
                suggestion = suggest_ratios(sens, sizes, ratio)
                st.session_state["prune_overrides"] = {
                    k: round(v, 4) for k, v in suggestion.items()
                }
                n_sens = min(500, shared_data(dataset_ref).num_examples("val"))
                st.session_state["prune_suggestion_note"] = (
                    f"Suggested from per-layer sensitivity measured on {n_sens} validation "
                    f"images; predicted drop {predicted_drop(sens, suggestion) * 100:.1f} points "
                    "(an estimate: it assumes layers do not interact)."
                )
                st.session_state["_prune_editor_version"] = version + 1
                st.rerun()
            except UserError as e:
                st.error(f"Cannot suggest ratios: {e}")
        if st.session_state.get("prune_suggestion_note") and overrides:
            st.caption(st.session_state["prune_suggestion_note"])

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
pruned_layers = stats.layers[stats.layers["pruned"]]
share = (
    (pruned_layers["sparsity"] * pruned_layers["params"]).sum() / stats.layers["params"].sum()
    if len(stats.layers)
    else 0.0
)
m[2].metric(
    "Sparsity",
    f"{share:.1%}",
    help="Share of zero weights over all Linear/Conv layers, the classifier included "
    "(biases and BatchNorm not counted).",
)
# Filled last: the charts show first, the estimate (a forward pass) follows.
estimate_slot = m[3].empty()
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
        after = preview.layer_weight(layer)
        hist = before_after(preview.dense_weights[layer], after)
        zeros = int((after == 0).sum()) - int((preview.dense_weights[layer] == 0).sum())
        st.plotly_chart(
            histogram_figure(
                hist, f"{layer}: weights before / after ({zeros:,} set to zero)", "weight value"
            ),
            key="prune_hist_chart",
        )
        mask = stats.masks.get(layer)
        if mask is None:
            mask = after != 0
        st.plotly_chart(
            mask_figure(mask_grid(mask), f"{layer}: mask (dark = kept)"), key="prune_mask_chart"
        )
        if mask.dim() > 2:
            st.caption(
                f"Conv weight {tuple(mask.shape)} drawn as out_ch x (in_ch x k x k)"
                + (" averaged into cells." if mask[0].numel() > 192 or mask.shape[0] > 96 else ".")
            )

# ------------------------------------------------------------------ the estimate, last
if estimate_on:
    preview.estimate(stats, int(n_est))
    # The dense model's score on the same images, so the delta compares like with like.
    dense_est: dict[tuple[str, str, int], float] = st.session_state.setdefault(
        "_prune_dense_estimates", {}
    )
    est_key = (model_ref, dataset_ref, int(n_est))
    if est_key not in dense_est:
        data_ = shared_data(dataset_ref)
        dense_est[est_key] = evaluate(base.model, data_, base.spec, limit=int(n_est)).accuracy
    ref = dense_est[est_key]
    acc = stats.accuracy or 0.0
    estimate_slot.metric(
        f"Accuracy estimate on {stats.n_eval} val images",
        f"{acc:.1%}",
        delta=f"{(acc - ref) * 100:+.1f} pts",
        help="An estimate: top-1 on the first validation images only, before any fine-tuning. "
        f"The dense model scores {ref:.1%} on the same images.",
    )
else:
    estimate_slot.metric("Accuracy estimate", "off")
timing_slot.caption(
    f"Preview computed in {stats.seconds * 1000:.0f} ms"
    + (f" + {stats.eval_seconds * 1000:.0f} ms for the estimate" if estimate_on else "")
    + f" (scores were computed once in {preview.build_seconds:.2f} s, on CPU)."
    + (
        " Structured preview: weights are masked; Apply removes them physically."
        if granularity in ("channel", "head", "block")
        else ""
    )
)

# ------------------------------------------------------------------ apply
st.divider()
committed = pruned()
a1, a2 = st.columns([1, 3])
apply_clicked = a1.button("Apply pruning", type="primary", key="prune_apply")
if apply_clicked:
    try:
        config = PruneConfig(
            method=method,
            granularity=granularity,
            ratio=ratio,
            scope=scope,
            layer_ratios=tuple(sorted(overrides.items())),
            structured_mode="physical",
        )
        model = copy.deepcopy(base.model)
        for p in model.parameters():
            p.requires_grad_(True)
        data = shared_data(dataset_ref)
        with st.spinner("Pruning your copy of the model and measuring it on the validation split"):
            cache = preview.engine if isinstance(preview.engine, ScoreCache) else None
            result = prune_(model, config, data=data, spec=base.spec, scores=cache)
            ev = evaluate(model, data, base.spec)
            summary = model_summary(model, base.spec)
        loaded = LoadedModel(model, base.spec, base.arch, base.source, dict(base.meta))
        what = "weights" if not config.structured else GRANULARITIES[granularity]
        committed = set_pruned(
            loaded,
            config,
            masks=result.masks,
            result=result.to_dict(),
            summary=summary,
            accuracy=ev.accuracy,
            note=f"{config.effective_ratio:.0%} {method} {granularity} ({what}), "
            f"{'per-layer overrides, ' if overrides else ''}{scope} scope",
        )
        st.session_state["prune_applied_msg"] = True
    except UserError as e:
        st.error(f"Pruning failed: {e}")

if committed is not None:
    s = committed.summary
    with a2:
        st.success(
            f"Session model: **{committed.stage}** — {'; '.join(committed.history)}. "
            f"Measured on all {base_stats['n']} validation images: accuracy "
            f"**{committed.accuracy:.2%}** (dense {base_stats['accuracy']:.2%}); parameters "
            f"{s.get('params', 0):,} ({s.get('params_nonzero', 0):,} non-zero; dense "
            f"{base_stats['params']:,}); MACs/image {s.get('macs', 0):,} (dense "
            f"{base_stats['macs']:,})."
        )
        st.caption(
            "Fine-tune, Trade-offs and Export now use this model. MACs count dense work: "
            "unstructured zeros do not lower them, structured pruning does."
        )
        if st.button("Reset to the dense model", key="prune_reset"):
            clear_pruned()
            st.rerun()
else:
    a2.caption("Apply commits the preview to your session (physical shrinking for structured).")
