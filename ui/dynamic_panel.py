"""The Inspect page's dynamic-pruning panel: pick a validation image, see which channels it used.

The gating runs on the dense shared model through `pruning_core.dynamic` (a private copy per
session: the shared model is never touched); the validation averages are measured once per
server, gate and keep share. The `learned` gate (FBS) is trained in a background job
("Train gates (1 epoch)", `pruning_core.dynamic.train_gates`); the trained copy and its
averages are kept in this session for the model, dataset and keep share it was trained for.
Figures come from `pruning_core.plots_dynamic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st

from pruning_core.data import DataBundle
from pruning_core.dynamic import (
    GATES,
    DynamicConfig,
    DynamicModel,
    DynamicReport,
    gateable_layers,
    image_usage,
    measure_dynamic,
    train_gates,
)
from pruning_core.errors import UserError
from pruning_core.jobs import Job, JobContext
from pruning_core.models import LoadedModel
from pruning_core.plots_dynamic import channel_use_figure, skipped_share_figure
from ui.jobs_panel import follow_job, job_runner, progress_and_cancel
from ui.loaders import shared_data, shared_model
from ui.state import keep_settings, restore_settings, session_cached
from ui.texts_dynamic import (
    DYNAMIC_EXPLAINED,
    DYNAMIC_NO_CONVS,
    DYNAMIC_NO_SPEEDUP,
    LEARNED_GATE_EXPLAINED,
)
from ui.tradeoff_jobs import default_device

__all__ = ["AVERAGE_IMAGES", "GATE_TRAIN_LIMIT", "dynamic_panel"]

# Validation images the averages are measured on (the first ones of the split).
AVERAGE_IMAGES = 500
# Training images of "Train gates (1 epoch)" (None: the whole training split); tests set a few.
GATE_TRAIN_LIMIT: int | None = None
# Session keys of the gate-training job and of the trained gates it handed over.
_JOB, _JOB_FOR, _TRAINED, _ERROR = (
    "dynamic_gates_job",
    "dynamic_gates_for",
    "dynamic_trained",
    "dynamic_gates_error",
)
# The panel's own settings: kept under a plain key across page changes and a reloaded tab
# (Streamlit forgets the value of a widget a run does not draw), restored before their widgets
# are drawn (`ui.state.restore_settings`).
_KEPT = "_inspect_dynamic_settings"
_SETTINGS: dict[str, Any] = {
    "dynamic_gate": next(iter(GATES)),
    "dynamic_keep": 0.5,
    "dynamic_image": 0,
}


@st.cache_data(show_spinner="Gating the validation images...", max_entries=32)
def _average(model_ref: str, dataset_ref: str, keep: float, gate: str) -> DynamicReport:
    """Accuracy, effective MACs and channel use over the first validation images (per server:
    it depends only on the shared dense model; a learned gate here is the untrained one)."""
    loaded = shared_model(model_ref)
    return measure_dynamic(
        loaded.model,
        shared_data(dataset_ref),
        loaded.spec,
        DynamicConfig(keep=keep, gate=gate),
        limit=AVERAGE_IMAGES,
    )


def _gated(model_ref: str, keep: float, gate: str) -> DynamicModel:
    """This session's gated copy (one at a time)."""
    loaded = shared_model(model_ref)
    return session_cached(
        "_dynamic_model",
        (model_ref, keep, gate),
        lambda: DynamicModel(loaded.model, DynamicConfig(keep=keep, gate=gate), loaded.spec),
    )


def _train_job(
    loaded: LoadedModel, data: DataBundle, keep: float, limit: int | None
) -> Callable[[JobContext], dict[str, Any]]:
    """The job of "Train gates (1 epoch)": a learned-gate copy, its gates trained for one
    epoch (the network frozen), then measured on the panel's validation images."""
    device = default_device()

    def run(ctx: JobContext) -> dict[str, Any]:
        dyn = DynamicModel(loaded.model, DynamicConfig(keep=keep, gate="learned"), loaded.spec)
        result = train_gates(
            dyn,
            data,
            epochs=1,
            device=device,
            train_limit=limit,
            val_limit=AVERAGE_IMAGES,
            progress=ctx.follow,
            cancel=ctx.cancel,
        )
        ctx.report(message="measuring the trained gates on the validation images")
        report = measure_dynamic(loaded.model, data, loaded.spec, dyn, limit=AVERAGE_IMAGES)
        return {
            "model": dyn,
            "report": report,
            "steps": result.steps,
            "cancelled": result.cancelled,
            "seconds": result.seconds,
        }

    return run


