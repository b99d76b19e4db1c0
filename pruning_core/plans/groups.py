"""What the structured plans (channels, heads, blocks) share: selecting whole elements.

Unlike masks, structured pruning makes the model physically smaller, so it runs faster on
ordinary dense hardware. Both modes share one selection: `physical` shrinks the tensors, and
`mask` (the app's preview) zeroes exactly the weights physical mode would remove, outputs
included: a masked channel's consumers see zeros where the shrunk model has no input at all, so
both compute the same function (up to rounding; LayerNorm statistics over a masked width are the
one exception). Both then get their BatchNorm statistics re-estimated the same way
(`prune.settle_structured`).

Ratios: `scope="layer"` removes the same share from every unit; `scope="global"` ranks all
elements together after dividing each unit's scores by their mean (Torch-Pruning's default
normaliser, which makes groups comparable). Per-layer overrides use their own ratio.
`max_layer_ratio` caps every unit and at least one element always stays; `round_to` makes the
kept channel counts multiples of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from pruning_core.errors import UserError, first_line
from pruning_core.layers import (
    check_finite,
    counted_weights,
    eval_mode,
    example_input,
    measured_model_sparsity,
    module_stack,
)
from pruning_core.plans.base import Applied, Plan, Unit, layer_cap
from pruning_core.plans.guess import guess_spec
from pruning_core.spec import InputSpec
from pruning_core.surgery import SHAPE_ATTRS

__all__ = ["GroupPlan"]


class GroupPlan(Plan):
    """Base of the structured plans: units of whole elements, selected by score."""

    structured = True
    # `round_to` applies to this plan's unit sizes (channel counts).
    rounds: ClassVar[bool] = False

    def __init__(self, *a: Any, **k: Any) -> None:
        raise NotImplementedError

    def _check_scores(self) -> None:
        # NaN compares false with everything: a criterion that produced one is refused by name.
        for u in self.units:
            check_finite(u.name, u.scores, "scores")

    def _check_weights(self) -> None:
        mods = dict(self.model.named_modules())
        for n in self.layers():
            w = getattr(mods.get(n), "weight", None)
            if isinstance(w, torch.Tensor):
                check_finite(n, w)

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        counts: dict[str, int] = {}
        free = [u for u in self.units if u.name not in overrides]
        for u in self.units:
            if u.name in overrides:
                n = math.floor(u.size * overrides[u.name] + 1e-9)
                counts[u.name] = min(n, layer_cap(u.size, max_layer_ratio))
        if scope == "layer":
            for u in free:
                counts[u.name] = min(
                    math.floor(u.size * ratio + 1e-9), layer_cap(u.size, max_layer_ratio)
                )
        else:
            counts.update(_global_counts(free, ratio, max_layer_ratio))
        round_to = self.round_to if self.rounds else None
        out: dict[str, Any] = {}
        for u in self.units:
            n = counts.get(u.name, 0)
            if round_to and u.roundable:
                n = _round_removed(u.size, n, round_to, max_layer_ratio)
            if n > 0:
                out[u.name] = sorted(torch.argsort(u.scores, stable=True)[:n].tolist())
        return out

    def shrink(self, selection: Mapping[str, list[int]]) -> None:
        """Remove the selected elements from `self.model` (physically)."""
        raise NotImplementedError

    def removed_report(self, selection: Mapping[str, list[int]]) -> dict[str, list[int]]:
        """Removed indices per unit, as `PruneResult.removed` reports them."""
        return {k: list(v) for k, v in selection.items()}

    def apply(self, model: nn.Module, selection: Mapping[str, Any], *, physical: bool) -> Applied:
        if model is not self.model:
            raise ValueError("a structured plan applies to the model it was built for")
        before = self.weight_sizes()
        counted = counted_weights(model)
        masks: dict[str, torch.Tensor] = {}
        if physical:
            self._shrink_or_undo(selection)
        else:
            masks = self.masks(selection, apply=True)
        # Per layer as for the model: removed weights and the zeros the rest holds (an earlier
        # run's too), over the layer's weights before.
        mods = dict(model.named_modules())
        layer_sparsity: dict[str, float] = {}
        for n, k in before.items():
            w = getattr(mods.get(n), "weight", None)
            nonzero = int(torch.count_nonzero(w.detach())) if isinstance(w, torch.Tensor) else 0
            if k:
                layer_sparsity[n] = 1.0 - nonzero / k
        return Applied(
            masks=masks,
            layer_sparsity={n: v for n, v in layer_sparsity.items() if v > 0},
            sparsity=measured_model_sparsity(model, counted),
            removed=self.removed_report(selection),
        )

    round_to: int | None = None
    spec: InputSpec | None = None

    def _shrink_or_undo(self, selection: Mapping[str, list[int]]) -> None:
        """`shrink`, then check that the model still runs; if not, put every tensor and shape
        attribute back (the user's model is intact) and refuse naming where it fails."""
        # Shrinking replaces tensors and shape attributes; keeping the old ones allows undo.
        saved = [
            (m, dict(m._parameters), dict(m._buffers),
             {a: m.__dict__[a] for a in SHAPE_ATTRS if a in m.__dict__})
            for m in self.model.modules()
        ]  # fmt: skip
        self.shrink(selection)
        broken = _fails_at(self.model, self.spec or guess_spec(self.model))
        if broken is None:
            return
        for m, params, buffers, attrs in saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            m.__dict__.update(attrs)
        raise UserError(
            f"{self.name} pruning of {type(self.model).__name__} is refused: the shrunk model "
            f"no longer runs at {broken} (a coupling the tracer did not see); the model is "
            "unchanged, and unstructured and N:M pruning still apply"
        )


def _fails_at(model: nn.Module, spec: InputSpec) -> str | None:
    """None when `model` runs on two zero images (eval mode), else where it fails:
    "'MODULE' (TYPE): first line of the error"."""
    mods = dict(model.named_modules())
    with module_stack(model) as stack:
        try:
            with eval_mode(model), torch.no_grad():
                model(example_input(model, spec, batch=2))
        except Exception as e:  # any failure of the shrunk model is the refusal's reason
            where = stack[-1] if stack else ""
            kind = type(mods[where]).__name__
            return f"'{where or type(model).__name__}' ({kind}): {first_line(e, 120)}"
    return None


def _global_counts(units: Sequence[Unit], ratio: float, max_layer_ratio: float) -> dict[str, int]:
    total = sum(u.size for u in units)
    target = math.floor(total * ratio + 1e-9)
    if not units or target <= 0:
        return {}
    norm = [u.scores.double() / u.scores.double().mean().clamp_min(1e-12) for u in units]
    flat = torch.cat(norm)
    owner = [i for i, u in enumerate(units) for _ in range(u.size)]
    caps = [layer_cap(u.size, max_layer_ratio) for u in units]
    counts = [0] * len(units)
    taken = 0
    # Walk from the least important element up; capped units pass their turn to the next.
    for i in torch.argsort(flat, stable=True).tolist():
        k = owner[i]
        if counts[k] < caps[k]:
            counts[k] += 1
            taken += 1
            if taken == target:
                break
    return {u.name: c for u, c in zip(units, counts, strict=True)}


def _round_removed(size: int, n: int, round_to: int, max_layer_ratio: float) -> int:
    """Adjust `n` so the kept count is a multiple of round_to (nearest; at least round_to)."""
    if size <= round_to:
        return 0
    keep = size - n
    keep = max(round_to, math.floor(keep / round_to + 0.5) * round_to)
    while size - keep > layer_cap(size, max_layer_ratio):
        keep += round_to
    return max(0, size - min(keep, size))
