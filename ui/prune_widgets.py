"""Widget groups of the Prune page: the per-layer ratios, the live preview and the
committed-model panel.

Each returns plain values (the overrides as a dict) and leaves the work to `ui.actions`.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.models import LoadedModel
from pruning_core.plans.blocks import BlockPlan
from pruning_core.plots import histogram_figure, layer_sparsity_figure, mask_figure
from pruning_core.slider import PreviewStats, SliderPreview, mask_grid, mask_is_averaged
from pruning_core.terms import SPARSITY_MEANS
from ui.actions import (
    MAX_UNIT_RATIO,
    SENSITIVITY_IMAGES,
    SENSITIVITY_RATIOS,
    block_names,
    kept_block,
    suggest_overrides,
    suggest_unavailable,
)
from ui.caches import dense_estimate, dense_unfit_criteria, dense_unfit_granularities, preview_for
from ui.choices import criterion_label, granularity_label, preview_note, saves_zeros
from ui.session import PrunedModel, clear_pruned
from ui.state import estimate_lane, keep, newer_run_waiting, yield_to_newer_run
from ui.texts import ZEROS_NO_SPEEDUP
from ui.widgets import explain

__all__ = [
    "LAYERS_OPEN",
    "bn_estimate_caption",
    "committed_panel",
    "estimate_metric",
    "overrides_editor",
    "preview_or_stop",
    "preview_panel",
    "ratio_note",
    "take_overrides",
]

_OVERRIDES = "prune_overrides"
# Whether the per-layer expander is open (a stateful expander: its sliders are drawn only then).
LAYERS_OPEN = "prune_layers_open"
_NOTE = "prune_suggestion_note"
_VERSION = "_prune_editor_version"
# The (model, granularity) the overrides were set for: ratios of one granularity are not
# another's (a channel share is not a share of weights), even where the unit names coincide.
_OWNER = "_prune_overrides_for"
# The value each per-layer slider was last given by the page (a different one: the user's).
_GIVEN = "_prune_unit_given"
# The global ratio the per-layer sliders were last drawn with (a run where it changed was a
# global move, so no per-layer slider was moved in it).
_FOLLOWED = "_prune_unit_followed"
# The block picker's last (label, expanded): a changed label is a new expander.
_BLOCKS_DRAWN = "_prune_blocks_drawn"
# Up to this many units get one slider each (a page of sliders stays readable); more: a table.
MAX_SLIDERS = 40


def preview_or_stop(
    model_ref: str, dataset_ref: str, method: str, granularity: str
) -> tuple[SliderPreview, LoadedModel]:
    """This session's slider engine for the selection (`ui.caches.preview_for`); when the
    criterion or the granularity cannot prune the model, one line saying which and why, and
    the page stops there (the controls above stay, to pick another).
    """
    # The granularity's own refusal first (below, from the plan): no criterion can help there.
    fits = granularity not in dense_unfit_granularities(model_ref)
    refusal = dense_unfit_criteria(model_ref, granularity).get(method) if fits else None
    if refusal is not None:
        # Said before any scoring, and of the criterion: the granularity is not the cause.
        st.info(
            f"{criterion_label(method, granularity)} does not apply here: {refusal}; pick "
            "another criterion."
        )
        st.stop()
    try:
        return preview_for(model_ref, dataset_ref, method, granularity)
    except UserError as e:
        st.info(f"{granularity_label(granularity)} pruning does not apply here: {e}")
        st.stop()


def overrides_editor(
    preview: SliderPreview, model_ref: str, dataset_ref: str, ratio: float
) -> dict[str, float]:
    """The per-layer ratio table (in an expander), with "suggest" and "clear" buttons.

    A granularity whose pattern fixes the share removed (N:M) draws nothing and keeps the
    ratios set before.

    Returns:
        The per-unit ratio overrides (unit name -> ratio), those of this preview's units only.
    """
    plan = preview.engine.plan
    blocks = block_names(preview)
    units = blocks or preview.unit_names
    owner = (model_ref, preview.config.granularity)
    if st.session_state.get(_OWNER) != owner:
        if st.session_state.get(_OWNER) is not None:
            st.session_state[_OVERRIDES] = {}
            st.session_state.pop(_NOTE, None)
            # New widget keys: the per-layer sliders must not keep the old granularity's values.
            st.session_state[_VERSION] = st.session_state.get(_VERSION, 0) + 1
        st.session_state[_OWNER] = owner
    overrides: dict[str, float] = {
        k: v for k, v in st.session_state.get(_OVERRIDES, {}).items() if k in units
    }
    unavailable = suggest_unavailable(preview)
    if plan.fixed_ratio:
        st.caption(unavailable or "")
        return overrides
    if blocks:
        return _block_editor(preview, model_ref, dataset_ref, ratio, overrides)
    if not plan.per_layer:
        st.caption(unavailable or "")
        return {}
    # Open as the user left it (first shown: open when ratios are set). The label is part of
    # the expander's identity, so a count that changes makes a new expander: it must start as
    # the old one was, not closed under the slider being moved.
    was_open = st.session_state.get(LAYERS_OPEN)
    is_open = bool(overrides) if was_open is None else bool(was_open)
    version = st.session_state.get(_VERSION, 0)
    sliders = len(units) <= MAX_SLIDERS
    if is_open:
        # Resolved before the label is drawn: a move in the browser is already in the session
        # state, and the label counts it in this run (drawn first, it showed the last run's).
        if sliders:
            overrides = _resolve_sliders(preview, overrides, ratio, version)
        else:
            overrides = _table_edits(units, overrides, st.session_state.get(_table_key(version)))
    # The count is in the label only while closed: the label is part of the expander's
    # identity, and a new expander under a slider being moved with the arrow keys took its
    # focus away at the first press on each layer. Open, the caption below counts.
    box = st.expander(
        "Per-layer ratios" if is_open else f"Per-layer ratios ({len(overrides)} set)",
        expanded=is_open,
        key=LAYERS_OPEN,
        on_change="rerun",
    )
    if not is_open:
        # Drawn only when open: a slider move would otherwise resend and redraw one slider per
        # unit that follows the global ratio, which doubled the move's time on shapes-resnet
        # (1 student, Chromium: preview p50 176 ms with them, 98 ms without).
        return overrides
    with box:
        st.caption(
            f"{len(overrides)} of {len(units)} with their own ratio. "
            + (
                "A slider left where the global ratio is follows it; one you move keeps its "
                "own ratio. "
                if sliders
                else "Leave a ratio empty to use the slider. "
            )
            + "Sensitive layers (first conv, the classifier's input) usually deserve less "
            "pruning."
        )
        if sliders:
            _unit_sliders(preview, version)
        else:
            overrides = _unit_table(preview, overrides, version)
        st.session_state[_OVERRIDES] = overrides
        b1, b2, _ = st.columns([1, 1, 2])
        suggest = b1.button(
            "Suggest from sensitivity",
            key="prune_suggest",
            # Sensitivity prunes one unit at a time at its own ratio.
            disabled=unavailable is not None,
            help=f"Prunes one {plan.unit_word} at a time at "
            f"{'/'.join(f'{r:.0%}' for r in SENSITIVITY_RATIOS)} and measures the accuracy drop "
            f"on up to {SENSITIVITY_IMAGES} validation images, then gives each one the ratio "
            "that reaches the slider's overall share with the least predicted loss.",
        )
        if b2.button("Clear overrides", key="prune_clear_overrides"):
            _set_overrides({}, version)
        if unavailable is not None:
            st.caption(unavailable)
        if suggest:
            _suggest(preview, model_ref, dataset_ref, ratio, version)
        if st.session_state.get(_NOTE) and overrides:
            st.caption(st.session_state[_NOTE])
    return overrides


def _suggest(
    preview: SliderPreview, model_ref: str, dataset_ref: str, ratio: float, version: int
) -> None:
    """ "Suggest from sensitivity": the suggestion becomes the overrides, or one error line."""
    try:
        suggestion, note = suggest_overrides(preview, model_ref, dataset_ref, ratio)
    except UserError as e:
        st.error(f"Cannot suggest ratios: {e}")
    else:
        st.session_state[_NOTE] = note
        _set_overrides(suggestion, version)


def _block_editor(
    preview: SliderPreview,
    model_ref: str,
    dataset_ref: str,
    ratio: float,
    overrides: dict[str, float],
) -> dict[str, float]:
    """Block granularity: the blocks to remove, chosen by name (suggested from sensitivity,
    taken from a budget search, or picked); none chosen leaves the choice to the share slider
    and the criterion.

    Returns:
        {block: 1.0} for each chosen block (`ui.actions.block_choice` turns it into a config).
    """
    blocks = block_names(preview)
    top = kept_block(preview)
    chosen = [b for b in blocks if overrides.get(b, 0.0) >= 1.0 and b != top]
    version = st.session_state.get(_VERSION, 0)
    key = f"prune_blocks_{version}"
    # A pick in the browser is already in the session state: the label counts it in this run
    # (it showed the last run's). A new count is a new expander (the label is its identity):
    # once the picker was drawn, it opens as the user had it, not closed under them.
    seen = key in st.session_state
    if not seen:
        st.session_state[key] = chosen
    now = [b for b in st.session_state[key] if b in blocks and b != top]
    label = f"Blocks to remove ({len(now)} chosen)"
    last = st.session_state.get(_BLOCKS_DRAWN)
    if last is not None and last[0] == label:
        expanded = last[1]  # the same expander: its first state, the browser keeps the rest
    else:
        expanded = bool(now) or (seen and last is not None)
    st.session_state[_BLOCKS_DRAWN] = (label, expanded)
    with st.expander(label, expanded=expanded):
        st.caption(
            "Leave it empty and the share slider removes the blocks the criterion ranks lowest; "
            f"blocks chosen here replace the slider. {top} is kept: the criterion ranks it "
            "highest, and block pruning always keeps at least one block."
        )
        picked = st.multiselect(
            "Blocks removed",
            [b for b in blocks if b != top],
            key=key,
            help="Each chosen residual block is replaced by the identity.",
        )
        overrides = dict.fromkeys(picked, 1.0)
        st.session_state[_OVERRIDES] = overrides
        b1, b2, _ = st.columns([1, 1, 2])
        suggest = b1.button(
            "Suggest from sensitivity",
            key="prune_suggest",
            help=f"Removes one block at a time and measures the accuracy drop on up to "
            f"{SENSITIVITY_IMAGES} validation images, then picks as many blocks as the share "
            "slider removes, those with the least drop.",
        )
        if b2.button("Clear choice", key="prune_clear_overrides"):
            _set_overrides({}, version)
        if suggest:
            _suggest(preview, model_ref, dataset_ref, ratio, version)
        if st.session_state.get(_NOTE) and overrides:
            st.caption(st.session_state[_NOTE])
    return overrides


def take_overrides(overrides: dict[str, float], note: str) -> None:
    """Make `overrides` the per-layer ratios (or, for blocks, the blocks chosen) the page
    shows, with `note` beside them, and draw the page again (what "Suggest" does)."""
    st.session_state[_NOTE] = note
    _set_overrides(overrides, st.session_state.get(_VERSION, 0))


def _resolve_sliders(
    preview: SliderPreview, overrides: dict[str, float], ratio: float, version: int
) -> dict[str, float]:
    """Before the per-unit sliders are drawn: set the value each takes this run, and return the
    overrides they make (unit name -> ratio).

    A slider at the global ratio is no override. The keys stay the same when the global
    slider moves (new keys would make the browser rebuild every slider on each move): a unit
    that follows the global ratio has its value set here, before it is drawn, and a value that
    differs from the one this page last gave it was moved by the user, so it becomes that
    unit's override (held in `_OVERRIDES`).
    """
    given: dict[str, float] = st.session_state.setdefault(_GIVEN, {})
    out = dict(overrides)
    follow = min(ratio, MAX_UNIT_RATIO)
    # A run started by a global move sends the per-layer sliders as the browser last showed
    # them, which is stale when the move came before the previous run's values arrived (two
    # quick arrow presses): taken as the user's, they froze every slider as an override. One
    # run comes from one widget, so when the global ratio changed, none of these moved.
    followed = st.session_state.get(_FOLLOWED)
    st.session_state[_FOLLOWED] = float(ratio)
    global_moved = followed is not None and not math.isclose(followed, ratio)
    for u in preview.unit_names:
        key = _slider_key(version, u)
        now = st.session_state.get(key)
        moved = (
            not global_moved
            and now is not None
            and key in given
            and not math.isclose(now, given[key])
        )
        if moved and now is not None:
            want = float(now)
        elif u in overrides:
            want = min(overrides[u], MAX_UNIT_RATIO)
        else:
            want = follow
        if now is None or not math.isclose(now, want):
            # Before the widget is drawn: allowed. Only when it changes: a value set here is
            # sent back as the browser's, which snapped a slider being moved by quick arrow
            # presses back to a value the user had already passed (20 presses -> 15 taken).
            st.session_state[key] = want
            now = want
        if u in overrides or moved or not math.isclose(now, follow, abs_tol=1e-9):
            out[u] = float(now)
    return out


def _slider_key(version: int, unit: str) -> str:
    """The widget key of a unit's slider (`version`: new keys when the ratios are replaced)."""
    return f"prune_unit_{version}_{unit}"


