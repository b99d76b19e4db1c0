"""The model-folder schema: `model.json` and the tensors beside it are checked before use.

A model folder comes from disk, so it is untrusted: every field is checked and every violation
is a `UserError` whose message starts with the file and names the field, e.g.
`DIR/model.json: arch_kwargs.num_classes must be in [1, 100000], got 1000000000000`.

The schema (unknown top-level keys such as `recipe`, `metrics`, `uploaded` are tolerated):

- `arch`: a registry name (checked by the registry).
- `arch_kwargs` (optional; default from `spec`): only the builders' real parameters,
  `num_classes` in [1, 100000], `in_channels` in [1, 16], `image_size` in [1, 4096] (integers;
  see `pruning_core.spec`). The dense architecture they build may have at most `MAX_PARAMS`
  parameters, counted on the `meta` device before anything is allocated.
- `spec` (optional; default: the registry's spec adapted to `arch_kwargs`): complete and strict
  (`InputSpec.parse`), and agreeing with `arch_kwargs` on channels, size and classes.
- `surgery` (optional): only `attrs`, `identity`, `self_attention`, `attention`, `free` and
  `lowrank`. `attrs` maps module paths
  to shape attributes (`surgery.SHAPE_ATTRS` only: no `forward`, no `__class__`) with positive
  integer values (a list of them for `normalized_shape`); the paths and attributes must exist
  on the built model (`surgery.apply_surgery`). `identity`, `self_attention` and `attention` list
  module paths that exist (`self_attention` only on `nn.MultiheadAttention`, `attention` only on
  another library's attention that converts exactly, `attention.convertible_attention`).
  `lowrank` maps module paths (a Linear or an ungrouped Conv2d on the built model) to exactly
  `{"in", "rank", "out"}`, positive integers: the widths of the factorised pair that replaces
  it (`layers.low_rank_like`).

After surgery every module's tensors must agree with its own shape attributes
(`check_module_shapes`), and one forward pass of a zero image in eval mode must give
`(1, num_classes)` finite logits (`dry_forward`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pruning_core.errors import UserError, shown
from pruning_core.layers import zero_forward
from pruning_core.spec import MAX_CHANNELS, MAX_CLASSES, MAX_SIZE, InputSpec, check_int
from pruning_core.surgery import SHAPE_ATTRS, SURGERY_KEYS

__all__ = [
    "ARCH_KWARGS",
    "MAX_PARAMS",
    "ModelMeta",
    "build_skeleton",
    "check_arch_kwargs",
    "check_arch_name",
    "check_meta",
    "check_module_shapes",
    "check_param_budget",
    "check_surgery",
    "count_params_meta",
    "dry_forward",
]

# The builders' parameters a model.json may set, with their inclusive bounds.
ARCH_KWARGS: dict[str, tuple[int, int]] = {
    "num_classes": (1, MAX_CLASSES),
    "in_channels": (1, MAX_CHANNELS),
    "image_size": (1, MAX_SIZE),
}
# Above torchvision's largest classifiers (vit_h_14, regnet_y_128gf: about 0.64e9): 4 GB of
# float32 weights. A DigitsMLP at image_size 4096 would be 2.1e9.
MAX_PARAMS = 1_000_000_000
# Shape attribute values: positive and within a C int (torch's own sizes).
_MAX_ATTR = 2**31 - 1
_MAX_NDIM = 8


@dataclass(frozen=True)
class ModelMeta:
    """The checked fields of a model.json.

    Attributes:
        arch: Registry architecture name.
        arch_kwargs: {num_classes, in_channels, image_size} of the dense build.
        spec: The input spec (agrees with arch_kwargs).
        surgery: Normalised surgery (only the keys present; see `surgery.apply_surgery`).
        state_versions: Module format versions of the saved state (`checkpoint.load_state`).
    """

    arch: str
    arch_kwargs: dict[str, int]
    spec: InputSpec
    surgery: dict[str, Any] = field(default_factory=dict)
    state_versions: dict[str, int] = field(default_factory=dict)


def check_arch_name(meta: Mapping[str, Any], where: str) -> str:
    """The `arch` field as a non-empty string (the registry checks that it exists).

    Raises:
        UserError: Missing or not a string.
    """
    arch = meta.get("arch")
    if not isinstance(arch, str) or not arch.strip():
        raise UserError(f"{where}: arch must be a registry name such as 'digits-cnn', got {arch!r}")
    return arch


def check_arch_kwargs(kw: Any, where: str) -> dict[str, int]:
    """Architecture arguments limited to `ARCH_KWARGS`, each an integer within its bounds.

    Args:
        kw: The decoded value (a mapping).
        where: Prefix of messages (`DIR/model.json`).

    Returns:
        The checked arguments (only those given).

    Raises:
        UserError: Not an object, an unknown key, a non-integer or out-of-range value.
    """
    if not isinstance(kw, Mapping):
        raise UserError(f"{where}: arch_kwargs must be an object, got {type(kw).__name__}")
    out: dict[str, int] = {}
    for k, v in kw.items():
        if k not in ARCH_KWARGS:
            raise UserError(
                f"{where}: arch_kwargs.{shown(k)} is not an architecture argument "
                f"(allowed: {', '.join(ARCH_KWARGS)})"
            )
        lo, hi = ARCH_KWARGS[k]
        out[k] = check_int(v, f"{where}: arch_kwargs.{k}", lo, hi)
    return out


def check_surgery(surgery: Any, where: str) -> dict[str, Any]:
    """Type-check a surgery record (paths and attributes are checked on the model later).

    Returns:
        {"attrs": {path: {attr: int | list[int]}}, "identity": [path], "self_attention": [path]}
        with only the keys present.

    Raises:
        UserError: Naming the first field that is not of the schema (see the module docstring).
    """
    if surgery is None:
        return {}
    if not isinstance(surgery, Mapping):
        raise UserError(f"{where}: surgery must be an object, got {type(surgery).__name__}")
    out: dict[str, Any] = {}
    for key, value in surgery.items():
        if key not in SURGERY_KEYS:
            raise UserError(
                f"{where}: surgery.{shown(key)} is not a surgery field "
                f"(allowed: {', '.join(SURGERY_KEYS)})"
            )
        if value is None:
            continue
        if key == "attrs":
            out[key] = _check_attrs(value, where)
        elif key == "free":
            out[key] = _check_free(value, where)
        elif key == "lowrank":
            out[key] = _check_lowrank(value, where)
        else:
            if not isinstance(value, list):
                raise UserError(f"{where}: surgery.{key} must be a list of module paths")
            for i, path in enumerate(value):
                if not isinstance(path, str) or not path:
                    raise UserError(
                        f"{where}: surgery.{key}[{i}] must be a module path, got {path!r}"
                    )
            out[key] = list(value)
    return out


def _check_free(free: Any, where: str) -> dict[str, list[int]]:
    if not isinstance(free, Mapping):
        raise UserError(f"{where}: surgery.free must be an object of tensor names and shapes")
    out: dict[str, list[int]] = {}
    for name, shape in free.items():
        what = f"{where}: surgery.free.{shown(name)}"
        if not isinstance(name, str) or not name:
            raise UserError(f"{what}: tensor names must be strings")
        if not isinstance(shape, list) or not 0 <= len(shape) <= _MAX_NDIM:
            raise UserError(f"{what} must be a list of 0 to {_MAX_NDIM} sizes")
        out[name] = [check_int(x, f"{what}[{i}]", 0, _MAX_ATTR) for i, x in enumerate(shape)]
    return out


_LOWRANK_FIELDS = ("in", "rank", "out")


def _check_lowrank(lowrank: Any, where: str) -> dict[str, dict[str, int]]:
    if not isinstance(lowrank, Mapping):
        raise UserError(f"{where}: surgery.lowrank must be an object of module paths")
    out: dict[str, dict[str, int]] = {}
    for path, rec in lowrank.items():
        what = f"{where}: surgery.lowrank.{shown(path) or '(root)'}"
        if not isinstance(path, str) or not path:
            raise UserError(f"{what}: module paths must be non-empty strings")
        if not isinstance(rec, Mapping) or set(rec) != set(_LOWRANK_FIELDS):
            raise UserError(f"{what} must be an object of exactly {', '.join(_LOWRANK_FIELDS)}")
        out[path] = {k: check_int(rec[k], f"{what}.{k}", 1, _MAX_ATTR) for k in _LOWRANK_FIELDS}
    return out


def _check_attrs(attrs: Any, where: str) -> dict[str, dict[str, int | list[int]]]:
    if not isinstance(attrs, Mapping):
        raise UserError(f"{where}: surgery.attrs must be an object of module paths")
    out: dict[str, dict[str, int | list[int]]] = {}
    for path, values in attrs.items():
        what = f"{where}: surgery.attrs.{shown(path) or '(root)'}"
        if not isinstance(path, str):
            raise UserError(f"{what}: module paths must be strings")
        if not isinstance(values, Mapping):
            raise UserError(f"{what} must be an object of shape attributes")
        checked: dict[str, int | list[int]] = {}
        for a, v in values.items():
            if a not in SHAPE_ATTRS:
                raise UserError(
                    f"{what}.{shown(a)} is not a shape attribute (allowed: {', '.join(SHAPE_ATTRS)})"
                )
            if a == "normalized_shape":
                if not isinstance(v, list) or not 1 <= len(v) <= _MAX_NDIM:
                    raise UserError(f"{what}.{a} must be a list of 1 to {_MAX_NDIM} integers")
                checked[a] = [
                    check_int(x, f"{what}.{a}[{i}]", 1, _MAX_ATTR) for i, x in enumerate(v)
                ]
            else:
                checked[a] = check_int(v, f"{what}.{a}", 1, _MAX_ATTR)
        out[path] = checked
    return out


def check_meta(meta: Mapping[str, Any], where: str, default_spec: InputSpec) -> ModelMeta:
    """Check a decoded model.json (all but what needs the built model).

    Args:
        meta: The decoded object.
        where: The file, for messages (`DIR/model.json`).
        default_spec: The registry's spec of `meta["arch"]` (used when `spec` is absent).

    Returns:
        The checked fields.

    Raises:
        UserError: Naming the first field that breaks the schema (see the module docstring),
            or spec and arch_kwargs that disagree.
    """
    arch = check_arch_name(meta, where)
    kw = (
        check_arch_kwargs(meta["arch_kwargs"], where)
        if meta.get("arch_kwargs") is not None
        else None
    )
    if meta.get("spec") is not None:
        spec = InputSpec.parse(meta["spec"], f"{where}: spec")
    else:
        base = default_spec
        kw0 = kw or {}
        changes = {
            k2: kw0[k1]
            for k1, k2 in (
                ("num_classes", "num_classes"),
                ("in_channels", "channels"),
                ("image_size", "size"),
            )
            if k1 in kw0 and kw0[k1] != getattr(base, k2)
        }
        spec = base.with_(**changes) if changes else base
    from_spec = {
        "num_classes": spec.num_classes,
        "in_channels": spec.channels,
        "image_size": spec.size,
    }
    for k, v in (kw or {}).items():
        if from_spec[k] != v:
            field_name = {"in_channels": "channels", "image_size": "size"}.get(k, k)
            raise UserError(
                f"{where}: arch_kwargs.{k} is {v} but spec.{field_name} is {from_spec[k]}; "
                "they must agree"
            )
    versions = meta.get("state_versions") or {}
    if not isinstance(versions, Mapping) or not all(isinstance(k, str) for k in versions):
        raise UserError(f"{where}: state_versions must be an object of module prefixes")
    checked = {
        k: check_int(v, f"{where}: state_versions.{shown(k)}", 1, 1000) for k, v in versions.items()
    }
    return ModelMeta(
        arch,
        {**from_spec, **(kw or {})},
        spec,
        check_surgery(meta.get("surgery"), where),
        checked,
    )


class _LargeOnMeta(TorchFunctionMode):
    """Tensors created with a size put on the `meta` device when larger than `_SMALL`; the rest
    (the few values some builders compute with, such as regnet's block widths) stay real."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _SIZED and kwargs.get("device") is None:
            dims = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
            if func is torch.full:
                dims = args[0]
            try:
                n = math.prod(int(d) for d in dims)
            except (TypeError, ValueError):
                n = None
            if n is None or n > _SMALL:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


_SIZED = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn})
_SMALL = 4096


