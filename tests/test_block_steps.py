"""Block pruning removes whole blocks, so a range of ratios gives one model:
`BlockPlan.ratio_step` says how many blocks a ratio removes and which ratios remove the same,
read off the plan's own selection."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pruning_core.plans.blocks import BlockPlan
from pruning_core.prune import Preview, PruneConfig
from pruning_core.spec import InputSpec

SPEC = InputSpec(3, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class Net(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stage = nn.Sequential(*(Residual(6) for _ in range(blocks)))
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def plan_of(blocks: int, max_layer_ratio: float = 0.98) -> BlockPlan:
    torch.manual_seed(0)
    config = PruneConfig(
        criterion="magnitude", granularity="block", ratio=0.5, max_layer_ratio=max_layer_ratio
    )
    plan = Preview(Net(blocks), config, spec=SPEC).plan
    assert isinstance(plan, BlockPlan) and len(plan.blocks) == blocks
    return plan


@pytest.mark.parametrize("blocks", [3, 5])
def test_every_ratio_in_the_range_removes_the_same_blocks(blocks: int) -> None:
    plan = plan_of(blocks)
    grid = [j / 100 for j in range(100)]
    for r in grid:
        step = plan.ratio_step(r, 0.98)
        chosen = plan.select(r, {}, "global", 0.98).get("blocks", [])
        assert step.removed == len(chosen) and step.removable == blocks
        assert step.low <= r <= step.high
        inside = [q for q in grid if step.low <= q <= step.high]
        assert all(plan.select(q, {}, "global", 0.98).get("blocks", []) == chosen for q in inside)
        # Just outside the range another number of blocks goes.
        if step.low > 0:
            assert plan.ratio_step(round(step.low - 0.01, 2), 0.98).removed != step.removed
        if step.high < 0.99:
            assert plan.ratio_step(round(step.high + 0.01, 2), 0.98).removed != step.removed
        assert step.most == (step.removed == blocks - 1)


def test_three_blocks_steps_at_thirds() -> None:
    plan = plan_of(3)
    step = plan.ratio_step(0.7, 0.98)
    assert dataclasses.replace(plan.ratio_step(0.9, 0.98), ratio=0.7) == step
    assert (step.removed, step.low, step.high, step.most) == (2, 0.67, 0.99, True)
    step = plan.ratio_step(0.5, 0.98, scope="layer")
    assert (step.removed, step.low, step.high, step.most) == (1, 0.34, 0.66, False)
    assert plan.ratio_step(0.0, 0.98).removed == 0


def test_max_layer_ratio_caps_the_blocks_removed() -> None:
    plan = plan_of(5, max_layer_ratio=0.5)
    step = plan.ratio_step(0.9, 0.5)
    # At most floor(5 x 0.5) = 2 of 5 blocks, from ratio 0.40 up.
    assert (step.removed, step.low, step.high, step.most) == (2, 0.4, 0.99, True)


def test_a_ratio_outside_the_range_is_refused() -> None:
    plan = plan_of(3)
    with pytest.raises(ValueError):
        plan.ratio_step(1.0, 0.98)
    with pytest.raises(ValueError):
        plan.ratio_step(0.5, 0.98, step=0.0)