def _unit_sliders(preview: SliderPreview, version: int) -> None:
    """One slider per unit, two columns, each at the value `_resolve_sliders` set."""
    word = preview.engine.plan.unit_word
    given: dict[str, float] = st.session_state.setdefault(_GIVEN, {})
    cols = st.columns(2)
    for i, u in enumerate(preview.unit_names):
        key = _slider_key(version, u)
        value = cols[i % 2].slider(
            f"{u} (size {preview.unit_sizes[u]:,})",
            min_value=0.0,
            max_value=MAX_UNIT_RATIO,
            step=0.01,
            format="%.2f",
            key=key,
            help=f"Share of this {word} removed (size: its prunable elements); moving it "
            "overrides the global ratio.",
        )
        given[key] = float(value)


def _unit_table(
    preview: SliderPreview, overrides: dict[str, float], version: int
) -> dict[str, float]:
    """The table of ratio overrides (models with more units than sliders fit)."""
    units = preview.unit_names
    plan = preview.engine.plan
    table = pd.DataFrame(
        {
            "layer": units,
            "size": [preview.unit_sizes[u] for u in units],
            "ratio": [overrides.get(u, math.nan) for u in units],
        }
    )
    edited = st.data_editor(
        table,
        key=_table_key(version),
        hide_index=True,
        disabled=["layer", "size"],
        column_config={
            "layer": st.column_config.TextColumn(plan.unit_word),
            "size": st.column_config.NumberColumn(
                "size", help=f"Prunable elements of each {plan.unit_word}.", format="localized"
            ),
            "ratio": st.column_config.NumberColumn(
                "ratio override", min_value=0.0, max_value=MAX_UNIT_RATIO, step=0.01, format="%.2f"
            ),
        },
        width="stretch",
    )
    return {
        str(r["layer"]): float(r["ratio"]) for _, r in edited.iterrows() if pd.notna(r["ratio"])
    }


