"""Regularisers: each one shrinks the quantity it targets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.models import architectures as A
from pruning_core.regularize import BNSlimming, GroupLasso, L1Weights, make_regularizer
from pruning_core.spec import InputSpec
from pruning_core.train import TrainConfig, fit

torch.set_num_threads(1)
SPEC = InputSpec(1, 8, (0.3052,), (0.3824,), 10)


def l1(model: nn.Module) -> float:
    return float(
        sum(
            m.weight.detach().abs().sum()
            for m in model.modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        )
    )


def gammas(model: nn.Module) -> float:
    return float(
        sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    )


def group_norm(model: nn.Module) -> float:
    return float(
        sum(
            m.weight.detach().flatten(1).norm(dim=1).sum()
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        )
    )


@pytest.mark.parametrize(
    ("name", "strength", "measure"),
    [("l1", 0.02, l1), ("slim", 0.2, gammas), ("group-lasso", 0.02, group_norm)],
)
def test_regulariser_reduces_its_norm(name: str, strength: float, measure) -> None:  # type: ignore[no-untyped-def]
    data = load_dataset("digits")
    torch.manual_seed(0)
    base = A.CifarResNet(n=1, num_classes=10, in_channels=1, image_size=8, widths=(8, 8, 8))
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, batch_size=128, device="cpu")
    plain, reg = copy.deepcopy(base), copy.deepcopy(base)
    fit(plain, data, SPEC, cfg)
    r = make_regularizer(name, strength)
    fit(reg, data, SPEC, cfg, extra_loss=r)
    assert measure(reg) < 0.9 * measure(plain)
    assert r(reg).item() == pytest.approx(strength * r.penalty(reg).item())


def test_penalties_match_their_definitions() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([3.0, -4.0]).view(2, 1, 1, 1))
        m[1].weight.copy_(torch.tensor([0.5, -2.0]))
    assert L1Weights(1.0).penalty(m).item() == pytest.approx(7.0)
    assert BNSlimming(1.0).penalty(m).item() == pytest.approx(2.5)
    assert GroupLasso(1.0).penalty(m).item() == pytest.approx(7.0)  # sqrt(1) * (3 + 4)


def test_bad_regularisers_are_user_errors() -> None:
    with pytest.raises(UserError):
        make_regularizer("l3")
    with pytest.raises(UserError):
        make_regularizer("l1", -1.0)
    with pytest.raises(UserError, match="BatchNorm"):
        BNSlimming(1.0)(nn.Linear(2, 2))
