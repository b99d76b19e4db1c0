"""Safe zip extraction and ImageFolder loading."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_core.data import archive
from pruning_core.data.archive import load_image_archive, load_image_folder, safe_extract_zip
from pruning_core.errors import UserError


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


# --- safe_extract_zip: refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.txt", "escapes"),
        ("ok/../../evil.txt", "escapes"),
        ("..\\evil.txt", "escapes"),
        ("/tmp/evil.txt", "absolute"),
        ("C:/evil.txt", "absolute"),
    ],
)
def test_unsafe_names_refused(tmp_path: Path, name: str, why: str) -> None:
    z = make_zip(tmp_path / "a.zip", {"good/a.txt": b"fine", name: b"evil"})
    out = tmp_path / "out"
    with pytest.raises(UserError, match=why) as err:
        safe_extract_zip(z, out / "dest")
    assert repr(name) in str(err.value)  # the message names the entry
    assert not (out / "dest").exists()
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.rglob("evil.txt"))


def test_symlink_entry_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = tmp_path / "l.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/x.txt", b"x")
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract_zip(z, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_too_many_entries_refused(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "m.zip", {f"c/{i}.txt": b"x" for i in range(11)})
    with pytest.raises(UserError, match="11 entries"):
        safe_extract_zip(z, tmp_path / "dest", max_files=10)
    assert safe_extract_zip(z, tmp_path / "ok", max_files=11) == tmp_path / "ok"
    assert len(list((tmp_path / "ok" / "c").iterdir())) == 11


def test_declared_size_over_limit_refused(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "big.zip", {"a.bin": bytes(2000), "b.bin": bytes(2000)})
    with pytest.raises(UserError, match="over the limit"):
        safe_extract_zip(z, tmp_path / "dest", max_bytes=3000)
    assert not (tmp_path / "dest").exists()


def _lie_about_size(data: bytes, real: int, claimed: int) -> bytes:
    """Patch the uncompressed-size fields of a one-entry zip (local and central headers)."""
    buf = bytearray(data)
    old, new = real.to_bytes(4, "little"), claimed.to_bytes(4, "little")
    local = buf.index(b"PK\x03\x04")
    central = buf.index(b"PK\x01\x02")
    assert buf[local + 22 : local + 26] == old and buf[central + 24 : central + 28] == old
    buf[local + 22 : local + 26] = new
    buf[central + 24 : central + 28] = new
    return bytes(buf)


def test_lying_header_bomb_refused_and_cleaned_up(tmp_path: Path) -> None:
    real = 4 * 2**20  # deflates to a few KB
    raw = make_zip(tmp_path / "raw.zip", {"bomb.bin": bytes(real)}).read_bytes()
    z = tmp_path / "out" / "bomb.zip"
    z.parent.mkdir()
    z.write_bytes(_lie_about_size(raw, real, 100))
    assert zipfile.ZipFile(z).infolist()[0].file_size == 100  # the header now lies
    with pytest.raises(UserError, match=r"bomb\.bin"):
        safe_extract_zip(z, tmp_path / "out" / "dest", max_bytes=2**20)
    # No destination, no half-extracted temp folder.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["bomb.zip"]


def test_streamed_bytes_counted_even_if_reader_trusts_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the zip reader ever yields more than the header declared, the byte count stops it."""
    z = make_zip(tmp_path / "s.zip", {"x.bin": b"tiny"})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info: io.BytesIO(bytes(5 * 2**20)))
    with pytest.raises(UserError, match="past the"):
        safe_extract_zip(z, tmp_path / "dest", max_bytes=2**20)
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s.zip"]


def test_not_a_zip_and_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(UserError, match="not a readable zip"):
        safe_extract_zip(bad, tmp_path / "d1")
    good = make_zip(tmp_path / "g.zip", {"a.txt": b"hello" * 1000}).read_bytes()
    start = good.index(b"PK\x03\x04") + 30 + len("a.txt")  # compressed data of the entry
    broken = bytearray(good)
    broken[start : start + 8] = b"\xff" * 8
    (tmp_path / "c.zip").write_bytes(bytes(broken))
    with pytest.raises(UserError, match=r"a\.txt"):
        safe_extract_zip(tmp_path / "c.zip", tmp_path / "d2")
    assert not (tmp_path / "d2").exists()
    with pytest.raises(UserError, match="no such file"):
        safe_extract_zip(tmp_path / "missing.zip", tmp_path / "d3")


def test_extract_refuses_existing_dest(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "a.zip", {"a.txt": b"x"})
    (tmp_path / "dest").mkdir()
    with pytest.raises(UserError, match="already exists"):
        safe_extract_zip(z, tmp_path / "dest")


# --- load_image_folder / load_image_archive -----------------------------------------------------

