"""Issue 8, kind 4: failed imports leave nothing behind.

A refused dataset archive or upload removes what it extracted and wrote, on the command line
(exit 2, one line) and in the app (one `st.error` line); temporaries of killed runs are removed
on the next start; an unwritable or full data folder is a refused input, not a crash.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from pruning_core.data import archive, load_dataset
from pruning_core.data.archive import load_image_archive
from pruning_core.errors import UserError
from pruning_core.models import create_model
from ui import uploads

UNWRITABLE = "/proc/pruning-lab-test-home"  # even root cannot create folders in /proc


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRUNING_LAB_DATA", str(tmp_path / "data"))
    return tmp_path


def _png(value: int, side: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _good(n: int = 3) -> dict[str, bytes]:
    return {f"{c}/{i}.png": _png(40 + 150 * k + i) for k, c in enumerate("ab") for i in range(n)}


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _good().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _corrupt_entry_zip() -> bytes:
    data = bytearray(_zip_bytes({**_good(), "b/big.txt": b"hello" * 2000}))
    start = data.index(b"b/big.txt") + len("b/big.txt")  # the entry's deflated bytes
    data[start : start + 16] = b"\xff" * 16
    return bytes(data)


REFUSED = {
    "broken image": ({**_good(), "b/broken.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 30}, "broken.png"),
    "truncated image": ({**_good(), "a/cut.png": _png(9, 40)[:-30]}, "cut.png"),
    "single class": ({f"only/{i}.png": _png(i) for i in range(4)}, "only one class"),
    "bomb inside": ({**_good(), "a/bomb.png": _bomb_png()}, "bomb.png is 900,000,000 pixels"),
    "no images": ({"a/x.txt": b"x", "b/y.txt": b"y"}, "no images"),
    "unsafe entry": ({**_good(), "../../escape.png": _png(1)}, "escapes"),
}


def _leftovers(root: Path) -> list[str]:
    """Files, links and hidden (temporary) entries under ``root``; plain folders may stay."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink() or p.name.startswith(".")
    )


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_archive_leaves_nothing(env: Path, case: str) -> None:
    entries, match = REFUSED[case]
    z = env / f"{case.replace(' ', '-')}.zip"
    z.write_bytes(_zip_bytes(entries))
    with pytest.raises(UserError, match=match) as err:
        load_dataset(str(z))
    msg = str(err.value)
    assert "\n" not in msg and ".pl-tmp-" not in msg and ".partial" not in msg
    assert _leftovers(env / "data") == []
    archives = env / "data" / "archives"
    assert not archives.exists() or list(archives.iterdir()) == []
    assert not list(env.rglob("escape.png"))


def test_refused_entry_is_named_inside_the_zip(env: Path) -> None:
    z = env / "pets.zip"
    z.write_bytes(_zip_bytes(REFUSED["broken image"][0]))
    with pytest.raises(UserError) as err:
        load_image_archive(z, env / "cache")
    assert str(err.value).startswith(f"cannot read image {z}/b/broken.png: ")


@pytest.mark.parametrize(
    ("name", "data"), [("symlink", _symlink_zip()), ("corrupt", _corrupt_entry_zip())]
)
def test_unsafe_or_corrupt_zip_leaves_nothing(env: Path, name: str, data: bytes) -> None:
    z = env / f"{name}.zip"
    z.write_bytes(data)
    with pytest.raises(UserError):
        load_image_archive(z, env / "cache")
    assert _leftovers(env / "cache") == []


