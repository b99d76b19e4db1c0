"""Page 4: fine-tune the pruned model in the background, with live curves and a cancel button."""

from __future__ import annotations

import streamlit as st

from pruning_core.criteria import Magnitude
from pruning_core.regularize import NO_REGULARIZER, REGULARIZERS
from pruning_core.schedules import SCHEDULES
from pruning_core.train import DEFAULT_FINETUNE as FT
from pruning_core.train import OPTIMIZERS
from ui.actions import FINETUNE_START_ERROR, start_finetune_clicked
from ui.finetune_panel import finetune_panel
from ui.jobs_panel import follow_job, runner_or_stop
from ui.session import finetune_job_id, pruned
from ui.state import init_state, selection
from ui.texts import (
    PRUNE_TRAIN_RETRAIN,
    REG_HELP,
    REG_LABELS,
    REGULARISATION_EXPLAINED,
    SCHEDULE_HELP,
    SCHEDULE_LABELS,
)
from ui.widgets import baseline_or_stop, explain

init_state()
st.title("Fine-tune")
st.caption(
    "Prune-train-retrain: reach the pruning target from the Prune page along a schedule and "
    "fine-tune so the remaining weights take over. It runs in the background: you can visit "
    "other pages and come back; the run is recorded in the run store, also when cancelled."
)
explain(PRUNE_TRAIN_RETRAIN, "Why fine-tune after pruning?")
model_ref, dataset_ref = selection()
base_stats = baseline_or_stop(model_ref, dataset_ref)
runner = runner_or_stop()
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
        list(SCHEDULES),
        key="ft_schedule",
        persist_state="session",
        format_func=lambda s: SCHEDULE_LABELS.get(s, s),
        help="When pruning happens relative to fine-tuning.",
    )
    st.caption(SCHEDULE_HELP.get(schedule, ""))
    steps = st.number_input(
        "Pruning steps" if schedule != "dynamic" else "Mask updates",
        min_value=1,
        max_value=20,
        key="ft_steps",
        persist_state="session",
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
        persist_state="session",
        help="Passes over the training split.",
    )
    lr = st.select_slider(
        "Learning rate",
        options=sorted({1e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, FT.lr}),
        key="ft_lr",
        persist_state="session",
        format_func=lambda v: f"{v:g}",
        help="Peak learning rate (cosine decay to zero). Fine-tuning wants smaller steps than "
        "training from scratch; SGD usually needs ~10x Adam's.",
    )
    optimizer = st.selectbox(
        "Optimizer", list(OPTIMIZERS), key="ft_optimizer", persist_state="session"
    )
    keep_best = st.toggle(
        "Keep the best epoch",
        key="ft_keep_best",
        persist_state="session",
        help="Validation accuracy is measured before the first epoch and after each one; the "
        "weights of the best are handed back, the pruned model's own included (on a tie, the "
        "earlier). Off: the last epoch's weights, better or worse.",
    )
    st.caption(
        "Kept the best epoch: a fine-tune never hands back a model worse on the validation "
        "split than the pruned one (that split chooses the epoch, so its accuracy is slightly "
        "optimistic)."
        if keep_best
        else "The last epoch is handed back, even when it is worse than the pruned model."
    )
with c3:
    distill = st.toggle(
        "Distillation from the dense model",
        key="ft_distill",
        persist_state="session",
        help="The dense model is the teacher: the pruned student also learns to match its "
        "softened outputs (Hinton et al. 2015), which often recovers accuracy faster.",
    )
    distill_w = st.slider(
        "Distillation weight",
        0.0,
        1.0,
        step=0.05,
        key="ft_distill_weight",
        persist_state="session",
        disabled=not distill,
        help="Share of the loss from the teacher's soft targets.",
    )
    temperature = st.slider(
        "Temperature",
        1.0,
        10.0,
        step=0.5,
        key="ft_temperature",
        persist_state="session",
        disabled=not distill,
        help="Higher = softer targets, more of the teacher's 'dark knowledge' about which "
        "wrong classes are nearly right.",
    )
    reg = st.selectbox(
        "Regularisation",
        [NO_REGULARIZER, *REGULARIZERS],
        key="ft_reg",
        persist_state="session",
        format_func=lambda r: REG_LABELS.get(r, r),
        help="A sparsity penalty trained in before pruning.",
    )
    st.caption(REG_HELP.get(reg, ""))
    strength = st.select_slider(
        "Strength",
        options=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
        key="ft_reg_strength",
        persist_state="session",
        format_func=lambda v: f"{v:g}",
        disabled=reg == NO_REGULARIZER,
    )
explain(REGULARISATION_EXPLAINED, "Regularisation: train to be pruned")

# The dynamic schedule recomputes magnitude masks from the current weights.
dynamic_ok = committed is None or (
    not committed.config.structured and isinstance(committed.config.criterion_object(), Magnitude)
)
problem = None
if schedule == "dynamic" and not dynamic_ok:
    problem = (
        "The dynamic schedule recomputes magnitude masks while training: it needs an "
        "unstructured or 2:4 target pruned with the magnitude criterion."
    )
    st.warning(problem)
# Queued in the button's callback: it runs even when the user leaves the page at once.
st.button(
    "Start fine-tuning",
    type="primary",
    key="ft_start",
    disabled=committed is None or active or problem is not None,
    help="Queued in the server's job runner; it starts when a worker is free.",
    on_click=start_finetune_clicked,
    args=(model_ref, dataset_ref),
)
if st.session_state.get(FINETUNE_START_ERROR):
    st.error(f"Cannot start: {st.session_state[FINETUNE_START_ERROR]}")
st.caption(
    f"Job runner: {runner.running} running, {runner.queued} waiting "
    f"(at most {runner.max_workers} at once and {runner.max_queue} waiting, shared by every "
    "user of this server)."
)


# ------------------------------------------------------------------ the job
if job_id:
    follow_job(job_id, finetune_panel(base_stats["accuracy"]), active=active)
