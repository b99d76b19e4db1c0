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
import torch

from pruning_core.budget import Budget, BudgetResult
from pruning_core.budget import search as budget_search
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.experiments import DEFAULT_SENSITIVITY_RATIOS, predicted_drop, suggest_ratios
from pruning_core.jobs import Job
from pruning_core.layers import rebased_sparsity, trainable_copy
from pruning_core.models import LoadedModel, sparsity_base
from pruning_core.plans import layer_cap
from pruning_core.progress import ProgressReport
from pruning_core.prune import PruneConfig, prune_
from pruning_core.recipe import Recipe
from pruning_core.regularize import NO_REGULARIZER
from pruning_core.schedules import Schedule
from pruning_core.slider import SliderPreview
from pruning_core.stats import model_summary
from pruning_core.train import DEFAULT_FINETUNE, TrainConfig
from pruning_core.workflow import RecipeResult
from ui.caches import preview_for, sensitivity_for
from ui.choices import granularity_label, scope_applies, scored_by_criterion
from ui.finetune_job import make_finetune_job
from ui.jobs_panel import submit_job
from ui.loaders import shared_data, shared_model
from ui.session import PrunedModel, pruned, set_finetune_job, set_pruned
from ui.state import selection

__all__ = [
    "apply_pruning",
    "block_choice",
    "block_names",
    "commit_finetune",
    "kept_block",
    "search_budget",
    "start_finetune",
    "suggest_overrides",
    "suggest_unavailable",
]

_FT_JOBS = "_ft_jobs"
SENSITIVITY_IMAGES = 500
# Shares each unit is pruned at, one at a time, to measure its sensitivity.
SENSITIVITY_RATIOS: tuple[float, ...] = DEFAULT_SENSITIVITY_RATIOS
# The per-layer sliders' cap: no suggested or searched ratio goes beyond it.
MAX_UNIT_RATIO = 0.95
# The page's budget search: calibration images per drop-curve point, the ratios measured
# (None: `budget.DEFAULT_SEARCH_RATIOS`) and validation images for its accuracy (None: all).
BUDGET_IMAGES = 500
BUDGET_RATIOS: tuple[float, ...] | None = None
BUDGET_EVAL_IMAGES: int | None = None


def apply_pruning(
    preview: SliderPreview,
    base: LoadedModel,
    dataset_ref: str,
    *,
    ratio: float,
    scope: str,
    overrides: Mapping[str, float],
    recalibrate_bn: bool = True,
) -> PrunedModel:
    """Prune a trainable copy of `base` as the preview's criterion and granularity say (the
    preview's scores are reused), measure it on the whole validation split and commit it.

    Structured granularities shrink the copy physically and, with `recalibrate_bn`, re-estimate
    BatchNorm statistics on the calibration images (`prune.settle_structured`).

    Raises:
        UserError: Settings the engine refuses.
    """
    config = preview.config.replace(
        ratio=ratio,
        scope=scope,
        layer_ratios=tuple(sorted(overrides.items())),
        structured_mode="physical",
        recalibrate_bn=recalibrate_bn,
    )
    model = trainable_copy(base.model)
    data = shared_data(dataset_ref)
    with st.spinner("Pruning your copy of the model and measuring it on the validation split"):
        result = prune_(model, config, data=data, spec=base.spec, scores=preview.engine)
        # A shrunk base (a pruned upload): against its dense architecture, as the preview.
        result.sparsity = rebased_sparsity(result.sparsity, *sparsity_base(base))
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
        note=_apply_note(config, scope, bool(overrides), result.sparsity),
    )


def _apply_note(config: PruneConfig, scope: str, overrides: bool, sparsity: float) -> str:
    """The history's words for an Apply ("magnitude channel, ratio 0.50, global scope: sparsity
    74.2%"); a granularity that takes no criterion (low rank: singular values) or whose scope
    changes nothing (low rank by energy) is not said to have used one. The ratio is named as
    such: beside the sparsity metric a bare "90%" read as the sparsity (86.6%)."""
    g = config.granularity
    method = f"{config.method} " if scored_by_criterion(g) else ""
    how = [*(["per-layer overrides"] if overrides else []),
           *([f"{scope} scope"] if scope_applies(g) else [])]  # fmt: skip
    return (
        f"{method}{g}, ratio {config.effective_ratio:.2f}"
        + "".join(f", {h}" for h in how)
        + f": sparsity {sparsity:.1%}"
    )


def suggest_unavailable(preview: SliderPreview) -> str | None:
    """Why "suggest from sensitivity" cannot apply to the preview's granularity (one line), or
    None when it can: it needs per-layer ratios (or blocks to choose), which N:M patterns
    lack."""
    plan = preview.engine.plan
    label = granularity_label(preview.config.granularity)
    if plan.fixed_ratio:
        return (
            f"{label} removes the same share from every layer, so there are no per-layer ratios "
            "to set or suggest."
        )
    return None


def block_names(preview: SliderPreview) -> list[str]:
    """Block granularity: the removable blocks, in model order (else empty)."""
    return [str(b) for b in getattr(preview.engine.plan, "blocks", [])]


def kept_block(preview: SliderPreview) -> str | None:
    """Block granularity: the block the criterion ranks highest, which block pruning always
    keeps (its selection removes the lowest-ranked blocks and at least one stays), so a choice
    of blocks never includes it; None for other granularities."""
    blocks = block_names(preview)
    if not blocks:
        return None
    scores = preview.engine.plan.units[0].scores
    return blocks[int(torch.argsort(scores, stable=True)[-1])]


