"""The dataset registry: offline defaults, torchvision datasets, IDX and ImageFolder sources.

Every dataset is held in memory as uint8 images (N, C, H, W) with int64 labels and split
deterministically into train / val / calibration. `DataBundle.batches(split, spec)` adapts images
to a model's input spec (channels, size, normalisation) on the fly, or says clearly why it cannot.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pruning_core.errors import UserError, shown
from pruning_core.spec import InputSpec

__all__ = [
    "DataBundle",
    "DatasetEntry",
    "data_root",
    "is_offline_dataset",
    "list_datasets",
    "load_dataset",
]

CALIB_SIZE = 512
# Adapted float copies are cached when smaller than this; larger sets are adapted per batch.
_CACHE_BYTES = 256 * 2**20


def data_root() -> Path:
    """Where downloaded datasets and extracted archives go (PRUNING_LAB_DATA overrides)."""
    env = os.environ.get("PRUNING_LAB_DATA")
    return Path(env) if env else Path.home() / ".cache" / "pruning-lab" / "datasets"


@dataclass
class DataBundle:
    """A dataset in memory with deterministic splits.

    Attributes:
        name: The reference it was loaded from.
        train: (uint8 images (N, C, H, W), int64 labels).
        val: Held-out split used for every reported accuracy.
        class_names: One name per class.
        calib_index: Indices into train used for calibration (activations, Wanda, sensitivity).
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    class_names: tuple[str, ...]
    calib_index: torch.Tensor
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """Image channels."""
        return int(self.train[0].shape[1])

    @property
    def size(self) -> int:
        """Image side (images are square)."""
        return int(self.train[0].shape[-1])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "classes": self.num_classes,
            "channels": self.channels,
            "size": self.size,
            "train": len(self.train[1]),
            "val": len(self.val[1]),
            "calibration": len(self.calib_index),
        }

    def _raw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        if split == "calib":
            return self.train[0][self.calib_index], self.train[1][self.calib_index]
        raise ValueError(f"unknown split {split!r}")

    def check_spec(self, spec: InputSpec) -> None:
        """Raise a UserError when this data cannot feed a model with `spec`."""
        if spec.num_classes != self.num_classes:
            raise UserError(
                f"dataset {self.name} has {self.num_classes} classes but the model predicts "
                f"{spec.num_classes}"
            )
        if self.channels != spec.channels and {self.channels, spec.channels} != {1, 3}:
            raise UserError(
                f"dataset {self.name} has {self.channels}-channel images; the model expects "
                f"{spec.channels} channels"
            )

    def tensors(
        self, split: str, spec: InputSpec, limit: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split adapted to `spec` (cached for small datasets)."""
        self.check_spec(spec)
        x, y = self._raw(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        key = (split, spec, limit)
        if key in self._cache:
            return self._cache[key]
        out = adapt(x, spec), y
        if len(y) * spec.channels * spec.size**2 * 4 <= _CACHE_BYTES:
            self._cache[key] = out
        return out

    def num_examples(self, split: str) -> int:
        """Examples in a split."""
        return len(self._raw(split)[1])

    def batches(
        self,
        split: str,
        spec: InputSpec,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over (images adapted to `spec`, labels) batches.

        Args:
            split: `train`, `val` or `calib`.
            spec: The model's input spec.
            batch_size: Examples per batch.
            shuffle: Shuffle with a generator seeded by `seed` (deterministic).
            seed: Shuffle seed (vary per epoch).
            limit: Use only the first `limit` examples (a quick estimate).
        """
        self.check_spec(spec)
        x, y = self._raw(split)
        n = len(y) if limit is None else min(limit, len(y))
        small = n * spec.channels * spec.size**2 * 4 <= _CACHE_BYTES
        xa = self.tensors(split, spec, limit)[0] if small else None
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(n)
        )
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb = xa[idx] if xa is not None else adapt(x[idx], spec)
            yield xb, y[idx]


