"""Issue 8, kind 5: images are read faithfully and within bounds.

Every Pillow mode goes to 8-bit by a fixed rule (16-bit scaled, not clipped), an image or a
dataset over its pixel bound is refused from the headers before anything is decoded, and
Pillow's warnings become nothing or one UserError line naming the file.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_core.data import archive
from pruning_core.data.archive import load_image_folder
from pruning_core.errors import UserError


@pytest.fixture(autouse=True)
def _no_warning_escapes() -> Iterator[None]:
    """Any warning that leaves the loader (and so could reach stderr) fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught] == []


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _grey_png(value: int = 128, side: int = 4) -> bytes:
    return _save(Image.new("L", (side, side), value), "PNG")


def _load_one(tmp_path: Path, name: str, data: bytes) -> torch.Tensor:
    """Load ``data`` as the only image of class ``a`` (class ``b`` holds a grey PNG)."""
    _folder(tmp_path, {f"a/{name}": data, "b/ref.png": _grey_png(side=2)})
    x, y, _ = load_image_folder(tmp_path, size=2)
    return x[y == 0][0]


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` grey pixels and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# --- 16-bit and wider modes: a fixed scale, never clipped -------------------------------------

SIXTEEN = [0, 128, 129, 257, 1000, 2000, 32768, 50000, 65534, 65535]


def _expected8(values: list[int]) -> np.ndarray:
    return np.array([round(v / 257) for v in values], dtype=np.uint8)


@pytest.mark.parametrize(
    ("fmt", "mode", "name"),
    [
        ("PNG", "I;16", "v.png"),
        ("TIFF", "I;16", "v.tif"),
        ("TIFF", "I;16B", "v.tiff"),
        ("TIFF", "I", "v32.tif"),
    ],
)
def test_sixteen_bit_values_are_scaled_exactly(
    tmp_path: Path, fmt: str, mode: str, name: str
) -> None:
    arr = np.array([SIXTEEN] * len(SIXTEEN), dtype=np.uint16 if mode != "I" else np.int32)
    # Pillow's convert("I;16B") clips at 255, so big-endian data is built from bytes.
    img = (
        Image.frombytes(mode, arr.shape[::-1], arr.astype(">u2").tobytes())
        if mode == "I;16B"
        else Image.fromarray(arr)
    )
    assert img.mode == mode
    data = _save(img, fmt)
    _folder(tmp_path, {f"a/{name}": data, "b/flat.png": _save(Image.new("L", (10, 10)), "PNG")})
    x, y, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 1, 10, 10)
    assert np.array_equal(x[y == 0][0, 0, 0].numpy(), _expected8(SIXTEEN))


def test_sixteen_bit_pgm_is_scaled(tmp_path: Path) -> None:
    # A 16-bit PGM opens in Pillow as mode "I" with values 0..65535.
    pgm = b"P5\n2 2\n65535\n" + np.array([0, 257, 40000, 65535], ">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    got = _load_one(tmp_path, "v.pgm", pgm)
    assert got.flatten().tolist() == [0, 1, round(40000 / 257), 255]


def test_classes_that_differ_only_in_16_bit_brightness_stay_apart(tmp_path: Path) -> None:
    files = {
        f"{c}/{i}.png": _save(Image.fromarray(np.full((6, 6), base + 100 * i, np.uint16)), "PNG")
        for c, base in (("dark", 3000), ("mid", 30000), ("bright", 60000))
        for i in range(2)
    }
    x, y, classes = load_image_folder(_folder(tmp_path, files))
    means = {classes[int(c)]: float(x[y == c].float().mean()) for c in y.unique()}
    assert means["dark"] < 15 < means["mid"] < 120 < means["bright"] < 240


@pytest.mark.parametrize("bad", [-1, 65536, 2**31 - 1])
def test_32_bit_integer_outside_16_bits_is_refused(tmp_path: Path, bad: int) -> None:
    arr = np.array([[0, bad], [5, 6]], dtype=np.int32)
    with pytest.raises(UserError, match=rf"big\.tif.*32-bit integer pixels from .*{bad}"):
        _load_one(tmp_path, "big.tif", _save(Image.fromarray(arr), "TIFF"))


def test_float_images_read_as_zero_to_one(tmp_path: Path) -> None:
    vals = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    got = _load_one(tmp_path, "f.tif", _save(Image.fromarray(vals, "F"), "TIFF"))
    assert got.flatten().tolist() == [0, 64, 128, 255]
    pfm = b"Pf\n2 2\n-1.0\n" + np.array([1.0, 0.5, 0.25, 0.0], "<f4").tobytes()
    got = _load_one(tmp_path / "pfm", "f.pfm", pfm)
    # PFM rows run bottom to top; whatever the order, the values are scaled, not clipped.
    assert sorted(got.flatten().tolist()) == [0, 64, 128, 255]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([[0.0, 255.0], [1.0, 0.5]], r"from 0 to 255; expected 0\.\.1"),
        ([[-0.5, 0.0], [1.0, 0.5]], r"from -0\.5 to 1"),
        ([[np.nan, 0.0], [1.0, 0.5]], "NaN or infinity"),
        ([[np.inf, 0.0], [1.0, 0.5]], "NaN or infinity"),
    ],
)
def test_float_out_of_range_is_refused(tmp_path: Path, values: list, match: str) -> None:
    img = Image.fromarray(np.array(values, dtype=np.float32), "F")
    with pytest.raises(UserError, match=rf"bad\.tif: floating-point pixels.*{match}"):
        _load_one(tmp_path, "bad.tif", _save(img, "TIFF"))


# --- colour modes, alpha and palettes -----------------------------------------------------------


def _rgb_of(x: torch.Tensor) -> tuple[int, ...]:
    """The colour of pixel (0, 0) of a (C, H, W) image (grey expanded to three channels)."""
    px = x[:, 0, 0].tolist()
    return tuple(px * 3 if len(px) == 1 else px)


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    data = _save(Image.new("RGB", (8, 8), (200, 20, 20)).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = _rgb_of(_load_one(tmp_path, "c.jpg", data))
    assert r > 180 and g < 45 and b < 45


def test_lab_tiff_is_converted_by_colour_management(tmp_path: Path) -> None:
    # L*a*b* white (255, 128, 128 in Pillow's encoding) and a saturated red.
    white = Image.merge("LAB", [Image.new("L", (2, 2), v) for v in (255, 128, 128)])
    red = Image.merge("LAB", [Image.new("L", (2, 2), v) for v in (136, 208, 195)])
    _folder(tmp_path, {"a/w.tif": _save(white, "TIFF"), "b/r.tif": _save(red, "TIFF")})
    x, _, _ = load_image_folder(tmp_path)
    assert all(v >= 250 for v in _rgb_of(x[0]))
    r, g, b = _rgb_of(x[1])
    assert r > 230 and g < 30 and b < 30


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("LA", (2, 2), (77, 0)), (77, 77, 77)),
        (Image.new("RGBA", (2, 2), (10, 20, 30, 0)), (10, 20, 30)),
        (Image.new("RGBA", (2, 2), (10, 20, 30, 255)), (10, 20, 30)),
    ],
)
def test_alpha_is_dropped_keeping_the_stored_colour(
    tmp_path: Path, img: Image.Image, expected: tuple[int, int, int]
) -> None:
    assert _rgb_of(_load_one(tmp_path, "alpha.png", _save(img, "PNG"))) == expected


def _palette(mode: str = "P") -> Image.Image:
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return p if mode == "P" else p.convert(mode)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    plain = _save(_palette(), "PNG")
    # tRNS as bytes: Pillow warns on a direct RGB conversion; the loader must not.
    clear = _save(_palette(), "PNG", transparency=b"\xff\x80")
    assert isinstance(Image.open(io.BytesIO(clear)).info["transparency"], bytes)
    gif = _save(_palette(), "GIF", transparency=1)
    pa = _palette("PA")
    assert pa.mode == "PA"
    for i, data in enumerate([plain, clear, gif]):
        assert _rgb_of(_load_one(tmp_path / str(i), "p.png", data)) == (10, 200, 30)
    # PA images cannot be saved by Pillow; the conversion rule is checked on the decoded image.
    assert np.asarray(archive._to_rgb(pa, Path("pa.png")))[0, 0].tolist() == [10, 200, 30]


@pytest.mark.parametrize(
    ("mode", "bands", "expected"),
    [
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("La", (200, 255), (200, 200, 200)),
    ],
)
def test_every_other_mode_converts(
    mode: str, bands: tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    img = Image.merge(mode, [Image.new("L", (2, 2), v) for v in bands])
    assert img.mode == mode
    got = tuple(np.asarray(archive._to_rgb(img, Path("x")))[0, 0].tolist())
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected, strict=True)), got


def test_one_bit_images_are_black_and_white(tmp_path: Path) -> None:
    bits = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool))
    assert bits.mode == "1"
    pbm = b"P4\n2 2\n" + bytes([0b10000000, 0b01000000])  # PBM: 1 is black
    _folder(tmp_path, {"a/b.png": _save(bits, "PNG"), "b/b.pbm": pbm})
    x, _, _ = load_image_folder(tmp_path)
    assert x[0, 0].tolist() == [[0, 255], [255, 0]]
    assert x[1, 0].tolist() == [[0, 255], [255, 0]]


def test_animated_images_use_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (4, 4), v) for v in (40, 220)]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    webp = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    apng = _save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    _folder(tmp_path, {"a/1.gif": gif, "a/2.webp": webp, "b/3.png": apng})
    x, _, _ = load_image_folder(tmp_path)
    assert x.shape == (3, 1, 4, 4)
    assert sorted(set(x.flatten().tolist())) == [40]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    _folder(tmp_path, {"a/r.png": _save(img, "PNG", exif=exif), "b/plain.png": _save(img, "PNG")})
    x, _, _ = load_image_folder(tmp_path)
    assert x[0, :, 0, 1].tolist() == [255, 0, 0] and x[0, :, 0, 0].tolist() == [0, 0, 0]
    assert x[1, :, 0, 0].tolist() == [255, 0, 0]


# --- bounds: checked from the headers, before anything is decoded --------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(30000, 30000), (10000, 10000), (5000, 5000), (4097, 4096), (100000, 200)],
)
def test_huge_header_is_refused_without_decoding(tmp_path: Path, width: int, height: int) -> None:
    _folder(tmp_path, {"a/ok.png": _grey_png(), "b/bomb.png": _png_header(width, height)})
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_image_folder(tmp_path)
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "\n" not in msg and "bomb.png" in msg
    assert f"{width * height:,} pixels" in msg and "over the limit of 4096x4096" in msg


def test_pixel_bound_is_inclusive_and_adjustable(tmp_path: Path) -> None:
    _folder(tmp_path, {"a/1.png": _grey_png(side=8), "b/2.png": _grey_png(side=8)})
    assert load_image_folder(tmp_path, max_pixels=64)[0].shape == (2, 1, 8, 8)
    with pytest.raises(
        UserError, match=r"1\.png is 8x8 \(64 pixels\), over the limit of 63 pixels per"
    ):
        load_image_folder(tmp_path, max_pixels=63)


def test_dataset_pixel_budget_is_checked_before_any_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"{c}/{i}.png": _grey_png(side=8) for c in "ab" for i in range(3)}
    # A truncated image: its header is fine, decoding it would fail.
    files["b/9.png"] = _grey_png(side=8)[:-30]
    _folder(tmp_path, files)
    with pytest.raises(UserError, match=r"more than 447 pixels in all"):
        load_image_folder(tmp_path, max_total_pixels=7 * 64 - 1)
    with pytest.raises(UserError, match=r"cannot read image .*9\.png"):
        load_image_folder(tmp_path, max_total_pixels=7 * 64)
    # The module-wide budget is the default.
    monkeypatch.setattr(archive, "MAX_TOTAL_PIXELS", 100)
    with pytest.raises(UserError, match=r"more than 100 pixels in all"):
        load_image_folder(tmp_path)


# --- broken and hostile files: one line naming the file -------------------------------------


def _truncated_tiff() -> bytes:
    return _save(Image.new("I;16", (16, 16), 1000), "TIFF")[:100]


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("cut.png", _save(Image.new("RGB", (32, 32), (1, 2, 3)), "PNG")[:-40], "truncated"),
        ("cut.jpg", _save(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300], "Truncated"),
        ("cut.tif", _truncated_tiff(), "truncated or corrupt file"),
        ("zeros.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "not a PNG, JPEG"),
        ("text.png", b"just some text, not an image", "not a PNG, JPEG"),
        ("empty.jpg", b"", "not a PNG, JPEG"),
        # EPS would start Ghostscript: its parser is never tried, whatever the name.
        ("ps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a PNG"),
    ],
)
def test_broken_or_foreign_file_is_one_line(
    tmp_path: Path, name: str, data: bytes, why: str
) -> None:
    _folder(tmp_path, {"a/ok.png": _grey_png(), f"b/{name}": data})
    with pytest.raises(UserError) as err:
        load_image_folder(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot read image {tmp_path / 'b' / name}: ")
    assert why in msg


def test_zero_size_header_is_refused(tmp_path: Path) -> None:
    _folder(tmp_path, {"a/ok.png": _grey_png(), "b/flat.png": _png_header(0, 5)})
    with pytest.raises(UserError, match=r"flat\.png"):
        load_image_folder(tmp_path)
