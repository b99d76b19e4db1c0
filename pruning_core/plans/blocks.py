"""Block pruning (layer pruning): residual blocks replaced by `nn.Identity`.

A residual block whose input and output shapes match computes x + f(x); dropping it keeps every
shape and removes only f (Veit et al. 2016 showed residual networks survive losing single
blocks). The criterion scores each block (`Criterion.block_scores`); one ratio removes that
share of the removable blocks.

Blocks are found by what they compute, not by class name, so the blocks of any library (timm,
torchvision, Pruning Lab, a user's own) are found alike: a module is a removable block when,
with every parameter inside it set to zero, it returns its input unchanged. Zeroing the
parameters turns the residual branch f into 0 (a zero convolution, linear layer, norm scale or
layer scale outputs 0) while the identity shortcut still carries x, so such a module behaves as
nn.Identity exactly when f is gone; a plain layer, a projection shortcut or a squeeze-excitation
gate returns something else.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning_core.criteria import Criterion
from pruning_core.errors import UserError
from pruning_core.layers import WEIGHT_LAYERS, eval_mode, example_input, ignored_modules
from pruning_core.plans.base import PlanConfig, Unit, register_granularity
from pruning_core.plans.groups import GroupPlan
from pruning_core.spec import InputSpec

__all__ = ["BlockPlan", "BlockStep", "removable_blocks"]


def _has_weight_layer(m: nn.Module) -> bool:
    return any(isinstance(s, WEIGHT_LAYERS) for s in m.modules())


@torch.no_grad()
def _passes_input_when_zeroed(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether a copy of `m` with every parameter zero returns `x` (its recorded input)."""
    zeroed = copy.deepcopy(m)
    for p in zeroed.parameters():
        p.zero_()
    try:
        out = zeroed(x.clone())
    except Exception:  # a module that cannot run alone is not a removable block
        return False
    scale = float(x.abs().max()) if x.numel() else 0.0
    # An all-zero input proves nothing (any zeroed layer returns it); untrained models at small
    # sizes can carry activations near 1e-7, so the tolerance follows the input's scale.
    if not scale > 0 or not torch.isfinite(x).all():
        return False
    return (
        isinstance(out, torch.Tensor)
        and out.shape == x.shape
        and bool(torch.allclose(out, x, rtol=1e-5, atol=1e-6 * scale))
    )


@torch.no_grad()
def removable_blocks(model: nn.Module, spec: InputSpec) -> list[str]:
    """Modules that compute x + f(x) with an identity shortcut, innermost first.

    One forward pass of seeded noise (eval mode) records the input of every module that holds
    a convolution or linear layer, has submodules and takes one tensor; each is then run alone
    as a zeroed copy (see the module docstring). A post-addition ReLU (ResNet's relu(x + f(x)))
    counts when its input is non-negative, as it is after the previous block's ReLU.

    Args:
        model: The model (not modified; its mode is restored).
        spec: Its input spec, for the `(1, C, H, W)` probe.

    Returns:
        Qualified module names. Where both a module and one inside it qualify (a stage of
        residual blocks, which is the identity once all its blocks are zero), only the inner
        ones are listed: blocks, not stages, are the unit of layer pruning.
    """
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if not name or not any(True for _ in m.children()) or not _has_weight_layer(m):
            continue

        def record(
            _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name
        ) -> None:
            if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                # Cloned before the module runs: blocks may modify their input in place.
                inputs.setdefault(name, args[0].detach().clone())

        handles.append(m.register_forward_pre_hook(record, with_kwargs=True))
    try:
        with eval_mode(model):
            model(example_input(model, spec, random=True))
    finally:
        for h in handles:
            h.remove()
    with eval_mode(model):
        found = [
            n
            for n, m in model.named_modules()
            if n in inputs and _passes_input_when_zeroed(m, inputs[n])
        ]
    return [n for n in found if not any(o.startswith(n + ".") for o in found)]


@dataclass(frozen=True)
class BlockStep:
    """What one ratio (share of removable blocks) removes, and which ratios remove the same.

    A ratio removes a whole number of blocks, so neighbouring ratios often give the same model.

    Attributes:
        ratio: The ratio asked about.
        removed: Blocks it removes.
        removable: Removable blocks of the plan.
        low: The smallest ratio on the grid (multiples of `step`) removing as many blocks.
        high: The largest ratio on the grid below 1 removing as many blocks. Every ratio from
            `low` to `high` removes the same blocks (the criterion ranks the blocks once).
        most: True when no ratio removes more (one block always stays, and `max_layer_ratio`
            caps the share).
    """

    ratio: float
    removed: int
    removable: int
    low: float
    high: float
    most: bool


