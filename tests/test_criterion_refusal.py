"""`Criterion.refusal`: which criteria cannot score a model at all, said before any scoring
(the menus offer only the others), in the same words scoring raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_core.criteria import get_criterion
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.experiments import sweep
from pruning_core.models import load_model
from pruning_core.prune import list_methods
from ui.choices import criterion_choices, unfit_criteria


def _convnet(bn: bool, affine: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8, affine=affine))
    layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    ("model", "refused"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), True),
        (_convnet(bn=False), True),
        # BatchNorm without a learned scale has no gamma to read either.
        (_convnet(bn=True, affine=False), True),
        (_convnet(bn=True), False),
    ],
)
def test_bn_scale_refuses_models_without_gamma(model: nn.Module, refused: bool) -> None:
    unfit = unfit_criteria(model)
    assert ("bn-scale" in unfit) is refused, unfit
    # No other registered criterion needs anything of the model's structure.
    assert set(unfit) <= {"bn-scale"}, unfit
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if refused and convs:
        # The menu's reason is the line scoring raises.
        with pytest.raises(UserError) as e:
            get_criterion("bn-scale").channel_scores(model, convs)
        assert str(e.value) == unfit["bn-scale"]


def test_refusal_leaves_the_model_as_it_was() -> None:
    model = _convnet(bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for m in list_methods():
        get_criterion(m.name).refusal(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_scale_is_not_offered_for_heads_and_refuses_blocks_without_batchnorm() -> None:
    # Attention projections have no BatchNorm after them: no gamma per head.
    assert "bn-scale" not in criterion_choices("head")
    assert "bn-scale" in criterion_choices("channel")
    vit = load_model("shapes-vit")  # BatchNorm in its conv stem, none in its blocks
    assert "bn-scale" not in unfit_criteria(vit.model, vit.spec, "channel")
    why = unfit_criteria(vit.model, vit.spec, "block")["bn-scale"]
    assert why == "bn-scale block pruning needs BatchNorm in every block; 'blocks.0' has none"
    resnet = load_model("shapes-resnet")  # BatchNorm in every residual block
    assert "bn-scale" not in unfit_criteria(resnet.model, resnet.spec, "block")


def test_a_sweep_refuses_an_unfit_criterion_before_any_work() -> None:
    mlp, data = load_model("digits-mlp"), load_dataset("digits")
    calls: list[object] = []
    with pytest.raises(UserError) as e:
        sweep(
            mlp, data, methods=["magnitude", "bn-scale"], ratios=[0.5], granularity="channel",
            progress=calls.append,
        )  # fmt: skip
    assert str(e.value) == (
        "criterion 'bn-scale' cannot score this model: bn-scale needs BatchNorm layers after "
        "the layers it prunes; this model has none"
    )
    assert calls == []  # not one point measured (and lost)
