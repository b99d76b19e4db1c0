"""The Fine-tune page's background job, without Streamlit (it runs in a runner thread).

The job prunes a fresh copy of the dense model to the session's committed PruneConfig along a
schedule and fine-tunes it (`pruning_core.schedules.run_schedule`: masks re-applied after every
optimizer step by `MaskEnforcer`), logging its curve into the job (and through the runner into
the run store). The finished model is handed back through a plain dict, `holder`, that the page
reads once the job is done: no Streamlit call ever happens in the worker thread.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from pruning_core.data import DataBundle
from pruning_core.jobs import JobContext
from pruning_core.layers import trainable_copy
from pruning_core.prune import PruneConfig
from pruning_core.regularize import make_regularizer
from pruning_core.schedules import Schedule, run_schedule
from pruning_core.spec import InputSpec
from pruning_core.stats import model_summary
from pruning_core.train import TrainConfig


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything the job needs (copied: the job never reads session state).

    Attributes:
        prune: The pruning target.
        schedule: How pruning is spread around fine-tuning.
        train: Fine-tuning hyper-parameters (distillation included).
        regularizer: `none`, `l1`, `slim` or `group-lasso`.
        reg_strength: Its multiplier.
    """

    prune: PruneConfig
    schedule: Schedule
    train: TrainConfig
    regularizer: str = "none"
    reg_strength: float = 1e-4

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, as recorded in the run store."""
        return {
            "prune": self.prune.to_dict(),
            "schedule": self.schedule.to_dict(),
            "train": self.train.to_dict(),
            "regularizer": self.regularizer,
            "reg_strength": self.reg_strength if self.regularizer != "none" else None,
        }


def make_finetune_job(
    dense: nn.Module,
    spec: InputSpec,
    data: DataBundle,
    request: FinetuneRequest,
    holder: dict[str, Any],
) -> Any:
    """A job function for `JobRunner.submit`: prune + fine-tune a copy of `dense`.

    Args:
        dense: The dense model (only copied, before the job is queued).
        spec: Its input spec.
        data: The dataset.
        request: What to do.
        holder: Receives `model` (the fine-tuned module), `masks`, `summary`, `result` once the
            job finishes, cancelled or not.
    """
    student = trainable_copy(dense)
    teacher = None
    if request.train.distill_weight > 0:
        # A frozen copy: the teacher only runs forward, and the shared model is never moved.
        teacher = copy.deepcopy(dense).cpu().eval().requires_grad_(False)
    reg = (
        make_regularizer(request.regularizer, request.reg_strength)
        if request.regularizer != "none"
        else None
    )

    def job(ctx: JobContext) -> dict[str, Any]:
        ctx.report(0.0, "starting: pruning the dense model")
        res = run_schedule(
            student,
            request.prune,
            request.schedule,
            train_config=request.train,
            data=data,
            spec=spec,
            progress=ctx.fit_progress(every=1),
            cancel=ctx.cancel,
            teacher=teacher,
            regularizer=reg,
        )
        summary = model_summary(student, spec)
        holder.update(model=student, masks=dict(res.prune.masks), summary=summary, result=res)
        return {
            "accuracy": res.finetuned_accuracy,
            "pruned_accuracy": res.pruned_accuracy,
            "regularized_accuracy": res.regularized_accuracy,
            "sparsity": res.prune.sparsity,
            "params": summary["params"],
            "params_nonzero": summary["params_nonzero"],
            "macs": summary["macs"],
            "size_bytes": summary["size_bytes"],
            "seconds": res.seconds,
            "schedule_curve": res.curve,
        }

    return job