RED, GREEN, BLUE = (200, 0, 0), (0, 180, 0), (0, 0, 220)


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pets_zip(path: Path) -> Path:
    """A zip as macOS makes them: one wrapper folder plus __MACOSX resource-fork litter."""
    return make_zip(
        path,
        {
            "pets/": b"",
            "pets/dog/d1.png": png(RED),
            "pets/dog/d2.PNG": png(RED, (10, 6)),  # odd size: resized to the common 8x8
            "pets/cat/c1.png": png(GREEN),
            "pets/cat/sub/c2.jpg": _jpeg(GREEN),  # nested folders belong to their class
            "pets/cat/notes.txt": b"not an image",
            "pets/.hidden/h.png": png(BLUE),
            "__MACOSX/pets/cat/._c1.png": b"\x00\x05\x16\x07 resource fork",
        },
    )


def test_load_image_archive_zip(tmp_path: Path) -> None:
    z = pets_zip(tmp_path / "pets.zip")
    cache = tmp_path / "cache"
    x, y, classes = load_image_archive(z, cache)
    assert classes == ["cat", "dog"]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8
    assert y.dtype == torch.int64
    assert y.tolist() == [0, 0, 1, 1]
    # Cats are green, dogs red (JPEG and resizing blur values a little).
    means = x.float().mean(dim=(2, 3))
    assert bool((means[y == 0, 1] > 150).all() and (means[y == 0, 0] < 40).all())
    assert bool((means[y == 1, 0] > 170).all() and (means[y == 1, 1] < 40).all())
    # Extracted once, under a sha256-named folder; a second load reuses it.
    (extracted,) = list(cache.iterdir())
    assert len(extracted.name) == 64
    mtime = extracted.stat().st_mtime_ns
    x2, y2, _ = load_image_archive(z, cache, size=4)
    assert x2.shape == (4, 3, 4, 4) and torch.equal(y, y2)
    assert list(cache.iterdir()) == [extracted]
    assert extracted.stat().st_mtime_ns == mtime


def test_load_image_archive_refuses_unsafe_zip(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "e.zip", {"a/x.png": png(RED), "../evil.png": png(RED)})
    with pytest.raises(UserError, match="escapes"):
        load_image_archive(z, tmp_path / "cache")
    assert [p.name for p in tmp_path.iterdir()] == ["e.zip"]


def test_load_image_archive_passes_directories_through(tmp_path: Path) -> None:
    for cls, color in (("a", RED), ("b", BLUE)):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        (tmp_path / "ds" / cls / "1.png").write_bytes(png(color))
    _, y, classes = load_image_archive(tmp_path / "ds", tmp_path / "cache")
    assert classes == ["a", "b"] and y.tolist() == [0, 1]
    assert not (tmp_path / "cache").exists()
    with pytest.raises(UserError, match="expected a folder"):
        (tmp_path / "x.txt").write_text("hi")
        load_image_archive(tmp_path / "x.txt", tmp_path / "cache")


def test_greyscale_folder_gives_one_channel(tmp_path: Path) -> None:
    for cls, level in (("dark", 30), ("light", 220)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(png((level,) * 3, (5, 5), mode="L"))
    # An RGB file whose pixels happen to be grey still counts as grey.
    (tmp_path / "dark" / "rgb.bmp").write_bytes(_bmp((30, 30, 30)))
    x, y, classes = load_image_folder(tmp_path)
    assert x.shape == (7, 1, 5, 5)
    assert classes == ["dark", "light"]
    assert torch.equal(torch.bincount(y), torch.tensor([4, 3]))
    assert int(x[y == 0].max()) == 30 and int(x[y == 1].min()) == 220


def _bmp(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), color).save(buf, format="BMP")
    return buf.getvalue()


def test_one_colour_image_makes_all_rgb(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "g.png").write_bytes(png((90, 90, 90), mode="L"))
    (tmp_path / "b" / "c.png").write_bytes(png(BLUE))
    x, _, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 3, 8, 8)
    assert np.all(x[0].numpy() == 90)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(png(RED))
    (tmp_path / "b" / "broken.png").write_bytes(png(RED)[:40])
    with pytest.raises(UserError, match=r"broken\.png"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({}, "no class folders"),
        ({"only/x.png": True}, "only one class"),
        ({"a/readme.txt": False, "b/notes.md": False}, "no images"),
        ({"a/x.png": True, "b/readme.txt": False}, "no images: b"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, layout: dict[str, bool], match: str) -> None:
    for rel, is_png in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png(RED) if is_png else b"text")
    with pytest.raises(UserError, match=match):
        load_image_folder(tmp_path)


def test_max_images_and_missing_root(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(png(RED))
    with pytest.raises(UserError, match="6 images"):
        load_image_folder(tmp_path, max_images=5)
    assert load_image_folder(tmp_path, max_images=6)[0].shape[0] == 6
    with pytest.raises(UserError, match="no such directory"):
        load_image_folder(tmp_path / "nope")


def test_memory_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "1.png").write_bytes(png(RED))
    monkeypatch.setattr(archive, "_MAX_TENSOR_BYTES", 2 * 3 * 8 * 8 - 1)
    with pytest.raises(UserError, match="would not fit"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=7)[0].shape == (2, 3, 7, 7)