def build_skeleton(builder: Callable[..., nn.Module], kwargs: Mapping[str, Any]) -> nn.Module:
    """`builder(**kwargs)` with its weights on the `meta` device: shapes without memory.

    Some builders compute with tensor values while building (torchvision's regnet sizes its
    blocks with `torch.arange(...).tolist()`), which a plain `torch.device("meta")` refuses; for
    those only the large tensors go to meta. The device context is per thread, so other
    sessions building models at the same time are not affected.

    Raises:
        Whatever the builder raises (bad arguments, or code that needs real weight values).
    """
    try:
        with torch.device("meta"):
            return builder(**kwargs)
    except NotImplementedError:
        with _LargeOnMeta():
            # The small tensors built for real go to meta too, so the skeleton runs on one device.
            return builder(**kwargs).to("meta")


def count_params_meta(builder: Callable[..., nn.Module], kwargs: Mapping[str, Any]) -> int:
    """Parameters of `builder(**kwargs)`, counted on a skeleton (`build_skeleton`).

    Raises:
        Whatever the builder raises.
    """
    return sum(p.numel() for p in build_skeleton(builder, kwargs).parameters())


def _fmt(shape: Any) -> str:
    return str(tuple(int(s) for s in shape))


def check_module_shapes(model: nn.Module, source: str) -> None:
    """Every module's tensors agree with its own shape attributes.

    Checked: convolutions (weight (out, in/groups, *kernel), or (in, out/groups, *kernel) when
    transposed; bias (out,); groups divide both widths), Linear ((out, in), bias (out,)),
    BatchNorm/InstanceNorm (num_features), LayerNorm (normalized_shape), GroupNorm (width a
    multiple of num_groups), Embedding, nn.MultiheadAttention (embed_dim = num_heads * head_dim,
    in-projection (3 * embed_dim, embed_dim)) and attention modules with `num_heads`, `head_dim`,
    `qkv` and `proj` (qkv out = 3 * heads * head_dim, proj in = heads * head_dim).

    Args:
        model: The model after surgery (any device, `meta` included).
        source: The tensors' file, for messages.

    Raises:
        UserError: Naming the first tensor whose shape its module's attributes contradict.
    """
    for name, mod in model.named_modules():
        label = f"{type(mod).__name__} '{name or '(root)'}'"
        for pname, want, why in _expected(mod, name, source):
            t = getattr(mod, pname, None)
            if isinstance(t, torch.Tensor) and tuple(t.shape) != tuple(want):
                tensor = f"{name}.{pname}" if name else pname
                raise UserError(
                    f"{source}: tensor '{tensor}' has shape {_fmt(t.shape)} but {label} "
                    f"({why}) needs {_fmt(want)}"
                )


