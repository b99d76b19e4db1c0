"""The Fine-tune page's job panel: status, queue place, progress with Cancel, live curves, and
the outcome (a finished job's model becomes the session's model through `ui.actions`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.export import finetune_change, finetune_outcome
from pruning_core.jobs import Job
from pruning_core.plots import training_curves_figure
from ui.actions import commit_finetune
from ui.jobs_panel import job_runner, progress_and_cancel

__all__ = ["finetune_panel"]


def finetune_panel(dense_accuracy: float) -> Callable[[Job | None], None]:
    """The drawing function `ui.jobs_panel.follow_job` polls for this session's fine-tune job.

    Args:
        dense_accuracy: The dense model's validation accuracy (the outcome compares with it).
    """

    def draw(job: Job | None) -> None:
        if job is None:
            st.warning("The fine-tune job is no longer known (the server restarted?).")
            return
        snap = job.snapshot()
        st.subheader(f"{snap['name']}")
        status = snap["status"]
        if status == "queued":
            st.info(
                f"Waiting in the queue: position {snap['queue_position']} "
                f"({job_runner().running} job(s) running). It starts by itself."
            )
        prog = float(snap["progress"])
        progress_and_cancel(
            job,
            prog,
            f"{status}: {snap['message'] or '...'} ({prog:.0%})",
            key="ft_cancel",
            help="Stops within one batch; keeps the curve.",
        )
        curve = pd.DataFrame(snap["curve"])
        if len(curve):
            st.plotly_chart(
                training_curves_figure(curve, "Live fine-tuning curves"), key="ft_curves"
            )
            st.caption(
                "Loss of each training batch; validation accuracy on the whole validation split "
                "at the end of each epoch."
            )
        if not job.is_finished:
            st.caption(f"Running for {snap['elapsed']:.0f} s. You can leave this page meanwhile.")
            return
        _outcome(job, snap, len(curve), dense_accuracy)

    return draw


def _outcome(job: Job, snap: dict[str, Any], points: int, dense_accuracy: float) -> None:
    status = snap["status"]
    if status == "done":
        metrics = {**snap["metrics"], **(job.result if isinstance(job.result, dict) else {})}
        note = commit_finetune(job.id, snap["run_id"])
        acc = metrics.get("accuracy")
        if acc is None:
            st.success(f"Done in {snap['elapsed']:.0f} s. " + note)
        else:
            summary = (
                f"Done in {snap['elapsed']:.0f} s. Validation accuracy {acc:.2%} after "
                f"fine-tuning (dense {dense_accuracy:.2%}); sparsity "
                f"{metrics.get('sparsity', 0):.1%}. "
            )
            change = finetune_change(metrics)
            outcome = finetune_outcome(metrics) or ""
            # A fine-tune that made the model worse is bad news, said as such, not a success.
            show = st.warning if change is not None and change < 0 else st.success
            show(summary + outcome + " " + note)
    elif status == "cancelled":
        kept = (
            f"The partial curve ({points} points) is in the run store"
            if snap["run_id"] is not None
            else "It never started, so nothing was recorded"
        )
        st.warning(f"Cancelled ({snap['error']}). {kept}; your session keeps its previous model.")
    else:
        st.error(f"Failed: {snap['error']}")
    if snap["run_id"] is not None:
        st.caption(f"Recorded as run #{snap['run_id']} in the run store.")
