"""Reading and writing model weights safely.

A model directory (written by `train`, `prune` and the sample-model script) holds
`model.safetensors` (tensors only, nothing executable) and `model.json` (architecture name and
arguments, input spec, and the *surgery* that turns a freshly built architecture into the saved
shape: module attributes changed by structured pruning, submodules replaced by identities).
Reloading never unpickles code.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.fsio import atomic_path, write_json

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"

# Integer attributes that describe a module's shape; structured pruning changes them.
SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_heads",
    "head_dim",
    "embed_dim",
    "hidden_dim",
)


def module_shape_attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The shape-describing attributes of every submodule (see `SHAPE_ATTRS`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        attrs: dict[str, Any] = {}
        for a in SHAPE_ATTRS:
            v = getattr(mod, a, None)
            if isinstance(v, bool):
                continue
            if isinstance(v, int):
                attrs[a] = v
            elif isinstance(v, tuple) and all(isinstance(i, int) for i in v):
                attrs[a] = list(v)
        if attrs:
            out[name] = attrs
    return out


def surgery_of(model: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """What differs between `model` and a freshly built `reference` of the same architecture.

    Returns:
        {"attrs": {module: {attr: value}}, "identity": [module paths replaced by nn.Identity],
        "self_attention": [nn.MultiheadAttention paths swapped for SelfAttention (head pruning)]}.
    """
    from pruning_core.models.architectures import SelfAttention

    ref_attrs = module_shape_attrs(reference)
    ref_mods = dict(reference.named_modules())
    attrs = {
        k: v
        for k, v in module_shape_attrs(model).items()
        if ref_attrs.get(k) != v and k in ref_mods
    }
    identity = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Identity) and n in ref_mods and not isinstance(ref_mods[n], nn.Identity)
    ]
    swapped = [
        n
        for n, m in model.named_modules()
        if isinstance(m, SelfAttention) and isinstance(ref_mods.get(n), nn.MultiheadAttention)
    ]
    return {"attrs": attrs, "identity": identity, "self_attention": swapped}


def apply_surgery(
    model: nn.Module, surgery: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> None:
    """Reshape a freshly built model in place so that `state` loads into it."""
    from pruning_core.models.architectures import SelfAttention

    for path in surgery.get("identity", []):
        _set_submodule(model, path, nn.Identity())
    for path in surgery.get("self_attention", []):
        mha = model.get_submodule(path)
        if not isinstance(mha, nn.MultiheadAttention):
            raise UserError(f"checkpoint swaps attention at '{path}' but the architecture has none")
        _set_submodule(model, path, SelfAttention.from_mha(mha))
    mods = dict(model.named_modules())
    for path, attrs in surgery.get("attrs", {}).items():
        if path not in mods:
            raise UserError(f"checkpoint describes module '{path}' that the architecture lacks")
        for a, v in attrs.items():
            setattr(mods[path], a, tuple(v) if isinstance(v, list) else v)
    # Parameters and buffers take the saved shapes; values come from load_state_dict next.
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, p in list(mod.named_parameters(recurse=False)):
            t = state.get(prefix + pname)
            if t is not None and t.shape != p.shape:
                setattr(
                    mod, pname, nn.Parameter(torch.empty_like(t, dtype=p.dtype), p.requires_grad)
                )
        for bname, b in list(mod.named_buffers(recurse=False)):
            t = state.get(prefix + bname)
            if b is not None and t is not None and t.shape != b.shape:
                mod.register_buffer(bname, torch.empty_like(t, dtype=b.dtype))


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> None:
    """Raise a UserError naming the first mismatching keys and shapes, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append("shape mismatch " + "; ".join(shape[:3]))
        if missing:
            parts.append("missing keys " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected keys " + ", ".join(unexpected[:3]))
        raise UserError(f"checkpoint does not fit architecture '{arch}': " + " | ".join(parts))


def read_state_file(
    path: Path, *, trust: bool = False
) -> tuple[dict[str, torch.Tensor] | nn.Module, dict[str, Any]]:
    """Read weights from `.safetensors`, `.pt`/`.pth` (state_dict) or a trusted pickled module.

    Args:
        path: The file.
        trust: Allow a full pickle (which can run arbitrary code). Off unless the user says so.

    Returns:
        (state_dict or whole module, extra metadata found beside the tensors).

    Raises:
        UserError: Missing, unreadable, corrupt or untrusted-pickle files.
    """
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory without {MODEL_FILE}")
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"corrupt safetensors file {path.name}: {_first_line(e)}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_like_torch_file(path):
            raise UserError(f"corrupt checkpoint {path.name}: not a PyTorch file") from None
        if not trust:
            raise UserError(
                f"refusing to unpickle {path.name}: it holds Python objects that could run code "
                "(load it with --trust-pickle only if you trust its source)"
            ) from None
        obj = _trusted_load(path, e)
    except Exception as e:  # torch raises many types for damaged files; all mean "corrupt"
        raise UserError(f"corrupt checkpoint {path.name}: {_first_line(e)}") from None
    if isinstance(obj, nn.Module):
        return obj, meta
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                meta = {
                    k: v for k, v in obj.items() if k != key and isinstance(v, str | int | float)
                }
                obj = inner
                break
            if isinstance(inner, nn.Module):
                return inner, meta
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, meta
    raise UserError(f"{path.name} holds no state_dict (a mapping of tensor names to tensors)")


def _trusted_load(path: Path, err: Exception) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot load trusted pickle {path.name}: {_first_line(e)}") from None


def _looks_like_torch_file(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def save_model_dir(
    directory: Path,
    model: nn.Module,
    meta: dict[str, Any],
    reference: nn.Module | None = None,
) -> None:
    """Write `model.safetensors` + `model.json` into `directory`, atomically per file.

    Args:
        directory: Output directory (created).
        model: The model to save (moved to CPU copies of its tensors).
        meta: At least `arch`, `arch_kwargs` and `spec`; kept in model.json.
        reference: A freshly built model of the same architecture; when given, the surgery that
            maps it onto `model` (structured pruning) is recorded so that loading can rebuild it.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta)
    if reference is not None:
        meta["surgery"] = surgery_of(model, reference)
    with atomic_path(directory / MODEL_FILE) as tmp:
        save_file(_dedupe_shared(state), str(tmp))
    write_json(directory / META_FILE, meta)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); clone those.
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def read_model_dir(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model directory's tensors and metadata (no code is unpickled)."""
    meta_path = directory / META_FILE
    if not meta_path.exists() or not (directory / MODEL_FILE).exists():
        raise UserError(
            f"{directory} is not a model directory (needs {MODEL_FILE} and {META_FILE})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {META_FILE} in {directory}: {_first_line(e)}") from None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise UserError(f"{meta_path} names no architecture ('arch')")
    state, _ = read_state_file(directory / MODEL_FILE)
    assert isinstance(state, dict)
    return state, meta
