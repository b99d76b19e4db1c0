"""Checkpoints load safely: state_dicts, safetensors, model directories; bad files are refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from pruned_folders import channel_pruned_digits_cnn
from safetensors.torch import save_file

from pruning_core.checkpoint import save_model_dir
from pruning_core.errors import UserError
from pruning_core.fsio import output_dir
from pruning_core.models import create_model, load_model


def _model() -> torch.nn.Module:
    return create_model("digits-mlp", pretrained=False)


def test_state_dict_files_round_trip(tmp_path: Path) -> None:
    m = _model()
    torch.save(m.state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "b.pth")
    save_file(m.state_dict(), str(tmp_path / "c.safetensors"))
    x = torch.randn(4, 1, 8, 8)
    for f in ("a.pt", "b.pth", "c.safetensors"):
        loaded = load_model(str(tmp_path / f), arch="digits-mlp")
        assert torch.allclose(loaded.model(x), m(x)), f


def test_bare_state_dict_needs_arch(tmp_path: Path) -> None:
    torch.save(_model().state_dict(), tmp_path / "a.pt")
    with pytest.raises(UserError, match="--arch"):
        load_model(str(tmp_path / "a.pt"))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "none.pt"), arch="digits-mlp")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_model(str(tmp_path / "junk.pt"), arch="digits-mlp")
    torch.save(_model().state_dict(), tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_model(str(tmp_path / "t.pt"), arch="digits-mlp")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="corrupt"):
        load_model(str(tmp_path / "bad.safetensors"), arch="digits-mlp")


def test_wrong_architecture_names_keys_and_shapes(tmp_path: Path) -> None:
    torch.save(create_model("digits-cnn", pretrained=False).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(
        UserError, match=r"digits-mlp.*(missing keys fc1\.weight|unexpected keys conv1)"
    ):
        load_model(str(tmp_path / "cnn.pt"), arch="digits-mlp")
    sd = _model().state_dict()
    sd["fc1.weight"] = torch.zeros(100, 64)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(
        UserError, match=r"fc1\.weight: checkpoint \(100, 64\) vs model \(128, 64\)"
    ):
        load_model(str(tmp_path / "shape.pt"), arch="digits-mlp")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_untrusted_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with (tmp_path / "evil.pt").open("wb") as f:
        pickle.dump({"state_dict": _Evil(str(marker))}, f)
    torch.save({"w": _Evil(str(marker))}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(UserError, match="refusing to unpickle"):
            load_model(str(tmp_path / name), arch="digits-mlp")
    assert not marker.exists()


def test_trusted_pickled_module_loads(tmp_path: Path) -> None:
    m = _model()
    torch.save(m, tmp_path / "full.pt")
    with pytest.raises(UserError, match="refusing"):
        load_model(str(tmp_path / "full.pt"), arch="digits-mlp")
    loaded = load_model(str(tmp_path / "full.pt"), arch="digits-mlp", trust=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(loaded.model(x), m(x))


def test_model_dir_round_trip_with_surgery(tmp_path: Path) -> None:
    """A model whose layer was shrunk and a block replaced reloads without pickling."""
    ref = create_model("shapes-resnet", pretrained=False)
    m = create_model("shapes-resnet", pretrained=False)
    m.layer1[1] = torch.nn.Identity()  # a removed residual block
    fc = m.fc
    m.fc = torch.nn.Linear(fc.in_features, 10)
    spec = {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 10}
    save_model_dir(tmp_path / "d", m, {"arch": "shapes-resnet", "spec": spec}, reference=ref)
    loaded = load_model(str(tmp_path / "d"))
    assert isinstance(loaded.model.layer1[1], torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.allclose(loaded.model(x), m(x), atol=1e-6)


def test_output_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), output_dir(target) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with (
        pytest.raises(UserError, match="not written by pruning-lab"),
        output_dir(tmp_path / "mine"),
    ):
        pass
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# --- zipped model folders (the Export page's download, export --format checkpoint X.zip) ---


@pytest.fixture(scope="module")
def channel_pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-cnn pruned by channel at 0.5 (physically shrunk), as `prune --out` writes it."""
    return channel_pruned_digits_cnn(
        tmp_path_factory.mktemp("ck") / "a",
        meta=lambda res: {"pruned": {"sparsity": res.sparsity}},
    )


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temporary directory for this test (where zips are extracted): it must stay
    empty."""
    import tempfile

    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _folder_entries(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{p.name}": p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_exported_zip_evaluates_as_its_folder(  # type: ignore[no-untyped-def]
    cli, channel_pruned: Path, tmp_path: Path, scratch: Path
) -> None:
    import json

    from pruning_core import export

    z = tmp_path / "a.zip"
    code, _, err = cli("export", "--pruned", str(channel_pruned), "--format", "checkpoint",
                       "--out", str(z))  # fmt: skip
    assert code == 0, err
    # The app's download (`export.checkpoint_zip`, a folder of another name inside).
    loaded = load_model(str(channel_pruned))
    app = tmp_path / "from app.zip"
    app.write_bytes(export.checkpoint_zip(
        loaded.model, arch="digits-cnn", arch_kwargs=loaded.meta["arch_kwargs"],
        spec=loaded.spec, extra_meta={"dataset": "digits"}, folder="pruned model",
    ))  # fmt: skip
    # The folder's files zipped at the top, as a user re-zipping it might.
    flat = _zip(tmp_path / "flat.zip", _folder_entries(channel_pruned, ""))
    docs = {}
    for ref in (channel_pruned, z, app, flat):
        code, out, err = cli("evaluate", "--model", str(ref), "--dataset", "digits", "--json")
        assert code == 0, (ref, err)
        docs[ref] = json.loads(out)
    want = docs[channel_pruned]
    assert 0.5 < want["sparsity"] < 1 and want["accuracy"] > 0.1
    for ref in (z, app, flat):
        got = docs[ref]
        assert (got["accuracy"], got["sparsity"]) == (want["accuracy"], want["sparsity"]), ref
    a, b = loaded.model.state_dict(), load_model(str(z)).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(str(z)).meta["dataset"] == "digits"
    assert list(scratch.iterdir()) == []  # every extraction removed


def test_exported_zip_prunes_again_on_its_own_dataset(  # type: ignore[no-untyped-def]
    cli, channel_pruned: Path, tmp_path: Path, scratch: Path
) -> None:
    import json

    z = _zip(tmp_path / "a.zip", _folder_entries(channel_pruned, "a/"))
    out = tmp_path / "b"
    # No --dataset: the zip's model.json names digits.
    code, stdout, err = cli("prune", "--model", str(z), "--criterion", "magnitude",
                            "--granularity", "unstructured", "--ratio", "0.5", "--out",
                            str(out), "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["dataset"] == "digits"
    assert json.loads((out / "recipe.json").read_text())["settings"]["model"] == str(z)
    before = load_model(str(channel_pruned))
    after = load_model(str(out))
    assert after.meta["surgery"] == before.meta["surgery"]  # still shrunk
    assert list(scratch.iterdir()) == []


def _forged_sizes(data: bytes, size: int) -> bytes:
    """Every central-directory entry claims `size` uncompressed bytes (a zip-bomb header)."""
    import struct

    buf = bytearray(data)
    at = buf.find(b"PK\x01\x02")
    while at != -1:
        struct.pack_into("<I", buf, at + 24, size)
        at = buf.find(b"PK\x01\x02", at + 4)
    return bytes(buf)


def _hostile(kind: str, folder: Path, tmp_path: Path) -> Path:
    import io
    import stat
    import zipfile

    good = _folder_entries(folder, "a/")
    path = tmp_path / f"{kind}.zip"
    if kind == "traversal":
        return _zip(path, {**good, "../evil/model.json": b"{}"})
    if kind == "absolute":
        return _zip(path, {**good, "/tmp/evil-model.json": b"{}"})
    if kind == "symlink":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in good.items():
                zf.writestr(name, data)
            link = zipfile.ZipInfo("a/evil")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, "/etc/passwd")
        path.write_bytes(buf.getvalue())
        return path
    if kind == "oversized":
        # Two members claiming ~4 GiB each: over MAX_MODEL_ZIP_BYTES, refused before extraction.
        raw = _zip(tmp_path / "small.zip", {"a/model.json": b"{}", "a/model.safetensors": b"x"})
        path.write_bytes(_forged_sizes(raw.read_bytes(), 0xFFFFFFF0))
        raw.unlink()
        return path
    if kind == "no-model-json":
        return _zip(path, {"a/model.safetensors": good["a/model.safetensors"]})
    if kind == "not-a-zip":
        path.write_bytes(b"this is not a zip archive")
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("traversal", "escapes the folder"),
        ("absolute", "absolute path"),
        ("symlink", "symbolic link"),
        ("oversized", "over the limit"),
        ("no-model-json", "holds no model folder"),
        ("not-a-zip", "not a readable zip"),
    ],
)
def test_hostile_zip_is_one_line_and_leaves_nothing(  # type: ignore[no-untyped-def]
    cli, channel_pruned: Path, tmp_path: Path, scratch: Path, kind: str, message: str
) -> None:
    z = _hostile(kind, channel_pruned, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match=message) as e:
        load_model(str(z))
    assert "\n" not in str(e.value) and str(scratch) not in str(e.value)
    code, out, err = cli("evaluate", "--model", str(z), "--dataset", "digits")
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert z.name in err  # which zip: the entry alone does not say
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted, nothing escaped
    assert list(scratch.iterdir()) == []
    assert not (tmp_path.parent / "evil").exists()


def test_zip_over_the_byte_limit_is_refused(
    channel_pruned: Path, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruning_core import checkpoint

    # A real model over a (lowered) limit: the limit is read at each load, not frozen.
    monkeypatch.setattr(checkpoint, "MAX_MODEL_ZIP_BYTES", 64 * 1024)
    z = _zip(tmp_path / "big.zip", _folder_entries(channel_pruned, "a/"))
    with pytest.raises(UserError, match="limit"):
        load_model(str(z))
    assert list(scratch.iterdir()) == []


def test_a_zip_whose_model_is_broken_names_the_zip(
    channel_pruned: Path, tmp_path: Path, scratch: Path
) -> None:
    entries = _folder_entries(channel_pruned, "a/")
    z = _zip(tmp_path / "bad.zip", {**entries, "a/model.json": b'{"arch": "no-such-model"}'})
    with pytest.raises(UserError, match=r"bad\.zip/a/model\.json: arch: unknown model") as e:
        load_model(str(z))
    assert str(scratch) not in str(e.value)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("m.onnx", "is an ONNX graph .*pass the model folder it was exported from"),
        ("r.html", "is an HTML report, not a model; pass the model folder"),
        ("recipe.json", "a recipe runs with prune --recipe FILE"),
        ("model.json", "pass the folder that holds it"),
        ("q/model.onnx", "graph of an int8 model: pass its folder"),
        ("q.zip", "int8 model .*evaluate and bench take it, anything else its float"),
    ],
)
def test_exports_that_are_not_models_say_what_to_pass(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, scratch: Path, name: str, message: str
) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / "model.onnx").write_bytes(b"graph")
    (q / "quantized.json").write_text("{}")
    _zip(tmp_path / "q.zip", _folder_entries(q, "q/"))
    for other in ("m.onnx", "r.html", "recipe.json", "model.json"):
        (tmp_path / other).write_text("{}")
    with pytest.raises(UserError, match=message):
        load_model(str(tmp_path / name))
    code, _, err = cli("prune", "--model", str(tmp_path / name), "--dataset", "digits",
                       "--ratio", "0.5", "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []


def test_export_reads_a_checkpoint_zip_as_its_folder(  # type: ignore[no-untyped-def]
    cli, channel_pruned: Path, tmp_path: Path, scratch: Path
) -> None:
    import json
    import zipfile

    z = _zip(tmp_path / "a.zip", _folder_entries(channel_pruned, "a/"))
    again = tmp_path / "again.zip"
    code, out, err = cli("export", "--pruned", str(z), "--format", "checkpoint", "--out",
                         str(again), "--json")  # fmt: skip
    assert code == 0, err
    assert "metrics.json" in json.loads(out)["files"]  # read from inside the zip
    with zipfile.ZipFile(again) as zf:
        assert "again/metrics.json" in zf.namelist()
    a = load_model(str(channel_pruned)).model.state_dict()
    b = load_model(str(again)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(scratch.iterdir()) == []
