"""An input spec for callers that have none (tracing only)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.layers import eval_mode
from pruning_core.spec import InputSpec

__all__ = ["guess_spec"]


def guess_spec(model: nn.Module) -> InputSpec:
    """An input spec that the model accepts, found by trying common sizes.

    Raises:
        UserError: No common size runs through the model.
    """
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    sizes: tuple[int, ...]
    if isinstance(first, nn.Conv2d):
        sizes, channels = (32, 28, 8, 224, 64, 96, 128), first.in_channels
    elif isinstance(first, nn.Linear):
        channels = 1
        side = math.isqrt(first.in_features)
        sizes = (side,) if side * side == first.in_features else ()
    else:
        sizes, channels = (), 1
    p = next(model.parameters())
    with eval_mode(model):
        for s in sizes:
            try:
                with torch.no_grad():
                    model(torch.zeros(1, channels, s, s, device=p.device, dtype=p.dtype))
            except Exception:  # a wrong guess fails in model-specific ways; try the next size
                continue
            return InputSpec(channels, s, (0.0,) * channels, (1.0,) * channels, 1)
    raise UserError("cannot infer the input shape of this model: pass its input spec")
