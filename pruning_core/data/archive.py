"""ImageFolder datasets from a directory or a user-supplied .zip, extracted and read defensively.

A zip comes from the user, so extraction refuses anything that could write outside the
destination (absolute paths, ``..``, symlinks) or exhaust the disk (too many entries, too many
bytes -- counted while streaming, because the sizes in the zip headers are only claims). An
archive is extracted into a temporary folder named by `pruning_core.fsio.temp_prefix` and is
put in place only once its images have loaded, so a refused archive leaves nothing behind and
a killed run leaves a temporary that the next load removes (`clean_stale`).

Images are read with a fixed rule per Pillow mode (see `load_image_folder`), after their headers
have been checked against a per-image pixel bound and a per-dataset pixel budget, so a
decompression bomb is refused before anything is decoded. Only PNG, JPEG, BMP, GIF, WebP, TIFF
and PNM/PFM parsers are ever tried, whatever a file's name says.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, UnidentifiedImageError

from pruning_core.errors import UserError, first_line
from pruning_core.fsio import clean_stale, temp_prefix

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_TOTAL_PIXELS",
    "clean_cache",
    "load_image_archive",
    "load_image_folder",
    "safe_extract_zip",
]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    | {".pbm", ".pgm", ".ppm", ".pnm", ".pfm"}
)
# Pillow parsers tried on a file, whatever its name. Every other one stays out: EPS would start
# Ghostscript on the file's PostScript, and each extra parser is more surface for hostile bytes.
_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
# Largest image accepted, from its header: 4096 x 4096 pixels, well below Pillow's own
# decompression-bomb limit (~89 M pixels), so one image decodes in at most ~64 MiB.
MAX_IMAGE_PIXELS = 4096 * 4096
# Most source pixels one dataset may hold, summed from the headers before anything is decoded
# (~1.07 G pixels: what a 1 GiB greyscale batch holds; decoding that takes tens of seconds).
MAX_TOTAL_PIXELS = 2**30
# Most bytes the decoded (N, 3, size, size) batch may take.
_MAX_TENSOR_BYTES = 1 << 30
_CHUNK = 1 << 20
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Written last into an extraction whose images loaded; holds the archive's sha256, which a zip
# cannot contain about itself, so an extracted folder carrying it was checked by this code.
_CHECKED_MARKER = ".pruning-lab-checked"
# Temporary extraction folders of versions before `temp_prefix` (".<sha256>.XXXXXXXX.partial").
_LEGACY_PARTIAL = re.compile(r"^\.[0-9a-f]{64}\.[a-z0-9_]{8}\.partial$")
_LEGACY_AGE_S = 24 * 3600.0
# Pillow warnings that mean part of the file is missing: the image is refused, not guessed at.
_FATAL_WARNING = re.compile(r"truncat|corrupt|larger than file|offset too large", re.IGNORECASE)
# Exceptions Pillow's parsers raise on malformed bytes (beyond OSError/SyntaxError/ValueError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    zlib.error,
)
# EXIF orientation -> the transpose that shows the image upright (as Pillow's exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WARNINGS_LOCK = threading.RLock()
_PIL_DIR = Path(PIL.__file__).parent


# --- zip extraction ---------------------------------------------------------------------------


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


def _extract_to_temp(zip_path: Path, dest: Path, max_files: int, max_bytes: int) -> Path:
    """Check and extract ``zip_path`` into a new temporary sibling of ``dest``; return it.

    The temporary folder carries this process's id (`temp_prefix`), so `clean_stale` removes it
    if the process is killed; on any refusal or failure it is removed here.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise UserError(f"{zip_path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
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
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(
                tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".partial", dir=dest.parent)
            )
        except OSError as exc:
            raise UserError(f"cannot write {dest.parent}: {exc.strerror or exc}") from None
        try:
            _extract_all(zf, checked, tmp, zip_path, max_bytes)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return tmp