def _expected(mod: nn.Module, name: str, source: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(tensor attribute, expected shape, the attributes it follows from) for one module."""
    label = f"{type(mod).__name__} '{name or '(root)'}'"
    if isinstance(mod, nn.modules.conv._ConvNd):
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        why = f"in_channels={cin}, out_channels={cout}, groups={g}"
        if g < 1 or cin % g or cout % g:
            raise UserError(f"{source}: {label} has {why}: groups must divide both widths")
        k = tuple(int(x) for x in mod.kernel_size)
        w = (cin, cout // g, *k) if mod.transposed else (cout, cin // g, *k)
        return [("weight", w, why), ("bias", (cout,), why)]
    if isinstance(mod, nn.Linear):
        why = f"in_features={mod.in_features}, out_features={mod.out_features}"
        return [
            ("weight", (mod.out_features, mod.in_features), why),
            ("bias", (mod.out_features,), why),
        ]
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        n = mod.num_features
        why = f"num_features={n}"
        return [(p, (n,), why) for p in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(mod, nn.LayerNorm):
        shape = tuple(int(x) for x in mod.normalized_shape)
        why = f"normalized_shape={list(shape)}"
        return [("weight", shape, why), ("bias", shape, why)]
    if isinstance(mod, nn.GroupNorm):
        gw = mod.weight
        if isinstance(gw, torch.Tensor):
            # num_channels is not a recorded shape attribute (GroupNorm's forward never reads
            # it): the saved width stands, as long as the groups divide it.
            if gw.dim() != 1 or gw.shape[0] % mod.num_groups:
                raise UserError(
                    f"{source}: tensor '{name}.weight' has shape {_fmt(gw.shape)} but {label} "
                    f"needs a width that is a multiple of num_groups={mod.num_groups}"
                )
            mod.num_channels = int(gw.shape[0])
        why = f"num_channels={mod.num_channels}"
        return [("weight", (mod.num_channels,), why), ("bias", (mod.num_channels,), why)]
    if isinstance(mod, nn.Embedding):
        why = f"num_embeddings={mod.num_embeddings}, embedding_dim={mod.embedding_dim}"
        return [("weight", (mod.num_embeddings, mod.embedding_dim), why)]
    if isinstance(mod, nn.MultiheadAttention):
        e, h = mod.embed_dim, mod.num_heads
        why = f"embed_dim={e}, num_heads={h}, head_dim={mod.head_dim}"
        if h < 1 or h * mod.head_dim != e:
            raise UserError(f"{source}: {label} has {why}: embed_dim must be num_heads * head_dim")
        out = mod.out_proj
        if out.in_features != e or out.out_features != e:
            raise UserError(
                f"{source}: {label} ({why}) needs out_proj {e} -> {e}, got "
                f"{out.in_features} -> {out.out_features}"
            )
        if mod._qkv_same_embed_dim:
            return [("in_proj_weight", (3 * e, e), why), ("in_proj_bias", (3 * e,), why)]
        return [("in_proj_bias", (3 * e,), why)]
    h, d = getattr(mod, "num_heads", None), getattr(mod, "head_dim", None)
    qkv, proj = getattr(mod, "qkv", None), getattr(mod, "proj", None)
    if (
        isinstance(h, int)
        and isinstance(d, int)
        and isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
    ):
        why = f"num_heads={h}, head_dim={d}"
        if h < 1 or d < 1:
            raise UserError(f"{source}: {label} has {why}: both must be positive")
        if (
            qkv.out_features != 3 * h * d
            or proj.in_features != h * d
            or qkv.in_features != proj.out_features
        ):
            raise UserError(
                f"{source}: {label} ({why}) needs qkv {proj.out_features} -> {3 * h * d} and proj "
                f"{h * d} -> {proj.out_features}, got qkv {qkv.in_features} -> {qkv.out_features} "
                f"and proj {proj.in_features} -> {proj.out_features}"
            )
    return []


def dry_forward(model: nn.Module, spec: InputSpec, where: str) -> None:
    """Run one zero image through `model` (`layers.zero_forward`: eval mode, no gradients, its
    mode restored) and check the logits.

    Args:
        model: The assembled model.
        spec: Its input spec.
        where: The folder or file, for messages.

    Raises:
        UserError: The forward pass fails (the message gives its first line), or its output is
            not a finite (1, spec.num_classes) tensor.
    """
    shape = (1, spec.channels, spec.size, spec.size)
    try:
        y = zero_forward(model, spec)
    except Exception as e:  # any failure of a user's model means the folder is inconsistent
        line = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{where}: the model does not run on a {'x'.join(map(str, shape))} input "
            f"({type(e).__name__}: {line})"
        ) from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, spec.num_classes):
        got = _fmt(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise UserError(
            f"{where}: the model gives {got} for one image, but spec.num_classes is "
            f"{spec.num_classes}"
        )
    if not bool(torch.isfinite(y).all()):
        raise UserError(f"{where}: the model gives NaN/inf logits for a zero image")


def check_param_budget(count: int, where: str, what: str) -> None:
    """Refuse an architecture of more than `MAX_PARAMS` parameters.

    Raises:
        UserError: `what` (the field) builds too large a model.
    """
    if count > MAX_PARAMS:
        raise UserError(
            f"{where}: {what} build a model of {count:,} parameters, over the limit of "
            f"{MAX_PARAMS:,}"
        )
