"""Choosing a device without touching CUDA at import time."""

from __future__ import annotations

import re

import torch

from pruning_core.errors import UserError

__all__ = ["resolve_device"]

_CUDA = re.compile(r"^cuda(?::(\d{1,3}))?$")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a torch.device that exists here.

    Raises:
        UserError: An unknown name, CUDA asked for where none is available, or a GPU index
            beyond the GPUs present.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = _CUDA.match(name)
    if m is None:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise UserError("device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device {name} asked for, but this machine has {count} CUDA GPU(s)")
    return torch.device(name)
