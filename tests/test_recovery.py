"""Recovery from 95% unstructured magnitude pruning in three fine-tune epochs (issue 11, point 6;
benchmark section `recovery`): what the default fine-tune rests on, on the shipped digits models.

The benchmark compares the default (`train.DEFAULT_FINETUNE`: Adam at 5e-3 with warm-up and
cosine decay, batch 32 but at least 250 steps per epoch, best epoch kept) with the literature's
alternatives; these tests keep the claims it measured that a tiny setting can check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from sparsity_helpers import pruned_share

from pruning_core.data import load_dataset
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel, load_model
from pruning_core.prune import measured_sparsity
from pruning_core.recipe import Recipe
from pruning_core.workflow import run_recipe


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _recover(name: str, finetune: dict[str, Any] | None = None, **settings: Any) -> Any:
    """95% magnitude + 3 fine-tune epochs, the command line's defaults with `settings` on top
    (and `finetune`'s fields on its fine-tune), on a private copy of the shipped model; the
    recipe's result."""
    lm = load_model(name)
    student = LoadedModel(trainable_copy(lm.model), lm.spec, lm.arch, lm.source, dict(lm.meta))
    recipe = Recipe.from_settings(
        {"model": name, "dataset": "digits", "method": "magnitude",
         "granularity": "unstructured", "ratio": 0.95, "finetune_epochs": 3, "device": "cpu",
         "seed": 0, **settings}
    )  # fmt: skip
    if finetune:
        recipe = dataclasses.replace(
            recipe, finetune=dataclasses.replace(recipe.finetune, **finetune)
        )
    return run_recipe(recipe, model=student, data=load_dataset("digits"))


def test_the_default_brings_digits_mlp_back_within_half_a_point_of_dense() -> None:
    # 95% of a 64-128-64-10 MLP leaves 819 of its 16384 hidden weights: pruning costs it a
    # third of its accuracy; the default's 864 steps (batch 5 on 1438 images) bring it back.
    res = _recover("digits-mlp")
    s = res.schedule
    assert s.pruned_accuracy < 0.8  # 95% really hurts this model
    assert s.train[-1].batch_size == 5 and s.train[-1].steps == 3 * 288
    assert s.finetuned_accuracy >= res.dense.accuracy - 0.005


def test_the_previous_default_stayed_points_below_where_the_default_recovers() -> None:
    # Adam 2e-3 at batch 32 whatever the dataset: 135 steps on digits, 2.8 points below dense.
    default = _recover("digits-mlp").schedule
    prev = _recover("digits-mlp", finetune={"lr": 2e-3, "warmup": 0.0, "min_steps_per_epoch": 0})
    assert prev.schedule.train[-1].batch_size == 32
    assert prev.schedule.finetuned_accuracy < prev.dense.accuracy - 0.02
    assert default.finetuned_accuracy > prev.schedule.finetuned_accuracy + 0.02


def test_the_default_brings_digits_cnn_back_within_a_point_of_dense() -> None:
    # It ends 2 validation images (0.56 points) below dense: the half a point is missed
    # by one image here (the previous default ended level; on the proxies the two differed by
    # one image either way).
    res = _recover("digits-cnn")
    s = res.schedule
    want = 0.95 * pruned_share(res.model)  # of all Linear/Conv weights: fc2 stays dense
    assert s.prune.sparsity == pytest.approx(want, abs=1e-3)
    assert measured_sparsity(res.model, list(s.prune.masks))[0] == pytest.approx(want, abs=1e-3)
    assert res.dense.accuracy - s.pruned_accuracy > 0.02  # pruning cost something
    assert s.finetuned_accuracy >= res.dense.accuracy - 0.01


def test_the_benchmarks_in_training_schedule_ends_at_the_target_sparsity() -> None:
    from benchmarks.recovery_section import _in_training

    lm = load_model("digits-mlp")
    data = load_dataset("digits")
    net = trainable_copy(lm.model)
    recipe = Recipe.from_settings(
        {"model": "digits-mlp", "dataset": "digits", "method": "magnitude",
         "granularity": "unstructured", "ratio": 0.95, "finetune_epochs": 2, "device": "cpu"}
    )  # fmt: skip
    first, pruned, tr = _in_training(net, recipe, data, lm.spec)
    # The ramp starts gently (the first of 10 cubic steps) and ends at the target, held.
    assert first.sparsity < 0.5 and pruned.accuracy > 0.9
    want = 0.95 * pruned_share(net)
    assert measured_sparsity(net, list(first.masks))[0] == pytest.approx(want, abs=1e-3)
    # Earlier epochs are less sparse: the last epoch is handed back, never an earlier one.
    assert len(tr.history) == 2 and tr.best_epoch is None
