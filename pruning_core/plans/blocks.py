"""Block pruning (layer pruning): residual blocks replaced by `nn.Identity`.

A residual block whose input and output shapes match computes x + f(x); dropping it keeps every
shape and removes only f (Veit et al. 2016 showed residual networks survive losing single
blocks). The criterion scores each block (`Criterion.block_scores`); one ratio removes that
share of the removable blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruning_core.criteria import Criterion
from pruning_core.errors import UserError
from pruning_core.layers import WEIGHT_LAYERS, ignored_modules, zero_forward
from pruning_core.plans.base import PlanConfig, Unit, register_granularity
from pruning_core.plans.groups import GroupPlan
from pruning_core.spec import InputSpec

__all__ = ["BlockPlan", "removable_blocks"]


def _is_residual_block(m: nn.Module) -> bool:
    """Blocks that add their input back unchanged (identity shortcut)."""
    from pruning_core.models import architectures as A

    if isinstance(m, A.BasicBlock):
        return isinstance(m.shortcut, nn.Identity)
    if isinstance(m, A.TransformerBlock):
        return True
    cls = type(m).__name__
    mod = type(m).__module__
    if mod.startswith("torchvision.models"):
        if cls in ("BasicBlock", "Bottleneck"):
            return getattr(m, "downsample", None) is None
        if cls in ("EncoderBlock", "CNBlock", "SwinTransformerBlock", "SwinTransformerBlockV2"):
            return True
        if cls in ("InvertedResidual", "MBConv", "FusedMBConv"):
            return bool(getattr(m, "use_res_connect", False))
    return False


def removable_blocks(model: nn.Module, spec: InputSpec) -> list[str]:
    """Residual blocks with an identity shortcut whose output shape equals their input shape.

    Such a block computes x + f(x) (possibly followed by a ReLU of a non-negative x), so
    replacing it by `nn.Identity` keeps every shape and drops only f.
    """
    cands = [(n, m) for n, m in model.named_modules() if n and _is_residual_block(m)]
    if not cands:
        return []
    same: dict[str, bool] = {}
    handles = []
    for n, m in cands:

        def hook(_m: nn.Module, i: tuple[Any, ...], o: Any, n: str = n) -> None:
            same[n] = (
                bool(i) and isinstance(o, torch.Tensor) and tuple(i[0].shape) == tuple(o.shape)
            )

        handles.append(m.register_forward_hook(hook))
    zero_forward(model, spec, handles)
    names = [n for n, _ in cands if same.get(n)]
    # A block nested in another removable block is removed with it.
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


@register_granularity
class BlockPlan(GroupPlan):
    """Residual blocks with an identity shortcut, replaced by nn.Identity."""

    name = "block"
    label = "Residual blocks (layers)"
    help = "whole residual blocks replaced by identity (layer pruning)"
    example = "block"
    score_kind = "blocks"
    per_layer = False
    unit_word = "block set"
    UNIT = "blocks"

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        from pruning_core.plans.guess import guess_spec

        self.model = model
        self.spec = spec
        self.notes = []
        skip = set(ignored_modules(model, config.ignore))
        self.blocks = [
            b
            for b in removable_blocks(model, spec or guess_spec(model))
            if not any(s == b or s.startswith(b + ".") for s in skip)
        ]
        if not self.blocks:
            raise UserError(
                "block pruning found no residual blocks with an identity shortcut that it "
                f"recognises in {type(model).__name__} (it knows Pruning Lab's and "
                "torchvision's ResNet, ConvNeXt, ViT, Swin, MobileNet and EfficientNet blocks; "
                "other libraries' blocks are not detected yet): use channel pruning"
            )
        self.units = [
            Unit(self.UNIT, len(self.blocks), members=tuple(self.blocks), roundable=False)
        ]
        mods = dict(model.named_modules())
        # Fixed at planning time: removed blocks' layers vanish from the model when shrunk.
        self._layers = [
            f"{b}.{n}" if n else b
            for b in self.blocks
            for n, m in mods[b].named_modules()
            if isinstance(m, WEIGHT_LAYERS)
        ]
        self._check_weights()

    @classmethod
    def prunable(
        cls, model: nn.Module, config: PlanConfig, spec: InputSpec | None = None
    ) -> list[str]:
        from pruning_core.plans.guess import guess_spec

        skip = set(ignored_modules(model, config.ignore))
        return [
            b
            for b in removable_blocks(model, spec or guess_spec(model))
            if not any(s == b or s.startswith(b + ".") for s in skip)
        ]

    def resolve_overrides(self, layer_ratios: Mapping[str, float]) -> dict[str, float]:
        if layer_ratios:
            raise UserError(
                "block pruning takes one ratio (the share of removable blocks); "
                "per-layer ratios do not apply"
            )
        return {}

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        self.units[0].scores = criterion.block_scores(self.model, self.blocks, data, spec).float()
        self._check_scores()

    def layers(self) -> list[str]:
        return self._layers

    def shrink(self, selection: Mapping[str, list[int]]) -> None:
        for i in selection.get(self.UNIT, []):
            path = self.blocks[i]
            parent, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, nn.Identity())

    @torch.no_grad()
    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        out = {}
        for i in selection.get(self.UNIT, []):
            path = self.blocks[i]
            block = self.model.get_submodule(path)
            for n, m in block.named_modules():
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and isinstance(m, WEIGHT_LAYERS):
                    out[f"{path}.{n}" if n else path] = torch.zeros(w.shape, dtype=torch.bool)
            if apply:
                # With every parameter zero (norm scales and shifts included) the residual
                # branch outputs 0, so the block passes its input through like nn.Identity.
                for p in block.parameters():
                    p.zero_()
        return out

    def removed_report(self, selection: Mapping[str, list[int]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i in selection.get(self.UNIT, []):
            parent, _, leaf = self.blocks[i].rpartition(".")
            if leaf.isdigit():
                out.setdefault(parent, []).append(int(leaf))
            else:
                out.setdefault(self.blocks[i], []).append(0)
        return out
