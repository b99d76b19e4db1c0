"""Checkpoint surgery: what turns a freshly built architecture into a pruned model's shape.

A leaf module (torch, `errors`, `attention` and `layers` only), used by `checkpoint` when a model is
saved (`surgery_of`) and by the model loader (`apply_surgery`) and the model.json schema
(`models.validate`: `SHAPE_ATTRS`, `SURGERY_KEYS`) when one is read back. Surgery is data, never
code: shape attributes of existing modules, submodules replaced by identities, and batch-first
`nn.MultiheadAttention` swapped for `SelfAttention` (head pruning), and Linear/Conv2d layers
replaced by their factorised `layers.LowRankLinear` / `layers.LowRankConv2d` (low rank), recorded
by their widths only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruning_core.attention import Attention, SelfAttention, convertible_attention
from pruning_core.errors import UserError, shown
from pruning_core.layers import LOW_RANK_LAYERS, low_rank_like, set_submodule

__all__ = [
    "SHAPE_ATTRS",
    "SURGERY_KEYS",
    "apply_surgery",
    "has_surgery",
    "module_shape_attrs",
    "surgery_of",
]

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
            if isinstance(getattr(type(mod), a, None), property):
                continue  # derived from its children (timm's ConvNormAct.in_channels)
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
        "self_attention": [nn.MultiheadAttention paths swapped for SelfAttention (head pruning)],
        "attention": [paths of another library's attention converted to `Attention`; only
        when there are some],
        "free": {tensor: shape} for parameters and buffers of modules without shape attributes
        whose shape changed (a ViT's position embedding, a ConvNeXt layer scale),
        "lowrank": {path: {"in": width, "rank": r, "out": width}} for layers replaced by a
        low-rank pair (`layers.LOW_RANK_LAYERS`; only when there are some)}.
    """
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
    converted = [
        n
        for n, m in model.named_modules()
        if type(m) is Attention and n in ref_mods and type(ref_mods[n]) is not Attention
    ]
    ref_tensors = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    free = {
        n: list(t.shape)
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if n.rpartition(".")[0] not in ref_attrs
        and n in ref_tensors
        and tuple(ref_tensors[n].shape) != tuple(t.shape)
    }
    # A factorised layer's widths are read from its children, which the reference lacks, so
    # they are recorded here whole (they may have been pruned before or after factorising).
    lowrank = {
        n: {"in": _in_width(m), "rank": int(getattr(m, "rank", 0)), "out": _out_width(m)}
        for n, m in model.named_modules()
        if isinstance(m, LOW_RANK_LAYERS)
        and n in ref_mods
        and not isinstance(ref_mods[n], LOW_RANK_LAYERS)
    }
    out = {"attrs": attrs, "identity": identity, "self_attention": swapped, "free": free}
    if converted:  # written only when used, so folders stay readable by the previous version
        out["attention"] = converted
    if lowrank:
        out["lowrank"] = lowrank
    return out


def _in_width(m: nn.Module) -> int:
    w: Any = getattr(m, "in_features", None) or getattr(m, "in_channels", 0)
    return int(w)


def _out_width(m: nn.Module) -> int:
    w: Any = getattr(m, "out_features", None) or getattr(m, "out_channels", 0)
    return int(w)


SURGERY_KEYS = ("attrs", "identity", "self_attention", "attention", "free", "lowrank")


def has_surgery(surgery: Mapping[str, Any] | None) -> bool:
    """True when `surgery` changes anything (some attrs, identities or attention swaps)."""
    return surgery is not None and any(surgery.get(k) for k in SURGERY_KEYS)


