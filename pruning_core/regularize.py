"""Sparsity-inducing regularisers, as `extra_loss` callables for `train.fit`.

Each one is `reg(model) -> scalar tensor` with a `strength`. Trained with one, a model pushes
the quantity a criterion will later read towards zero, so pruning it costs less: L1 on weights
before magnitude pruning, L1 on BatchNorm scales before `bn-scale` channel pruning (network
slimming), group lasso on output channels before channel pruning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.layers import weight_of

__all__ = [
    "NO_REGULARIZER",
    "REGULARIZERS",
    "BNSlimming",
    "GroupLasso",
    "L1Weights",
    "Regularizer",
    "make_regularizer",
]


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    # Start from the first term so the sum stays on the model's device (CPU or CUDA).
    if not terms:
        return torch.zeros(())
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _weight_layers(model: nn.Module, layers: Sequence[str] | None) -> list[torch.Tensor]:
    mods = dict(model.named_modules())
    if layers is None:
        return [weight_of(m) for m in mods.values() if isinstance(m, nn.Conv2d | nn.Linear)]
    missing = [
        n for n in layers if not isinstance(getattr(mods.get(n), "weight", None), torch.Tensor)
    ]
    if missing:
        raise UserError(
            f"regulariser layer '{missing[0]}' is not a layer with weights in the model"
        )
    return [weight_of(mods[n]) for n in layers]


@dataclass(frozen=True)
class Regularizer:
    """Base: a strength and the layers it acts on (None: every Conv2d/Linear)."""

    strength: float = 1e-4
    layers: tuple[str, ...] | None = None
    name: ClassVar[str] = ""
    default_strength: ClassVar[float] = 1e-4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise UserError(f"regularisation strength must be a number >= 0, got {self.strength}")

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The unscaled penalty."""
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.strength * self.penalty(model)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "strength": self.strength,
            "layers": None if self.layers is None else list(self.layers),
        }


@dataclass(frozen=True)
class L1Weights(Regularizer):
    """Sum of |w| over the layers' weights: drives small weights to zero before magnitude
    pruning (Han et al. 2015 compare L1 and L2 regularisation for pruning)."""

    name: ClassVar[str] = "l1"
    default_strength: ClassVar[float] = 1e-5

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return _total([w.abs().sum() for w in _weight_layers(model, self.layers)])


@dataclass(frozen=True)
class BNSlimming(Regularizer):
    """Sum of |gamma| over BatchNorm scales: network slimming's sparsity training, after which
    `bn-scale` channel pruning removes the channels with small gammas (Liu et al. 2017)."""

    name: ClassVar[str] = "slim"
    default_strength: ClassVar[float] = 1e-4

    def penalty(self, model: nn.Module) -> torch.Tensor:
        mods = dict(model.named_modules())
        names = self.layers if self.layers is not None else list(mods)
        gammas = [
            mods[n].weight
            for n in names
            if isinstance(mods.get(n), nn.modules.batchnorm._BatchNorm)
            and mods[n].weight is not None
        ]
        if not gammas:
            raise UserError("the slim regulariser needs BatchNorm layers, and this model has none")
        return _total([g.abs().sum() for g in gammas])


@dataclass(frozen=True)
class GroupLasso(Regularizer):
    """Sum over output channels of sqrt(group size) * ||W_c||_2: zeroes whole filters/neurons,
    preparing channel pruning (Wen et al. 2016, "Learning Structured Sparsity in DNNs")."""

    name: ClassVar[str] = "group-lasso"
    default_strength: ClassVar[float] = 1e-4

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = []
        for weight in _weight_layers(model, self.layers):
            w = weight.flatten(1)
            terms.append(math.sqrt(w.shape[1]) * w.norm(dim=1).sum())
        return _total(terms)


# The choice that means "no regulariser" in menus (not a registry entry).
NO_REGULARIZER = "none"

REGULARIZERS: dict[str, type[Regularizer]] = {
    c.name: c for c in (L1Weights, BNSlimming, GroupLasso)
}


def make_regularizer(
    name: str, strength: float | None = None, layers: Sequence[str] | None = None
) -> Regularizer:
    """Build the regulariser registered as `name` (`l1`, `slim`, `group-lasso`).

    Args:
        name: Registry name.
        strength: Multiplier of the penalty (None: the regulariser's default).
        layers: Layer names it acts on (None: all Conv2d/Linear, or all BatchNorms for slim).

    Raises:
        UserError: Unknown name or bad strength.
    """
    cls = REGULARIZERS.get(name)
    if cls is None:
        raise UserError(f"unknown regulariser '{name}' (choose from {', '.join(REGULARIZERS)})")
    return cls(
        strength=cls.default_strength if strength is None else float(strength),
        layers=None if layers is None else tuple(layers),
    )
