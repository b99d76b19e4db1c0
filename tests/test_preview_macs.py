"""The preview's MACs are the applied model's: for structured granularities the shrunk model's
`count_macs` (attention products of removed heads and blocks included), for unstructured and
N:M the effective MACs of `stats.model_stats` (each layer's dense MACs times its density)."""

from __future__ import annotations

import functools

import pytest
import torch
from sample_pairs import REFUSED, SAMPLES
from torch import nn

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.models import load_model as _load_model
from pruning_core.prune import PruneConfig, prune_
from pruning_core.slider import SliderPreview
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, model_stats, own_macs

torch.set_num_threads(1)

GRANULARITIES = ["unstructured", "2:4", "channel", "head", "block", "lowrank", "lowrank-energy"]
# Two positions per pair: 0.7 removes 2 of shapes-vit's 4 blocks and 11 of its 16 heads.
RATIOS = (0.3, 0.7)


@functools.cache
def load_model(model_ref: str) -> LoadedModel:
    """Loaded once per test session (previews and Apply work on their own copies)."""
    return _load_model(model_ref)


def applied_macs(preview: SliderPreview, model_ref: str, config: PruneConfig) -> float:
    """What the app counts for the applied model at `config`'s ratios."""
    loaded = load_model(model_ref)
    applied = trainable_copy(loaded.model)
    prune_(applied, config, data=preview.data, spec=loaded.spec, scores=preview.engine)
    if preview.engine.plan.structured:
        return float(count_macs(applied, loaded.spec))
    return float(model_stats(applied, loaded.spec)["macs_effective"])


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("model_ref", sorted(SAMPLES))
def test_preview_macs_equal_applied_macs(model_ref: str, granularity: str) -> None:
    dataset = SAMPLES[model_ref]
    assert dataset is not None
    data = load_dataset(dataset)
    config = PruneConfig(criterion="magnitude", granularity=granularity, ratio=0.5)
    if (model_ref, granularity) in REFUSED:
        with pytest.raises(UserError):
            SliderPreview(load_model(model_ref), config, data)
        return
    preview = SliderPreview(load_model(model_ref), config, data)
    ratios = RATIOS[:1] if preview.engine.plan.fixed_ratio else RATIOS
    for ratio in ratios:
        stats = preview.update(ratio)
        assert stats.macs_effective < preview.macs_dense
        want = applied_macs(preview, model_ref, config.replace(ratio=ratio))
        assert stats.macs_effective == pytest.approx(want, rel=1e-6), (ratio, want)


def test_head_preview_macs_with_per_layer_ratios_and_layer_scope() -> None:
    data = load_dataset("shapes")
    config = PruneConfig(criterion="magnitude", granularity="head", ratio=0.5)
    preview = SliderPreview(load_model("shapes-vit"), config, data)
    over = {"blocks.1.attn": 0.75, "blocks.3.attn": 0.0}
    for scope in ("global", "layer"):
        stats = preview.update(0.5, over, scope)
        want = applied_macs(
            preview,
            "shapes-vit",
            config.replace(scope=scope, layer_ratios=tuple(sorted(over.items()))),
        )
        assert stats.macs_effective == pytest.approx(want, rel=1e-6), scope


class _HandAttention(nn.Module):
    """Attention written with matmuls (no SDPA): 2 heads of width 4 over 5 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, 8))


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.attn = _HandAttention()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(x.shape[0], 5, 5))  # a 5 x 5 image as 5 tokens of 5
        return self.head(self.attn(t).mean(1))


def test_own_macs_counts_attention_products_outside_weight_layers() -> None:
    model = _Tokens()
    spec = InputSpec(channels=1, size=5, mean=(0.0,), std=(1.0,), num_classes=3)
    got = own_macs(model, spec, ["attn", "attn.qkv", "head", "missing", "attn"])
    # q k^T and att v: 2 heads x 5 x 5 x 4 MACs each.
    assert got == {"attn": 2 * (2 * 5 * 5 * 4), "attn.qkv": 0, "head": 0}
    # The whole model: its count less its Linear layers' MACs.
    linear = 5 * 5 * 8 + 5 * 8 * 24 + 5 * 8 * 8 + 8 * 3
    assert own_macs(model, spec, [""]) == {"": count_macs(model, spec) - linear}