def safe_extract_zip(
    zip_path: Path,
    dest: Path,
    *,
    max_files: int = 20000,
    max_bytes: int = 512 * 2**20,
) -> Path:
    """Extract a zip archive into ``dest``, refusing anything unsafe.

    The archive is extracted into a temporary folder next to ``dest`` and renamed into place
    only when every entry passed, so a refused or corrupt archive leaves nothing behind; a
    temporary folder left by a killed run is removed by the next extraction to ``dest``.

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
            encryption; too many entries or bytes; ``dest`` already exists or its folder cannot
            be written (disk full included).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists():
        raise UserError(f"{dest}: already exists; not extracting over it")
    clean_stale(dest.parent, dest.name)
    tmp = _extract_to_temp(zip_path, dest, max_files, max_bytes)
    try:
        try:
            os.rename(tmp, dest)
        except OSError:
            raise UserError(f"{dest}: appeared while extracting; not replacing it") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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


# --- reading images ---------------------------------------------------------------------------


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


def _too_large(path: Path, what: str, limit: int) -> UserError:
    side = round(limit**0.5)
    bound = f"{side}x{side} ({limit:,} pixels)" if side * side == limit else f"{limit:,} pixels"
    return UserError(
        f"image {path} is {what}, over the limit of {bound} per image; scale it down first"
    )


@contextlib.contextmanager
def _reading(path: Path, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises or warns about ``path`` into one UserError line naming it.

    Warnings never reach stderr: Pillow's that mean data is missing refuse the image; the others
    (a size over Pillow's bomb limit, which the pixel bound refuses anyway; fallbacks Pillow
    handles itself, such as a malformed MPO read as plain JPEG) are dropped.
    """
    # catch_warnings swaps process-wide state: sessions reading at once must take turns, or one
    # could restore another's recorder for good.
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except Image.DecompressionBombError as exc:
            m = re.search(r"\((\d+) pixels\)", str(exc))
            what = f"{int(m.group(1)):,} pixels" if m else "far too large"
            # Pillow refuses such a header before we see it; name the lower of the two limits.
            pillow = 2 * (Image.MAX_IMAGE_PIXELS or max_pixels)
            raise _too_large(path, what, min(max_pixels, pillow)) from None
        except UnidentifiedImageError:
            raise UserError(
                f"cannot read image {path}: not a PNG, JPEG, BMP, GIF, WebP, TIFF or PNM image"
            ) from None
        except _DECODE_ERRORS as exc:
            raise UserError(f"cannot read image {path}: {first_line(exc)}") from None
    for w in caught:
        # Only Pillow's own warnings speak about this file (another thread may warn meanwhile).
        from_pillow = Path(w.filename).parent == _PIL_DIR
        if (
            from_pillow
            and not issubclass(w.category, Image.DecompressionBombWarning)
            and _FATAL_WARNING.search(str(w.message))
        ):
            said = " ".join(str(w.message).split()).rstrip(".")
            raise UserError(f"cannot read image {path}: truncated or corrupt file ({said})")