def block_choice(
    preview: SliderPreview,
    model_ref: str,
    dataset_ref: str,
    ratio: float,
    overrides: Mapping[str, float],
) -> tuple[SliderPreview, float, dict[str, float]]:
    """The preview, ratio and overrides the page prunes with, given blocks chosen by name.

    Block pruning takes one ratio and removes the lowest-ranked blocks; blocks chosen by name
    (suggested, budget-searched or picked; `overrides` maps each to 1.0) are removed by the
    config `budget.search` writes: every other block but the highest-ranked one is ignored,
    and the ratio |S| / (|S| + 1) then removes exactly the chosen set S. That preview is kept
    in a second slot (the page's own stays), and its selection is checked.

    Returns:
        (preview, ratio, overrides): unchanged when nothing is chosen or the granularity is
        not block; else the block-choice preview, its ratio and no overrides.

    Raises:
        UserError: A chosen block that is not removable or is the kept one, or a choice the
            block plan cannot make.
    """
    blocks = block_names(preview)
    chosen = [b for b in blocks if overrides.get(b, 0.0) >= 1.0]
    if not blocks or not chosen:
        return preview, ratio, ({} if blocks else dict(overrides))
    top = kept_block(preview)
    if top in chosen:
        raise UserError(
            f"block {top} cannot be removed: the criterion ranks it highest and block pruning "
            "always keeps at least one block"
        )
    keep = tuple(b for b in blocks if b not in chosen and b != top)
    config = preview.config
    chosen_preview, _ = preview_for(
        model_ref, dataset_ref, config.method, config.granularity,
        ignore=(*(config.ignore or ()), *keep) or None, slot="_prune_block_preview",
    )  # fmt: skip
    r = len(chosen) / (len(chosen) + 1)
    picked = chosen_preview.engine.select(r, {}, "global")
    plan: Any = chosen_preview.engine.plan
    removed = sorted(str(plan.blocks[i]) for i in picked.get("blocks", []))
    if removed != sorted(chosen):
        raise UserError(
            f"the block plan removes {', '.join(removed) or 'nothing'} instead of "
            f"{', '.join(chosen)}: choose other blocks or clear the choice"
        )
    return chosen_preview, r, {}


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
    if block_names(preview):
        return _suggest_blocks(preview, model_ref, dataset_ref, ratio)
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


def _suggest_blocks(
    preview: SliderPreview, model_ref: str, dataset_ref: str, ratio: float
) -> tuple[dict[str, float], str]:
    """Block granularity: as many blocks as the slider's share removes, those whose removal
    alone costs the least accuracy (measured, one block at a time), never the kept one."""
    config = preview.config
    sens = sensitivity_for(
        model_ref, dataset_ref, config.method, config.granularity, limit=SENSITIVITY_IMAGES,
        ratios=SENSITIVITY_RATIOS,
    )  # fmt: skip
    plan: Any = preview.engine.plan
    count = len(preview.engine.select(ratio, {}, "global").get("blocks", []))
    top = kept_block(preview)
    drops = {str(r["layer"]): float(r["drop"]) for _, r in sens.iterrows()}
    blocks = block_names(preview)
    candidates = [b for b in blocks if b != top and b in drops]
    # Least drop first; ties in model order (a stable sort).
    chosen = sorted(candidates, key=lambda b: drops[b])[:count]
    n_sens = min(SENSITIVITY_IMAGES, shared_data(dataset_ref).num_examples("val"))
    if not chosen:
        note = (
            f"The share slider removes no block of {len(plan.blocks)}: move it up for a suggestion."
        )
        return {}, note
    note = (
        f"Suggested from each block's sensitivity (removed alone), measured on {n_sens} "
        f"validation images: the {len(chosen)} of {len(blocks)} blocks the slider's share "
        f"removes with the least predicted drop, "
        f"{sum(drops[b] for b in chosen) * 100:.1f} points (an estimate: it assumes blocks "
        f"do not interact). {top} is kept (ranked highest)."
    )
    return dict.fromkeys(chosen, 1.0), note


def search_budget(
    preview: SliderPreview,
    model_ref: str,
    dataset_ref: str,
    budget: Budget,
    *,
    recalibrate_bn: bool = True,
) -> BudgetResult:
    """Per-unit ratios (or blocks to remove) meeting `budget` with the least predicted loss,
    for the preview's criterion and granularity (`pruning_core.budget.search`), with a progress
    bar that goes however the search ends.

    No unit gets more than the per-layer sliders allow (`MAX_UNIT_RATIO`), so the result can be
    taken into them. Drop curves: `BUDGET_IMAGES` calibration images per point at
    `BUDGET_RATIOS` (None: the search's defaults); accuracy: `BUDGET_EVAL_IMAGES` validation
    images (None: all).

    Raises:
        UserError: As `budget.search` (N:M granularity, size or latency with unstructured
            pruning, a budget out of reach).
    """
    base = shared_model(model_ref)
    config = preview.config.replace(
        max_layer_ratio=min(preview.config.max_layer_ratio, MAX_UNIT_RATIO),
        recalibrate_bn=recalibrate_bn,
        structured_mode="physical",
    )
    bar = st.progress(0.0, text=f"Searching ratios for {budget.describe()}...")

    def progress(p: ProgressReport) -> None:
        bar.progress(min(max(p.fraction, 0.0), 1.0), text=f"Budget search: {p.message}")

    try:
        return budget_search(
            base, shared_data(dataset_ref), budget, config=config, ratios=BUDGET_RATIOS,
            limit=BUDGET_IMAGES, eval_limit=BUDGET_EVAL_IMAGES, device="cpu", progress=progress,
        )  # fmt: skip
    finally:
        bar.empty()


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
        name=f"fine-tune {model_ref} ({recipe.schedule.kind}, {recipe.finetune.epochs} "
        f"epoch{'' if recipe.finetune.epochs == 1 else 's'})",
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
