"""Readers for MNIST-style IDX files (plain or gzip-compressed).

IDX layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32
per dimension, then the data in C order, big-endian. See http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from pruning_core.errors import UserError
from pruning_core.spec import MAX_CLASSES, MAX_SIZE

__all__ = ["load_idx_dir", "read_idx"]

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# train-images-idx3-ubyte[.gz], t10k-labels.idx1-ubyte, test-images-idx3-ubyte ...
_NAME_RE = re.compile(
    r"^(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
_SPLITS = {"train": "train", "t10k": "test", "test": "test"}


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise UserError(f"{path}: truncated IDX file ({what}: expected {n} bytes, got {len(data)})")
    return data


def _parse(f: BinaryIO, path: Path, max_bytes: int) -> np.ndarray:
    head = _read_exact(f, 4, path, "header")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number 0x{head.hex()})")
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    if ndim == 0:
        raise UserError(f"{path}: IDX header declares zero dimensions")
    dims = tuple(int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "dims"), ">u4"))
    # Python ints, so a hostile header cannot overflow the size computation.
    nbytes = dtype.itemsize
    for d in dims:
        nbytes *= d
    if nbytes > max_bytes:
        raise UserError(
            f"{path}: IDX data of shape {dims} is {nbytes} bytes, over the {max_bytes}-byte limit"
        )
    # Reading exactly the declared size bounds memory even for a gzip bomb.
    data = _read_exact(f, nbytes, path, "data")
    if f.read(1):
        raise UserError(f"{path}: corrupt IDX file (data continues past the declared shape {dims})")
    # astype copies into a writable, native-endian array that torch.from_numpy accepts.
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path, *, max_bytes: int = 2**31) -> np.ndarray:
    """Read one IDX file, gzip-compressed or not (detected from the content, not the name).

    Args:
        path: File to read.
        max_bytes: Refuse files whose header declares more data than this.

    Returns:
        A native-endian array with the dtype and shape given by the header.

    Raises:
        UserError: Missing, truncated or corrupt file, bad magic number, or too large.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _parse(gz, path, max_bytes)  # type: ignore[arg-type]
            return _parse(raw, path, max_bytes)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _find_pairs(directory: Path) -> dict[str, dict[str, Path]]:
    """Group IDX files in ``directory`` by split and kind; prefer uncompressed over ``.gz``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        m = _NAME_RE.match(path.name)
        if not m or not path.is_file():
            continue
        split, kind = _SPLITS[m["split"].lower()], m["kind"].lower()
        slot = found.setdefault(split, {})
        if kind not in slot or (slot[kind].suffix == ".gz" and not m["gz"]):
            slot[kind] = path
    return found


def load_idx_dir(directory: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load the MNIST-style image/label pairs found in ``directory``.

    Recognises ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and the ``t10k-``
    (or ``test-``) equivalents, each optionally ``.gz`` and with ``-`` or ``.`` before ``idx``.

    Args:
        directory: Folder holding the IDX files.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` with whichever splits are
        present; images are uint8 ``(N, 1, H, W)``, labels int64 ``(N,)``.

    Raises:
        UserError: Missing folder, no complete pair, a half pair, unreadable file, images that
            are not 3-D unsigned bytes, labels that are not 1-D non-negative integers, or image
            and label counts that differ.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    pairs = _find_pairs(directory)
    if not pairs:
        raise UserError(
            f"{directory}: no IDX files found (expected e.g. train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz)"
        )
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, files in sorted(pairs.items()):
        if set(files) != {"images", "labels"}:
            have, missing = next(iter(files.values())), ({"images", "labels"} - set(files)).pop()
            raise UserError(f"{directory}: found {have.name} but no matching {split} {missing}")
        images, labels = read_idx(files["images"]), read_idx(files["labels"])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(
                f"{files['images']}: expected unsigned-byte images of shape (N, H, W), "
                f"got {images.dtype} {images.shape}"
            )
        n, h, w = images.shape
        if n < 1 or not (1 <= h <= MAX_SIZE and 1 <= w <= MAX_SIZE):
            raise UserError(
                f"{files['images']}: {n} images of {h}x{w} pixels (need at least one image, "
                f"1 to {MAX_SIZE} pixels a side)"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(f"{files['labels']}: expected 1-D integer labels, got {labels.shape}")
        if labels.size and labels.min() < 0:
            raise UserError(f"{files['labels']}: labels must be non-negative")
        if labels.size and int(labels.max()) >= MAX_CLASSES:
            raise UserError(
                f"{files['labels']}: label {int(labels.max())} is over the {MAX_CLASSES:,}-class limit"
            )
        if len(images) != len(labels):
            raise UserError(
                f"{directory}: {split} has {len(images)} images but {len(labels)} labels"
            )
        out[split] = (
            torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        )
    return out