def _start_training(
    loaded: LoadedModel, data: DataBundle, selection: tuple[str, str, float]
) -> None:
    """The Train button's callback: queue the job (not recorded as a run: it changes no model
    of the session)."""
    ss = st.session_state
    try:
        job = job_runner().submit(
            _train_job(loaded, data, selection[2], GATE_TRAIN_LIMIT),
            name=f"train gates (keep {selection[2]:.0%})",
            kind="job",
            record=False,
        )
    except UserError as e:
        ss[_ERROR] = str(e)
        return
    ss[_JOB], ss[_JOB_FOR], ss[_ERROR] = job.id, selection, None


def _collect() -> None:
    """Hand a finished training job's trained gates over to the session."""
    ss = st.session_state
    job_id = ss.get(_JOB)
    if not isinstance(job_id, str):
        return
    job = job_runner().get(job_id)
    if job is None:
        ss[_JOB], ss[_ERROR] = None, "the gate-training job is no longer known to this server"
        return
    if not job.is_finished:
        return
    ss[_JOB] = None
    if isinstance(job.result, dict) and isinstance(job.result.get("model"), DynamicModel):
        ss[_TRAINED] = {"for": ss.get(_JOB_FOR), **job.result}
    else:
        ss[_ERROR] = f"the gate training {job.status}: {job.error}"


def _learned_section(
    loaded: LoadedModel, data: DataBundle, selection: tuple[str, str, float]
) -> dict[str, Any] | None:
    """The learned gate's explanation, Train button or running job, and the trained gates
    for this selection (None while untrained)."""
    st.markdown(LEARNED_GATE_EXPLAINED)
    try:
        _collect()
    except UserError as e:
        st.error(f"Background jobs are not available on this server: {e}")
        return None
    ss = st.session_state
    job_id = ss.get(_JOB)
    if isinstance(job_id, str):

        def draw(job: Job | None) -> None:
            if job is None:
                return
            snap = job.snapshot()
            progress_and_cancel(
                job,
                float(snap["progress"]),
                f"Training the gates ({snap['status']}): {snap['message'] or 'starting'}",
                key="dynamic_gates_cancel",
                help="Stops within one batch; the gates keep what they learned so far.",
            )

        follow_job(job_id, draw)
    else:
        st.button(
            "Train gates (1 epoch)",
            key="dynamic_train_gates",
            type="primary",
            on_click=_start_training,
            args=(loaded, data, selection),
            help="A background job: one pass over the training split trains the gates' "
            "predictors (the network stays frozen), then the panel shows the trained gates.",
        )
    if ss.get(_ERROR):
        st.error(f"Gate training did not finish: {ss[_ERROR]}")
    trained = ss.get(_TRAINED)
    if isinstance(trained, dict) and trained.get("for") == selection:
        return trained
    if not isinstance(job_id, str):
        st.info(
            "These gates are untrained: a learned gate starts as the magnitude gate and "
            "selects exactly the same channels until it is trained."
        )
    return None


