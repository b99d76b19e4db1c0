"""The onnxruntime latency backend: the protocol's settings, dense / shrunk / low-rank / int8
models, plain-words reasons where it cannot apply, the batch sweep, its figure and the CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pruning_core import ort as ort_mod
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.latency import PROTOCOL, batch_sweep, benchmark_backends
from pruning_core.models import load_model
from pruning_core.plots import batch_sweep_figure
from pruning_core.prune import PruneConfig, prune_
from pruning_core.quantize import QuantizeConfig, quantize

FAST: dict[str, Any] = {"warmup": 1, "repeats": 9}


def _ok_row(df: Any, backend: str) -> Any:
    row = df.set_index("backend").loc[backend]
    assert row["status"] == "ok", row["reason"]
    assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert row["repeats"] >= 3
    return row


def test_ort_backend_follows_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = ort_mod.session_options

    def spy(threads: int) -> Any:
        opts = real(threads)
        seen.append(opts.intra_op_num_threads)
        return opts

    monkeypatch.setattr(ort_mod, "session_options", spy)
    lm = load_model("digits-cnn")
    x = torch.randn(8, 1, 8, 8)
    df = benchmark_backends(lm.model, x, backends=("dense", "onnxruntime"), **FAST)
    row = _ok_row(df, "onnxruntime")
    _ok_row(df, "dense")
    # The protocol's threads are ONNX Runtime's intra-op threads, as they are torch's.
    assert seen and set(seen) == {PROTOCOL.threads} and row["threads"] == PROTOCOL.threads
    assert "1 intra-op thread" in row["detail"] and "CPU" in row["detail"]
    assert row["batch_size"] == 8 and df.attrs["protocol"] == PROTOCOL.with_(**FAST).describe(
        batch_size=8
    )
    seen.clear()
    df2 = benchmark_backends(lm.model, x, backends=("onnxruntime",), threads=2, **FAST)
    assert set(seen) == {2} and df2.iloc[0]["threads"] == 2


def test_ort_backend_runs_shrunk_lowrank_and_int8(tmp_path: Path) -> None:
    lm = load_model("digits-cnn")
    data = load_dataset("digits")
    x = torch.randn(4, 1, 8, 8)
    shrunk = copy.deepcopy(lm.model)
    prune_(shrunk, PruneConfig(granularity="channel", ratio=0.5), data=data, spec=lm.spec)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(
        p.numel() for p in lm.model.parameters()
    )
    df = benchmark_backends(
        shrunk, x, dense=lm.model, backends=("dense", "structured", "onnxruntime"), **FAST
    )
    assert "shrunk" in _ok_row(df, "onnxruntime")["detail"]
    _ok_row(df, "structured")
    # A low-rank model is a plain module of smaller layers: it exports like any other.
    lowrank = nn.Sequential(nn.Flatten(), nn.Linear(64, 6, bias=False), nn.Linear(6, 10))
    _ok_row(benchmark_backends(lowrank, x, backends=("onnxruntime",), **FAST), "onnxruntime")
    q = quantize(
        lm.model,
        lm.spec,
        data,
        tmp_path / "q",
        QuantizeConfig(mode="dynamic", val_limit=64, compare_images=64),
    ).model
    df = benchmark_backends(
        q, x, dense=lm.model, backends=("dense", "masked", "onnxruntime"), **FAST
    )
    assert "int8" in _ok_row(df, "onnxruntime")["detail"]
    _ok_row(df, "dense")
    masked = df.set_index("backend").loc["masked"]
    assert masked["status"] == "skipped" and "runs only in ONNX Runtime" in masked["reason"]
    alone = benchmark_backends(q, x, backends=("dense",), **FAST).iloc[0]
    assert alone["status"] == "skipped" and "give the float original" in alone["reason"]


def test_ort_backend_says_why_it_cannot_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = nn.Sequential(nn.Linear(64, 10))
    row = benchmark_backends(mlp, torch.randn(4, 64), backends=("onnxruntime",), **FAST).iloc[0]
    assert row["status"] == "skipped" and "square image batches" in row["reason"]
    monkeypatch.setattr(ort_mod, "cuda_provider_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA execution provider"):
        ort_mod.providers_for("cuda")
    meta = torch.empty(2, 1, 8, 8, device="meta")
    row = benchmark_backends(mlp, meta, backends=("onnxruntime",), **FAST).iloc[0]
    assert row["status"] == "skipped" and "CPU or a CUDA GPU" in row["reason"]


def test_batch_sweep_and_figure() -> None:
    lm = load_model("digits-cnn")
    df = batch_sweep(lm.model, lambda b: torch.randn(b, 1, 8, 8), batch_sizes=(1, 8))
    assert list(zip(df["batch_size"], df["backend"], strict=True)) == [
        (1, "dense"), (1, "onnxruntime"), (8, "dense"), (8, "onnxruntime"),
    ]  # fmt: skip
    assert (df["status"] == "ok").all()
    assert ((df["ms_per_image"] - df["median_ms"] / df["batch_size"]).abs() < 1e-12).all()
    assert "batch 1 and 8" in df.attrs["protocol"]
    fig = batch_sweep_figure(df, subtitle=df.attrs["protocol"])
    assert len(fig.data) == 2
    assert "batch size" in fig.layout.xaxis.title.text
    assert "ms per image" in fig.layout.yaxis.title.text
    with pytest.raises(UserError, match="batch sizes"):
        batch_sweep(lm.model, lambda b: torch.randn(b, 1, 8, 8), batch_sizes=(0,))


def test_cli_bench_onnxruntime_sweep(cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = cli(
        "bench", "--model", "digits-cnn", "--backend", "dense,onnxruntime",
        "--batch-sizes", "1,8", "--repeats", "9", "--warmup", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["batch_sizes"] == [1, 8]
    rows = {(r["batch_size"], r["backend"]): r for r in doc["sweep"]}
    assert set(rows) == {(1, "dense"), (1, "onnxruntime"), (8, "dense"), (8, "onnxruntime")}
    assert all(r["status"] == "ok" and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
               for r in rows.values())  # fmt: skip
    code, _, err = cli("bench", "--model", "digits-cnn", "--batch-sizes", "1,x")
    assert code == 2 and len(err.strip().splitlines()) == 1