def adapt(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 images -> float tensors with the spec's channels, size and normalisation."""
    xf = x.float().div_(255.0)
    c = xf.shape[1]
    if c != spec.channels:
        if c == 1:
            xf = xf.expand(-1, spec.channels, -1, -1)
        elif spec.channels == 1:
            # ITU-R 601 luma, the usual RGB -> grayscale weights.
            w = torch.tensor([0.299, 0.587, 0.114], dtype=xf.dtype).view(1, 3, 1, 1)
            xf = (xf * w).sum(1, keepdim=True)
        else:
            raise UserError(f"cannot turn {c}-channel images into {spec.channels} channels")
    if xf.shape[-1] != spec.size or xf.shape[-2] != spec.size:
        xf = F.interpolate(
            xf, size=(spec.size, spec.size), mode="bilinear", antialias=True, align_corners=False
        )
    mean = torch.tensor(spec.mean, dtype=xf.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=xf.dtype).view(1, -1, 1, 1)
    return ((xf - mean) / std).contiguous()


@dataclass(frozen=True)
class DatasetEntry:
    """A registry entry.

    Attributes:
        name: Registry name.
        description: One line.
        channels, size, num_classes: Native image format.
        offline: True when it needs no download.
    """

    name: str
    description: str
    channels: int
    size: int
    num_classes: int
    offline: bool
    loader: Callable[..., DataBundle] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.channels,
            "size": self.size,
            "classes": self.num_classes,
            "offline": self.offline,
        }


