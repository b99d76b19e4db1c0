"""`--warmup` and `--min-steps-per-epoch` on `pruning-lab prune` and `sweep`: they reach the
fine-tune, win over a recipe's values, leave the defaults alone when not given, and a bad value
stops parsing with one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pruning_core.recipe import Recipe
from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE

torch.set_num_threads(1)

BASE = ["prune", "--model", "digits-mlp", "--dataset", "digits", "--quiet", "--json",
        "--method", "magnitude", "--ratio", "0.5"]  # fmt: skip
DIGITS_TRAIN = 1438  # images in digits' training split


def _steps(out: Path) -> tuple[float, int]:
    ft = Recipe.read(out / "recipe.json").finetune
    return ft.warmup, ft.min_steps_per_epoch


def test_the_flags_reach_the_fine_tune_and_its_recipe(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pruning_core.cli.prune as prune_cmd

    runs: list[Any] = []
    real = prune_cmd.run_recipe

    def spy(recipe: Recipe, **kw: Any) -> Any:
        runs.append(real(recipe, **kw))
        return runs[-1]

    monkeypatch.setattr(prune_cmd, "run_recipe", spy)
    out = tmp_path / "run"
    code, _, err = cli(*BASE, "--granularity", "unstructured", "--finetune-epochs", "1",
                       "--warmup", "0.3", "--min-steps-per-epoch", "100", "--out", str(out))  # fmt: skip
    assert code == 0, err
    # Not the default's 0.1 / 250 (digits would train at batch 5): the minimum applied.
    assert runs[0].schedule.train[-1].batch_size == DIGITS_TRAIN // 100
    assert _steps(out) == (0.3, 100)
    # Given with a recipe, the options win over its values.
    again = tmp_path / "again"
    code, _, err = cli("prune", "--recipe", str(out / "recipe.json"), "--finetune-epochs", "0",
                       "--warmup", "0", "--min-steps-per-epoch", "7", "--quiet", "--json",
                       "--out", str(again))  # fmt: skip
    assert code == 0, err
    assert _steps(again) == (0.0, 7)


@pytest.mark.parametrize(
    ("granularity", "flags", "expected"),
    [
        ("unstructured", [], (DEFAULT_FINETUNE.warmup, DEFAULT_FINETUNE.min_steps_per_epoch)),
        ("channel", [], (STRUCTURED_FINETUNE.warmup, STRUCTURED_FINETUNE.min_steps_per_epoch)),
        ("channel", ["--warmup", "0.5", "--min-steps-per-epoch", "0"], (0.5, 0)),
    ],
)
def test_not_given_the_granularitys_default_applies(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, granularity: str, flags: list[str], expected: tuple[float, int]
) -> None:
    out = tmp_path / "run"
    code, _, err = cli(*BASE, "--granularity", granularity, *flags, "--out", str(out))
    assert code == 0, err
    assert _steps(out) == expected


BAD = [
    (["--warmup", "1"], r"warm-up share must be in [0, 1)"),
    (["--warmup", "-0.1"], "warm-up share must be in [0, 1)"),
    (["--warmup", "nan"], "warm-up share must be a finite number"),
    (["--warmup", "ten"], "warm-up share must be a number"),
    (["--min-steps-per-epoch", "-1"], "minimum steps per epoch must be in [0, 1000000]"),
    (["--min-steps-per-epoch", "2.5"], "minimum steps per epoch must be an integer"),
    (["--min-steps-per-epoch", "many"], "minimum steps per epoch must be an integer"),
]


@pytest.mark.parametrize(("args", "match"), BAD)
def test_prune_refuses_a_bad_value_in_one_line(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, args: list[str], match: str
) -> None:
    out = tmp_path / "bad"
    code, stdout, err = cli(*BASE, "--granularity", "unstructured", *args, "--out", str(out))
    assert code == 2
    assert stdout == "" and len(err.strip().splitlines()) == 1 and match in err
    assert "Traceback" not in err and not out.exists()


SWEEP = ["sweep", "--model", "digits-mlp", "--dataset", "digits", "--methods", "magnitude",
         "--ratios", "0.5", "--quiet", "--json"]  # fmt: skip


@pytest.mark.parametrize(("args", "match"), BAD[:1] + BAD[-2:-1])
def test_sweep_refuses_a_bad_value_in_one_line(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, args: list[str], match: str
) -> None:
    out = tmp_path / "sweep.csv"
    code, stdout, err = cli(*SWEEP, *args, "--out", str(out))
    assert code == 2
    assert stdout == "" and len(err.strip().splitlines()) == 1 and match in err
    assert not out.exists()


def test_sweep_fine_tunes_with_the_flags_else_the_default(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch
) -> None:
    import pruning_core.experiments as experiments

    seen: list[Any] = []
    real = experiments.sweep

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(kw["train_config"])
        return real(*a, **kw)

    monkeypatch.setattr(experiments, "sweep", spy)
    code, stdout, err = cli(*SWEEP, "--warmup", "0.25", "--min-steps-per-epoch", "40",
                            "--out", str(tmp_path / "a.csv"))  # fmt: skip
    assert code == 0, err
    assert len(json.loads(stdout)["rows"]) == 1
    code, _, err = cli(*SWEEP, "--out", str(tmp_path / "b.csv"))
    assert code == 0, err
    assert [(c.warmup, c.min_steps_per_epoch) for c in seen] == [
        (0.25, 40),
        (DEFAULT_FINETUNE.warmup, DEFAULT_FINETUNE.min_steps_per_epoch),
    ]