def _open(path: Path) -> Image.Image:
    return Image.open(path, formats=_FORMATS)


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> int:
    w, h = size
    if w < 1 or h < 1:
        raise UserError(f"image {path} has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise _too_large(path, f"{w}x{h} ({w * h:,} pixels)", max_pixels)
    return w * h


def _image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """Width and height from the header alone (nothing is decoded), within ``max_pixels``."""
    with _reading(path, max_pixels), _open(path) as img:
        size = img.size
    _check_pixels(path, size, max_pixels)
    return size


def _lab_to_rgb(img: Image.Image, path: Path) -> Image.Image:
    # Pillow's own LAB -> RGB conversion only relabels the bands; LittleCMS converts colours.
    try:
        from PIL import ImageCms
    except ImportError:
        raise UserError(f"image {path}: LAB images need Pillow built with LittleCMS") from None
    try:
        return _lab_transform().apply(img)
    except ImageCms.PyCMSError as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


@functools.cache
def _lab_transform() -> Any:
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB with the fixed rule of its mode."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(img)
        if mode == "I" and values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise UserError(
                f"image {path}: 32-bit integer pixels from {int(values.min())} to "
                f"{int(values.max())}; only 0..65535 (16-bit) is read, save it as 8 or 16 bits"
            )
        # round(v * 255 / 65535) = round(v / 257): the exact inverse of 8 -> 16-bit expansion.
        return _grey((values.astype(np.uint32) * 255 + 32767) // 65535)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"image {path}: floating-point pixels include NaN or infinity")
        scaled = np.rint(values * 255.0)
        if values.size and (scaled.min() < 0 or scaled.max() > 255):
            raise UserError(
                f"image {path}: floating-point pixels from {values.min():g} to "
                f"{values.max():g}; expected 0..1 (0 black, 1 white)"
            )
        return _grey(scaled)
    if mode == "LAB":
        return _lab_to_rgb(img, path)
    if mode == "P" and "transparency" in img.info:
        # Palette transparency must go through RGBA (else Pillow warns); alpha is then dropped.
        img = img.convert("RGBA")
    # Pillow converts some modes to RGB only by way of another (premultiplied "La" via "LA").
    for via in ((), ("RGBA",), ("LA",)):
        try:
            for step in via:
                img = img.convert(step)
            return img.convert("RGB")
        except ValueError:
            continue
    raise UserError(f"image {path}: unsupported image mode {mode!r}")


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The EXIF orientation's transpose; a missing or unreadable tag means none."""
    with warnings.catch_warnings():
        # Broken EXIF does not stop a viewer from showing the pixels, so it does not stop us.
        warnings.simplefilter("ignore")
        try:
            value = img.getexif().get(_EXIF_ORIENTATION_TAG)
        except _DECODE_ERRORS:
            return None
    return _ORIENTATION.get(value) if isinstance(value, int) else None


def _load_rgb(path: Path, side: int, max_pixels: int) -> np.ndarray:
    """Decode the first frame of one image as an upright RGB ``(side, side, 3)`` uint8 array."""
    with _reading(path, max_pixels), _open(path) as img:
        # The file may have changed since its header was checked.
        _check_pixels(path, img.size, max_pixels)
        img.load()  # decode now, so a broken file fails here with its name attached
        rgb = _to_rgb(img, path)
        turn = _orientation(img)
        if turn is not None:
            rgb = rgb.transpose(turn)
        if rgb.size != (side, side):
            rgb = rgb.resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(rgb)


def load_image_folder(
    root: Path,
    *,
    size: int | None = None,
    max_images: int = 20000,
    max_pixels: int | None = None,
    max_total_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an ImageFolder-style dataset: one subfolder per class, images inside.

    Class names are the sorted subfolder names; label ``i`` is ``classes[i]``. If ``root``
    holds just one folder that itself holds folders, that folder is used instead (zips often
    wrap everything in one top folder). Hidden files and ``__MACOSX`` are ignored. Files are
    read as PNG, JPEG, BMP, GIF, WebP, TIFF or PNM/PFM by their content, never by other parsers.

    Every header is read first (nothing decoded): an image over ``max_pixels`` or a dataset
    over ``max_total_pixels`` is refused before any decoding starts. Each image is then decoded
    and turned into 8-bit RGB by a fixed rule per Pillow mode, the same for every file:

    - ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``: Pillow's conversion to RGB.
    - ``LA``, ``PA``, ``RGBA``, ``RGBX`` and palette transparency: alpha is dropped, keeping
      the colour stored under transparent pixels (as torchvision's ImageFolder loader does).
    - ``LAB``: converted to sRGB by LittleCMS.
    - ``I;16*`` (16-bit grey) and ``I`` (32-bit integer): read as 16-bit, 0..65535 scaled to
      0..255 (``round(v / 257)``); an ``I`` image with values outside 0..65535 is refused.
    - ``F`` (32-bit float): 0.0 is black and 1.0 white (PFM, float TIFF), ``round(v * 255)``;
      NaN, infinity or values outside 0..1 are refused.
    - Animated GIF, PNG and WebP: the first frame. EXIF orientation is applied.

    Args:
        root: Dataset folder.
        size: Side of the square output images. Default: the larger side of the most common
            image size.
        max_images: Refuse datasets with more images than this.
        max_pixels: Largest width x height of one image (default `MAX_IMAGE_PIXELS`,
            4096 x 4096).
        max_total_pixels: Most width x height summed over all images (default
            `MAX_TOTAL_PIXELS`, 2**30).

    Returns:
        ``(images, labels, classes)``: uint8 ``(N, C, size, size)`` with C = 3 if any image has
        colour, else 1; int64 labels ``(N,)``; the class names.

    Raises:
        UserError: Missing folder, fewer than 2 class folders, an empty class, no images, too
            many images, an unreadable, truncated or too large image (named, with its size), a
            mode value out of its rule's range, too many pixels in all, a bad ``size``, or a
            decoded batch over 1 GiB.
    """
    root = Path(root)
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    max_total_pixels = MAX_TOTAL_PIXELS if max_total_pixels is None else max_total_pixels
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
    sizes = []
    pixels = 0
    for p in paths:
        w, h = _image_size(p, max_pixels)
        sizes.append((w, h))
        pixels += w * h
        if pixels > max_total_pixels:
            raise UserError(
                f"{root}: the images hold more than {max_total_pixels:,} pixels in all (the "
                "budget per dataset); use fewer or smaller images"
            )
    if size is None:
        (w, h), _ = Counter(sizes).most_common(1)[0]
        size = max(w, h)
    if total * 3 * size * size > _MAX_TENSOR_BYTES:
        raise UserError(
            f"{root}: {total} images of {size}x{size} would not fit in memory; "
            "pick a smaller image size"
        )
    batch = np.empty((total, size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        batch[i] = _load_rgb(p, size, max_pixels)
    colour = bool(np.any(batch[..., 0] != batch[..., 1]) or np.any(batch[..., 1] != batch[..., 2]))
    batch = batch if colour else batch[..., :1]
    tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    return tensor, torch.from_numpy(labels), classes


# --- archives ---------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def _marker_text(digest: str) -> str:
    return json.dumps({"checked_by": "pruning-lab", "sha256": digest}, sort_keys=True) + "\n"


def _is_checked(folder: Path, digest: str) -> bool:
    """True when ``folder`` is an extraction of the archive ``digest`` whose images loaded."""
    marker = folder / _CHECKED_MARKER
    try:
        return (
            folder.is_dir()
            and not folder.is_symlink()
            and marker.is_file()
            and marker.stat().st_size < 4096
            and marker.read_text() == _marker_text(digest)
        )
    except (OSError, UnicodeDecodeError):
        return False


def _discard(path: Path) -> None:
    """Remove a folder (or file) that no one should read any more.

    It is renamed to a temporary name first, so a reader never sees it half-removed under its
    real name, and a kill during the removal leaves a temporary that `clean_stale` removes.
    """
    if not os.path.lexists(path):
        return
    try:
        aside = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
        os.rename(path, aside / "old")
    except OSError:
        return  # gone meanwhile, or the folder is read-only: nothing more can be done
    shutil.rmtree(aside, ignore_errors=True)


def clean_cache(cache_dir: Path) -> None:
    """Remove what killed extractions left in ``cache_dir`` (an app or command may call it at
    start; every archive load does).

    Temporary folders of dead processes go (`clean_stale`), and so do the day-old temporary
    folders of older versions, whose names carry no process id. Extracted archives and the
    temporaries of live processes are left alone; nothing here raises.

    Args:
        cache_dir: The archive cache (``<PRUNING_LAB_DATA>/archives``); may not exist.
    """
    clean_stale(cache_dir)
    try:
        entries = list(cache_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        if not _LEGACY_PARTIAL.match(entry.name):
            continue
        # These names carry no process id; a day-old one belongs to no running extraction.
        with contextlib.suppress(OSError):
            if time.time() - entry.lstat().st_mtime > _LEGACY_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)


def _renamed(exc: UserError, folder: Path, path: Path) -> UserError:
    # Name the user's archive, not the cache folder it was extracted to.
    return UserError(str(exc).replace(str(folder), str(path)))


def load_image_archive(
    path: Path,
    cache_dir: Path,
    *,
    size: int | None = None,
    max_images: int = 20000,
    max_files: int = 20000,
    max_bytes: int = 512 * 2**20,
    max_pixels: int | None = None,
    max_total_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an ImageFolder dataset from a folder or a .zip of one.

    A zip is extracted with the checks of :func:`safe_extract_zip` into a temporary folder in
    ``cache_dir``, loaded from there, and only then renamed to ``cache_dir/<sha256>`` with a
    marker saying it was checked; later calls with the same bytes reuse that folder. A refused
    archive therefore leaves nothing in ``cache_dir`` (an unchecked folder of the same bytes
    left by an older version is removed too), and temporaries of killed runs are removed at
    the start of every call. Folders are read in place.

    Args:
        path: A dataset folder or a zip archive.
        cache_dir: Where extracted archives are kept.
        size: Passed to :func:`load_image_folder`.
        max_images: Passed to :func:`load_image_folder`.
        max_files: Passed to :func:`safe_extract_zip`.
        max_bytes: Passed to :func:`safe_extract_zip`.
        max_pixels: Passed to :func:`load_image_folder`.
        max_total_pixels: Passed to :func:`load_image_folder`.

    Returns:
        As :func:`load_image_folder`.

    Raises:
        UserError: ``path`` is missing or neither a folder nor a zip, ``cache_dir`` cannot be
            written, or any error from extraction or loading (naming the entry inside the zip).
    """
    path = Path(path)
    load = functools.partial(
        load_image_folder,
        size=size,
        max_images=max_images,
        max_pixels=max_pixels,
        max_total_pixels=max_total_pixels,
    )
    if path.is_dir():
        return load(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: expected a folder of class folders or a .zip of one")
    cache_dir = Path(cache_dir)
    digest = _sha256(path)
    dest = cache_dir / digest
    clean_cache(cache_dir)
    if _is_checked(dest, digest):
        try:
            return load(dest)
        except UserError as exc:
            # Its images loaded once, so other limits refuse it now: it stays for other calls.
            raise _renamed(exc, dest, path) from None
    tmp = _extract_to_temp(path, dest, max_files, max_bytes)
    try:
        try:
            loaded = load(tmp)
        except UserError as exc:
            # An unchecked extraction of these bytes by an older version is only a cache that
            # may hold refused files: it goes with ours.
            if not _is_checked(dest, digest):
                _discard(dest)
            raise _renamed(exc, tmp, path) from None
        try:
            (tmp / _CHECKED_MARKER).write_text(_marker_text(digest))
            if os.path.lexists(dest) and not _is_checked(dest, digest):
                _discard(dest)  # an unchecked extraction by an older version
            os.rename(tmp, dest)
        except OSError:
            # Another session put its checked copy in place first, or the cache cannot take
            # ours: the images are loaded either way, and the temporary goes below.
            pass
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return loaded