def _split(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: tuple[str, ...],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Stratified deterministic train/val split of a single pool of examples."""
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    yn = y.numpy()
    classes, counts = np.unique(yn, return_counts=True)
    few = [
        class_names[c] if c < len(class_names) else str(c)
        for c, k in zip(classes, counts, strict=True)
        if k < 2
    ]
    if few:
        # One image cannot be both trained on and held out: the class would never be learned.
        raise UserError(
            f"dataset {name}: class {shown(few[0], 40)} has only one image ({len(few)} such "
            "classes); each class needs at least 2 (one to train on, one to validate)"
        )
    for c in classes:
        idx = np.flatnonzero(yn == c)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, round(len(idx) * val_fraction))])
    vmask = np.zeros(len(yn), bool)
    vmask[np.concatenate(val_idx)] = True
    tr = torch.from_numpy(np.flatnonzero(~vmask))
    va = torch.from_numpy(np.flatnonzero(vmask))
    return _bundle(name, (x[tr], y[tr]), (x[va], y[va]), class_names)


def _bundle(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    class_names: tuple[str, ...],
) -> DataBundle:
    if len(train[1]) == 0 or len(val[1]) == 0:
        raise UserError(
            f"dataset {name}: {len(train[1])} training and {len(val[1])} validation images; "
            "both splits need images"
        )
    if len(class_names) < 2:
        raise UserError(f"dataset {name}: {len(class_names)} class; need at least 2")
    n = len(train[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    return DataBundle(name, train, val, class_names, perm[: min(CALIB_SIZE, n)].sort().values)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (UCI optical digits, 1797 images of 8x8, values 0..16), as
    (images (N, 8, 8) float, labels (N,) int)."""
    import importlib.util

    # The CSV scikit-learn's `load_digits` reads, read without importing scikit-learn (a 3 s
    # import: the app's first page waits for this dataset).
    spec = importlib.util.find_spec("sklearn")
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    csv = origin.parent / "datasets" / "data" / "digits.csv.gz" if origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _load_digits() -> DataBundle:
    images, target = _digits_arrays()
    # Pixel values are 0..16; map them to the full uint8 range.
    x = torch.from_numpy(np.round(images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(target)
    return _split("digits", x, y, tuple(str(i) for i in range(10)))


SHAPES_TRAIN, SHAPES_VAL = 8000, 2000


def _load_shapes() -> DataBundle:
    from pruning_core.data.shapes import SHAPE_CLASSES, generate_shapes

    return _bundle(
        "shapes",
        generate_shapes(SHAPES_TRAIN, seed=0),
        generate_shapes(SHAPES_VAL, seed=1),
        tuple(SHAPE_CLASSES),
    )


_TV = {
    "mnist": ("MNIST", 1, 28, 10, "MNIST handwritten digits (download or local root)"),
    "fashion-mnist": ("FashionMNIST", 1, 28, 10, "Fashion-MNIST clothing (download or local root)"),
    "kmnist": ("KMNIST", 1, 28, 10, "Kuzushiji-MNIST (download or local root)"),
    "cifar10": ("CIFAR10", 3, 32, 10, "CIFAR-10 (download or local root)"),
    "cifar100": ("CIFAR100", 3, 32, 100, "CIFAR-100 (download or local root)"),
    "svhn": ("SVHN", 3, 32, 10, "Street View House Numbers (download or local root)"),
}


def _load_torchvision(name: str, root: Path | None = None, download: bool = True) -> DataBundle:
    import torchvision.datasets as tvd

    cls_name = _TV[name][0]
    cls = getattr(tvd, cls_name)
    root = root or data_root() / name
    created = not root.exists()
    splits = []
    try:
        for train in (True, False):
            if name == "svhn":
                ds = cls(str(root), split="train" if train else "test", download=download)
            else:
                ds = cls(str(root), train=train, download=download)
            splits.append(ds)
    except Exception as e:  # network errors come as several types; all mean the same here
        if created:
            # A failed download leaves empty folders behind; the user named none of them.
            shutil.rmtree(root, ignore_errors=True)
        msg = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise UserError(
            f"dataset {name} is not available ({msg}); you may be offline: download it once with "
            f"network access, or place its files under {root}"
        ) from None
    out = []
    for ds in splits:
        data = ds.data if not isinstance(ds.data, np.ndarray) else torch.from_numpy(ds.data)
        x = torch.as_tensor(data)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 3:  # CIFAR stores HWC
            x = x.permute(0, 3, 1, 2)
        labels = ds.labels if hasattr(ds, "labels") else ds.targets
        out.append(
            (x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(labels), dtype=torch.int64))
        )
    classes = tuple(getattr(splits[0], "classes", None) or [str(i) for i in range(_TV[name][3])])
    return _bundle(name, out[0], out[1], classes)


def _load_idx(directory: Path) -> DataBundle:
    from pruning_core.data.idx import load_idx_dir

    parts = load_idx_dir(directory)
    ref = f"idx:{directory}"
    n_cls = int(max(int(t[1].max()) for t in parts.values())) + 1
    names = tuple(str(i) for i in range(n_cls))
    if "train" in parts and "test" in parts:
        return _bundle(ref, parts["train"], parts["test"], names)
    x, y = next(iter(parts.values()))
    return _split(ref, x, y, names)


def _load_folder(path: Path) -> DataBundle:
    from pruning_core.data.archive import load_image_archive

    x, y, classes = load_image_archive(path, cache_dir=data_root() / "archives")
    return _split(f"folder:{path}", x, y, tuple(classes))


_REGISTRY: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(
        "digits",
        "scikit-learn's 8x8 handwritten digits (1,797 real images)",
        1,
        8,
        10,
        True,
        lambda **_: _load_digits(),
    ),
    "shapes": DatasetEntry(
        "shapes",
        "procedural 32x32 RGB shapes, 10 classes (deterministic)",
        3,
        32,
        10,
        True,
        lambda **_: _load_shapes(),
    ),
}
for _n, (_c, _ch, _s, _k, _d) in _TV.items():
    _REGISTRY[_n] = DatasetEntry(
        _n, _d, _ch, _s, _k, False, functools.partial(_load_torchvision, _n)
    )


def list_datasets() -> list[DatasetEntry]:
    """Registry datasets (plus the `idx:DIR` and `folder:DIR` / `.zip` sources, not listed)."""
    return list(_REGISTRY.values())


def is_offline_dataset(ref: Any) -> bool:
    """True for the name of a registry dataset that needs no download (`digits`, `shapes`)."""
    return isinstance(ref, str) and ref in _REGISTRY and _REGISTRY[ref].offline


@functools.lru_cache(maxsize=8)
def _cached(ref: str) -> DataBundle:
    if ref.startswith("idx:"):
        return _load_idx(Path(ref[4:]).expanduser())
    if ref.startswith("folder:"):
        return _load_folder(Path(ref[7:]).expanduser())
    if ref.endswith(".zip"):
        return _load_folder(Path(ref).expanduser())
    if ref in _REGISTRY:
        return _REGISTRY[ref].loader()
    known = ", ".join(_REGISTRY)
    raise UserError(f"unknown dataset '{ref}' (known: {known}, idx:DIR, folder:DIR, FILE.zip)")


def load_dataset(ref: str) -> DataBundle:
    """Load a dataset by registry name, `idx:DIR`, `folder:DIR` or a `.zip` path.

    Bundles are cached per process and shared: treat their tensors as read-only.

    Raises:
        UserError: Unknown name, missing files, offline download, unsafe archive.
    """
    return _cached(ref)
