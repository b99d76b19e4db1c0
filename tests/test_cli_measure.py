"""The inspect and bench commands: JSON shape and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruning_core.checkpoint import save_model_dir
from pruning_core.cli import main
from pruning_core.fsio import write_json
from pruning_core.models import get_entry, load_model


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _run(
        capsys,
        "inspect",
        "--model",
        "digits-cnn",
        "--dataset",
        "digits",
        "--batches",
        "1",
        "--histograms",
        "--bins",
        "12",
        "--json",
    )
    assert code == 0 and isinstance(doc, dict)
    layers = {r["layer"]: r for r in doc["layers"]}
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2"}
    assert layers["conv1"]["params"] == 32 * 9 and "size_csr" in layers["conv1"]
    assert {r["layer"] for r in doc["activations"]} == set(layers)
    h = doc["weight_histograms"]["fc1"]
    assert len(h["counts"]) == 12 and sum(h["counts"]) == layers["fc1"]["params"]
    assert doc["summary"]["params"] == sum(r["params"] for r in doc["layers"]) + 32 + 64 + 128 + 10


def _pruned_dir(tmp: Path) -> Path:
    lm = load_model("digits-mlp")
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            w = lm.model.get_submodule(name).weight
            w[w.abs() < w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    out = tmp / "pruned"
    meta = {"arch": "digits-mlp", "arch_kwargs": lm.arch_kwargs, "spec": lm.spec.to_dict()}
    save_model_dir(out, lm.model, meta, reference=get_entry("digits-mlp").builder(**lm.arch_kwargs))
    write_json(out / "metrics.json", {"model": "digits-mlp", "sparsity": 0.9})
    return out


def test_bench_pruned_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _pruned_dir(tmp_path)
    code, doc = _run(
        capsys,
        "bench",
        "--model",
        str(d),
        "--backends",
        "dense,masked,structured,csr,semi24",
        "--repeats",
        "6",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    )
    assert code == 0 and isinstance(doc, dict)
    assert "unpruned original 'digits-mlp'" in doc["dense_reference"]
    rows = {r["backend"]: r for r in doc["backends"]}
    assert rows["dense"]["median_ms"] > 0 and rows["masked"]["median_ms"] > 0
    assert doc["masked_median_ms"] == rows["masked"]["median_ms"]
    assert rows["csr"]["status"] == "ok" and "2/3" in rows["csr"]["detail"]
    assert rows["structured"]["status"] == "skipped" and rows["structured"]["reason"]
    assert rows["semi24"]["status"] == "skipped" or torch.cuda.is_available()


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--model", "digits-mlp", "--backends", "dense,warp"],
        ["bench", "--model", "digits-mlp", "--batch-size", "0"],
        ["bench", "--model", "no-such-model"],
        ["inspect", "--model", "digits-cnn", "--bins", "1"],
        ["inspect", "--model", "digits-cnn", "--dataset", "no-such-dataset"],
    ],
)
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1


def test_bench_refuses_an_int8_folder_of_another_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An int8 folder is checked as a pruned one is: another network, or another input, is
    # one line before anything runs (it was an internal RuntimeError inside the timing).
    q = tmp_path / "mlp8"
    assert main(["quantize", "digits-mlp", "--mode", "dynamic", "--out", str(q),
                 "--val-limit", "32", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    for other in ("digits-cnn", "shapes-resnet"):
        argv = ["bench", "--model", other, "--pruned", str(q), "--backends", "onnxruntime"]
        assert main([*argv, "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'digits-mlp' model but --model" in err, err
    argv = ["bench", "--model", "digits-mlp", "--pruned", str(q), "--backends",
            "dense,onnxruntime", "--repeats", "3", "--warmup", "1", "--json"]  # fmt: skip
    code, doc = _run(capsys, *argv)
    assert code == 0 and isinstance(doc, dict)
    assert {r["backend"]: r["status"] for r in doc["backends"]} == {
        "dense": "ok", "onnxruntime": "ok",
    }  # fmt: skip
