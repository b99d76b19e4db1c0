"""Recipes and model folders written by the version before the registries redesign still load
and repeat (fixtures in tests/fixtures/v1, written by that version's `pruning-lab prune` and the
app's Export page)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pruning_core.data import load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.models import load_model
from pruning_core.recipe import Recipe
from pruning_core.workflow import run_recipe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1"
FOLDERS = ["prune-channel-digits-cnn", "prune-wanda-agp-digits-mlp"]


@pytest.mark.parametrize("name", FOLDERS)
def test_old_model_folders_reload_with_their_recorded_accuracy(name: str) -> None:
    folder = FIXTURES / name
    metrics = json.loads((folder / "metrics.json").read_text())
    loaded = load_model(str(folder))
    acc = evaluate(loaded.model, load_dataset("digits"), loaded.spec).accuracy
    assert acc == pytest.approx(metrics["final_accuracy"], abs=1e-9)


def test_old_channel_folder_keeps_its_shrunk_shapes() -> None:
    loaded = load_model(str(FIXTURES / "prune-channel-digits-cnn"))
    surgery = json.loads((FIXTURES / "prune-channel-digits-cnn" / "model.json").read_text())[
        "surgery"
    ]
    assert "free" not in surgery  # the old format
    assert loaded.model.conv2.out_channels == surgery["attrs"]["conv2"]["out_channels"] < 64


@pytest.mark.parametrize("name", FOLDERS)
def test_old_recipes_repeat_the_pruning_step(name: str, tmp_path: Path) -> None:
    old = json.loads((FIXTURES / name / "metrics.json").read_text())
    shutil.copy(FIXTURES / name / "recipe.json", tmp_path / "recipe.json")
    recipe = Recipe.read(tmp_path / "recipe.json")
    assert recipe.prune.method == old["method"] and recipe.prune.granularity == old["granularity"]
    assert recipe.schedule.kind == old["schedule"]
    if recipe.schedule.kind == "oneshot":
        # Pruning alone is deterministic: the same pruned accuracy as the old run measured.
        from dataclasses import replace

        result = run_recipe(replace(recipe, finetune=replace(recipe.finetune, epochs=0)))
        assert result.schedule.pruned_accuracy == pytest.approx(old["pruned_accuracy"], abs=1e-9)


def test_the_old_apps_recipe_reads_as_the_same_settings() -> None:
    doc = json.loads((FIXTURES / "app-recipe.json").read_text())
    recipe = Recipe.read(FIXTURES / "app-recipe.json")
    s = doc["settings"]
    assert recipe.prune.method == s["method"] and recipe.prune.ratio == s["ratio"]
    assert dict(recipe.prune.layer_ratios) == s["layer_ratios"]
    assert (recipe.schedule.kind, recipe.schedule.steps) == (s["schedule"], s["steps"])
    assert recipe.finetune.epochs == s["finetune_epochs"] and recipe.finetune.lr == s["lr"]
    assert recipe.regularizer == s["regularize"] and recipe.reg_strength == s["reg_strength"]
    assert recipe.finetune.distill_weight > 0
    # And a document written now reads back to the same recipe.
    assert Recipe.from_document(json.loads(recipe.text())) == recipe
