"""Model statistics: parameters, sparsity, FLOPs/MACs and size in bytes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning_core.models.spec import InputSpec


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters (only the non-zero ones with `nonzero=True`)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p).item()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, spec: InputSpec, batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image (dense: zeros count as work).

    Uses `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per MAC.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, spec.channels, spec.size, spec.size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2 // batch_size)


def size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers stored densely in their dtypes."""
    tensors = list(model.parameters()) + list(model.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def model_summary(model: nn.Module, spec: InputSpec) -> dict[str, int]:
    """Parameters (all and non-zero), MACs and dense size: the numbers every page shows."""
    return {
        "params": count_params(model),
        "params_nonzero": count_params(model, nonzero=True),
        "macs": count_macs(model, spec),
        "size_bytes": size_bytes(model),
    }
