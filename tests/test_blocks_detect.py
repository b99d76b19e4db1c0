"""Residual blocks are found by what they compute (zeroed, they pass their input), so blocks of
any library are removable, and modules that only look like blocks are not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.plans.blocks import removable_blocks
from pruning_core.prune import PruneConfig, prune_
from pruning_core.spec import InputSpec

SPEC = InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4)
BLOCK = PruneConfig(criterion="magnitude", granularity="block", ratio=0.5)


class Residual(nn.Module):
    """x + scale * f(x), with a layer scale as in ConvNeXt (a class no registry knows)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 1))
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.f(x)


class PostReLU(nn.Module):
    """relu(x + f(x)) in place, as torchvision's BasicBlock writes it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return torch.relu_(out)


class Projection(nn.Module):
    """A shortcut through a 1x1 convolution: removing the block changes the output."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Conv2d(c, c, 3, padding=1)
        self.short = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.short(x) + self.f(x)


class Gate(nn.Module):
    """Squeeze-excitation: x * sigmoid(g(x)) is x / 2 when zeroed, not x."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.g = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.g(x.mean((2, 3), keepdim=True)))


class Net(nn.Module):
    def __init__(self, body: list[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(*body)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def test_blocks_of_unknown_classes_are_found_and_stages_are_not_units() -> None:
    net = Net([PostReLU(8), Residual(8), Projection(8), PostReLU(8), Gate(8), Residual(8)])
    # The stage as a whole is not the identity when zeroed (Projection, Gate), its blocks are;
    # relu(x + f(x)) is removable after the stem's ReLU, not after Projection's signed output.
    assert removable_blocks(net, SPEC) == ["stage.0", "stage.1", "stage.5"]
    all_residual = Net([PostReLU(8), PostReLU(8), Residual(8)])
    # Zeroed, the whole stage is the identity too, but blocks (innermost) are the units.
    assert removable_blocks(all_residual, SPEC) == ["stage.0", "stage.1", "stage.2"]


def test_removing_found_blocks_equals_zeroing_them() -> None:
    torch.manual_seed(0)
    net = Net([Residual(8), PostReLU(8), Residual(8), Gate(8)]).eval()
    x = torch.randn(2, 3, 16, 16)
    blocks = removable_blocks(net, SPEC)
    zeroed = Net([Residual(8), PostReLU(8), Residual(8), Gate(8)]).eval()
    zeroed.load_state_dict(net.state_dict())
    with torch.no_grad():
        for b in blocks:
            for p in zeroed.get_submodule(b).parameters():
                p.zero_()
        for b in blocks:
            net.stage[int(b.split(".")[1])] = nn.Identity()
        assert torch.allclose(net(x), zeroed(x), atol=1e-6)


def test_a_block_fed_only_zeros_is_not_counted() -> None:
    # A stem that outputs zeros: every zeroed module "returns its input", which proves nothing.
    net = Net([Gate(8), Projection(8)])
    with torch.no_grad():
        for p in net.stem.parameters():
            p.zero_()
    assert removable_blocks(net, SPEC) == []
    with pytest.raises(UserError, match="no residual block with an identity shortcut in Net"):
        prune_(net, BLOCK, spec=SPEC)


@pytest.mark.parametrize(
    ("arch", "least"),
    [("torchvision:mnasnet0_5", 8), ("timm:convnext_atto", 8), ("timm:efficientnet_b0", 6)],
)
def test_library_blocks_are_pruned_and_reopen(arch: str, least: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pruning_core.checkpoint import save_model_dir
    from pruning_core.models import build_for_data, get_entry, load_model

    lm = build_for_data(arch, 4, 3, 32)
    model = lm.model.eval()
    found = removable_blocks(model, lm.spec)
    assert len(found) >= least
    res = prune_(model, BLOCK, spec=lm.spec)
    assert sum(len(v) for v in res.removed.values()) == len(found) // 2
    x = torch.randn(2, 3, lm.spec.size, lm.spec.size)
    with torch.no_grad():
        y = model(x)
    meta = {"arch": lm.arch, "arch_kwargs": lm.arch_kwargs, "spec": lm.spec.to_dict()}
    save_model_dir(
        tmp_path / "m", model, meta, reference=get_entry(lm.arch).builder(**lm.arch_kwargs)
    )
    again = load_model(str(tmp_path / "m")).model.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), y, atol=1e-5)
