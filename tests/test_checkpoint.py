"""Checkpoints load safely: state_dicts, safetensors, model directories; bad files are refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
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
