"""IDX (MNIST format) reading: round trips, directory discovery, corrupt input."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning_core.data.idx import load_idx_dir, read_idx
from pruning_core.errors import UserError

MNIST_DIR = Path("/work/shared/data/mnist")

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode ``arr`` as an IDX file (the writer the reader is tested against)."""
    head = struct.pack(">BBBB", 0, 0, _CODES[arr.dtype], arr.ndim)
    dims = struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + dims + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    rng = np.random.default_rng(0)
    arr: np.ndarray = rng.integers(0, 256, (4, 5, 3)).astype(dtype)
    if dtype is not np.uint8:
        arr = arr * 300 - 20000  # exercise sign and multi-byte big-endian values
    # The name says nothing about compression: the reader must sniff the content.
    out = read_idx(write_idx(tmp_path / "a.idx", arr, gz=gz))
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_read_idx_truncated(tmp_path: Path) -> None:
    data = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    p = tmp_path / "t.idx"
    p.write_bytes(data[:-1])
    with pytest.raises(UserError, match="truncated"):
        read_idx(p)
    p.write_bytes(data[:6])  # cut inside the dimension list
    with pytest.raises(UserError, match="truncated"):
        read_idx(p)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    p = tmp_path / "t.idx"
    p.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00")
    with pytest.raises(UserError, match="corrupt"):
        read_idx(p)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "x.idx"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with pytest.raises(UserError, match="magic"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + b"\x00" * 8)  # unknown dtype code
    with pytest.raises(UserError, match="magic"):
        read_idx(p)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 100)))
    p = tmp_path / "c.idx.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        read_idx(p)
    p.write_bytes(data[:10] + bytes(b ^ 0xFF for b in data[10:]))
    with pytest.raises(UserError):
        read_idx(p)


def test_read_idx_declared_size_limit(tmp_path: Path) -> None:
    """A header claiming a huge array is refused before anything is read."""
    p = tmp_path / "big.idx"
    p.write_bytes(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 60000, 4096, 4096))
    with pytest.raises(UserError, match="limit"):
        read_idx(p)


def test_read_idx_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_idx(tmp_path / "nope")


def _write_split(d: Path, prefix: str, n: int, *, sep: str = "-", gz: bool = True) -> np.ndarray:
    rng = np.random.default_rng(n)
    imgs = rng.integers(0, 256, (n, 6, 7)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(d / f"{prefix}-images{sep}idx3-ubyte{ext}", imgs, gz=gz)
    write_idx(d / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels, gz=gz)
    return imgs


def test_load_idx_dir_train_and_test(tmp_path: Path) -> None:
    train = _write_split(tmp_path, "train", 12)
    test = _write_split(tmp_path, "t10k", 5, sep=".", gz=False)
    (tmp_path / "README.txt").write_text("ignored")
    out = load_idx_dir(tmp_path)
    assert set(out) == {"train", "test"}
    x, y = out["train"]
    assert x.shape == (12, 1, 6, 7) and x.dtype == torch.uint8
    assert y.shape == (12,) and y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), train)
    np.testing.assert_array_equal(out["test"][0][:, 0].numpy(), test)


def test_load_idx_dir_only_test_split(tmp_path: Path) -> None:
    _write_split(tmp_path, "t10k", 3)
    assert set(load_idx_dir(tmp_path)) == {"test"}


def test_load_idx_dir_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 4)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), gz=True)
    with pytest.raises(UserError, match="4 images but 3 labels"):
        load_idx_dir(tmp_path)


def test_load_idx_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        load_idx_dir(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no IDX files"):
        load_idx_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(UserError, match="no matching train labels"):
        load_idx_dir(tmp_path)


def test_load_idx_dir_rejects_wrong_rank(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 9), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(UserError, match="expected unsigned-byte images"):
        load_idx_dir(tmp_path)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="no MNIST copy in /work/shared/data/mnist")
def test_load_real_mnist_t10k() -> None:
    out = load_idx_dir(MNIST_DIR)
    x, y = out["test"]
    assert x.shape == (10000, 1, 28, 28)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    assert int(x.max()) == 255 and int(x.min()) == 0
    # The first MNIST test digit is a 7.
    assert int(y[0]) == 7
