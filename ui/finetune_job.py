"""The Fine-tune page's background job, without Streamlit (it runs in a runner thread).

The job runs the session's `Recipe` (`pruning_core.workflow.run_recipe`: prune a fresh copy of
the dense model to the committed target along the schedule, fine-tune with masks re-applied
after every optimizer step, distil from the dense model), logging its curve into the job (and
through the runner into the run store). The finished `RecipeResult` is handed back through a
plain dict, `holder`, that the page reads once the job is done: no Streamlit call ever happens in
the worker thread. The run store keeps `RecipeResult.metrics()`, the `metrics.json` layout of
`pruning-lab prune`.
"""

from __future__ import annotations

from typing import Any

from pruning_core.data import DataBundle
from pruning_core.jobs import JobContext
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.recipe import Recipe
from pruning_core.workflow import run_recipe

__all__ = ["make_finetune_job"]


def make_finetune_job(
    dense: LoadedModel, data: DataBundle, recipe: Recipe, holder: dict[str, Any]
) -> Any:
    """A job function for `JobRunner.submit`: run `recipe` on a private copy of `dense`.

    Args:
        dense: The dense model (only copied, before the job is queued).
        data: The dataset.
        recipe: What to do (the session's pruning target, schedule and fine-tune settings).
        holder: Receives `result` (the `RecipeResult`) once the job finishes, cancelled or not.
    """
    student = LoadedModel(
        trainable_copy(dense.model), dense.spec, dense.arch, dense.source, dict(dense.meta)
    )

    def job(ctx: JobContext) -> dict[str, Any]:
        ctx.report(0.0, "starting: pruning the dense model")
        result = run_recipe(
            recipe, model=student, data=data, progress=ctx.fit_progress(every=1), cancel=ctx.cancel
        )
        holder.update(result=result)
        return result.metrics()

    return job
