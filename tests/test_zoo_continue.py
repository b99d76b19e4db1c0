"""Training a pruned model folder further keeps what pruning made: its zeros and its shapes.

The kind: any training that starts from a folder written by `prune` (CLI `train --model DIR`,
a recipe or sweep that prunes such a folder again and fine-tunes) must hold the zeros the folder
came with, or the optimizer regrows them silently (0.90 became 0.28 in one epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruning_core.models import load_model
from pruning_core.prune import zero_masks


def _zeros(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: ~k for n, k in zero_masks(model).items()}


@pytest.fixture
def pruned_dirs(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Folders of digits-mlp pruned unstructured 0.85 and 2:4, and digits-cnn channel 0.5."""
    dirs = {}
    for key, model, extra in (
        ("unstructured", "digits-mlp", ["--granularity", "unstructured", "--ratio", "0.85"]),
        ("nm", "digits-mlp", ["--granularity", "2:4"]),
        ("channel", "digits-cnn", ["--granularity", "channel", "--ratio", "0.5"]),
    ):
        out = tmp_path / key
        code, _, err = cli(
            "prune", "--model", model, "--dataset", "digits", "--method", "magnitude",
            *extra, "--quiet", "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        dirs[key] = out
    return dirs


@pytest.mark.parametrize("key", ["unstructured", "nm"])
def test_train_keeps_every_zero(cli, tmp_path: Path, pruned_dirs, key: str) -> None:  # type: ignore[no-untyped-def]
    before = load_model(str(pruned_dirs[key])).model
    was = _zeros(before)
    assert was, "the pruned folder has zeros to keep"
    out = tmp_path / "more"
    code, _, err = cli(
        "train", "--model", str(pruned_dirs[key]), "--dataset", "digits", "--epochs", "1",
        "--lr", "0.01", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    after = load_model(str(out)).model
    mods = dict(after.named_modules())
    for name, zero in was.items():
        w = mods[name].weight.detach()
        assert bool((w[zero] == 0).all()), f"{name}: a pruned weight regrew"
    # Training did happen: surviving weights moved.
    dense_before = dict(before.named_modules())
    moved = any(not torch.equal(mods[n].weight, dense_before[n].weight) for n in was)
    assert moved
    meta = json.loads((out / "model.json").read_text())
    assert (
        meta["pruned"]["granularity"]
        == json.loads((pruned_dirs[key] / "model.json").read_text())["pruned"]["granularity"]
    )
    assert meta["metrics"]["sparsity_kept"] >= 0.45


def test_train_keeps_shrunk_shapes(cli, tmp_path: Path, pruned_dirs) -> None:  # type: ignore[no-untyped-def]
    before = load_model(str(pruned_dirs["channel"])).model
    out = tmp_path / "more"
    code, _, err = cli(
        "train", "--model", str(pruned_dirs["channel"]), "--dataset", "digits", "--epochs", "1",
        "--quiet", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    after = load_model(str(out)).model
    shapes = {k: tuple(v.shape) for k, v in before.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in after.state_dict().items()}
    x = torch.randn(3, 1, 8, 8)
    assert after(x).shape == (3, 10)


def test_recipe_on_pruned_folder_keeps_its_zeros(pruned_dirs) -> None:  # type: ignore[no-untyped-def]
    """Pruning a 0.85-sparse folder again at 0.3 and fine-tuning keeps all 0.85 zeros."""
    from pruning_core import Recipe, run_recipe

    src = str(pruned_dirs["unstructured"])
    was = _zeros(load_model(src).model)
    recipe = Recipe.from_settings(
        {"model": src, "dataset": "digits", "method": "magnitude", "granularity": "unstructured",
         "ratio": 0.3,
         "finetune_epochs": 1, "lr": 0.01, "keep_best": False}  # trained weights, not epoch 0
    )  # fmt: skip
    result = run_recipe(recipe)
    mods = dict(result.model.named_modules())
    for name, zero in was.items():
        assert bool((mods[name].weight.detach()[zero] == 0).all()), name
