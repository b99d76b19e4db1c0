"""Latency measurement and the backend comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.latency import LATENCY_BACKENDS as BACKENDS
from pruning_core.latency import benchmark_backends, measure_latency


def _mlp(width: int = 256) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10)).eval()


def test_measure_latency_sane() -> None:
    lat = measure_latency(_mlp(), torch.randn(4, 64), warmup=1, repeats=7)
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert lat.repeats == 7 and lat.batch_size == 4 and lat.device == "cpu"


def test_backends_masked_dense_csr_and_skips() -> None:
    dense = _mlp()
    pruned = _mlp()
    with torch.no_grad():
        pruned[0].weight[torch.rand_like(pruned[0].weight) < 0.95] = 0
    before = pruned[0].weight.detach().clone()
    df = benchmark_backends(pruned, torch.randn(8, 64), dense=dense, threads=1, warmup=1, repeats=9)
    assert list(df.backend) == list(BACKENDS)
    rows = df.set_index("backend")
    for b in ("dense", "masked", "csr"):
        assert rows.loc[b, "status"] == "ok", rows.loc[b, "reason"]
        assert rows.loc[b, "median_ms"] > 0
        assert rows.loc[b, "p10_ms"] <= rows.loc[b, "median_ms"] <= rows.loc[b, "p90_ms"]
        assert rows.loc[b, "threads"] == 1 and rows.loc[b, "batch_size"] == 8
    assert rows.loc["dense", "speedup"] == pytest.approx(1.0)
    assert rows.loc["structured", "status"] == "skipped" and rows.loc["structured", "reason"]
    if not torch.cuda.is_available():
        assert rows.loc["semi24", "status"] == "skipped" and "CUDA" in rows.loc["semi24", "reason"]
    assert math.isnan(rows.loc["structured", "median_ms"])
    # the pruned model itself is not converted (csr works on a copy)
    assert isinstance(pruned[0], nn.Linear) and torch.equal(pruned[0].weight, before)


def test_structured_backend_from_shrunk_model() -> None:
    dense, shrunk = _mlp(256), _mlp(64)
    df = benchmark_backends(
        shrunk,
        torch.randn(4, 64),
        dense=dense,
        backends=("dense", "masked", "structured"),
        warmup=1,
        repeats=3,
    )
    rows = df.set_index("backend")
    assert rows.loc["structured", "status"] == "ok"
    assert rows.loc["masked", "status"] == "skipped"


def test_bad_backend() -> None:
    with pytest.raises(UserError):
        benchmark_backends(_mlp(), torch.randn(2, 64), backends=("fast",))
    with pytest.raises(UserError):
        benchmark_backends(_mlp(), torch.randn(2, 64), backends=("dense",), threads=0)