def apply_surgery(
    model: nn.Module,
    surgery: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    where: str = "checkpoint",
) -> None:
    """Reshape a freshly built model in place so that `state` loads into it.

    Submodules named in `identity` become `nn.Identity`, `self_attention` paths (which must be
    `nn.MultiheadAttention`) become `SelfAttention`, `lowrank` paths (a Linear or an ungrouped
    Conv2d) become `LowRankLinear` / `LowRankConv2d` of the recorded widths, `attrs` set shape
    attributes that must
    already exist on their module; then every parameter/buffer takes its saved shape (same number
    of dimensions only). Nothing here trusts `state`: `check_module_shapes` must confirm
    afterwards that each module's tensors agree with its own shape attributes. Without any
    surgery nothing is resized, so `check_state_dict` sees every mismatch.

    Args:
        model: A freshly built model (on any device, `meta` included).
        surgery: {"attrs": {path: {attr: int or list of int}}, "identity": [path],
            "self_attention": [path]}, already type-checked (see `models.validate`).
        state: The saved tensors (only their shapes are read).
        where: Prefix of messages (`DIR/model.json`).

    Raises:
        UserError: A path that does not exist, an attention swap on something that is not a
            batch-first `nn.MultiheadAttention`, a low-rank record on something that is not a
            Linear or ungrouped Conv2d, or an attribute the module does not have.
    """
    if not has_surgery(surgery):
        return
    for i, path in enumerate(surgery.get("identity") or []):
        _submodule(model, path, f"{where}: surgery.identity[{i}]")
        set_submodule(model, path, nn.Identity())
    swapped: list[str] = []
    for i, path in enumerate(surgery.get("self_attention") or []):
        what = f"{where}: surgery.self_attention[{i}]"
        mha = _submodule(model, path, what)
        if not isinstance(mha, nn.MultiheadAttention):
            raise UserError(
                f"{what}: {path!r} is a {type(mha).__name__}, not an nn.MultiheadAttention"
            )
        w = mha.in_proj_weight
        if not (mha.batch_first and mha._qkv_same_embed_dim and isinstance(w, torch.Tensor)):
            raise UserError(
                f"{what}: only a batch-first nn.MultiheadAttention with one in-projection "
                f"converts, and {path!r} is not one"
            )
        # Values come from the state next, so nothing is copied (the model may be on `meta`).
        with torch.device(w.device):
            set_submodule(model, path, SelfAttention(mha.embed_dim, mha.num_heads))
        swapped.append(path)
    for i, path in enumerate(surgery.get("attention") or []):
        what = f"{where}: surgery.attention[{i}]"
        att = _submodule(model, path, what)
        if not convertible_attention(att):
            raise UserError(
                f"{what}: {path!r} is a {type(att).__name__}, not an attention that converts"
            )
        # Values come from the state next (the model may be on `meta`).
        qkv: Any = att.qkv
        heads: Any = att.num_heads
        with torch.device(qkv.weight.device):
            set_submodule(model, path, Attention(int(qkv.in_features), int(heads)))
    for path, rec in (surgery.get("lowrank") or {}).items():
        what = f"{where}: surgery.lowrank.{shown(path)}"
        layer = _submodule(model, path, what)
        try:
            pair = low_rank_like(layer, rec["in"], rec["rank"], rec["out"])
        except UserError as e:
            raise UserError(f"{what}: {e}") from None
        # Values come from the state next; the children's widths are checked like any layer's.
        set_submodule(model, path, pair)
    mods = dict(model.named_modules())
    shaped = set(module_shape_attrs(model))  # modules whose tensors their own attributes check
    old_widths: set[int] = set()
    for path, attrs in (surgery.get("attrs") or {}).items():
        what = f"{where}: surgery.attrs.{shown(path) or '(root)'}"
        if path not in mods:
            raise UserError(f"{what}: the model has no module {path!r}")
        mod = mods[path]
        for a, v in attrs.items():
            old = getattr(mod, a, None)
            if a not in SHAPE_ATTRS or isinstance(old, bool) or not isinstance(old, int | tuple):
                raise UserError(
                    f"{what}.{shown(a)}: {type(mod).__name__} {path!r} has no shape attribute {a!r}"
                )
            if isinstance(old, tuple) != isinstance(v, list | tuple):
                raise UserError(
                    f"{what}.{a} must be {'a list of integers' if isinstance(old, tuple) else 'an integer'}"
                    f", got {v!r}"
                )
            if isinstance(old, int):
                old_widths.add(old)
            try:
                setattr(mod, a, tuple(v) if isinstance(v, list | tuple) else v)
            except AttributeError:
                # A width read from children (a low-rank pair's `in_features`): not settable,
                # so the record contradicts the module it names (a hand-edited model.json).
                raise UserError(
                    f"{what}.{a}: {type(mod).__name__} {path!r} takes its {a} from its layers; "
                    "the record does not match the module it names"
                ) from None
    free = surgery.get("free")
    # Parameters and buffers take the saved shapes; values come from load_state_dict next.
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        own = name in shaped or name in swapped
        for pname, p in list(mod.named_parameters(recurse=False)):
            t = state.get(prefix + pname)
            if t is not None and t.shape != p.shape and t.dim() == p.dim():
                _allowed(prefix + pname, p, t, own, free, old_widths, where)
                new = torch.empty(t.shape, dtype=p.dtype, device=p.device)
                setattr(mod, pname, nn.Parameter(new, p.requires_grad))
        for bname, b in list(mod.named_buffers(recurse=False)):
            t = state.get(prefix + bname)
            if b is not None and t is not None and t.shape != b.shape and t.dim() == b.dim():
                _allowed(prefix + bname, b, t, own, free, old_widths, where)
                mod.register_buffer(bname, torch.empty(t.shape, dtype=b.dtype, device=b.device))
    # An attention swap creates qkv/proj that the dense reference lacks, so surgery_of cannot
    # record their widths: they follow their (checked) SelfAttention's heads instead.
    for path in swapped:
        att = model.get_submodule(path)
        for lin in (getattr(att, "qkv", None), getattr(att, "proj", None)):
            if isinstance(lin, nn.Linear):
                lin.out_features, lin.in_features = lin.weight.shape


def _allowed(
    name: str,
    built: torch.Tensor,
    saved: torch.Tensor,
    own: bool,
    free: Mapping[str, Any] | None,
    old_widths: set[int],
    where: str,
) -> None:
    """May the saved tensor `name` change the built shape? A tensor of a module with shape
    attributes may (`check_module_shapes` holds it to them); a free tensor only as the surgery
    records it (`free`), or, in folders written before `free` was recorded, along one dimension
    whose built size is a width the surgery changed (an embedding or layer-scale width).

    Raises:
        UserError: Naming the tensor and both shapes.
    """
    if own:
        return
    got, want = tuple(saved.shape), tuple(built.shape)
    if free is not None:
        ok = name in free and tuple(free[name]) == got
    else:
        differ = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        ok = len(differ) == 1 and want[differ[0]] in old_widths
    if not ok:
        raise UserError(
            f"{where}: tensor {shown(name)} is saved as {got} but the architecture builds {want}, "
            "and the surgery does not say it changed"
        )


def _submodule(model: nn.Module, path: Any, what: str) -> nn.Module:
    if not isinstance(path, str) or not path:
        raise UserError(f"{what} must be a module path such as 'layer1.0', got {path!r}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UserError(f"{what}: the model has no module {path!r}") from None
