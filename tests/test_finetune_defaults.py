"""One default fine-tune (`train.DEFAULT_FINETUNE`) for the app, the command line and the
Trade-offs sweeps; recipes written before best-epoch keeping still repeat their run."""

from __future__ import annotations

import dataclasses
import json
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from pruning_core.recipe import Recipe
from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE, TrainConfig

FT = DEFAULT_FINETUNE
# What the page and the command line set themselves; every other field is the default's.
_RUN_FIELDS = ("epochs", "device", "seed")


def _same_but(cfg: TrainConfig, *fields: str, base: TrainConfig = DEFAULT_FINETUNE) -> None:
    """`cfg` is the default fine-tune (`base`) except (maybe) in `fields`."""
    for f in dataclasses.fields(TrainConfig):
        if f.name not in fields:
            assert getattr(cfg, f.name) == getattr(base, f.name), f.name


def test_the_default_keeps_the_best_epoch() -> None:
    assert FT.keep_best and FT.epochs >= 1


def test_the_apps_settings_start_from_the_default() -> None:
    from ui.state import DEFAULTS

    assert DEFAULTS["ft_epochs"] == FT.epochs == DEFAULTS["tradeoff_ft_epochs"]
    assert DEFAULTS["ft_lr"] == FT.lr and DEFAULTS["ft_optimizer"] == FT.optimizer
    assert DEFAULTS["ft_distill"] == (FT.distill_weight > 0)
    assert DEFAULTS["ft_temperature"] == FT.distill_temperature
    assert DEFAULTS["ft_keep_best"] == FT.keep_best


@pytest.mark.parametrize("granularity", ["unstructured", "channel", "2:4"])
def test_the_command_lines_prune_fine_tunes_with_the_default(granularity: str) -> None:
    recipe = Recipe.from_settings(
        {"model": "digits-cnn", "dataset": "digits", "method": "magnitude",
         "granularity": granularity, "ratio": 0.5, "finetune_epochs": 3, "seed": 4}
    )  # fmt: skip
    # A structured granularity's default: SGD with distillation, the best epoch kept as ever.
    base = STRUCTURED_FINETUNE if granularity == "channel" else DEFAULT_FINETUNE
    _same_but(recipe.finetune, *_RUN_FIELDS, base=base)
    assert recipe.finetune.keep_best
    assert (recipe.finetune.epochs, recipe.finetune.seed) == (3, 4)
    # Options given win, field by field.
    given = Recipe.from_settings(
        {**recipe.settings(), "lr": 0.05, "optimizer": "sgd", "keep_best": False}
    )
    assert (given.finetune.lr, given.finetune.optimizer, given.finetune.keep_best) == (
        0.05, "sgd", False,
    )  # fmt: skip


def test_the_command_lines_options_default_to_the_default(cli) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from pruning_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sweep = sub.choices["sweep"].parse_args(
        ["--model", "digits-cnn", "--dataset", "digits", "--out", "x.csv"]
    )
    assert (sweep.lr, sweep.batch_size) == (FT.lr, FT.batch_size)
    prune = sub.choices["prune"].parse_args(["--out", "x"])
    assert prune.keep_best is None  # absent: the default's, through the recipe


def test_the_sweeps_fine_tune_with_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pruning-lab sweep` and the Trade-offs page's sweep job hand the default to `sweep`."""
    import pandas as pd

    from pruning_core import experiments
    from pruning_core.cli import main
    from pruning_core.data import load_dataset
    from pruning_core.models import load_model
    from ui import tradeoff_jobs

    seen: list[TrainConfig] = []

    def fake_sweep(*a: Any, train_config: TrainConfig, **k: Any) -> pd.DataFrame:
        seen.append(train_config)
        return pd.DataFrame({"method": [], "ratio": []})

    monkeypatch.setattr(experiments, "sweep", fake_sweep)
    monkeypatch.setattr(tradeoff_jobs, "sweep", fake_sweep)
    lm = load_model("digits-mlp")
    job = tradeoff_jobs.sweep_job(
        lm.model, lm.spec, load_dataset("digits"), ["magnitude"], [0.5], "unstructured", 2, "cpu"
    )
    job.fn(types.SimpleNamespace(follow=None, cancel=threading.Event(), store=None, run_id=None))  # type: ignore[arg-type]
    out = Path(__file__).parent / "_sweep_unused.csv"
    try:
        code = main(["sweep", "--model", "digits-mlp", "--dataset", "digits", "--ratios", "0.5",
                     "--finetune-epochs", "1", "--out", str(out), "--quiet"])  # fmt: skip
    finally:
        out.unlink(missing_ok=True)
    assert code == 0
    app, cli = seen
    _same_but(app, *_RUN_FIELDS)
    _same_but(cli, *_RUN_FIELDS)
    assert (app.epochs, app.device, cli.epochs) == (2, "cpu", 1)


def test_a_recipe_written_before_keep_best_repeats_its_last_epoch_run(tmp_path: Path) -> None:
    new = Recipe.from_settings(
        {"model": "digits-mlp", "dataset": "digits", "method": "magnitude",
         "granularity": "unstructured", "ratio": 0.5, "finetune_epochs": 1}
    )  # fmt: skip
    doc = new.to_document()
    assert doc["settings"]["keep_best"] is True
    assert Recipe.from_document(json.loads(new.text())) == new
    del doc["settings"]["keep_best"]  # as every recipe written before it existed
    (tmp_path / "recipe.json").write_text(json.dumps(doc))
    old = Recipe.read(tmp_path / "recipe.json")
    assert old.finetune.keep_best is False
    assert old == dataclasses.replace(
        new, finetune=dataclasses.replace(new.finetune, keep_best=False)
    )
    # A command-line option still wins over the old recipe's reading.
    again = Recipe.read(tmp_path / "recipe.json", {"keep_best": True})
    assert again.finetune.keep_best is True