def _table_key(version: int) -> str:
    """The widget key of the per-layer table (`version`: new keys when the ratios are replaced)."""
    return f"prune_editor_{version}"


def _table_edits(units: list[str], overrides: dict[str, float], state: Any) -> dict[str, float]:
    """The overrides as the table returns them once drawn: `overrides` with the edits the
    browser sent (`state`, the table's session state: {"edited_rows": {row: {"ratio": value}},
    ...}, Streamlit's documented format; rows are `units`' positions) applied; a cleared cell
    drops its unit."""
    out = dict(overrides)
    edited = state.get("edited_rows", {}) if isinstance(state, dict) else {}
    for row, change in edited.items():
        try:
            unit = units[int(row)]
        except (ValueError, IndexError):
            continue
        if not isinstance(change, dict) or "ratio" not in change:
            continue
        value = change["ratio"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.pop(unit, None)
        else:
            out[unit] = float(value)
    return out


def _set_overrides(overrides: dict[str, float], version: int) -> None:
    """Replace the table's ratios and draw it afresh (a new editor key drops its edits)."""
    st.session_state[_OVERRIDES] = overrides
    st.session_state[_VERSION] = version + 1
    st.rerun()


def committed_panel(committed: PrunedModel | None, base_stats: dict[str, Any]) -> None:
    """What the session's committed model is and measures, with a reset button."""
    if committed is None:
        st.caption("Apply commits the preview to your session (physical shrinking for structured).")
        return
    s = committed.summary
    st.success(
        f"Session model: **{committed.stage}** — {'; '.join(committed.history)}. "
        f"Measured on all {base_stats['n']} validation images: accuracy "
        f"**{committed.accuracy or 0:.2%}** (dense {base_stats['accuracy']:.2%}); parameters "
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


def bn_estimate_caption(
    slot: Any, preview: SliderPreview, stats: PreviewStats, n_eval: int, recalibrate_bn: bool
) -> None:
    """Under the estimate, in `slot`: the same estimate with the BatchNorm recalibration switch
    the other way (structured granularities on models with BatchNorm; else nothing)."""
    if not preview.recalibrates(True):
        return
    other = dataclasses.replace(stats)
    # Every estimate not kept from before sets the statistics it needs first, so the working
    # copy may stay as this one leaves it.
    preview.estimate(other, n_eval, recalibrate_bn=not recalibrate_bn)
    word = "without" if recalibrate_bn else "with"
    slot.caption(f"{word} BN recalibration: {other.accuracy or 0.0:.1%} on {other.n_eval} images")


def estimate_metric(
    slot: Any, stats: PreviewStats, dense: float, *, busy: bool = False, final: bool = False
) -> None:
    """The Prune page's accuracy estimate in `slot`: top-1 on `stats.n_eval` images, its 95%
    interval, and the change from the dense model on the same images (`dense`); `busy`: it
    stops at these images because other sessions wait for the server's estimate lane; `final`:
    these are all the images asked for (or all the split has)."""
    acc = stats.accuracy or 0.0
    lo, hi = stats.accuracy_interval or (acc, acc)
    more = (
        "The server is busy with other students' estimates, so this one stops here; move the "
        "slider back to refine it when it is quieter."
        if busy
        else ""
        if final
        else "More images follow while you leave the sliders."
    )
    slot.metric(
        f"Accuracy on {stats.n_eval} val images" + (" (server busy)" if busy else ""),
        f"{acc:.1%}",
        delta=f"{(acc - dense) * 100:+.1f} pts",
        help="An estimate: top-1 on the first validation images only, before any fine-tuning. "
        f"95% interval {lo:.1%} to {hi:.1%} (binomial, Wilson). The dense model scores "
        f"{dense:.1%} on the same images. {more}",
    )


def ratio_note(
    preview: SliderPreview, chosen: SliderPreview, ratio: float, scope: str = "global"
) -> str | None:
    """Block granularity: what the share slider's `ratio` removes, in whole blocks, and which
    ratios give the same model (`BlockPlan.ratio_step`), so a move that changes nothing says
    why; or, when blocks are chosen by name (`chosen` is another preview than the page's,
    `ui.actions.block_choice`), that the slider does not apply. None for other granularities.
    """
    plan = preview.engine.plan
    if not isinstance(plan, BlockPlan):
        return None
    if chosen is not preview:
        n = len(chosen.engine.select(ratio, {}, "global").get(BlockPlan.UNIT, []))
        return (
            f"The {n} block{'s' if n != 1 else ''} chosen by name "
            f"{'are' if n != 1 else 'is'} removed; the share slider does not apply while "
            "blocks are chosen."
        )
    step = plan.ratio_step(ratio, preview.config.max_layer_ratio, scope=scope)
    removed = "none" if step.removed == 0 else str(step.removed)
    text = (
        f"{ratio:.2f} removes {removed} of the {step.removable} removable blocks "
        f"(ratios {step.low:.2f}–{step.high:.2f} give the same model"
    )
    if step.most:
        kept = step.removable - step.removed
        text += (
            "; no ratio removes more: one block always stays"
            if kept == 1
            else f"; no ratio removes more: max_layer_ratio keeps {kept}"
        )
    return text + ")."


def preview_panel(
    preview: SliderPreview,
    stats: PreviewStats,
    model_ref: str,
    dataset_ref: str,
    recalibrate_bn: bool,
    note: str | None = None,
) -> None:
    """The live preview of `stats` (what `preview.update` returned for the sliders): metrics,
    `note` under them (what the ratio removes, `ratio_note`), the estimate's switches, the
    per-layer chart, one layer's histogram and mask, then the accuracy estimate, drawn last
    (a forward pass) and skipped when the user has already moved on
    (`ui.state.newer_run_waiting`: the next run draws the next position at once)."""
    st.subheader("Live preview")
    # Low rank's saving is not zeros: its counts are those of the model Apply will make.
    zeros = saves_zeros(preview.config.granularity)
    m = st.columns([1, 1, 0.9, 1.3])
    params_nz = stats.params_nonzero
    m[0].metric(
        "Remaining params",
        f"{params_nz:,}",
        delta=f"{params_nz - preview.params_nonzero_dense:,}",
        delta_color="off",
        help=(
            f"Non-zero parameters of the whole model (dense: {preview.params_nonzero_dense:,})."
            if zeros
            else f"Parameters of the whole model once applied (dense: "
            f"{preview.params_nonzero_dense:,})."
        ),
    )
    m[1].metric(
        "Effective MACs / image",
        f"{stats.macs_effective:,.0f}",
        delta=f"{stats.macs_effective / preview.macs_dense - 1:+.1%}",
        delta_color="off",
        help="Multiply-accumulates left when the removed weights are skipped. Structured "
        "pruning gets this for real once applied; unstructured zeros need sparse kernels (a "
        f"dense kernel still does all {preview.macs_dense:,}).",
    )
    m[2].metric(
        "Sparsity",
        f"{stats.sparsity:.1%}",
        help=(
            f"The {SPARSITY_MEANS}, as every page, the CLI and the report count it."
            if zeros
            else f"Sparsity: the {SPARSITY_MEANS}, counted from the applied model's shapes (the "
            "preview sets no weight to zero)."
        ),
    )
    # Filled last: the charts show first, the estimate (a forward pass) follows.
    estimate_slot = m[3].empty()
    bn_slot = m[3].empty()
    if note:
        st.caption(note)
    e1, e2 = st.columns([1, 2])
    estimate_on = e1.toggle(
        "Accuracy estimate on every move",
        key="prune_estimate",
        persist_state="session",
        help="Evaluates the masked copy on the first validation images after each move.",
    )
    n_est = e2.select_slider(
        "Images for the estimate",
        options=[100, 200, 500, 1000, 2000],
        key="prune_estimate_n",
        persist_state="session",
        disabled=not estimate_on,
        help="More images: a steadier estimate, a slower redraw.",
    )
    timing_slot = st.empty()
    # Filled now and again when the estimate lands: an emptied slot would collapse and the
    # charts below jump up and down on every move.
    timing_slot.caption(_timing(preview, stats, with_estimate=False))
    if not estimate_on:
        estimate_slot.metric("Accuracy estimate", "off")
    else:
        estimate_slot.metric("Accuracy", "…", help="The estimate follows the preview.")
        if preview.recalibrates(True):
            bn_slot.caption(f"{'without' if recalibrate_bn else 'with'} BN recalibration: …")
    for note in stats.notes:
        st.caption(f"Note: {note}")
    # The charts are most of a move's work: not for a position the user has already left.
    yield_to_newer_run()

    left, right = st.columns([1.1, 1])
    with left:
        st.plotly_chart(
            layer_sparsity_figure(
                stats.layers,
                "Sparsity per layer (preview)"
                if zeros
                else "Weights removed per layer once applied (preview)",
            ),
            key="prune_layer_chart",
        )
        if zeros:
            explain(ZEROS_NO_SPEEDUP, "Why zeros alone give no speedup")
    with right:
        layers = list(stats.layers["layer"])
        if st.session_state.get("prune_layer") not in layers:
            st.session_state["prune_layer"] = next(
                (n for n in layers if n in stats.masks), layers[0] if layers else None
            )
        layer = st.selectbox("Layer to look at", layers, key="prune_layer", persist_state="session")
        if layer is not None:
            view = preview.layer_view(stats, layer)
            st.plotly_chart(
                histogram_figure(
                    view.histogram,
                    f"{layer}: weights before / after ({view.zeros_added:,} set to zero)"
                    if zeros
                    else f"{layer}: weights before / after (its lower-rank approximation)",
                    "weight value",
                ),
                key="prune_hist_chart",
            )
            if zeros:  # a low-rank preview keeps every weight: its mask would be all kept
                st.plotly_chart(
                    mask_figure(mask_grid(view.mask), f"{layer}: mask (dark = kept)"),
                    key="prune_mask_chart",
                )
            if zeros and view.mask.dim() > 2:
                st.caption(
                    f"Conv weight {tuple(view.mask.shape)} drawn as out_ch x (in_ch x k x k)"
                    + (" averaged into cells." if mask_is_averaged(view.mask) else ".")
                )
    keep("prune_layer", "prune_estimate", "prune_estimate_n")

    # ---------------------------------------------------------------- the estimate, last
    estimated = False
    lane = estimate_lane()
    last = min(int(n_est), preview.data.num_examples("val"))
    # Else the next run, asked for, estimates. One session's estimate at a time across the
    # server; shown after its first step's images, then refined while nobody waits for the lane;
    # stopped when the user moves on.
    # With the estimate off there is nothing to wait for: never queue behind others' estimates.
    lane_turn = lane.turn(newer_run_waiting) if estimate_on else nullcontext(False)
    with lane_turn as turn:
        steps = (
            preview.estimate_steps(
                stats, int(n_est), recalibrate_bn=recalibrate_bn, stop=newer_run_waiting
            )
            if turn
            else iter(())
        )
        for step in steps:
            busy = lane.waiting > 0 and step.n_eval < last
            estimate_metric(
                estimate_slot,
                step,
                dense_estimate(model_ref, dataset_ref, step.n_eval),
                busy=busy,
                final=step.n_eval >= last,
            )
            estimated = True
            if busy:
                # The comparison with/without BN recalibration needs the rest of the turn: not
                # now (else its caption would wait on "…" until the next move).
                bn_slot.empty()
            if newer_run_waiting() or busy:
                break
        else:
            # The steps also end early, between chunks, when the user moved on.
            if estimated and not newer_run_waiting():
                bn_estimate_caption(bn_slot, preview, stats, int(n_est), recalibrate_bn)
    if estimated:
        timing_slot.caption(_timing(preview, stats, with_estimate=True))


def _timing(preview: SliderPreview, stats: PreviewStats, *, with_estimate: bool) -> str:
    """The preview's caption: how long it (and, `with_estimate`, the estimate) took."""
    interval = stats.accuracy_interval if with_estimate else None
    return (
        f"Preview computed in {stats.seconds * 1000:.0f} ms"
        + (
            f" + {stats.eval_seconds * 1000:.0f} ms for the estimate (95% interval "
            f"{interval[0]:.1%} to {interval[1]:.1%})"
            if interval
            else ""
        )
        + f" (scores were computed once in {preview.build_seconds:.2f} s, on CPU)."
        + (f" {note}" if (note := preview_note(preview.config.granularity)) else "")
    )
