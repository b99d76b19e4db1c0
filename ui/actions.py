"""Session actions: what the Prune and Fine-tune pages' buttons do.

- `apply_pruning`: prune this session's trainable copy of the dense model as the sliders say,
  measure it and commit it as the session's model (`ui.session.set_pruned`);
- `suggest_overrides`: per-layer ratios from measured sensitivity;
- `start_finetune` / `commit_finetune`: queue the fine-tune job, and once it is done make its
  model the session's model (once, and only if the session still wants it).

Work on models always happens on `pruning_core.layers.trainable_copy`: the shared cached model
is only read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import streamlit as st

from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.experiments import DEFAULT_SENSITIVITY_RATIOS, predicted_drop, suggest_ratios
from pruning_core.jobs import Job
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.plans import layer_cap
from pruning_core.prune import PruneConfig, prune_
from pruning_core.recipe import Recipe
from pruning_core.regularize import NO_REGULARIZER
from pruning_core.schedules import Schedule
from pruning_core.slider import SliderPreview
from pruning_core.stats import model_summary
from pruning_core.train import DEFAULT_FINETUNE, TrainConfig
from pruning_core.workflow import RecipeResult
from ui.caches import sensitivity_for
from ui.choices import granularity_label
from ui.finetune_job import make_finetune_job
from ui.jobs_panel import submit_job
from ui.loaders import shared_data, shared_model
from ui.session import PrunedModel, pruned, set_finetune_job, set_pruned
from ui.state import selection

__all__ = [
    "apply_pruning",
    "commit_finetune",
    "start_finetune",
    "suggest_overrides",
    "suggest_unavailable",
]

_FT_JOBS = "_ft_jobs"
SENSITIVITY_IMAGES = 500
# Shares each unit is pruned at, one at a time, to measure its sensitivity.
SENSITIVITY_RATIOS: tuple[float, ...] = DEFAULT_SENSITIVITY_RATIOS


def apply_pruning(
    preview: SliderPreview,
    base: LoadedModel,
    dataset_ref: str,
    *,
    ratio: float,
    scope: str,
    overrides: Mapping[str, float],
) -> PrunedModel:
    """Prune a trainable copy of `base` as the preview's criterion and granularity say (the
    preview's scores are reused), measure it on the whole validation split and commit it.

    Structured granularities shrink the copy physically.

    Raises:
        UserError: Settings the engine refuses.
    """
    config = preview.config.replace(
        ratio=ratio,
        scope=scope,
        layer_ratios=tuple(sorted(overrides.items())),
        structured_mode="physical",
    )
    model = trainable_copy(base.model)
    data = shared_data(dataset_ref)
    with st.spinner("Pruning your copy of the model and measuring it on the validation split"):
        result = prune_(model, config, data=data, spec=base.spec, scores=preview.engine)
        ev = evaluate(model, data, base.spec)
        summary = model_summary(model, base.spec)
    loaded = LoadedModel(model, base.spec, base.arch, base.source, dict(base.meta))
    return set_pruned(
        loaded,
        config,
        masks=result.masks,
        result=result.to_dict(),
        summary=summary,
        accuracy=ev.accuracy,
        note=f"{config.effective_ratio:.0%} {config.method} {config.granularity}, "
        f"{'per-layer overrides, ' if overrides else ''}{scope} scope",
    )


def suggest_unavailable(preview: SliderPreview) -> str | None:
    """Why "suggest from sensitivity" cannot apply to the preview's granularity (one line), or
    None when it can: it needs per-layer ratios, which N:M patterns and block pruning lack."""
    plan = preview.engine.plan
    label = granularity_label(preview.config.granularity)
    if plan.fixed_ratio:
        return (
            f"{label} removes the same share from every layer, so there are no per-layer ratios "
            "to set or suggest."
        )
    if not plan.per_layer:
        return (
            f"{label}: one ratio removes that share of all of them, so there are no per-layer "
            "ratios to suggest."
        )
    return None


def suggest_overrides(
    preview: SliderPreview, model_ref: str, dataset_ref: str, ratio: float
) -> tuple[dict[str, float], str]:
    """Per-unit ratios that reach `ratio` overall with the least predicted accuracy loss, from
    the dense model's per-unit sensitivity (measured once per session; progress shown).

    The ratios are weighed by the preview's unit sizes (weights, channels or heads), so the
    overall share means what the slider's does.

    Returns:
        The ratios by unit name, and one line saying where they come from.

    Raises:
        UserError: The granularity has no per-layer ratios (`suggest_unavailable`), nothing is
            prunable, or the measured ratios cannot reach `ratio`.
    """
    why = suggest_unavailable(preview)
    if why is not None:
        raise UserError(why)
    config = preview.config
    sens = sensitivity_for(
        model_ref,
        dataset_ref,
        config.method,
        config.granularity,
        limit=SENSITIVITY_IMAGES,
        ratios=SENSITIVITY_RATIOS,
    )
    measured = set(sens["layer"])
    sizes = {u: preview.unit_sizes[u] for u in preview.unit_names if u in measured}
    suggestion = suggest_ratios(sens, sizes, ratio)
    if preview.engine.plan.structured:
        suggestion = _whole_elements(suggestion, sizes, ratio, config.max_layer_ratio)
    n_sens = min(SENSITIVITY_IMAGES, shared_data(dataset_ref).num_examples("val"))
    note = (
        f"Suggested from each {preview.engine.plan.unit_word}'s sensitivity, measured on "
        f"{n_sens} validation images; predicted drop "
        f"{predicted_drop(sens, suggestion) * 100:.1f} points (an estimate: it assumes layers "
        "do not interact)."
    )
    # Shown with four decimals, rounded up so that a plan still removes the same count.
    return {k: math.ceil(v * 1e4 - 1e-6) / 1e4 for k, v in suggestion.items()}, note


def _whole_elements(
    ratios: Mapping[str, float], sizes: Mapping[str, int], target: float, max_layer_ratio: float
) -> dict[str, float]:
    """Ratios that remove whole channels or heads and, together, the target share.

    A plan removes floor(size x ratio) elements of a unit, so continuous ratios on units of a
    few heads would fall short of the slider's share (4 heads at 0.2 remove none). Each unit
    keeps its floor, and the elements still missing go to the units closest to their next one.
    """
    counts = {u: math.floor(ratios.get(u, 0.0) * n + 1e-9) for u, n in sizes.items()}
    # The per-layer table accepts ratios up to 0.95.
    caps = {u: layer_cap(n, min(max_layer_ratio, 0.95)) for u, n in sizes.items()}
    missing = math.floor(target * sum(sizes.values()) + 1e-9) - sum(counts.values())
    closest = sorted(sizes, key=lambda u: counts[u] - ratios.get(u, 0.0) * sizes[u])
    for u in closest:
        if missing <= 0:
            break
        if counts[u] < caps[u]:
            counts[u] += 1
            missing -= 1
    return {u: counts[u] / n for u, n in sizes.items()}


def finetune_recipe(
    committed: PrunedModel,
    schedule: Schedule,
    train: TrainConfig,
    regularizer: str,
    strength: float,
) -> Recipe:
    """The recipe the Fine-tune page runs: the session's pruning target (its recipe) with this
    schedule, fine-tune settings and regulariser (`none` for none).

    Raises:
        UserError: Settings the recipe refuses (e.g. a regulariser without fine-tune epochs).
    """
    on = regularizer != NO_REGULARIZER
    return dataclasses.replace(
        committed.recipe(),
        schedule=schedule,
        finetune=train,
        regularizer=regularizer if on else None,
        reg_strength=strength if on else None,
    )


def start_finetune(recipe: Recipe, model_ref: str, dataset_ref: str) -> Job:
    """Queue the fine-tune job for this session and remember it (the page follows it).

    Raises:
        UserError: The runner's queue is full or the settings are refused.
    """
    holder: dict[str, Any] = {}
    dense = shared_model(model_ref)
    fn = make_finetune_job(dense, shared_data(dataset_ref), recipe, holder)
    job = submit_job(
        fn,
        name=f"fine-tune {model_ref} ({recipe.schedule.kind}, {recipe.finetune.epochs} epochs)",
        kind="finetune",
        config=recipe.to_document(),
        model_ref=model_ref,
        dataset_ref=dataset_ref,
    )
    st.session_state.setdefault(_FT_JOBS, {})[job.id] = {
        "holder": holder,
        "recipe": recipe,
        "model_ref": model_ref,
        "dataset_ref": dataset_ref,
        "committed": False,
    }
    set_finetune_job(job.id)
    return job


FINETUNE_START_ERROR = "ft_start_error"


def start_finetune_clicked(model_ref: str, dataset_ref: str) -> None:
    """The Fine-tune page's Start button callback: queue the job from the page's settings.

    A callback runs before the next script run, so the job is queued even when the user leaves
    the page right after the click (a job started in the page body would be lost when the page
    changed before that run got to it). A refusal is kept under `FINETUNE_START_ERROR` for the
    page to show.
    """
    ss = st.session_state
    ss[FINETUNE_START_ERROR] = None
    committed = pruned()
    if committed is None:
        ss[FINETUNE_START_ERROR] = "apply a pruning target on the Prune page first"
        return
    kind = str(ss["ft_schedule"])
    distill = bool(ss["ft_distill"])
    try:
        train = dataclasses.replace(
            DEFAULT_FINETUNE,
            epochs=int(ss["ft_epochs"]),
            lr=float(ss["ft_lr"]),
            optimizer=str(ss["ft_optimizer"]),
            distill_weight=float(ss["ft_distill_weight"]) if distill else 0.0,
            distill_temperature=float(ss["ft_temperature"]),
            keep_best=bool(ss["ft_keep_best"]),
            seed=committed.config.seed,
        )
        recipe = finetune_recipe(
            committed,
            Schedule(kind, int(ss["ft_steps"]) if kind != "oneshot" else 1),
            train,
            str(ss["ft_reg"]),
            float(ss["ft_reg_strength"]),
        )
        start_finetune(recipe, model_ref, dataset_ref)
    except UserError as e:
        ss[FINETUNE_START_ERROR] = str(e)


def commit_finetune(job_id: str, run_id: int | None) -> str:
    """Make a finished fine-tune job's model the session's model (once); says what happened."""
    info = st.session_state.get(_FT_JOBS, {}).get(job_id)
    if info is None or "result" not in info["holder"]:
        return "The fine-tuned model is no longer in memory (the session was restarted?)."
    if not info["committed"]:
        info["committed"] = True
        info["note"] = _make_session_model(info, run_id)
    return str(info["note"])


def _make_session_model(info: dict[str, Any], run_id: int | None) -> str:
    run: RecipeResult = info["holder"]["result"]
    recipe = run.recipe
    if (info["model_ref"], info["dataset_ref"]) != selection():
        return "The selection changed while it ran, so the result was not made your model."
    current = pruned()
    wanted: PruneConfig = recipe.prune
    if current is None or current.config != wanted:
        return (
            "You applied other pruning settings while it ran, so the result was not made your "
            "model (it is in the run store)."
        )
    set_pruned(
        run.loaded,
        recipe.prune,
        masks=run.schedule.prune.masks,
        result=run.schedule.prune.to_dict(),
        stage="fine-tuned",
        summary=model_summary(run.model, run.loaded.spec),
        accuracy=run.schedule.finetuned_accuracy,
        finetune={"run_id": run_id},
        run=run,
        note=f"fine-tuned {recipe.finetune.epochs} epoch(s), {recipe.schedule.kind} schedule",
        model_ref=info["model_ref"],
        dataset_ref=info["dataset_ref"],
    )
    return "This is now your session's model."
