"""Importance criteria: data-driven criteria see what magnitude cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_core.calibration import calibration_stats
from pruning_core.criteria import CRITERIA as IMPORTANCES
from pruning_core.criteria import get_criterion as get_importance
from pruning_core.data import DataBundle
from pruning_core.errors import UserError
from pruning_core.layers import following_batchnorm
from pruning_core.models import architectures as A
from pruning_core.prune import PruneConfig, prune_
from pruning_core.spec import InputSpec

torch.set_num_threads(1)

SPEC = InputSpec(1, 2, (0.0,), (1.0,), 4)
# Column weights: input 0 has small weights but a large input, input 1 large weights but an
# input that is mostly zero and tiny otherwise.
COLUMN_WEIGHTS = torch.tensor([0.3, 1.0, 0.6, 0.6])


def crafted() -> tuple[nn.Module, DataBundle]:
    """A Linear whose input features have very different scales."""
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    flat = x.view(n, 4)
    flat[:, 0] = 200
    flat[:, 1] = torch.where(torch.rand(n, generator=g) < 0.9, 0, 10).to(torch.uint8)
    flat[:, 2] = 90
    flat[:, 3] = 110
    y = torch.randint(0, 4, (n,), generator=g)
    data = DataBundle("crafted", (x, y), (x[:64], y[:64]), tuple("abcd"), torch.arange(n))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with torch.no_grad():
        model[1].weight.copy_(COLUMN_WEIGHTS.expand(4, 4) * (1 + 0.01 * torch.arange(4.0))[:, None])
    return model, data


def pruned_columns(method: str) -> set[int]:
    model, data = crafted()
    cfg = PruneConfig(method=method, ratio=0.25, scope="layer", ignore=())
    res = prune_(model, cfg, data=data, spec=SPEC)
    return set((~res.masks["1"]).nonzero()[:, 1].tolist())


def test_magnitude_prunes_the_small_weights() -> None:
    assert pruned_columns("magnitude") == {0}


@pytest.mark.parametrize("method", ["activation", "wanda", "apoz"])
def test_data_driven_criteria_choose_other_weights_than_magnitude(method: str) -> None:
    cols = pruned_columns(method)
    assert cols == {1}, cols
    assert cols != pruned_columns("magnitude")


def test_wanda_compares_within_each_output_row() -> None:
    model, data = crafted()
    with torch.no_grad():
        model[1].weight[0] *= 100  # one row far larger: a global threshold would spare it
    res = prune_(model, PruneConfig(method="wanda", ratio=0.5, ignore=()), data=data, spec=SPEC)
    assert ((~res.masks["1"]).sum(1) == 2).all()


def test_taylor_scores_and_leaves_model_untouched() -> None:
    model, data = crafted()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = get_importance("taylor").weight_scores(model, {"1": model[1]}, data, SPEC)["1"]
    assert scores.shape == model[1].weight.shape
    assert (scores >= 0).all() and scores.sum() > 0
    assert model.training and model[1].weight.grad is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ch = get_importance("taylor").channel_scores(model, {"1": model[1]}, data, SPEC)["1"]
    assert ch.shape == (4,)


def test_calibration_stats_count_zeros_and_scales() -> None:
    model, data = crafted()
    st = calibration_stats(model, {"1": model[1]}, data, SPEC, batches=2)["1"]
    zero_share = st.in_zero / st.in_count
    assert zero_share[1] > 0.7 and zero_share[0] == 0
    mean_abs = st.in_abs / st.in_count
    assert mean_abs[0] > 10 * mean_abs[1]


def test_random_is_seeded() -> None:
    model, _ = crafted()
    layers = {"1": model[1]}
    a = get_importance("random", seed=1).weight_scores(model, layers)["1"]
    b = get_importance("random", seed=1).weight_scores(model, layers)["1"]
    c = get_importance("random", seed=2).weight_scores(model, layers)["1"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bn_scale_reads_gammas_and_pairs_convs_with_their_batchnorm() -> None:
    model = A.CifarResNet(n=1, num_classes=10, in_channels=3, image_size=8)
    spec = InputSpec(3, 8, (0.5,) * 3, (0.25,) * 3, 10)
    traced = following_batchnorm(model, spec)
    assert traced == following_batchnorm(model)  # registration order agrees with tracing here
    assert traced["conv1"] == "bn1" and traced["layer2.0.shortcut.0"] == "layer2.0.shortcut.1"
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(-1, 1, 16))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    scores = get_importance("bn-scale").channel_scores(model, convs, spec=spec)
    assert torch.allclose(scores["conv1"], torch.linspace(-1, 1, 16).abs())
    assert set(scores) == set(convs)


def test_bn_scale_has_no_weight_scores_and_methods_are_documented() -> None:
    with pytest.raises(UserError):
        PruneConfig(method="bn-scale", granularity="unstructured")
    for cls in IMPORTANCES.values():
        assert cls.__doc__ and cls.reference and cls.summary


def test_data_driven_criterion_without_data_is_a_user_error() -> None:
    model, _ = crafted()
    with pytest.raises(UserError, match="calibration data"):
        prune_(model, PruneConfig(method="wanda", ignore=()))