def dynamic_panel(model_ref: str, dataset_ref: str) -> None:
    """Draw the panel: keep slider, image picker, channel-use heatmap, skipped share and MACs
    of the image against the validation average, and what dynamic pruning is."""
    st.subheader("Dynamic pruning: which channels one image uses")
    st.markdown(DYNAMIC_EXPLAINED)
    loaded, data = shared_model(model_ref), shared_data(dataset_ref)
    try:
        gateable_layers(loaded.model)
    except UserError:
        st.info(DYNAMIC_NO_CONVS)
        return
    restore_settings(_KEPT, _SETTINGS)
    n_val = data.num_examples("val")
    if int(st.session_state["dynamic_image"]) > n_val - 1:  # kept from a larger dataset
        st.session_state["dynamic_image"] = n_val - 1
    c0, c1, c2 = st.columns([2, 3, 2])
    gate = str(
        c0.radio(
            "Gate",
            list(GATES),
            format_func=lambda g: GATES[g].label,
            key="dynamic_gate",
            help="How each gated convolution picks its channels for an image: "
            + "; ".join(f"**{g}**: {cls.summary}" for g, cls in GATES.items())
            + ".",
        )
    )
    keep = c1.slider(
        "Share of channels computed per layer (keep)",
        min_value=0.1,
        max_value=1.0,
        step=0.05,
        key="dynamic_keep",
        help="Each gated convolution computes the top ceil(keep x channels) output channels "
        "for each image and outputs zeros for the rest.",
    )
    index = int(
        c2.number_input(
            f"Validation image (0 to {n_val - 1:,})",
            min_value=0,
            max_value=n_val - 1,
            step=1,
            key="dynamic_image",
        )
    )
    keep_settings(_KEPT, _SETTINGS)
    keep = round(float(keep), 2)
    trained = (
        _learned_section(loaded, data, (model_ref, dataset_ref, keep))
        if gate == "learned" and keep < 1.0
        else None
    )
    try:
        if trained is not None:
            report, dyn = trained["report"], trained["model"]
        else:
            report = _average(model_ref, dataset_ref, keep, gate)
            dyn = _gated(model_ref, keep, gate)
        x, y = data.tensors("val", loaded.spec, limit=index + 1)
        one = image_usage(dyn, x[index])
    except UserError as e:
        st.error(f"Cannot gate this model: {e}")
        return
    if not one.masks:
        st.info("With keep 1.0 every channel is computed: this is the dense model.")
        return
    names = list(data.class_names)
    pred = int(np.argmax(one.logits))
    left, right = st.columns([1, 3])
    with left:
        raw = data.val[0][index]
        picture = raw.permute(1, 2, 0).numpy() if raw.shape[0] == 3 else raw[0].numpy()
        st.image(picture, width=160, clamp=True)
        st.caption(
            f"Label **{names[int(y[index])]}**; gated model says **{names[pred]}**."
            if names
            else f"Label {int(y[index])}; gated model says {pred}."
        )
    with right:
        m1, m2, m3 = st.columns(3)
        m1.metric(
            "Effective MACs, this image",
            f"{one.macs / 1e6:.2f} M",
            f"{one.macs / one.dense_macs - 1:+.0%} vs dense",
            delta_color="off",
        )
        m2.metric(
            f"Average over {report.n:,} images",
            f"{report.mean_macs / 1e6:.2f} M",
            f"dense {report.dense_macs / 1e6:.2f} M",
            delta_color="off",
        )
        m3.metric(
            "Gated accuracy (same images)",
            f"{report.accuracy:.1%}",
            f"{report.skipped:.0%} of gated channels skipped",
            delta_color="off",
        )
        trained_note = "Accuracy is before any training or BatchNorm re-estimation. "
        if trained is not None:
            steps = int(trained["steps"])
            before = _average(model_ref, dataset_ref, keep, "learned").accuracy
            trained_note = (
                f"Trained gates: {steps:,} step{'s' if steps != 1 else ''} "
                f"{'(cancelled) ' if trained['cancelled'] else ''}in {trained['seconds']:.0f} s, "
                f"the network itself unchanged; untrained, the same gates scored {before:.1%}. "
            )
        st.caption(
            "Top-k gates compute the same number of channels for every image, so every image "
            "costs the same effective MACs; which channels it computes is what changes. "
            + trained_note
            + DYNAMIC_NO_SPEEDUP
        )
    gated = report.layers[report.layers["gated"]]
    share = gated["macs_dense"].sum() / report.dense_macs
    st.caption(
        f"Gated: {len(gated)} convolution{'s' if len(gated) != 1 else ''} holding {share:.0%} "
        "of the model's dense MACs; everything else (Linear layers, attention, the classifier) "
        "always runs in full."
    )
    st.plotly_chart(
        channel_use_figure(
            one.masks,
            f"Channels computed for validation image {index} (keep {keep:.0%}, "
            f"{'trained ' if trained is not None else ''}{gate} gate)",
            usage=report.usage,
        ),
        key="dynamic_heatmap",
    )
    frame = one.frame()
    mean = report.layers.set_index("layer")["skipped"]
    frame = frame.assign(skipped_mean=[float(mean.get(n, np.nan)) for n in frame["layer"]])
    st.plotly_chart(
        skipped_share_figure(frame, f"Share of channels skipped per layer, image {index}"),
        key="dynamic_skipped",
    )
    common = _most_used(report.usage, one.masks)
    st.caption(
        f"Of the channels this image computed, {common:.0%} are also among the most used over "
        f"the {report.n:,} validation images (hover a cell for how often each channel is used)."
    )


def _most_used(usage: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> float:
    """Share of the image's computed channels that are among each layer's k most used ones."""
    hits, total = 0, 0
    for name, m in masks.items():
        k = int(m.sum())
        top = set(np.argsort(-usage[name], kind="stable")[:k].tolist())
        hits += len(top & set(np.flatnonzero(m).tolist()))
        total += k
    return hits / total if total else float("nan")
