"""Uploads: a good state_dict loads with the picked architecture; malicious, corrupt, oversized
files and unsafe zips are refused with a clear message and leave nothing behind."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_core.errors import UserError
from pruning_core.models import create_model, load_model
from ui import uploads


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRUNING_LAB_DATA", str(tmp_path / "data"))
    return tmp_path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _state_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def test_state_dict_upload_loads_with_picked_arch() -> None:
    torch.manual_seed(3)
    model = create_model("lenet5", pretrained=False)
    ref = uploads.save_checkpoint_upload("my lenet.pt", _state_bytes(model), "lenet5")
    back = load_model(ref)  # a model directory: no --arch needed any more
    assert back.arch == "lenet5"
    assert all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), back.model.state_dict().values(), strict=True))  # fmt: skip
    # The same file as safetensors works too.
    from safetensors.torch import save as st_save

    ref2 = uploads.save_checkpoint_upload(
        "m.safetensors", st_save({k: v.contiguous() for k, v in model.state_dict().items()}),
        "lenet5",
    )  # fmt: skip
    assert torch.equal(load_model(ref2).model.state_dict()["conv1.weight"], model.conv1.weight)


def test_wrong_arch_is_a_clear_error_and_leaves_nothing(_home: Path) -> None:
    data = _state_bytes(create_model("lenet5", pretrained=False))
    with pytest.raises(UserError, match="does not fit architecture 'digits-mlp'"):
        uploads.save_checkpoint_upload("m.pt", data, "digits-mlp")
    assert _files(uploads.uploads_dir()) == []


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(MARKER), "pwned"))


MARKER = ""


def test_malicious_pickle_is_refused_without_running(_home: Path) -> None:
    global MARKER
    MARKER = str(_home / "pwned.txt")
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": _Evil()}, buf)
    with pytest.raises(UserError, match="refusing to unpickle"):
        uploads.save_checkpoint_upload("evil.pt", buf.getvalue(), "digits-mlp")
    assert not Path(MARKER).exists()  # the payload never ran
    # A raw pickle (not a torch zip) too.
    raw = pickle.dumps(_Evil())
    with pytest.raises(UserError):
        uploads.save_checkpoint_upload("evil.pth", raw, "digits-mlp")
    assert not Path(MARKER).exists()
    assert _files(uploads.uploads_dir()) == []


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("m.pt", b"\x00garbage" * 10, "corrupt"),
        ("m.safetensors", b"not safetensors at all", "corrupt"),
        ("m.pt", b"", "empty"),
        ("m.exe", b"MZ", "expected a"),
    ],
)
def test_corrupt_or_wrong_files(name: str, data: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message):
        uploads.save_checkpoint_upload(name, data, "digits-mlp")
    assert _files(uploads.uploads_dir()) == []


def test_oversized_upload_is_refused() -> None:
    data = _state_bytes(create_model("digits-mlp", pretrained=False))
    with pytest.raises(UserError, match="upload limit"):
        uploads.save_checkpoint_upload("m.pt", data, "digits-mlp", limit=len(data) - 1)
    with pytest.raises(UserError, match="upload limit"):
        uploads.save_dataset_upload("d.zip", b"PK" + b"0" * 100, limit=50)
    assert _files(uploads.uploads_dir()) == []


def _png(color: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), color, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_dataset_zip_upload() -> None:
    entries = {
        f"{c}/{i}.png": _png(40 * k + i) for k, c in enumerate(["cat", "dog"]) for i in range(6)
    }
    ref = uploads.save_dataset_upload("pets.zip", _zip(entries))
    from pruning_core.data import load_dataset

    bundle = load_dataset(ref)
    assert list(bundle.class_names) == ["cat", "dog"]
    assert bundle.train[1].numel() + bundle.val[1].numel() == 12


def test_zip_with_parent_path_is_refused(_home: Path) -> None:
    bad = _zip({"cat/1.png": _png(1), "../../escape.png": _png(2), "dog/1.png": _png(3)})
    with pytest.raises(UserError, match="escapes"):
        uploads.save_dataset_upload("bad.zip", bad)
    assert not list(_home.rglob("escape.png"))
    assert _files(uploads.uploads_dir()) == []
    with pytest.raises(UserError):
        uploads.save_dataset_upload("notzip.zip", b"hello, not a zip")
    assert _files(uploads.uploads_dir()) == []


def test_streamlit_limit_matches() -> None:
    import tomllib

    cfg = tomllib.loads(
        (Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text()
    )
    assert cfg["server"]["maxUploadSize"] == uploads.MAX_UPLOAD_MB


def _model_zip(model: torch.nn.Module, folder: str = "pruned-model") -> bytes:
    """A model folder zipped as the Export page's download button offers it."""
    from pruning_core.export import checkpoint_zip

    base = load_model("digits-cnn")
    return checkpoint_zip(
        model, arch="digits-cnn", arch_kwargs=base.arch_kwargs, spec=base.spec,
        extra_meta={"dataset": "digits"}, folder=folder,
    )  # fmt: skip


def test_model_zip_upload_names_its_own_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy
    import tempfile

    from pruning_core.prune import PruneConfig, prune_

    base = load_model("digits-cnn")
    m = copy.deepcopy(base.model)
    prune_(m, PruneConfig(method="magnitude", granularity="channel", ratio=0.5), spec=base.spec)
    data = _model_zip(m)
    # Where the zip is extracted (torch keeps caches in the temporary directory too).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    (tmp_path / "systmp").mkdir()
    # The picker still says digits-mlp: a model zip's own model.json decides.
    ref = uploads.save_checkpoint_upload("pruned-model.zip", data, "digits-mlp")
    assert list((tmp_path / "systmp").iterdir()) == []
    back = load_model(ref)
    assert back.arch == "digits-cnn" and back.meta["dataset"] == "digits"
    assert back.meta["surgery"]  # still physically shrunk
    a, b = m.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The app names it by the file the user uploaded, not the server path it is kept under.
    ref2 = uploads.save_checkpoint_upload("модель ✓ export.zip", data, "digits-mlp")
    assert uploads.uploaded_name(ref2) == "модель ✓ export.zip (uploaded)"
    assert uploads.uploaded_name("digits-cnn") is None
    assert uploads.uploaded_name(str(tmp_path)) is None


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"../../escape.json": b"{}"}, "escapes the folder"),
        ({"pruned-model/model.safetensors": b"x"}, "pruned-model.zip holds no model folder"),
    ],
)
def test_hostile_model_zip_upload_leaves_nothing(
    _home: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, bytes], message: str
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(_home / "systmp"))
    (_home / "systmp").mkdir()
    with pytest.raises(UserError, match=message) as e:
        uploads.save_checkpoint_upload("pruned-model.zip", _zip(entries), "digits-cnn")
    assert "\n" not in str(e.value) and ".pl-tmp-" not in str(e.value)  # names the upload
    assert _files(uploads.uploads_dir()) == [] and _files(_home / "systmp") == []
    assert not list(_home.parent.rglob("escape.json"))
