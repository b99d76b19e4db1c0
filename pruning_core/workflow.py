"""One workflow for every entry point: prune -> fine-tune -> measure -> save, from a `Recipe`.

`run_recipe(recipe)` loads what the recipe names (or takes the model and data it is given),
measures the dense model, runs the pruning schedule (regulariser, pruning steps, fine-tuning
with masks held, distillation from the dense model) and measures the result. Its
`RecipeResult.metrics()` is the single `metrics.json` layout, used by the command line, the app's
fine-tune job and the Export page alike; `RecipeResult.save(out)` writes the model folder
(reloadable without unpickling), `metrics.json` and `recipe.json` in one atomic step.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.checkpoint import CHECKPOINT_SUFFIXES, save_model_dir
from pruning_core.data import DataBundle, load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.fsio import output_dir, write_json
from pruning_core.layers import in_model_order, rebased_sparsity
from pruning_core.models import LoadedModel, get_entry, load_model, sparsity_base
from pruning_core.recipe import Recipe
from pruning_core.schedules import ScheduleResult, run_schedule
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, count_params, model_stats, size_bytes
from pruning_core.train import Progress

__all__ = ["Measures", "RecipeResult", "measure", "run_recipe"]


@dataclass(frozen=True)
class Measures:
    """What a model costs and scores.

    Attributes:
        accuracy: Top-1 on the validation split (a fraction), or None when not measured.
        params: Non-zero parameters.
        macs: Multiply-accumulates per image (dense kernels).
        size_bytes: Size of the weights stored densely.
        macs_effective: The MACs on non-zero weights (`stats.model_stats`: what a sparse
            kernel does; below `macs` only when weights are zero), or None when not counted.
    """

    accuracy: float | None
    params: int
    macs: int
    size_bytes: int
    macs_effective: int | None = None


def measure(model: nn.Module, data: DataBundle | None, spec: InputSpec) -> Measures:
    """Non-zero parameters, MACs, size and (with `data`) validation accuracy of `model`.

    Args:
        model: The model (not modified).
        data: The dataset, for the validation accuracy; None: accuracy not measured.
        spec: The model's input spec.
    """
    acc = evaluate(model, data, spec).accuracy if data is not None else None
    return Measures(
        accuracy=acc,
        params=count_params(model, nonzero=True),
        macs=count_macs(model, spec),
        size_bytes=size_bytes(model),
        macs_effective=round(model_stats(model, spec)["macs_effective"]),
    )


@dataclass
class RecipeResult:
    """What `run_recipe` did, and the one way to report and save it.

    Attributes:
        recipe: The recipe that was run.
        loaded: The model as loaded (its `model` is the pruned, fine-tuned module now).
        dense: Measures of the model before pruning.
        after: Measures of the result.
        schedule: The schedule's result (masks, per-step curve, accuracies).
        seconds: Wall time of the whole run.
        extra: More metrics a caller adds (the app: stage, history).
    """

    recipe: Recipe
    loaded: LoadedModel
    dense: Measures
    after: Measures
    schedule: ScheduleResult
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        """The pruned (and fine-tuned) model."""
        return self.loaded.model

    @property
    def fine_tuned(self) -> bool:
        """True when fine-tuning ran (the recipe asked for epochs)."""
        return self.recipe.finetune.epochs > 0

    @property
    def final_accuracy(self) -> float | None:
        """Accuracy of the result: after fine-tuning if any, else right after pruning."""
        s = self.schedule
        return s.finetuned_accuracy if self.fine_tuned else s.pruned_accuracy

    def metrics(self) -> dict[str, Any]:
        """The `metrics.json` layout (accuracies are fractions in [0, 1]).

        Keys: model, arch, dataset, method and criterion (the same name), granularity, scope,
        target_ratio, sparsity, layer_sparsity, params/macs/size_bytes before and after,
        macs_effective_after (the MACs on non-zero weights),
        dense/pruned/regularized/finetuned/final accuracy (and `accuracy`, the final one),
        finetune_kept_epoch (the epoch the last fine-tune handed back with
        `TrainConfig.keep_best`, 0 = its starting weights; None without), schedule, curve,
        notes, cancelled, seconds, recipe; plus `extra`.
        """
        r, p, s = self.recipe, self.recipe.prune, self.schedule
        out: dict[str, Any] = {
            "model": r.model,
            "arch": self.loaded.arch,
            "dataset": r.dataset,
            "method": p.method,
            "criterion": p.method,
            "granularity": p.granularity,
            "scope": p.scope,
            "target_ratio": p.effective_ratio,
            "sparsity": s.prune.sparsity,
            "layer_sparsity": in_model_order(self.loaded.model, s.prune.layer_sparsity),
            "params_before": self.dense.params,
            "params_after": self.after.params,
            "macs_before": self.dense.macs,
            "macs_after": self.after.macs,
            "macs_effective_after": self.after.macs_effective,
            "dense_accuracy": self.dense.accuracy,
            "pruned_accuracy": s.pruned_accuracy,
            "regularized_accuracy": s.regularized_accuracy,
            "finetuned_accuracy": s.finetuned_accuracy if self.fine_tuned else None,
            "finetune_kept_epoch": s.train[-1].best_epoch if self.fine_tuned and s.train else None,
            "final_accuracy": self.final_accuracy,
            "accuracy": self.final_accuracy,
            "size_bytes_before": self.dense.size_bytes,
            "size_bytes_after": self.after.size_bytes,
            "schedule": r.schedule.kind,
            "curve": s.curve,
            "notes": s.prune.notes,
            "cancelled": s.cancelled,
            "seconds": self.seconds,
            "recipe": r.to_document(),
        }
        out.update(self.extra)
        return out

    def model_meta(self) -> dict[str, Any]:
        """What `model.json` records beside the architecture (see `checkpoint.save_model_dir`)."""
        from pruning_core.pairing import home_dataset, trained_on

        p = self.recipe.prune
        # The weights' own dataset, found now while the source is at hand: a copied folder,
        # or one whose source is gone, still tells a mismatched dataset (`pairing`).
        source = self.recipe.model
        trained = trained_on(source) or home_dataset(source)
        return {
            "arch": self.loaded.arch,
            "arch_kwargs": self.arch_kwargs(),
            "spec": self.loaded.spec.to_dict(),
            "dataset": self.recipe.dataset,
            **({"trained_on": trained} if trained else {}),
            "pruned": {
                "method": p.method,
                "granularity": p.granularity,
                "sparsity": self.schedule.prune.sparsity,
            },
            "recipe": self.recipe.to_document(),
        }

    def arch_kwargs(self) -> dict[str, Any]:
        """The arguments that rebuild the dense architecture."""
        return dict(self.loaded.meta.get("arch_kwargs") or self.loaded.arch_kwargs)

    def save(self, out: Path) -> dict[str, Any]:
        """Write the model folder, `metrics.json` and `recipe.json` to `out` in one atomic step
        (an earlier Pruning Lab output there is replaced; anything else is refused).

        Returns:
            The metrics written.

        Raises:
            UserError: `out` is someone's own folder or cannot be written, or the model has no
                known architecture (a trusted pickled module).
        """
        arch = self.loaded.arch
        if arch is None:
            raise UserError(
                "a pickled module has no known architecture, so its pruned result cannot be saved"
            )
        reference = get_entry(arch).builder(**self.arch_kwargs())
        metrics = self.metrics()
        with output_dir(Path(out)) as tmp:
            save_model_dir(tmp, self.model, self.model_meta(), reference=reference)
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "recipe.json", self.recipe.to_document())
        return metrics


def run_recipe(
    recipe: Recipe,
    *,
    model: LoadedModel | None = None,
    data: DataBundle | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    trust: bool = False,
) -> RecipeResult:
    """Run a recipe: measure the dense model, prune along the schedule, fine-tune, measure.

    Args:
        recipe: What to do.
        model: The dense model, already loaded (its module is pruned in place: pass a copy you
            own). None: load `recipe.model` (with `recipe.arch` for a checkpoint file).
        data: The dataset, already loaded. None: load `recipe.dataset`.
        progress: Called with fine-tuning progress (`train.Progress`), steps counted over the
            whole schedule.
        cancel: Stops fine-tuning within one batch; the result says cancelled.
        trust: Allow a trusted pickled module when loading `recipe.model`.

    Returns:
        The RecipeResult (model, measures, schedule result; `metrics()`, `save(out)`).

    Raises:
        UserError: Anything the recipe names that cannot be loaded, data that does not fit the
            model, or settings the model cannot honour (e.g. head pruning without attention).
    """
    start = time.perf_counter()
    if data is None:
        data = load_dataset(recipe.dataset)
    if model is None:
        is_file = recipe.model.endswith(CHECKPOINT_SUFFIXES)
        model = load_model(
            recipe.model,
            arch=recipe.arch,
            trust=trust,
            num_classes=data.num_classes if (is_file and recipe.arch) else None,
        )
    data.check_spec(model.spec)
    net, spec = model.model, model.spec
    regularizer = recipe.make_regularizer()
    if regularizer is not None:
        regularizer(net)  # fails now (e.g. slim without BatchNorm), not after an epoch
    torch.manual_seed(recipe.seed)
    dense = measure(net, data, spec)
    # A shrunk folder pruned again: the plans count against the weights it still has.
    counted, dense_count = sparsity_base(model)
    teacher = copy.deepcopy(net).eval() if recipe.finetune.distill_weight > 0 else None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    result = run_schedule(
        net, recipe.prune, recipe.schedule, train_config=recipe.finetune, data=data, spec=spec,
        progress=progress, cancel=cancel, teacher=teacher, regularizer=regularizer,
        keep_zeros="pruned" in model.meta,
    )  # fmt: skip
    if result.curve and counted != dense_count:
        # The model's sparsity is against its dense architecture, as `evaluate` counts it.
        result.prune.sparsity = rebased_sparsity(result.prune.sparsity, counted, dense_count)
        for row in result.curve:
            if isinstance(row.get("sparsity"), float):
                row["sparsity"] = rebased_sparsity(row["sparsity"], counted, dense_count)
    after = measure(net, None, spec)
    return RecipeResult(
        recipe=recipe,
        loaded=model,
        dense=dense,
        after=after,
        schedule=result,
        seconds=time.perf_counter() - start,
    )
