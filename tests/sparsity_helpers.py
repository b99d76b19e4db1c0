"""The model-level sparsity a ratio gives (`pruning_core.terms.SPARSITY_MEANS`), for tests that
check a selection against its ratio."""

from __future__ import annotations

from torch import nn

from pruning_core.layers import counted_weights
from pruning_core.prune import PruneConfig, prunable_layers


def pruned_share(model: nn.Module, config: PruneConfig | None = None) -> float:
    """Share of the model's Linear/Conv weights in the layers `config` prunes: a ratio r of
    those layers' weights is a model sparsity of r times this (the classifier kept dense)."""
    sizes = counted_weights(model)
    layers = prunable_layers(model, config or PruneConfig())
    return sum(sizes[n] for n in layers) / sum(sizes.values())


def zero_share(model: nn.Module) -> float:
    """Exact zeros over all of the model's Linear/Conv weights: the sparsity of a masked model,
    counted directly."""
    mods = dict(model.named_modules())
    sizes = counted_weights(model)
    zeros = sum(int((mods[n].weight == 0).sum()) for n in sizes)
    return zeros / sum(sizes.values())
