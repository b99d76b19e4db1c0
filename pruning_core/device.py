"""Choosing a device without touching CUDA at import time."""

from __future__ import annotations

import torch

from pruning_core.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a torch.device.

    Raises:
        UserError: CUDA asked for where none is available, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                "device cuda asked for, but no CUDA GPU is available (use --device cpu)"
            )
        return torch.device(name)
    raise UserError(f"unknown device '{name}' (auto, cpu, cuda)")
