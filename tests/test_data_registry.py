"""The dataset registry: offline defaults, deterministic splits, adaptation to a model's spec."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_core.data import adapt, list_datasets, load_dataset
from pruning_core.errors import UserError
from pruning_core.models import model_spec


def test_registry_names() -> None:
    names = {d.name for d in list_datasets()}
    assert {
        "digits",
        "shapes",
        "mnist",
        "fashion-mnist",
        "kmnist",
        "cifar10",
        "cifar100",
        "svhn",
    } <= names


def test_digits_split_is_deterministic_stratified_and_disjoint() -> None:
    b = load_dataset("digits")
    assert b.num_examples("train") + b.num_examples("val") == 1797
    counts = torch.bincount(b.val[1], minlength=10)
    assert counts.min() >= 30  # every class is represented in val (about 20% of ~180)
    from pruning_core.data import _load_digits

    again = _load_digits()
    assert torch.equal(again.val[0], b.val[0]) and torch.equal(again.train[1], b.train[1])
    # no validation image appears in train
    tr = {bytes(x.numpy()) for x in b.train[0]}
    dup = sum(bytes(x.numpy()) in tr for x in b.val[0])
    assert dup < 5  # digits has a few genuinely identical images; splits are by index
    assert len(b.calib_index) == 512 and b.calib_index.max() < b.num_examples("train")


def test_shapes_is_offline_and_sized() -> None:
    b = load_dataset("shapes")
    assert (b.channels, b.size, b.num_classes) == (3, 32, 10)
    assert b.num_examples("val") == 2000


def test_adapt_channels_size_and_normalisation() -> None:
    x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    spec = model_spec("resnet20")
    out = adapt(x, spec)
    assert out.shape == (2, 3, 32, 32)
    expected = (1 - spec.mean[0]) / spec.std[0]
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], expected), atol=1e-4)
    rgb = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    assert adapt(rgb, model_spec("lenet5")).shape == (2, 1, 28, 28)


def test_mismatched_model_and_data_is_a_clear_error() -> None:
    b = load_dataset("digits")
    with pytest.raises(UserError, match="10 classes but the model predicts 1000"):
        b.check_spec(model_spec("torchvision:resnet18"))


def test_unknown_dataset() -> None:
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_offline_torchvision_dataset_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets.utils as u

    def offline(*a: object, **k: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(u, "download_and_extract_archive", offline)
    monkeypatch.setattr(u, "download_url", offline)
    monkeypatch.setenv("PRUNING_LAB_DATA", str(tmp_path))
    from pruning_core.data import _load_torchvision

    with pytest.raises(UserError, match="offline"):
        _load_torchvision("mnist", root=tmp_path / "mnist")


def test_idx_single_split_is_divided(tmp_path: Path) -> None:
    import gzip
    import struct

    n = 50
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    b = load_dataset(f"idx:{tmp_path}")
    assert b.num_examples("train") == 40 and b.num_examples("val") == 10
    assert sorted(b.val[1].tolist()) == list(range(10))


def _png(path: Path, value: int) -> None:
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def test_folder_zip_dataset_and_traversal_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNING_LAB_DATA", str(tmp_path / "cache"))
    for cls, v in (("cats", 30), ("dogs", 200)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(5):
            _png(tmp_path / "src" / cls / f"{i}.png", v + i)
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for p in (tmp_path / "src").rglob("*.png"):
            z.write(p, p.relative_to(tmp_path / "src"))
    b = load_dataset(str(good))
    assert (
        b.class_names == ("cats", "dogs") and b.num_examples("train") + b.num_examples("val") == 10
    )
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("cats/0.png", (tmp_path / "src/cats/0.png").read_bytes())
        z.writestr("../escape.txt", "gotcha")
    with pytest.raises(UserError, match=r"\.\./escape"):
        load_dataset(str(evil))
    assert (
        not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()
    )


def test_digits_read_without_sklearn_equal_sklearn_loader() -> None:
    """The app reads the digits CSV directly (a 3 s faster first page); it must be the very
    data scikit-learn's loader gives."""
    np = pytest.importorskip("numpy")
    from sklearn.datasets import load_digits

    from pruning_core.data import _digits_arrays

    images, target = _digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images)
    assert np.array_equal(target, d.target)