def _no_blocks(model: nn.Module) -> str:
    """Block pruning's one line for a model with no removable block."""
    return (
        f"block pruning found no residual block with an identity shortcut in "
        f"{type(model).__name__} (no module returns its input once its own weights are zero; "
        "blocks with a projection or pooling shortcut change the shape and cannot be removed): "
        "use channel or unstructured pruning"
    )


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
        self._ratio_steps: dict[tuple[float, str, float], list[tuple[float, int]]] = {}
        skip = set(ignored_modules(model, config.ignore))
        self.blocks = [
            b
            for b in removable_blocks(model, spec or guess_spec(model))
            if not any(s == b or s.startswith(b + ".") for s in skip)
        ]
        if not self.blocks:
            raise UserError(_no_blocks(model))
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

    @classmethod
    def refusal(cls, model: nn.Module, spec: InputSpec | None = None) -> str | None:
        from pruning_core.plans.guess import guess_spec

        try:
            found = removable_blocks(model, spec or guess_spec(model))
        except UserError as e:
            return str(e)
        return None if found else _no_blocks(model)

    @classmethod
    def criterion_refusals(
        cls, criteria: Sequence[Criterion], model: nn.Module, spec: InputSpec | None = None
    ) -> dict[str, str]:
        from pruning_core.plans.guess import guess_spec

        try:  # one probe of the model for every criterion
            found = removable_blocks(model, spec or guess_spec(model))
        except UserError:
            found = []  # this granularity's own refusal says why
        return {
            c.name: why
            for c in criteria
            if (why := c.refusal(model, spec, cls.name, blocks=found)) is not None
        }

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

    def ratio_step(
        self, ratio: float, max_layer_ratio: float, *, scope: str = "global", step: float = 0.01
    ) -> BlockStep:
        """How many blocks `ratio` removes, and the range of ratios that remove as many.

        Read off the plan's own `select` at every multiple of `step` below 1 (no model
        change; the selection of one ratio depends on the blocks' count and the cap only).

        Args:
            ratio: Share of the removable blocks, in [0, 1).
            max_layer_ratio: The config's cap (`PruneConfig.max_layer_ratio`).
            scope: The config's scope (both remove the same count from one set of blocks).
            step: Grid of ratios the range is read on (0.01: ratios with two decimals).

        Returns:
            The `BlockStep`; `low` <= `ratio` <= `high` up to `step`.

        Raises:
            ValueError: A ratio outside [0, 1) or a step outside (0, 1).
        """
        if not 0.0 <= ratio < 1.0 or not 0.0 < step < 1.0:
            raise ValueError(f"ratio in [0, 1) and step in (0, 1) expected, got {ratio}, {step}")

        def removed(r: float) -> int:
            return len(self.select(r, {}, scope, max_layer_ratio).get(self.UNIT, []))

        # The grid's counts are the same on every slider move: read once per setting.
        key = (max_layer_ratio, scope, step)
        steps = self._ratio_steps
        if key not in steps:
            grid = [round(j * step, 10) for j in range(math.ceil(1.0 / step - 1e-9))]
            steps[key] = [(r, removed(r)) for r in grid]
        k = removed(ratio)
        same = [r for r, n in steps[key] if n == k] or [ratio]
        return BlockStep(
            ratio=ratio,
            removed=k,
            removable=len(self.blocks),
            low=min(same),
            high=max(same),
            most=k >= max(n for _, n in steps[key]),
        )

    def nothing_removed(self, ratio: float, max_layer_ratio: float, scope: str) -> str:
        step = self.ratio_step(min(ratio, 0.99), max_layer_ratio, scope=scope)
        head = (
            f"ratio {ratio:g} removes none of the {step.removable} removable blocks (a whole "
            "number of blocks, rounded down)"
        )
        if step.most:
            return f"{head}: no ratio removes one here (one block always stays)"
        return f"{head}: {step.high + 0.01:.2f} removes the first"

    def work_modules(self) -> list[str]:
        return list(self.blocks)

    def work_removed(self, selection: Mapping[str, Any]) -> dict[str, float]:
        """All of each removed block's own work (a transformer block's attention products)."""
        return {self.blocks[i]: 1.0 for i in selection.get(self.UNIT, [])}

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
