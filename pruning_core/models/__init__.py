"""The model registry: sample models, classic architectures and torchvision, and safe loading.

`list_models()` and `create_model(name)` are the public surface (timm style); `load_model(ref)`
resolves anything the CLI and the app accept as a model: a registry name, a model directory
written by `train`/`prune`, a zip of one (the Export page's download), or a checkpoint file with
an architecture name.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.checkpoint import (
    CHECKPOINT_SUFFIXES,
    META_FILE,
    MODEL_FILE,
    MODEL_ZIP_SUFFIX,
    QUANT_META_FILE,
    QUANT_ONNX_FILE,
    check_loaded_finite,
    check_state_dict,
    check_tensors,
    is_model_zip,
    is_quantized_dir,
    load_state,
    read_model_meta,
    read_model_state,
    read_state_file,
    unzipped_model,
)
from pruning_core.errors import UserError, first_line, shown
from pruning_core.models import architectures as A
from pruning_core.models import validate as V
from pruning_core.models.families import FAMILIES, Family, fit_size
from pruning_core.spec import InputSpec, check_int
from pruning_core.surgery import apply_surgery

__all__ = [
    "InputSpec",
    "LoadedModel",
    "ModelEntry",
    "arch_weight_counts",
    "build_for_data",
    "create_model",
    "dense_weight_counts",
    "get_entry",
    "input_size_for",
    "is_external",
    "list_models",
    "load_model",
    "model_choices",
    "model_spec",
    "sample_models_dir",
    "sparsity_base",
]

_MNIST = ((0.1307,), (0.3081,))
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
# digits pixels are 0..16 scaled to [0, 1]; these are their statistics.
_DIGITS = ((0.3052,), (0.3824,))
_SHAPES = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry.

    Attributes:
        name: Registry name (`digits-cnn`, `resnet20`, ...).
        family: `sample`, `classic` or `torchvision`.
        description: One line for lists and the UI.
        spec: Default input spec.
        builder: Called with num_classes, in_channels, image_size.
        default_dataset: The dataset the model is meant for, if any.
        sample: True when trained weights ship in `sample_models/NAME/`.
    """

    name: str
    family: str
    description: str
    spec: InputSpec
    builder: Callable[..., nn.Module] = field(repr=False)
    default_dataset: str | None = None
    sample: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no builder)."""
        d: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "default_dataset": self.default_dataset,
            "trained": self.sample,
            "input": self.spec.to_dict(),
        }
        return d


def _spec(
    c: int, s: int, norm: tuple[tuple[float, ...], tuple[float, ...]], n: int = 10
) -> InputSpec:
    return InputSpec(channels=c, size=s, mean=norm[0], std=norm[1], num_classes=n)


_REGISTRY: dict[str, ModelEntry] = {}


def _register(entry: ModelEntry) -> None:
    _REGISTRY[entry.name] = entry


for _e in (
    ModelEntry(
        "digits-mlp",
        "sample",
        "MLP 64-128-64-10 trained on 8x8 digits",
        _spec(1, 8, _DIGITS),
        A.DigitsMLP,
        "digits",
        True,
    ),
    ModelEntry(
        "digits-cnn",
        "sample",
        "small CNN (2 convs, 2 linears) trained on 8x8 digits",
        _spec(1, 8, _DIGITS),
        A.DigitsCNN,
        "digits",
        True,
    ),
    ModelEntry(
        "shapes-resnet",
        "sample",
        "14-layer residual CNN with BatchNorm trained on shapes",
        _spec(3, 32, _SHAPES),
        lambda **kw: A.CifarResNet(n=2, **kw),
        "shapes",
        True,
    ),
    ModelEntry(
        "shapes-vit",
        "sample",
        "tiny ViT (conv stem, 16 tokens, 4 blocks, 4 heads, dim 64) trained on shapes",
        _spec(3, 32, _SHAPES),
        lambda **kw: A.TinyViT(patch=8, conv_stem=True, **kw),
        "shapes",
        True,
    ),
    ModelEntry(
        "lenet-300-100",
        "classic",
        "LeNet-300-100 fully connected (untrained)",
        _spec(1, 28, _MNIST),
        A.LeNet300100,
        "mnist",
    ),
    ModelEntry(
        "lenet5",
        "classic",
        "LeNet-5 convolutional (untrained)",
        _spec(1, 28, _MNIST),
        A.LeNet5,
        "mnist",
    ),
    ModelEntry(
        "resnet20",
        "classic",
        "CIFAR ResNet-20 (untrained)",
        _spec(3, 32, _CIFAR),
        lambda **kw: A.CifarResNet(n=3, **kw),
        "cifar10",
    ),
    ModelEntry(
        "resnet56",
        "classic",
        "CIFAR ResNet-56 (untrained)",
        _spec(3, 32, _CIFAR),
        lambda **kw: A.CifarResNet(n=9, **kw),
        "cifar10",
    ),
    ModelEntry(
        "vgg16-cifar",
        "classic",
        "VGG-16 with BatchNorm for CIFAR (untrained)",
        _spec(3, 32, _CIFAR),
        A.VGGCifar,
        "cifar10",
    ),
):
    _register(_e)


def sample_models_dir() -> Path:
    """Where the trained sample models live (override with PRUNING_LAB_SAMPLES)."""
    env = os.environ.get("PRUNING_LAB_SAMPLES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "sample_models"


def list_models(include_external: bool = True, filter: str | None = None) -> list[ModelEntry]:
    """Registry entries, then a few suggested `torchvision:NAME` and `timm:NAME` entries.

    Args:
        include_external: List the suggested torchvision and timm architectures too.
        filter: A case-insensitive substring or glob (`*vit*`, `mobilenetv3*`,
            `timm:vit_*`): then every torchvision and timm architecture whose name, with or
            without its `timm:`/`torchvision:` prefix, matches is listed, not only the
            suggested ones.
    """
    out = list(_REGISTRY.values())
    if filter:
        pat = filter.lower() if any(c in filter for c in "*?[") else f"*{filter.lower()}*"
        out = [e for e in out if fnmatch.fnmatchcase(e.name.lower(), pat)]
        for fam in FAMILIES.values():
            out += [
                _family_entry(fam, n)
                for n in fam.names()
                if fnmatch.fnmatchcase((fam.prefix + n).lower(), pat)
                or fnmatch.fnmatchcase(n.lower(), pat)
            ]
        return out
    if include_external:
        for fam in FAMILIES.values():
            out += [_family_entry(fam, n) for n in fam.suggested]
    return out


def model_choices(include_external: bool = True) -> list[tuple[str, str]]:
    """(name, one-line description) of what `list_models` lists, without building its entries.

    A family's entry needs its input spec, and timm's comes from importing timm (seconds); a
    model picker needs only names and descriptions, so this lists them without importing any
    family's library.

    Args:
        include_external: List the suggested torchvision and timm architectures too.
    """
    out = [(e.name, e.description) for e in _REGISTRY.values()]
    if include_external:
        for fam in FAMILIES.values():
            out += [(fam.prefix + n, fam.description(n)) for n in fam.suggested]
    return out


def _check_not_blank(ref: str) -> None:
    if not ref.strip():
        # Path("") is the current folder: say what is wrong instead of searching it.
        raise UserError(
            "the model name is empty: give a registry name, a model directory or a checkpoint file"
        )


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name` (`torchvision:NAME` and `timm:NAME` included).

    Raises:
        UserError: Unknown name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    _check_not_blank(name)
    for prefix, fam in FAMILIES.items():
        if name.startswith(prefix):
            arch = name[len(prefix) :]
            if not fam.exists(arch):
                raise UserError(
                    f"unknown {fam.label} model {arch!r} ({fam.label} has no such name)"
                )
            return _family_entry(fam, arch)
    known = ", ".join(_REGISTRY)
    raise UserError(
        f"unknown model {name!r} (known: {known}, torchvision:NAME, timm:NAME, a model directory "
        "or a checkpoint file)"
    )


def _family_entry(fam: Family, arch: str) -> ModelEntry:
    return ModelEntry(
        fam.prefix + arch,
        fam.label,
        fam.description(arch),
        fam.default_spec(arch),
        functools.partial(_build_family, fam, arch),
        None,
    )


def _build_family(
    fam: Family,
    arch: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    pretrained: bool = False,
) -> nn.Module:
    return fam.create(arch, num_classes, in_channels, image_size, pretrained)


def is_external(entry: ModelEntry) -> bool:
    """True for architectures of another library (torchvision, timm)."""
    return entry.name.startswith(tuple(FAMILIES))


def input_size_for(entry: ModelEntry, wanted: int) -> int:
    """The input side to build `entry` at for data of side `wanted`: the smallest the
    architecture runs at from `wanted` up (`families.fit_size`); the registry's own
    architectures take any size.

    Raises:
        UserError: The architecture runs at no side from `wanted` up to the size limit.
    """
    fam = next((f for p, f in FAMILIES.items() if entry.name.startswith(p)), None)
    if fam is None:
        return wanted
    arch = entry.name[len(fam.prefix) :]
    return fit_size(
        entry.name,
        lambda side: entry.builder(num_classes=2, image_size=side),
        wanted,
        takes_size=fam.size_kwarg(arch) is not None,
    )


def build_for_data(
    arch: str,
    num_classes: int,
    channels: int,
    side: int,
    *,
    seed: int = 0,
    pretrained: bool = False,
) -> LoadedModel:
    """A fresh (untrained) `arch` that fits data of `num_classes` classes, `channels` channels
    and side `side` px: what `pruning-lab train` starts from.

    Another library's architecture is built at the smallest side it runs at from the data's up
    (at least 32 px, since deep nets downsample 32x; `input_size_for`); the registry's own take
    the data's side. Channels are adapted between 1 and 3 where the data needs it.

    Args:
        arch: Registry name (`digits-cnn`, `torchvision:NAME`, `timm:NAME`).
        num_classes: Classes of the data (the classifier is sized, or replaced, to match).
        channels: Image channels of the data.
        side: Image side of the data (px).
        seed: Seed of the random initialisation.
        pretrained: torchvision and timm architectures: start from the library's ImageNet
            weights (downloaded once through the library's own path; the classifier is new).

    Raises:
        UserError: Unknown architecture, no input size it runs at, or pretrained weights that
            cannot be fetched (offline) or that the architecture does not have.
    """
    entry = get_entry(arch)
    if pretrained and not is_external(entry):
        raise UserError(f"{arch} has no library weights to start from (drop --pretrained)")
    size = input_size_for(entry, max(side, 32)) if is_external(entry) else None
    spec = model_spec(arch, num_classes=num_classes, image_size=size)
    if channels != spec.channels and {channels, spec.channels} != {1, 3}:
        spec = model_spec(arch, num_classes=num_classes, in_channels=channels, image_size=size)
    torch.manual_seed(seed)
    extra = {"pretrained": True} if pretrained else {}
    model = entry.builder(
        num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size, **extra
    )
    return LoadedModel(model=model.eval(), spec=spec, arch=arch, source=arch)


def model_spec(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> InputSpec:
    """The input spec of `create_model(name, ...)` with the same arguments.

    Raises:
        UserError: Unknown name, or an argument outside its bounds (`models.validate.ARCH_KWARGS`).
    """
    for k, v in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        if v is not None:
            check_int(v, k, *V.ARCH_KWARGS[k])
    spec = get_entry(name).spec
    changes: dict[str, Any] = {}
    if num_classes is not None and num_classes != spec.num_classes:
        changes["num_classes"] = num_classes
    if in_channels is not None and in_channels != spec.channels:
        changes["channels"] = in_channels
    if image_size is not None and image_size != spec.size:
        changes["size"] = image_size
    return spec.with_(**changes) if changes else spec


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    pretrained: bool | None = None,
) -> nn.Module:
    """Build a registry model.

    Args:
        name: Registry name or `torchvision:NAME`.
        num_classes: Output classes (default: the entry's).
        in_channels: Input channels (default: the entry's).
        image_size: Input side (default: the entry's).
        pretrained: Load trained weights: the shipped ones for sample models (default True
            when the shape is unchanged), torchvision's download for `torchvision:` (default False).

    Returns:
        The model in eval mode.

    Raises:
        UserError: Unknown name, arguments out of bounds or that the architecture cannot take,
            or more than `models.validate.MAX_PARAMS` parameters.
    """
    entry = get_entry(name)
    spec = model_spec(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    kw: dict[str, Any] = _kw(spec)
    if is_external(entry):
        model = _build(entry, kw, name, "the arguments", pretrained=bool(pretrained))
    else:
        model = _build(entry, kw, name, "the arguments")
        if entry.sample and (pretrained if pretrained is not None else spec == entry.spec):
            if spec != entry.spec:
                raise UserError(
                    f"{name}'s trained weights fit only its own input spec; pass pretrained=False"
                )
            loaded = load_model(str(sample_models_dir() / name))
            load_state(model, loaded.model.state_dict())
    return model.eval()


@dataclass
class LoadedModel:
    """A model with everything needed to feed it and to describe it.

    Attributes:
        model: The module (eval mode, CPU).
        spec: Its input spec.
        arch: Registry architecture name it was built from (None for a trusted pickled module).
        source: What the user passed (name or path).
        meta: model.json contents for model directories (metrics, recipe...), else {}.
    """

    model: nn.Module
    spec: InputSpec
    arch: str | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_kwargs(self) -> dict[str, int]:
        """The arguments that rebuild the dense architecture."""
        return {
            "num_classes": self.spec.num_classes,
            "in_channels": self.spec.channels,
            "image_size": self.spec.size,
        }


def dense_weight_counts(loaded: LoadedModel) -> dict[str, int]:
    """`layers.counted_weights` of the dense architecture `loaded` was built from: the
    denominator of its sparsity (`terms.SPARSITY_MEANS`), which a shrunk model's own weights
    no longer give. Built on the meta device (no memory); the model's own counts where the
    architecture is unknown (a trusted pickle) or cannot be built there.
    """
    from pruning_core.layers import counted_weights

    if loaded.arch is not None and loaded.meta.get("surgery"):
        kw = loaded.meta.get("arch_kwargs")
        try:
            return arch_weight_counts(
                loaded.arch, kw if isinstance(kw, dict) else loaded.arch_kwargs
            )
        except Exception:
            pass
    return counted_weights(loaded.model)


def sparsity_base(loaded: LoadedModel) -> tuple[int, int]:
    """(Linear/Conv weights `loaded` has, those of the dense architecture it was built from):
    what `layers.rebased_sparsity` takes to state a sparsity counted on this model against the
    dense one (`terms.SPARSITY_MEANS`), as `evaluate` counts it. Equal for a model that was
    never shrunk. Take it before pruning the model in place."""
    from pruning_core.layers import counted_weights

    return sum(counted_weights(loaded.model).values()), sum(dense_weight_counts(loaded).values())


def arch_weight_counts(arch: str, kwargs: Mapping[str, Any]) -> dict[str, int]:
    """`layers.counted_weights` of the registry architecture `arch` built with `kwargs`, on the
    meta device (no memory): the dense denominator of a shrunk or exported model's sparsity.

    Raises:
        UserError: `arch` is not in the registry.
        Exception: Whatever the builder raises for `kwargs` (callers fall back to their own count).
    """
    from pruning_core.layers import counted_weights

    return counted_weights(V.build_skeleton(get_entry(arch).builder, kwargs))


def load_model(
    ref: str,
    *,
    arch: str | None = None,
    trust: bool = False,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    label: str | None = None,
) -> LoadedModel:
    """Resolve a model reference.

    Args:
        ref: Registry name, model directory, a `.zip` of one (extracted safely into a temporary
            folder, see `checkpoint.unzipped_model`), or checkpoint file (`.pt`, `.pth`,
            `.safetensors`).
        arch: Architecture of a checkpoint file (a registry name).
        trust: Allow a full pickled module (runs code from the file).
        num_classes, in_channels, image_size: Override the architecture's defaults for a
            checkpoint file or an untrained registry model.
        label: How messages name a checkpoint file (default: its file name), e.g. the
            original name of an upload kept under a temporary name.

    Raises:
        UserError: Unknown names, missing/corrupt/untrusted files, mismatched architectures,
            refused tensors (non-floating where the model is floating, complex, NaN/inf; see
            `checkpoint`), and for model directories any breach of the model.json schema
            (`models.validate`). An unsafe or oversized zip, or one without a model folder; an
            int8 folder or zip (it runs only in ONNX Runtime); and files that are exports
            but not models (`.onnx`, a report, a recipe) are refused in one line that says
            what to pass instead.
    """
    _check_not_blank(ref)
    path = Path(ref)
    is_path = (
        path.exists()
        or os.sep in ref
        or ref.endswith(CHECKPOINT_SUFFIXES)
        or ref.lower().endswith(MODEL_ZIP_SUFFIX)
    )
    if not is_path:
        spec = model_spec(
            ref, num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
        return LoadedModel(
            create_model(
                ref, num_classes=num_classes, in_channels=in_channels, image_size=image_size
            ),
            spec,
            ref,
            ref,
        )
    if path.is_dir():
        return _load_dir(path, ref, path)
    if is_model_zip(path):
        with unzipped_model(path, label=label) as folder:
            return _load_dir(folder, ref, label or path)
    _refuse_export(path, label)
    obj, _ = read_state_file(path, trust=trust, label=label)
    source = f"checkpoint {label or path.name}"
    if isinstance(obj, nn.Module):
        if arch is None:
            raise UserError("a pickled module needs --arch to know its input spec")
        spec = model_spec(
            arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
        check_tensors(obj.state_dict(), source)
        return LoadedModel(obj.eval(), spec, None, ref)
    if arch is None:
        raise UserError(
            f"{path.name} is a bare state_dict: say which architecture with --arch NAME"
        )
    spec = model_spec(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    model = _build(get_entry(arch), _kw(spec), arch, "the arguments")
    check_state_dict(model, obj, arch, source=source)
    load_state(model, obj)
    check_loaded_finite(model, source)
    return LoadedModel(model.eval(), spec, arch, ref)


def _load_dir(path: Path, ref: str, name: Path | str) -> LoadedModel:
    """A model directory (`name`: how messages call it, e.g. the zip it was extracted from)."""
    if is_quantized_dir(path):
        raise UserError(
            f"{name} is an int8 model (from pruning-lab quantize): it runs only in ONNX "
            "Runtime; evaluate and bench take it, anything else its float original"
        )
    if not (path / MODEL_FILE).exists():
        raise UserError(f"{name} holds no {MODEL_FILE}: not a model directory")
    return _load_model_dir(path, ref)


# Files Pruning Lab exports that hold no model to load back: what each is, and what to pass.
_ZIPPED = "(or its zip from export --format checkpoint)"
_NOT_MODELS = {
    ".onnx": "is an ONNX graph (export --format onnx): it runs in ONNX Runtime and does not "
    f"load back as a PyTorch model; pass the model folder it was exported from {_ZIPPED}",
    ".html": f"is an HTML report, not a model; pass the model folder it reports on {_ZIPPED}",
    ".htm": f"is an HTML report, not a model; pass the model folder it reports on {_ZIPPED}",
    ".csv": f"is a table, not a model; pass a model folder {_ZIPPED}",
}


def _refuse_export(path: Path, label: str | None) -> None:
    """Refuse, in one line, an exported file that is not a model (it would read as corrupt)."""
    name = shown(label or path.name)
    suffix = path.suffix.lower()
    if path.name == QUANT_ONNX_FILE and is_quantized_dir(path.parent):
        raise UserError(
            f"{name} is the graph of an int8 model: pass its folder {shown(str(path.parent))} "
            "(evaluate and bench take it)"
        )
    if suffix in _NOT_MODELS:
        raise UserError(f"{name} {_NOT_MODELS[suffix]}")
    if suffix == ".json":
        if path.name in (META_FILE, QUANT_META_FILE):
            raise UserError(f"{name} describes a model folder; pass the folder that holds it")
        raise UserError(
            f"{name} is a JSON file, not a model (a recipe runs with prune --recipe FILE); pass "
            f"a model folder {_ZIPPED}, a registry name or a weights file (.pt, .pth, "
            ".safetensors)"
        )


def _build(
    entry: ModelEntry,
    kw: dict[str, Any],
    where: str,
    what: str,
    *,
    counted: bool = False,
    **extra: Any,
) -> nn.Module:
    """`entry.builder(**kw, **extra)` after counting its parameters on the meta device.

    Args:
        entry, kw: The architecture and its arguments.
        where, what: Message prefix and the field the arguments came from.
        counted: The budget was already checked (skip the meta build).
        extra: More builder arguments (`pretrained`).

    Raises:
        UserError: Arguments the builder refuses, or a model over `V.MAX_PARAMS` parameters.
    """
    if not counted:
        _count_on_meta(entry, kw, where, what)
    try:
        return entry.builder(**kw, **extra)
    except UserError:
        raise
    except Exception as e:  # builders fail in many ways on arguments they cannot take
        raise UserError(
            f"{where}: {what} {kw} do not build {entry.name}: {first_line(e, 160)}"
        ) from None


def _count_on_meta(
    entry: ModelEntry, kw: dict[str, Any], where: str, what: str
) -> nn.Module | None:
    """The dense model built on the meta device (None when its code cannot run there)."""
    try:
        model = V.build_skeleton(entry.builder, kw)
    except UserError:
        raise
    except NotImplementedError:
        # Code that needs real weight values while building: its size is fixed by the
        # architecture and the bounded arguments, so the real build is the check.
        return None
    except Exception as e:
        raise UserError(
            f"{where}: {what} {kw} do not build {entry.name}: {first_line(e, 160)}"
        ) from None
    V.check_param_budget(sum(p.numel() for p in model.parameters()), where, f"{what} {kw}")
    return model


def _load_model_dir(path: Path, ref: str) -> LoadedModel:
    """Check a model directory against the schema (`models.validate`) and load it.

    Order: model.json fields; the tensors (dense, real, finite); the dense architecture and its
    parameter budget on the meta device; the surgery, key/shape/dtype agreement and every
    module's shape attributes, still on meta; then the real build, the values, and one dry
    forward pass.
    """
    where = str(path / META_FILE)
    meta = read_model_meta(path)
    arch_name = V.check_arch_name(meta, where)
    try:
        entry = get_entry(arch_name)
    except UserError as e:
        raise UserError(f"{where}: arch: {e}") from None
    m = V.check_meta(meta, where, entry.spec)
    state = read_model_state(path)
    source = f"checkpoint {path / MODEL_FILE}"
    kw = dict(m.arch_kwargs)
    skeleton = _count_on_meta(entry, kw, where, "arch_kwargs")
    on_meta = skeleton is not None
    if skeleton is None:
        skeleton = _build(entry, kw, where, "arch_kwargs", counted=True)
    # Every check runs on the meta skeleton first, so a hostile folder allocates nothing.
    _fit(skeleton, m, state, where, source)
    if on_meta:
        model = _build(entry, kw, where, "arch_kwargs", counted=True)
        _fit(model, m, state, where, source)
    else:
        model = skeleton
    load_state(model, state, m.state_versions)
    check_loaded_finite(model, source)
    V.dry_forward(model, m.spec, str(path))
    if isinstance(meta.get("arch_kwargs"), dict):
        meta = {**meta, "arch_kwargs": dict(m.arch_kwargs)}
    return LoadedModel(model.eval(), m.spec, m.arch, ref, meta)


def _fit(
    model: nn.Module, m: V.ModelMeta, state: dict[str, torch.Tensor], where: str, source: str
) -> None:
    """Apply the recorded surgery and check that `state` fits the result exactly."""
    try:
        apply_surgery(model, m.surgery, state, where=where)
    except UserError as e:
        # A record made on another architecture (model.json's arch edited, or a folder's
        # weights copied under another name): say which architecture it was tried on.
        raise UserError(
            f"{e} (model.json names architecture {m.arch!r}: the folder's surgery record does "
            "not fit it)"
        ) from None
    try:
        check_state_dict(model, state, m.arch, source=source)
    except UserError as e:
        # Layers the weights lack and layers the architecture lacks at once: the weights are of
        # another architecture than the one model.json names (an edited arch), so say where
        # the name came from; a damaged weights file (one side only) is the file's fault.
        names = set(model.state_dict())
        if names - set(state) and set(state) - names:
            raise UserError(f"{e} (architecture named by {where})") from None
        raise
    V.check_module_shapes(model, source)


def _kw(spec: InputSpec) -> dict[str, int]:
    return {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.size}
