"""Page 4: fine-tune the pruned model in the background, with live curves and a cancel button."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.jobs import JobRunner
from pruning_core.models import LoadedModel
from pruning_core.plots import training_curves_figure
from pruning_core.schedules import Schedule
from pruning_core.train import OPTIMIZERS, TrainConfig
from ui.finetune_job import FinetuneRequest, make_finetune_job
from ui.loaders import baseline, shared_data, shared_model
from ui.prune_widgets import (
    PRUNE_TRAIN_RETRAIN,
    REG_HELP,
    REGULARISATION_EXPLAINED,
    SCHEDULE_HELP,
    explain,
    job_runner,
)
from ui.session import finetune_job_id, pruned, set_finetune_job, set_pruned
from ui.state import init_state, selection

POLL_SECONDS = 1.0

init_state()
st.title("Fine-tune")
st.caption(
    "Prune-train-retrain: reach the pruning target from the Prune page along a schedule and "
    "fine-tune so the remaining weights take over. It runs in the background: you can visit "
    "other pages and come back; the run is recorded in the run store, also when cancelled."
)
explain(PRUNE_TRAIN_RETRAIN, "Why fine-tune after pruning?")
model_ref, dataset_ref = selection()
try:
    base_stats = baseline(model_ref, dataset_ref)
except UserError as e:
    st.error(f"This model and dataset do not fit together: {e}")
    st.stop()

try:
    runner: JobRunner = job_runner()
except UserError as e:  # an unwritable PRUNING_LAB_HOME or bad job settings of the server
    st.error(f"Background jobs are not available on this server: {e}")
    st.stop()
committed = pruned()
job_id = finetune_job_id()
job = runner.get(job_id) if job_id else None
active = job is not None and not job.is_finished

# ------------------------------------------------------------------ settings
if committed is None:
    st.info(
        "Nothing to fine-tune yet: choose a pruning target on the **Prune** page and click "
        "**Apply pruning**. The fine-tune reaches that target along the schedule below."
    )
else:
    target = committed.history[0] if committed.history else committed.config.method
    now = (
        f"accuracy {committed.accuracy:.2%} right after pruning"
        if committed.stage == "pruned"
        else f"your session model is already fine-tuned: accuracy {committed.accuracy:.2%}"
    )
    st.markdown(
        f"**Pruning target:** {target} ({now}; dense {base_stats['accuracy']:.2%}; all "
        f"{base_stats['n']} validation images). Each run starts again from the dense model."
    )

c1, c2, c3 = st.columns(3)
with c1:
    schedule = st.radio(
        "Schedule",
        ["oneshot", "linear", "agp", "dynamic"],
        key="ft_schedule",
        format_func=lambda s: {
            "oneshot": "one-shot",
            "linear": "linear (iterative)",
            "agp": "AGP (gradual)",
            "dynamic": "dynamic (masks move)",
        }[s],
        help="When pruning happens relative to fine-tuning.",
    )
    st.caption(SCHEDULE_HELP[schedule])
    steps = st.number_input(
        "Pruning steps" if schedule != "dynamic" else "Mask updates",
        min_value=1,
        max_value=20,
        key="ft_steps",
        disabled=schedule == "oneshot",
        help="Linear/AGP: prune -> fine-tune cycles (each fine-tunes for the epochs below). "
        "Dynamic: how many times the masks are recomputed during fine-tuning.",
    )
with c2:
    epochs = st.number_input(
        "Epochs" + (" per cycle" if schedule in ("linear", "agp") else ""),
        min_value=1,
        max_value=100,
        key="ft_epochs",
        help="Passes over the training split.",
    )
    lr = st.select_slider(
        "Learning rate",
        options=[1e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1],
        key="ft_lr",
        format_func=lambda v: f"{v:g}",
        help="Peak learning rate (cosine decay to zero). Fine-tuning wants smaller steps than "
        "training from scratch; SGD usually needs ~10x Adam's.",
    )
    optimizer = st.selectbox("Optimizer", list(OPTIMIZERS), key="ft_optimizer")
with c3:
    distill = st.toggle(
        "Distillation from the dense model",
        key="ft_distill",
        help="The dense model is the teacher: the pruned student also learns to match its "
        "softened outputs (Hinton et al. 2015), which often recovers accuracy faster.",
    )
    distill_w = st.slider(
        "Distillation weight",
        0.0,
        1.0,
        step=0.05,
        key="ft_distill_weight",
        disabled=not distill,
        help="Share of the loss from the teacher's soft targets.",
    )
    temperature = st.slider(
        "Temperature",
        1.0,
        10.0,
        step=0.5,
        key="ft_temperature",
        disabled=not distill,
        help="Higher = softer targets, more of the teacher's 'dark knowledge' about which "
        "wrong classes are nearly right.",
    )
    reg = st.selectbox(
        "Regularisation",
        ["none", "l1", "slim", "group-lasso"],
        key="ft_reg",
        format_func=lambda r: {
            "none": "none",
            "l1": "L1 on weights",
            "slim": "BN slimming",
            "group-lasso": "group lasso",
        }[r],
        help="A sparsity penalty trained in before pruning.",
    )
    st.caption(REG_HELP[reg])
    strength = st.select_slider(
        "Strength",
        options=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
        key="ft_reg_strength",
        format_func=lambda v: f"{v:g}",
        disabled=reg == "none",
    )
explain(REGULARISATION_EXPLAINED, "Regularisation: train to be pruned")

problem = None
dynamic_ok = committed is None or (
    not committed.config.structured and committed.config.method == "magnitude"
)
if schedule == "dynamic" and not dynamic_ok:
    problem = (
        "The dynamic schedule recomputes magnitude masks while training: it needs an "
        "unstructured or 2:4 target pruned with the magnitude criterion."
    )
if problem:
    st.warning(problem)
start = st.button(
    "Start fine-tuning",
    type="primary",
    key="ft_start",
    disabled=committed is None or active or problem is not None,
    help="Queued in the server's job runner; it starts when a worker is free.",
)
st.caption(
    f"Job runner: {runner.running} running, {runner.queued} waiting "
    f"(at most {runner.max_workers} at once and {runner.max_queue} waiting, shared by every "
    "user of this server)."
)

if start and committed is not None:
    try:
        request = FinetuneRequest(
            prune=committed.config,
            schedule=Schedule(schedule, int(steps) if schedule != "oneshot" else 1),
            train=TrainConfig(
                epochs=int(epochs),
                lr=float(lr),
                optimizer=optimizer,
                distill_weight=float(distill_w) if distill else 0.0,
                distill_temperature=float(temperature),
            ),
            regularizer=reg,
            reg_strength=float(strength),
        )
        holder: dict[str, Any] = {}
        dense = shared_model(model_ref)
        fn = make_finetune_job(dense.model, dense.spec, shared_data(dataset_ref), request, holder)
        job = runner.submit(
            fn,
            name=f"fine-tune {model_ref} ({schedule}, {int(epochs)} epochs)",
            kind="finetune",
            record=True,
            model=model_ref,
            dataset=dataset_ref,
            config=request.to_dict(),
        )
        st.session_state.setdefault("_ft_jobs", {})[job.id] = {
            "holder": holder,
            "request": request,
            "model_ref": model_ref,
            "dataset_ref": dataset_ref,
            "committed": False,
        }
        set_finetune_job(job.id)
    except UserError as e:
        st.error(f"Cannot start: {e}")
    else:
        st.rerun()  # redraw with the Start button disabled and the polling panel on


# ------------------------------------------------------------------ the job
def _commit(job_id: str, snap: dict[str, Any]) -> str:
    """Make the finished job's model the session's model (once); says what happened."""
    info = st.session_state.get("_ft_jobs", {}).get(job_id)
    if info is None or "model" not in info["holder"]:
        return "The fine-tuned model is no longer in memory (the session was restarted?)."
    if not info["committed"]:
        info["committed"] = True
        info["note"] = _make_session_model(info, snap)
    return str(info["note"])


def _make_session_model(info: dict[str, Any], snap: dict[str, Any]) -> str:
    h, req = info["holder"], info["request"]
    if (info["model_ref"], info["dataset_ref"]) != selection():
        return "The selection changed while it ran, so the result was not made your model."
    current = pruned()
    if current is None or current.config != req.prune:
        return (
            "You applied other pruning settings while it ran, so the result was not made your "
            "model (it is in the run store)."
        )
    dense = shared_model(info["model_ref"])
    res = h["result"]
    set_pruned(
        LoadedModel(h["model"], dense.spec, dense.arch, dense.source, dict(dense.meta)),
        req.prune,
        masks=h["masks"],
        result=res.prune.to_dict(),
        stage="fine-tuned",
        summary=h["summary"],
        accuracy=res.finetuned_accuracy,
        finetune={**req.to_dict(), "run_id": snap["run_id"]},
        note=f"fine-tuned {req.train.epochs} epoch(s), {req.schedule.kind} schedule",
        model_ref=info["model_ref"],
        dataset_ref=info["dataset_ref"],
    )
    return "This is now your session's model."


def job_panel() -> None:
    """Status, progress, curves and cancel of this session's latest job (polled)."""
    jid = finetune_job_id()
    job = runner.get(jid) if jid else None
    if job is None:
        if jid:
            st.warning("The fine-tune job is no longer known (the server restarted?).")
        return
    snap = job.snapshot()
    st.subheader(f"{snap['name']}")
    status = snap["status"]
    if status == "queued":
        st.info(
            f"Waiting in the queue: position {snap['queue_position']} "
            f"({runner.running} job(s) running). It starts by itself."
        )
    prog = float(snap["progress"])
    st.progress(prog, text=f"{status}: {snap['message'] or '...'} ({prog:.0%})")
    curve = pd.DataFrame(snap["curve"])
    if len(curve):
        st.plotly_chart(training_curves_figure(curve, "Live fine-tuning curves"), key="ft_curves")
        st.caption(
            "Loss of each training batch; validation accuracy on the whole validation split "
            "at the end of each epoch."
        )
    if not job.is_finished:
        if st.button("Cancel", key="ft_cancel", help="Stops within one batch; keeps the curve."):
            runner.cancel(job.id)  # the next poll shows "cancelling..." then the result
        st.caption(f"Running for {snap['elapsed']:.0f} s. You can leave this page meanwhile.")
        return
    metrics = {**snap["metrics"], **(job.result if isinstance(job.result, dict) else {})}
    if status == "done":
        note = _commit(job.id, snap)
        acc = metrics.get("accuracy")
        st.success(
            f"Done in {snap['elapsed']:.0f} s. Validation accuracy "
            f"{acc:.2%} after fine-tuning (was {metrics.get('pruned_accuracy', 0):.2%} right "
            f"after pruning; dense {base_stats['accuracy']:.2%}); sparsity "
            f"{metrics.get('sparsity', 0):.1%} of the pruned layers. " + note
            if acc is not None
            else f"Done in {snap['elapsed']:.0f} s."
        )
    elif status == "cancelled":
        kept = (
            f"The partial curve ({len(curve)} points) is in the run store"
            if snap["run_id"] is not None
            else "It never started, so nothing was recorded"
        )
        st.warning(f"Cancelled ({snap['error']}). {kept}; your session keeps its previous model.")
    else:
        st.error(f"Failed: {snap['error']}")
    if snap["run_id"] is not None:
        st.caption(f"Recorded as run #{snap['run_id']} in the run store.")


if job_id:
    was_active, shown_id = active, job_id

    def _panel() -> None:
        job_panel()
        j = runner.get(shown_id)
        # The polling fragment hands back to a full run once the job ends, so the page (and the
        # Start button) reflect the new model.
        if was_active and j is not None and j.is_finished:
            st.rerun()

    st.fragment(run_every=POLL_SECONDS if active else None)(_panel)()
