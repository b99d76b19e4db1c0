"""Export round trips: checkpoints reload equal, ONNX matches PyTorch, recipes repeat the run,
and the HTML report needs no network."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from pruning_core import export
from pruning_core.errors import UserError
from pruning_core.models import LoadedModel, load_model
from pruning_core.prune import PruneConfig, prune_
from pruning_core.recipe import Recipe


@pytest.fixture(scope="module")
def dense() -> LoadedModel:
    return load_model("digits-cnn")


def _pruned(dense: LoadedModel, granularity: str, ratio: float) -> torch.nn.Module:
    m = copy.deepcopy(dense.model)
    prune_(
        m, PruneConfig(method="magnitude", granularity=granularity, ratio=ratio), spec=dense.spec
    )
    return m.eval()


def _x(dense: LoadedModel, n: int = 5) -> torch.Tensor:
    s = dense.spec
    return torch.randn(n, s.channels, s.size, s.size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_checkpoint_reloads_equal(dense: LoadedModel, granularity: str, tmp_path: Path) -> None:
    m = _pruned(dense, granularity, 0.5)
    if granularity == "channel":  # physically smaller: the surgery must be recorded
        assert sum(p.numel() for p in m.parameters()) < sum(
            p.numel() for p in dense.model.parameters()
        )
    out = export.save_checkpoint(
        tmp_path / "ck", m, arch="digits-cnn", arch_kwargs=dense.arch_kwargs, spec=dense.spec,
        files={"metrics.json": {"sparsity": 0.5}},
    )  # fmt: skip
    back = load_model(str(out))
    a, b = m.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = _x(dense)
    with torch.no_grad():
        assert torch.equal(m(x), back.model(x))
    assert json.loads((out / "metrics.json").read_text()) == {"sparsity": 0.5}


def test_checkpoint_zip_unzips_to_a_model_dir(dense: LoadedModel, tmp_path: Path) -> None:
    m = _pruned(dense, "channel", 0.3)
    blob = export.checkpoint_zip(
        m, arch="digits-cnn", arch_kwargs=dense.arch_kwargs, spec=dense.spec, folder="mine"
    )
    with zipfile.ZipFile(__import__("io").BytesIO(blob)) as zf:
        names = set(zf.namelist())
        assert names == {"mine/model.safetensors", "mine/model.json"}
        zf.extractall(tmp_path)
    back = load_model(str(tmp_path / "mine"))
    x = _x(dense)
    with torch.no_grad():
        assert torch.equal(m(x), back.model(x))


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_onnx_matches_torch(dense: LoadedModel, granularity: str, tmp_path: Path) -> None:
    m = _pruned(dense, granularity, 0.7)
    check = export.export_onnx(m, dense.spec, tmp_path / "m.onnx")
    assert check.ok and check.max_abs_diff <= 1e-4
    # Independently of the exporter's own check: onnxruntime on another batch size.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _x(dense, 3)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert got.shape == want.shape
    assert abs(got - want).max() <= 1e-4


def test_onnx_mismatch_writes_nothing(
    dense: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_compare", lambda *a: (0.5, 1.0))
    with pytest.raises(UserError, match="differs from PyTorch"):
        export.export_onnx(dense.model, dense.spec, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_recipe_repeats_the_run(dense: LoadedModel, fmt: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    config = PruneConfig(method="magnitude", ratio=0.8, scope="layer")
    recipe = Recipe("digits-cnn", "digits", config)
    path = tmp_path / f"recipe.{fmt}"
    path.write_text(recipe.text(fmt))
    code, out, err = cli("prune", "--recipe", str(path), "--out", str(tmp_path / "run"),
                         "--quiet", "--json")  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["method"] == "magnitude" and metrics["scope"] == "layer"
    assert metrics["target_ratio"] == pytest.approx(0.8)
    # Same settings, same masks: the zeros are exactly those of pruning here.
    mine = copy.deepcopy(dense.model)
    prune_(mine, config)
    theirs = load_model(str(tmp_path / "run")).model
    for (n, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a == 0, b == 0), n


def test_recipe_validates_settings() -> None:
    with pytest.raises(UserError):
        Recipe("digits-cnn", "digits", PruneConfig.from_dict({"method": "nope"}))
    with pytest.raises(UserError):
        Recipe("digits-cnn", "digits", PruneConfig()).text("toml")


def test_report_is_self_contained(dense: LoadedModel) -> None:
    sweep = pd.DataFrame(
        {"method": ["magnitude", "magnitude", "random", "random"], "ratio": [0.5, 0.9] * 2,
         "sparsity": [0.5, 0.9] * 2, "accuracy": [0.98, 0.9, 0.8, 0.2],
         "finetuned_accuracy": [0.985, 0.95, 0.9, 0.6], "dense_accuracy": [0.986] * 4}
    )  # fmt: skip
    lat = pd.DataFrame(
        {"ratio": [0.5, 0.5], "backend": ["dense", "masked"], "status": ["ok", "ok"],
         "median_ms": [1.0, 1.02], "p10_ms": [0.9, 0.95], "p90_ms": [1.1, 1.2],
         "speedup": [1.0, 0.98]}
    )  # fmt: skip
    metrics = {"model": "digits-cnn", "dataset": "digits", "method": "magnitude",
               "granularity": "unstructured", "sparsity": 0.9, "dense_accuracy": 0.986,
               "pruned_accuracy": 0.9, "finetuned_accuracy": 0.95, "params_before": 10,
               "params_after": 1, "layer_sparsity": {"conv1": 0.5, "fc1": 0.95}}  # fmt: skip
    page = export.pruning_report(metrics, sweep=sweep, latency=lat, latency_note="cpu, 1 thread",
                                 model_card=export.model_card("digits-cnn"))  # fmt: skip
    assert '<script src="http' not in page and export.is_self_contained(page)
    assert page.count('class="plotly-graph-div"') == 3  # accuracy, latency, per-layer
    # plotly.js itself is inlined exactly once.
    assert page.count("plotly.js v") >= 1 and len(page) > 1_000_000
    assert "Accuracy vs sparsity" in page and "Latency vs pruning ratio" in page
    assert "95.00%" in page  # the fine-tuned accuracy headline
    assert "Model card" in page
    # Text from the user (model names) is escaped.
    evil = export.report_html("<script>alert(1)</script>", metrics={"x": "<b>"})
    assert "<script>alert(1)</script>" not in evil and "&lt;script&gt;" in evil


def test_write_bytes_is_atomic_and_refuses_dirs(tmp_path: Path) -> None:
    p = export.write_bytes(tmp_path / "a.bin", b"123")
    assert p.read_bytes() == b"123"
    with pytest.raises(UserError):
        export.write_bytes(tmp_path, b"x")


def test_onnx_check_scales_with_the_logits(dense: LoadedModel, tmp_path: Path) -> None:
    """Logits in the millions (an untrained or freshly pruned net) are judged relative to their
    size; a model whose outputs overflow is refused by that reason, writing nothing."""
    import copy

    big = copy.deepcopy(dense.model)
    last = [m for m in big.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1e6)
    check = export.export_onnx(big, dense.spec, tmp_path / "big.onnx")
    assert check.ok and (tmp_path / "big.onnx").exists()
    with torch.no_grad():
        last.weight.fill_(float("inf"))
    with pytest.raises(UserError, match="not finite"):
        export.export_onnx(big, dense.spec, tmp_path / "inf.onnx")
    assert not (tmp_path / "inf.onnx").exists()


def test_onnx_carries_the_input_normalisation(dense: LoadedModel, tmp_path: Path) -> None:
    """Raw 8-bit images prepared from the file's metadata alone give the model's logits."""
    import numpy as np
    import onnxruntime as ort

    from pruning_core.data import adapt

    export.export_onnx(dense.model, dense.spec, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    s = dense.spec
    assert meta["input_layout"] == "NCHW" and meta["pixel_scale"] == "1/255"
    assert int(meta["input_size"]) == s.size and int(meta["input_channels"]) == s.channels
    assert meta["channel_order"] == ("grayscale" if s.channels == 1 else "RGB")
    assert json.loads(meta["class_names"]) == list(s.class_names)
    raw = torch.randint(0, 256, (4, s.channels, s.size, s.size), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(2))  # fmt: skip
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(json.loads(meta["std"]), dtype=np.float32).reshape(1, -1, 1, 1)
    fed = ((raw.numpy().astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: fed})[0]
    with torch.no_grad():
        want = dense.model.eval()(adapt(raw, s)).numpy()  # the data pipeline's own preparation
    assert abs(got - want).max() <= 1e-4


def _ft_metrics(pruned: float, finetuned: float, kept: int | None) -> dict[str, Any]:
    return {"model": "digits-mlp", "dataset": "digits", "method": "magnitude",
            "granularity": "unstructured", "sparsity": 0.5, "dense_accuracy": 0.9889,
            "pruned_accuracy": pruned, "finetuned_accuracy": finetuned,
            "finetune_kept_epoch": kept,
            "recipe": {"settings": {"finetune_epochs": 2}}}  # fmt: skip


def test_a_fine_tune_that_lowered_accuracy_is_stated_in_words_and_numbers() -> None:
    m = _ft_metrics(0.9889, 0.9749, None)  # the report: 98.89% -> 97.49%
    assert export.finetune_change(m) == -1.4
    said = export.finetune_outcome(m)
    assert said is not None and said.startswith("Fine-tuning lowered accuracy by 1.40 points")
    page = export.pruning_report(m)
    assert "Fine-tuning lowered accuracy by 1.40 points" in page
    assert '<p class="outcome worse">' in page  # set off in red, not a grey note
    assert "-1.40 points" in page  # the signed change among the headline numbers


def test_a_fine_tune_that_helped_or_kept_the_start_says_which_epoch_it_kept() -> None:
    raised = export.finetune_outcome(_ft_metrics(0.90, 0.95, 2))
    assert raised is not None and raised.startswith("Fine-tuning raised accuracy by 5.00 points")
    assert "kept the best epoch by validation accuracy: epoch 2 of 2" in raised
    kept = export.finetune_outcome(_ft_metrics(0.9889, 0.9889, 0))
    assert kept is not None and kept.startswith("Fine-tuning left accuracy unchanged")
    assert "epoch 0, the weights before fine-tuning" in kept
    page = export.pruning_report(_ft_metrics(0.90, 0.95, 2))
    assert '<p class="outcome">' in page and "+5.00 points" in page
    # No fine-tune, nothing said about one.
    assert (
        export.finetune_outcome({**_ft_metrics(0.9, 0.9, None), "finetuned_accuracy": None}) is None
    )
