"""This session's pruned model, its recipe and its fine-tune job: what pages 3 to 6 share.

The Prune page commits a model with `set_pruned(...)`; the Fine-tune page replaces it with the
fine-tuned one; Trade-offs and Export read it with `pruned()`. The state is
tied to the (model, dataset) pair it was made for: after the user picks another model, `pruned()`
returns None instead of a model that no longer matches the selection.

Everything here lives in `st.session_state`, so each browser session has its own pruned model;
the shared cached model (`ui.loaders.shared_model`) is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import streamlit as st
import torch

from pruning_core.checkpoint import CHECKPOINT_SUFFIXES
from pruning_core.models import LoadedModel
from pruning_core.prune import PruneConfig
from pruning_core.recipe import Recipe
from pruning_core.workflow import RecipeResult
from ui.state import init_state, remember, selection

_KEY = "prune_committed"
_JOB_KEY = "ft_job_id"


@dataclass
class PrunedModel:
    """The session's committed pruned (and maybe fine-tuned) model.

    Attributes:
        loaded: The model (this session's own object; pages that change it work on a copy) with
            its spec; `loaded.meta["recipe"]` holds the prune config and the fine-tune settings.
        model_ref: The model it was pruned from (registry name or path).
        dataset_ref: The dataset used for calibration, estimates and fine-tuning.
        config: The PruneConfig that was applied.
        masks: Bool keep-masks per layer (unstructured, N:M); empty after physical structured
            pruning (the weights are gone, not masked).
        result: `PruneResult.to_dict()` of the pruning step (measured sparsity per layer...).
        stage: `pruned` or `fine-tuned`.
        summary: `stats.model_summary` of the model as committed (params, non-zero, MACs, size).
        accuracy: Top-1 accuracy measured on the whole validation split when committed.
        finetune: The fine-tune job's run id in the run store once fine-tuned, else {}.
        run: The fine-tune job's `RecipeResult` (recipe, measures, curve) once fine-tuned.
        history: Plain-language log of what was applied, oldest first.
        created: `time.time()` of the commit.
    """

    loaded: LoadedModel
    model_ref: str
    dataset_ref: str
    config: PruneConfig
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    stage: str = "pruned"
    summary: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    finetune: dict[str, Any] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    run: RecipeResult | None = None

    @property
    def model(self) -> torch.nn.Module:
        """The pruned module."""
        return self.loaded.model

    def recipe(self) -> Recipe:
        """The recipe that reproduces this model from `model_ref` on `dataset_ref`: the fine-tune
        job's, or the pruning step alone (no fine-tuning)."""
        if self.run is not None:
            return self.run.recipe
        arch = self.loaded.arch if self.model_ref.endswith(CHECKPOINT_SUFFIXES) else None
        return Recipe(
            self.model_ref, self.dataset_ref, self.config, arch=arch, seed=self.config.seed
        )


def pruned() -> PrunedModel | None:
    """The committed pruned model for the current (model, dataset) selection, or None."""
    init_state()
    state = st.session_state.get(_KEY)
    if not isinstance(state, PrunedModel):
        return None
    if (state.model_ref, state.dataset_ref) != selection():
        return None
    return state


def set_pruned(
    loaded: LoadedModel,
    config: PruneConfig,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    result: Mapping[str, Any] | None = None,
    stage: str = "pruned",
    summary: Mapping[str, Any] | None = None,
    accuracy: float | None = None,
    finetune: Mapping[str, Any] | None = None,
    note: str = "",
    run: RecipeResult | None = None,
    model_ref: str | None = None,
    dataset_ref: str | None = None,
) -> PrunedModel:
    """Commit `loaded` as this session's pruned model for the current selection.

    Args:
        loaded: The pruned model; it must be this session's own object (never a cached one).
        config: The PruneConfig applied.
        masks: Keep-masks to enforce while fine-tuning (empty for physical structured pruning).
        result: The PruneResult summary.
        stage: `pruned` or `fine-tuned`.
        summary: Measured params / MACs / size of the model.
        accuracy: Measured validation accuracy.
        finetune: The fine-tune job's run id.
        run: The fine-tune job's result (its recipe, measures and curve).
        note: One line for the history ("pruned 50% magnitude unstructured").
        model_ref, dataset_ref: What it was made from (default: the current selection).
    """
    sel_model, sel_data = selection()
    model_ref, dataset_ref = model_ref or sel_model, dataset_ref or sel_data
    old = st.session_state.get(_KEY)
    history = list(old.history) if isinstance(old, PrunedModel) and stage == "fine-tuned" else []
    if note:
        history.append(note)
    meta = dict(loaded.meta)
    state = PrunedModel(
        loaded=LoadedModel(loaded.model, loaded.spec, loaded.arch, loaded.source, meta),
        model_ref=model_ref,
        dataset_ref=dataset_ref,
        config=config,
        masks={k: v.detach().to("cpu", torch.bool) for k, v in (masks or {}).items()},
        result=dict(result or {}),
        stage=stage,
        summary=dict(summary or {}),
        accuracy=accuracy,
        finetune=dict(finetune or {}),
        history=history,
        run=run,
    )
    meta["recipe"] = state.recipe().to_document()
    st.session_state[_KEY] = state
    remember()
    return state


def clear_pruned() -> None:
    """Forget the committed model (back to the dense one)."""
    st.session_state.pop(_KEY, None)
    remember()


def finetune_job_id() -> str | None:
    """Id of this session's latest fine-tune job (in `ui.jobs_panel.job_runner()`), or None."""
    init_state()
    job_id = st.session_state.get(_JOB_KEY)
    return job_id if isinstance(job_id, str) else None


def set_finetune_job(job_id: str | None) -> None:
    """Remember (or forget, with None) this session's fine-tune job."""
    st.session_state[_JOB_KEY] = job_id
    remember()
