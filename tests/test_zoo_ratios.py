"""Exact ratios: the share removed equals the target up to one unit, in every granularity and
scope, also when scores tie (constant, quantized or repeated weights), and ties break the same
way every time."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pruning_core.models import load_model
from pruning_core.prune import Preview, PruneConfig, prune_

CASES = [
    ("digits-mlp", "unstructured"),
    ("digits-cnn", "unstructured"),
    ("digits-cnn", "channel"),
    ("shapes-vit", "head"),
    ("shapes-resnet", "block"),
    ("shapes-resnet", "channel"),
]
RATIO = 0.3


def _tied(model: torch.nn.Module, fill: str) -> torch.nn.Module:
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() < 2:
                continue
            if fill == "constant":
                p.fill_(0.5)
            elif fill == "quantized":  # four levels of each sign, none zero
                p.copy_(torch.sign(p + 1e-12) * torch.ceil(p.abs() * 4).clamp(1, 4) / 4)
            else:  # repeated: every output row is the first one
                p.copy_(p[:1].expand_as(p))
    return m


def _removed(model, config, spec):  # type: ignore[no-untyped-def]
    """{unit: removed count} and a fingerprint of what was removed."""
    res = prune_(model, config, spec=spec)
    if res.removed:
        return {k: len(v) for k, v in res.removed.items()}, repr(sorted(res.removed.items()))
    counts = {n: int((~k).sum()) for n, k in res.masks.items()}
    return counts, repr([(n, (~k).nonzero().flatten().tolist()) for n, k in res.masks.items()])


@pytest.mark.parametrize("fill", ["constant", "quantized", "repeated"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize(("arch", "granularity"), CASES)
def test_share_removed_is_exact_with_ties(
    arch: str, granularity: str, scope: str, fill: str
) -> None:
    loaded = load_model(arch)
    base = _tied(loaded.model, fill)
    config = PruneConfig(criterion="magnitude", granularity=granularity, ratio=RATIO, scope=scope)
    sizes = {
        u.name: u.size for u in Preview(copy.deepcopy(base), config, spec=loaded.spec).plan.units
    }
    counts, first = _removed(copy.deepcopy(base), config, loaded.spec)
    if granularity == "block" or scope == "global":
        total = sum(sizes.values())
        assert abs(sum(counts.values()) - math.floor(total * RATIO)) <= 1, (counts, sizes)
    else:
        for name, size in sizes.items():
            assert abs(counts.get(name, 0) - math.floor(size * RATIO)) <= 1, (name, counts, sizes)
    # Ties break deterministically: the same elements go on a second run.
    _, second = _removed(copy.deepcopy(base), config, loaded.spec)
    assert first == second


def test_nm_is_exact_with_ties() -> None:
    loaded = load_model("digits-mlp")
    for fill in ("constant", "quantized", "repeated"):
        base = _tied(loaded.model, fill)
        config = PruneConfig(criterion="magnitude", granularity="2:4")
        res = prune_(copy.deepcopy(base), config, spec=loaded.spec)
        for name, keep in res.masks.items():
            groups = keep.reshape(keep.shape[0], -1, 4)
            assert bool((groups.sum(dim=2) == 2).all()), (fill, name)
        again = prune_(copy.deepcopy(base), config, spec=loaded.spec)
        assert all(torch.equal(res.masks[n], again.masks[n]) for n in res.masks)
