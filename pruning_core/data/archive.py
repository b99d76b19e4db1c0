"""ImageFolder datasets from a directory or a user-supplied .zip, extracted defensively.

A zip comes from the user, so extraction refuses anything that could write outside the
destination (absolute paths, ``..``, symlinks) or exhaust the disk (too many entries, too many
bytes -- counted while streaming, because the sizes in the zip headers are only claims).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pruning_core.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_CHUNK = 1 << 20
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Most bytes the decoded (N, 3, size, size) batch may take.
_MAX_TENSOR_BYTES = 1 << 30


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Validate one entry's name and type; return its path components."""
    name = info.filename
    # Backslashes are not separators in zip, but Windows tools write them and Windows honours them.
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE_RE.match(norm):
        raise UserError(f"refusing zip entry with an absolute path: {name!r}")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UserError(f"refusing zip entry that escapes the folder: {name!r}")
    if "\x00" in name:
        raise UserError(f"refusing zip entry with a NUL byte in its name: {name!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"refusing zip entry that is a symbolic link: {name!r}")
    if info.flag_bits & 0x1:
        raise UserError(f"refusing encrypted zip entry: {name!r}")
    return parts


def safe_extract_zip(
    zip_path: Path,
    dest: Path,
    *,
    max_files: int = 20000,
    max_bytes: int = 512 * 2**20,
) -> Path:
    """Extract a zip archive into ``dest``, refusing anything unsafe.

    The archive is extracted into a temporary folder next to ``dest`` and renamed into place
    only when every entry passed, so a refused or corrupt archive leaves nothing behind.

    Args:
        zip_path: The archive.
        dest: Folder to create; must not exist yet.
        max_files: Most entries (files and folders) accepted.
        max_bytes: Most uncompressed bytes accepted, checked against the declared sizes first
            and then against the bytes actually decompressed.

    Returns:
        ``dest``.

    Raises:
        UserError: Not a zip or corrupt; an entry with an absolute path, ``..``, a symlink, or
            encryption; too many entries or bytes; ``dest`` already exists.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists():
        raise UserError(f"{dest}: already exists; not extracting over it")
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise UserError(f"{zip_path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{zip_path}: not a readable zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise UserError(f"{zip_path}: {len(infos)} entries, over the limit of {max_files}")
        checked = [(info, _entry_parts(info)) for info in infos]
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise UserError(
                f"{zip_path}: {declared} bytes uncompressed, over the limit of {max_bytes}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            _extract_all(zf, checked, tmp, zip_path, max_bytes)
            try:
                os.rename(tmp, dest)
            except OSError:
                raise UserError(f"{dest}: appeared while extracting; not replacing it") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _extract_all(
    zf: zipfile.ZipFile,
    checked: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    root: Path,
    zip_path: Path,
    max_bytes: int,
) -> None:
    total = 0
    root_resolved = root.resolve()
    for info, parts in checked:
        if not parts:
            continue
        target = root.joinpath(*parts)
        # Defence in depth: the name checks above should already make this impossible.
        if not target.resolve().is_relative_to(root_resolved):
            raise UserError(f"refusing zip entry that escapes the folder: {info.filename!r}")
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("xb") as out:
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise UserError(
                            f"{zip_path}: entry {info.filename!r} takes the archive past the "
                            f"{max_bytes}-byte limit (its header understates its size)"
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise UserError(f"{zip_path}: corrupt entry {info.filename!r} ({exc})") from None
        except OSError as exc:
            raise UserError(
                f"{zip_path}: cannot extract entry {info.filename!r} ({exc.strerror or exc})"
            ) from None


def _visible(path: Path) -> bool:
    """False for hidden files and macOS zip litter (``__MACOSX/``, ``._name`` resource forks)."""
    return not (path.name.startswith(".") or path.name == "__MACOSX")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p))


def _class_root(root: Path) -> Path:
    """Descend through lone wrapper folders (``data.zip`` -> ``data/`` -> class folders)."""
    while True:
        subdirs = _subdirs(root)
        has_files = any(p.is_file() and _visible(p) for p in root.iterdir())
        if len(subdirs) == 1 and not has_files and _subdirs(subdirs[0]):
            root = subdirs[0]
        else:
            return root


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for path in sorted(class_dir.rglob("*")):
        rel = path.relative_to(class_dir).parts
        if (
            path.suffix.lower() in IMAGE_EXTENSIONS
            and path.is_file()
            and all(_visible(Path(p)) for p in rel)
        ):
            files.append(path)
    return files


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header alone, so choosing a size decodes nothing."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _load_rgb(path: Path, side: int) -> np.ndarray:
    """Decode one image as an RGB ``(side, side, 3)`` uint8 array."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a broken file fails here with its name attached
            if img.mode == "P" and "transparency" in img.info:
                # Pillow wants palette transparency to go through RGBA; alpha is then dropped.
                rgb = img.convert("RGBA").convert("RGB")
            else:
                rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def load_image_folder(
    root: Path, *, size: int | None = None, max_images: int = 20000
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an ImageFolder-style dataset: one subfolder per class, images inside.

    Class names are the sorted subfolder names; label ``i`` is ``classes[i]``. If ``root``
    holds just one folder that itself holds folders, that folder is used instead (zips often
    wrap everything in one top folder). Hidden files and ``__MACOSX`` are ignored.

    Args:
        root: Dataset folder.
        size: Side of the square output images. Default: the larger side of the most common
            image size.
        max_images: Refuse datasets with more images than this.

    Returns:
        ``(images, labels, classes)``: uint8 ``(N, C, size, size)`` with C = 3 if any image has
        colour, else 1; int64 labels ``(N,)``; the class names.

    Raises:
        UserError: Missing folder, fewer than 2 class folders, an empty class, no images, too
            many images, an unreadable image (named), a bad ``size``, or a decoded batch over
            1 GiB.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    if size is not None and size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {size}")
    root = _class_root(root)
    class_dirs = _subdirs(root)
    if not class_dirs:
        raise UserError(f"{root}: no class folders (expected one subfolder per class)")
    if len(class_dirs) < 2:
        raise UserError(f"{root}: only one class folder ({class_dirs[0].name}); need at least 2")
    classes = [d.name for d in class_dirs]
    files = [_image_files(d) for d in class_dirs]
    total = sum(len(f) for f in files)
    if total == 0:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"{root}: no images found in the class folders (looked for {exts})")
    empty = [c for c, f in zip(classes, files, strict=True) if not f]
    if empty:
        raise UserError(f"{root}: class folder(s) with no images: {', '.join(empty)}")
    if total > max_images:
        raise UserError(f"{root}: {total} images, over the limit of {max_images}")

    paths = [p for f in files for p in f]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    if size is None:
        (w, h), _ = Counter(_image_size(p) for p in paths).most_common(1)[0]
        size = max(w, h)
    if total * 3 * size * size > _MAX_TENSOR_BYTES:
        raise UserError(
            f"{root}: {total} images of {size}x{size} would not fit in memory; "
            "pick a smaller image size"
        )
    batch = np.empty((total, size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        batch[i] = _load_rgb(p, size)
    colour = bool(np.any(batch[..., 0] != batch[..., 1]) or np.any(batch[..., 1] != batch[..., 2]))
    batch = batch if colour else batch[..., :1]
    tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    return tensor, torch.from_numpy(labels), classes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_image_archive(
    path: Path,
    cache_dir: Path,
    *,
    size: int | None = None,
    max_images: int = 20000,
    max_files: int = 20000,
    max_bytes: int = 512 * 2**20,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an ImageFolder dataset from a folder or a .zip of one.

    A zip is extracted once, with :func:`safe_extract_zip`, into ``cache_dir/<sha256>``; later
    calls with the same bytes reuse that folder. Folders are read in place.

    Args:
        path: A dataset folder or a zip archive.
        cache_dir: Where extracted archives are kept.
        size: Passed to :func:`load_image_folder`.
        max_images: Passed to :func:`load_image_folder`.
        max_files: Passed to :func:`safe_extract_zip`.
        max_bytes: Passed to :func:`safe_extract_zip`.

    Returns:
        As :func:`load_image_folder`.

    Raises:
        UserError: ``path`` is missing or neither a folder nor a zip, or any error from
            extraction or loading.
    """
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path, size=size, max_images=max_images)
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: expected a folder of class folders or a .zip of one")
    dest = Path(cache_dir) / _sha256(path)
    if not dest.is_dir():
        try:
            safe_extract_zip(path, dest, max_files=max_files, max_bytes=max_bytes)
        except UserError:
            # Another session may have extracted the same archive meanwhile; that copy is
            # complete because extraction only ever renames a finished folder into place.
            if not dest.is_dir():
                raise
    return load_image_folder(dest, size=size, max_images=max_images)
