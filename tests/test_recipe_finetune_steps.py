"""Recipes say the fine-tune's warm-up share and minimum of steps per epoch (`warmup`,
`min_steps_per_epoch`): a saved run's recipe repeats it, bad values are refused in one line,
and a recipe written before these settings repeats the run it recorded, not today's default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pruning_core.errors import UserError
from pruning_core.recipe import RECIPE_KEYS, Recipe
from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE, epoch_batch_size
from pruning_core.workflow import run_recipe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1"
BASE: dict[str, Any] = {
    "model": "digits-mlp", "dataset": "digits", "method": "magnitude",
    "granularity": "unstructured", "ratio": 0.5, "finetune_epochs": 1,
}  # fmt: skip
DIGITS_TRAIN = 1438  # images in digits' training split


def _doc(**settings: Any) -> dict[str, Any]:
    return Recipe.from_settings({**BASE, **settings}).to_document()


def test_the_settings_are_recipe_keys_with_the_defaults_values() -> None:
    assert {"warmup", "min_steps_per_epoch"} <= set(RECIPE_KEYS)
    s = _doc()["settings"]
    assert (s["warmup"], s["min_steps_per_epoch"]) == (
        DEFAULT_FINETUNE.warmup,
        DEFAULT_FINETUNE.min_steps_per_epoch,
    )
    ft = Recipe.from_settings({**BASE, "warmup": 0.25, "min_steps_per_epoch": 7}).finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (0.25, 7)


def test_a_saved_runs_recipe_reloads_to_the_same_fine_tune_and_repeats_it(tmp_path: Path) -> None:
    # Not the default's values, so a reader that ignored them would not pass by luck.
    recipe = Recipe.from_settings({**BASE, "warmup": 0.3, "min_steps_per_epoch": 100, "seed": 3})
    first = run_recipe(recipe)
    assert first.schedule.train[-1].batch_size == DIGITS_TRAIN // 100  # the minimum applied
    first.save(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert (saved["settings"]["warmup"], saved["settings"]["min_steps_per_epoch"]) == (0.3, 100)
    again = Recipe.read(tmp_path / "run" / "recipe.json")
    assert again.finetune == recipe.finetune
    assert again == recipe
    # metrics.json carries the same recipe and reads back the same.
    assert Recipe.read(tmp_path / "run" / "metrics.json") == recipe
    second = run_recipe(again)
    assert second.schedule.train[-1].batch_size == first.schedule.train[-1].batch_size
    assert second.schedule.finetuned_accuracy == first.schedule.finetuned_accuracy


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("warmup", 1, r"'warmup' must be in \[0, 1\), got 1"),
        ("warmup", -0.1, r"'warmup' must be in \[0, 1\)"),
        ("warmup", "0.1", "'warmup' must be a number"),
        ("warmup", True, "'warmup' must be a number"),
        ("warmup", float("nan"), "'warmup' must be a finite number"),
        ("min_steps_per_epoch", 2.5, "'min_steps_per_epoch' must be an integer"),
        ("min_steps_per_epoch", -1, r"'min_steps_per_epoch' must be in \[0, 1000000\]"),
        ("min_steps_per_epoch", 10**7, r"'min_steps_per_epoch' must be in \[0, 1000000\]"),
        ("min_steps_per_epoch", [250], "'min_steps_per_epoch' must be an integer, got a list"),
    ],
)
def test_bad_values_are_refused_in_one_line(
    key: str, value: Any, message: str, tmp_path: Path
) -> None:
    doc = _doc()
    doc["settings"][key] = value
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message) as e:
        Recipe.read(path)
    assert "\n" not in str(e.value) and str(e.value).startswith("recipe recipe.json: setting")


def _written_before(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` as a recipe written before these settings: the keys left out of `settings`."""
    old = json.loads(json.dumps(doc))
    del old["settings"]["warmup"], old["settings"]["min_steps_per_epoch"]
    return old


def test_a_recipe_written_since_the_new_default_repeats_it_from_its_train_section() -> None:
    # Written between the default's change and these settings: its `train` section records
    # the warm-up and minimum the run used.
    new = Recipe.from_settings(BASE)
    old = Recipe.from_document(_written_before(new.to_document()))
    assert old == new
    assert old.finetune.warmup == DEFAULT_FINETUNE.warmup > 0
    assert old.finetune.min_steps_per_epoch == DEFAULT_FINETUNE.min_steps_per_epoch > 0


def test_a_recipe_recording_no_minimum_trains_at_its_batch_size_with_no_warm_up() -> None:
    doc = _written_before(_doc())
    del doc["train"]["min_steps_per_epoch"]  # before the minimum existed
    doc["train"]["warmup"] = 0.0  # what every default then had
    ft = Recipe.from_document(doc).finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (0.0, 0)
    assert (
        epoch_batch_size(ft, DIGITS_TRAIN) == 32 != epoch_batch_size(DEFAULT_FINETUNE, DIGITS_TRAIN)
    )
    # Without any train record (a hand-written recipe of then): the values of the time too.
    del doc["train"]
    ft = Recipe.from_document(doc).finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (0.0, 0)


def test_an_older_recipe_fixture_reads_with_no_warm_up_and_no_minimum() -> None:
    doc = json.loads((FIXTURES / "app-recipe.json").read_text())
    assert "warmup" not in doc["train"] and "warmup" not in doc["settings"]
    ft = Recipe.read(FIXTURES / "app-recipe.json").finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (0.0, 0)
    assert ft.lr == doc["settings"]["lr"]  # the rest as before


def test_a_structured_recipe_keeps_its_recorded_zeroes() -> None:
    new = Recipe.from_settings({**BASE, "granularity": "channel"})
    assert new.finetune == dataclasses.replace(STRUCTURED_FINETUNE, epochs=1, seed=0)
    assert Recipe.from_document(_written_before(new.to_document())) == new


def test_a_null_setting_and_an_option_given_still_mean_what_they_say(tmp_path: Path) -> None:
    doc = _doc()
    doc["settings"]["warmup"] = None  # null: the default, as for every setting
    doc["settings"]["min_steps_per_epoch"] = None
    ft = Recipe.from_document(doc).finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (
        DEFAULT_FINETUNE.warmup,
        DEFAULT_FINETUNE.min_steps_per_epoch,
    )
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(_written_before(_doc())))
    ft = Recipe.read(path, {"warmup": 0.0, "min_steps_per_epoch": 10}).finetune
    assert (ft.warmup, ft.min_steps_per_epoch) == (0.0, 10)
