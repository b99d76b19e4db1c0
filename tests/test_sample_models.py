"""Each shipped sample model reaches the accuracy written on its model card."""

from __future__ import annotations

import json

import pytest

from pruning_core.data import load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.models import load_model, sample_models_dir

SAMPLES = ["digits-mlp", "digits-cnn", "shapes-resnet", "shapes-vit"]


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_reaches_card_accuracy(name: str) -> None:
    d = sample_models_dir() / name
    card = json.loads((d / "model.json").read_text())["card"]
    assert (d / "MODEL_CARD.md").read_text().count(str(card["accuracy"])) >= 1
    assert (d / "model.safetensors").stat().st_size < 5 * 2**20  # "a few MB at most"
    loaded = load_model(name)
    acc = evaluate(loaded.model, load_dataset(card["dataset"]), loaded.spec).accuracy
    # Same weights and data: only float summation order may differ between machines.
    assert acc >= card["accuracy"] - 0.003, (acc, card["accuracy"])
    assert card["params"] == sum(p.numel() for p in loaded.model.parameters())
    for key in ("dataset", "split", "command"):
        assert card[key]
    assert isinstance(card["seed"], int)