def test_pixel_budget_refusal_leaves_nothing(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = env / "many.zip"
    z.write_bytes(_zip_bytes(_good(4)))
    monkeypatch.setattr(archive, "MAX_TOTAL_PIXELS", 8 * 36 - 1)
    with pytest.raises(UserError, match="pixels in all"):
        load_image_archive(z, env / "cache")
    assert _leftovers(env / "cache") == []
    monkeypatch.setattr(archive, "MAX_TOTAL_PIXELS", 8 * 36)
    x, _, _ = load_image_archive(z, env / "cache")
    assert x.shape == (8, 1, 6, 6)


def test_accepted_archive_is_kept_once_and_marked(env: Path) -> None:
    z = env / "good.zip"
    z.write_bytes(_zip_bytes(_good()))
    cache = env / "cache"
    x, _, classes = load_image_archive(z, cache)
    assert classes == ["a", "b"] and x.shape == (6, 1, 6, 6)
    (dest,) = cache.iterdir()
    assert len(dest.name) == 64 and archive._is_checked(dest, dest.name)
    # A limit that refuses it now does not remove a folder other sessions may be using.
    with pytest.raises(UserError, match="6 images, over the limit of 5"):
        load_image_archive(z, cache, max_images=5)
    assert list(cache.iterdir()) == [dest] and archive._is_checked(dest, dest.name)
    x2, _, _ = load_image_archive(z, cache)
    assert torch.equal(x, x2)


def test_unchecked_extraction_of_older_version_is_replaced_or_removed(env: Path) -> None:
    cache = env / "cache"
    good, bad = env / "good.zip", env / "bad.zip"
    good.write_bytes(_zip_bytes(_good()))
    bad.write_bytes(_zip_bytes(REFUSED["broken image"][0]))
    # What an older version left: extracted folders without the marker, one of them refused.
    for z in (good, bad):
        folder = cache / archive._sha256(z)
        with zipfile.ZipFile(z) as zf:
            zf.extractall(folder)
    # A forged marker (wrong contents) does not make a folder count as checked.
    (cache / archive._sha256(good) / archive._CHECKED_MARKER).write_text("checked\n")
    with pytest.raises(UserError, match=r"broken\.png"):
        load_image_archive(bad, cache)
    assert not (cache / archive._sha256(bad)).exists()
    load_image_archive(good, cache)
    assert archive._is_checked(cache / archive._sha256(good), archive._sha256(good))
    assert [p.name for p in cache.iterdir()] == [archive._sha256(good)]


def test_another_sessions_copy_that_appears_meanwhile_is_kept(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    z = env / "good.zip"
    z.write_bytes(_zip_bytes(_good()))
    cache = env / "cache"
    dest = cache / archive._sha256(z)
    real = archive.load_image_folder

    def racing(root: Path, **kw: object) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if not dest.exists():  # the other session finishes first
            with zipfile.ZipFile(z) as zf:
                zf.extractall(dest)
            (dest / archive._CHECKED_MARKER).write_text(archive._marker_text(dest.name))
            (dest / "theirs").write_text("")
        return real(root, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(archive, "load_image_folder", racing)
    x, _, _ = load_image_archive(z, cache)
    assert x.shape == (6, 1, 6, 6)
    assert [p.name for p in cache.iterdir()] == [dest.name] and (dest / "theirs").exists()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_killed_extraction_is_removed_on_next_load(env: Path) -> None:
    z = env / "good.zip"
    z.write_bytes(_zip_bytes(_good()))
    cache = env / "cache"
    sha = archive._sha256(z)
    dead = [
        cache / f".{sha}.pl-tmp-{_dead_pid()}-k1ll3d.partial",
        cache / f".{'0' * 64}.pl-tmp-999999999-zz.partial",
        cache / f".{'1' * 64}.abcd_123.partial",  # an older version's name, a day old
    ]
    alive = [
        cache / f".{'2' * 64}.pl-tmp-{os.getpid()}-busy.partial",  # this process: live
        cache / f".{'3' * 64}.efgh_456.partial",  # older version's name, but fresh
    ]
    for folder in dead + alive:
        (folder / "a").mkdir(parents=True)
        (folder / "a" / "x.png").write_bytes(_png(1))
    day_ago = time.time() - 2 * 86400
    os.utime(dead[2], (day_ago, day_ago))
    load_image_archive(z, cache)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in alive)
    # A refused load cleans up too.
    dead[0].mkdir()
    bad = env / "bad.zip"
    bad.write_bytes(_zip_bytes(REFUSED["single class"][0]))
    with pytest.raises(UserError):
        load_image_archive(bad, cache)
    assert not dead[0].exists()


def test_unwritable_cache_is_a_user_error(env: Path) -> None:
    z = env / "good.zip"
    z.write_bytes(_zip_bytes(_good()))
    with pytest.raises(UserError, match=f"cannot write {UNWRITABLE}"):
        load_image_archive(z, Path(UNWRITABLE) / "archives")
    blocker = env / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        load_image_archive(z, blocker / "archives")


# --- uploads ------------------------------------------------------------------------------------


def _state_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(create_model("digits-mlp", pretrained=False).state_dict(), buf)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["broken image", "bomb inside", "single class", "unsafe entry"])
def test_refused_dataset_upload_leaves_nothing(env: Path, case: str) -> None:
    with pytest.raises(UserError, match=REFUSED[case][1]):
        uploads.save_dataset_upload(f"{case}.zip", _zip_bytes(REFUSED[case][0]))
    assert _leftovers(env / "home") == [] and _leftovers(env / "data") == []


def test_refusal_keeps_a_zip_an_earlier_upload_made(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zip_bytes(_good())
    ref = Path(uploads.save_dataset_upload("pets.zip", data))
    assert ref.is_file()

    def refuse(ref: str) -> None:
        raise UserError("the dataset folder is busy")

    monkeypatch.setattr(uploads, "load_dataset", refuse)
    with pytest.raises(UserError, match="busy"):
        uploads.save_dataset_upload("pets.zip", data)
    assert ref.is_file()  # another session may have it as its current dataset


def test_unwritable_home_is_refused_up_front(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNING_LAB_HOME", UNWRITABLE)
    for call in (
        lambda: uploads.save_dataset_upload("d.zip", _zip_bytes(_good())),
        lambda: uploads.save_checkpoint_upload("m.pt", _state_bytes(), "digits-mlp"),
    ):
        with pytest.raises(UserError, match=f"PRUNING_LAB_HOME {UNWRITABLE} cannot be written"):
            call()
    monkeypatch.setenv("PRUNING_LAB_HOME", str(env / "home"))
    monkeypatch.setenv("PRUNING_LAB_DATA", UNWRITABLE)
    with pytest.raises(UserError, match=f"PRUNING_LAB_DATA {UNWRITABLE} cannot be written"):
        uploads.save_dataset_upload("d.zip", _zip_bytes(_good()))
    assert _leftovers(env / "home") == []


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_one_line_and_leaves_nothing(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "save_model_dir", _disk_full)
    with pytest.raises(UserError, match=r"m\.pt could not be saved .*No space left on device"):
        uploads.save_checkpoint_upload("m.pt", _state_bytes(), "digits-mlp")
    assert _leftovers(env / "home") == []
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    with pytest.raises(UserError, match=r"d\.zip could not be saved .*No space left on device"):
        uploads.save_dataset_upload("d.zip", _zip_bytes(_good()))
    assert _leftovers(env / "home") == []


def test_killed_upload_temporaries_are_removed(env: Path) -> None:
    pid = _dead_pid()
    models = env / "home" / "uploads" / "models"
    datasets = env / "home" / "uploads" / "datasets"
    models.mkdir(parents=True)
    datasets.mkdir(parents=True)
    stale = [
        models / f".upload.pl-tmp-{pid}-abc.pt",
        datasets / f".pets-0123456789ab.zip.pl-tmp-{pid}-xyz",
    ]
    half_model = models / f".m-digits-mlp-0123456789ab.pl-tmp-{pid}-q"
    half_model.mkdir()
    (half_model / "model.safetensors").write_bytes(b"half")
    for p in stale:
        p.write_bytes(b"half-written")
    live = models / f".upload.pl-tmp-{os.getpid()}-busy.pt"
    live.write_bytes(b"being written")
    uploads.save_checkpoint_upload("m.pt", _state_bytes(), "digits-mlp")
    uploads.save_dataset_upload("d.zip", _zip_bytes(_good()))
    assert not any(p.exists() for p in [*stale, half_model])
    assert live.exists()


# --- the app: one error line --------------------------------------------------------------------


def _panel() -> None:
    from ui.uploads import upload_panel

    upload_panel()


def _upload(at: AppTest, kind: str, name: str, data: bytes) -> list[str]:
    at.file_uploader(key=f"upload_{kind}_file").set_value((name, data, "application/octet-stream"))
    at.button(key=f"upload_{kind}_go").click().run()
    assert not at.exception
    return [e.value for e in at.error]


def test_panel_shows_one_error_line_for_an_unwritable_home(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNING_LAB_HOME", UNWRITABLE)
    at = AppTest.from_function(_panel, default_timeout=60).run()
    assert not at.exception
    errors = _upload(at, "data", "pets.zip", _zip_bytes(_good()))
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("pets.zip was not loaded: PRUNING_LAB_HOME")
    errors = _upload(at, "ckpt", "m.pt", _state_bytes())
    assert len(errors) == 1 and errors[0].startswith("m.pt was not loaded: PRUNING_LAB_HOME")
    assert at.session_state["dataset_ref"] == "digits"


def test_panel_refused_zip_is_one_line_and_leaves_nothing(env: Path) -> None:
    at = AppTest.from_function(_panel, default_timeout=60).run()
    errors = _upload(at, "data", "pets.zip", _zip_bytes(REFUSED["bomb inside"][0]))
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "bomb.png is 900,000,000 pixels" in errors[0]
    assert _leftovers(env / "home") == [] and _leftovers(env / "data") == []
    errors = _upload(at, "data", "ok.zip", _zip_bytes(_good()))
    assert errors == [] and at.session_state["dataset_ref"].endswith(".zip")


def test_panel_turns_an_os_error_into_one_line(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "save_dataset_upload", lambda name, data: _disk_full())
    at = AppTest.from_function(_panel, default_timeout=60).run()
    errors = _upload(at, "data", "pets.zip", _zip_bytes(_good()))
    assert errors == ["pets.zip was not loaded: cannot write (No space left on device)"]


def test_panel_start_removes_what_killed_runs_left(env: Path) -> None:
    pid = _dead_pid()
    leftovers = [
        env / "home" / "uploads" / "models" / f".upload.pl-tmp-{pid}-a.pt",
        env / "home" / "uploads" / "datasets" / f".d-0123456789ab.zip.pl-tmp-{pid}-b",
        env / "data" / "archives" / f".{'4' * 64}.pl-tmp-{pid}-c.partial",
    ]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    kept = env / "data" / "archives" / ("5" * 64)
    kept.mkdir()
    at = AppTest.from_function(_panel, default_timeout=60).run()
    assert not at.exception
    assert not any(p.exists() for p in leftovers) and kept.is_dir()
