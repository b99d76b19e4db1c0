"""Sensitivity over structured units: frozen models (the app's shared ones) and attention heads."""

from __future__ import annotations

import torch

from pruning_core.data import load_dataset
from pruning_core.experiments import layer_sizes, sensitivity
from pruning_core.layers import trainable_copy
from pruning_core.models import load_model

torch.set_num_threads(1)


def test_channel_sensitivity_of_a_frozen_model_equals_the_trainable_one() -> None:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    frozen = trainable_copy(loaded.model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    got = sensitivity(
        frozen, data, loaded.spec, ratios=[0.5], granularity="channel", method="taylor", limit=60
    )
    assert all(not p.requires_grad for p in frozen.parameters())  # left frozen
    want = sensitivity(
        trainable_copy(loaded.model),
        data,
        loaded.spec,
        ratios=[0.5],
        granularity="channel",
        method="taylor",
        limit=60,
    )
    assert list(got["layer"]) == ["conv1", "conv2", "fc1"]  # the classifier stays
    assert got[["layer", "accuracy", "layer_sparsity"]].equals(
        want[["layer", "accuracy", "layer_sparsity"]]
    )
    assert (got["layer_sparsity"] == 0.5).all()


def test_head_sensitivity_counts_each_attention_layer() -> None:
    loaded, data = load_model("shapes-vit"), load_dataset("shapes")
    df = sensitivity(loaded, data, ratios=[0.5], granularity="head", limit=40)
    mods = dict(loaded.model.named_modules())
    names = list(df["layer"])
    assert names and all(n.endswith("attn") for n in names)
    for n, params in zip(names, df["params"], strict=True):
        qkv, proj = mods[f"{n}.qkv"].weight, mods[f"{n}.proj"].weight
        assert params == qkv.numel() + proj.numel()
    assert layer_sizes(loaded.model, names) == dict(zip(names, df["params"], strict=True))
    heads = mods[names[0]].num_heads
    assert (df["layer_sparsity"] == (heads // 2) / heads).all()
    assert (df["accuracy"] < df.attrs["base_accuracy"] + 1e-9).any()
