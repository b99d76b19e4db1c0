"""Sparse inference: CSR on CPU, the auto backend, 2:4 on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning_core import sparse
from pruning_core.errors import UserError


def _sparse_mlp(sparsity: float = 0.9, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48, bias=False), nn.ReLU(), nn.Linear(48, 5)
    )
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    return m.eval()


def test_csr_matches_dense_and_reports() -> None:
    m = _sparse_mlp()
    x = torch.randn(7, 32)
    ref = m(x).detach()
    c = copy.deepcopy(m)
    report = sparse.to_sparse_(c, "csr", example=x)
    assert report.converted == ["0", "2"]
    assert isinstance(c[0], sparse.CSRLinear) and isinstance(c[2], sparse.CSRLinear)
    assert isinstance(c[4], nn.Linear)  # dense classifier stays dense, with a reason
    last = report.decisions[-1]
    assert last.backend == "dense" and "min_sparsity" in last.reason
    with torch.no_grad():
        torch.testing.assert_close(c(x), ref, rtol=1e-5, atol=1e-5)
        # leading dimensions (tokens) pass through
        x3 = torch.randn(2, 3, 32)
        torch.testing.assert_close(c(x3), m(x3), rtol=1e-5, atol=1e-5)
    # the converted model still copies and saves
    c2 = copy.deepcopy(c)
    assert "0.values" in c2.state_dict()
    assert c[0].nnz == int((m[0].weight != 0).sum())
    frame = report.to_frame()
    assert list(frame.layer) == ["0", "2", "4"]
    assert report.to_dict()["converted"] == 2


def test_csr_conv1x1() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1, stride=2)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.8] = 0
    m = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(24, 8, 3)).eval()
    x = torch.randn(2, 16, 9, 9)
    ref = m(x).detach()
    report = sparse.to_sparse_(
        m, "csr", conv1x1=True, example=x, layers=["0", "2"], min_sparsity=0.0
    )
    assert report.converted == ["0"]
    assert "1x1" in report.decisions[1].reason
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_auto_picks_and_stays_correct() -> None:
    torch.manual_seed(0)
    big = nn.Linear(1024, 1024)
    with torch.no_grad():
        big.weight[torch.rand_like(big.weight) < 0.99] = 0
    m = nn.Sequential(big, nn.ReLU(), nn.Linear(1024, 4)).eval()
    x = torch.randn(16, 1024)
    ref = m(x).detach()
    report = sparse.to_sparse_(m, "auto", example=x, repeats=5)
    d = report.decisions[0]
    assert d.backend in ("csr", "dense")
    assert d.dense_ms > 0 and d.sparse_ms > 0  # it measured both
    # the choice follows the measurement
    assert (d.backend == "csr") == (d.sparse_ms < sparse.AUTO_MARGIN * d.dense_ms)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


def test_semi24_falls_back_with_reason_on_cpu() -> None:
    m = _sparse_mlp()
    report = sparse.to_sparse_(m, "semi24")
    assert report.converted == []
    assert all(d.reason for d in report.decisions)
    if not torch.cuda.is_available():
        assert "CUDA" in report.decisions[0].reason


def test_bad_input() -> None:
    with pytest.raises(UserError):
        sparse.to_sparse_(_sparse_mlp(), "coo")
    with pytest.raises(UserError):
        sparse.to_sparse_(_sparse_mlp(), "csr", layers=["missing"])


@pytest.mark.gpu
def test_semi24_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 kernels need compute capability >= 8.0")
    torch.manual_seed(0)
    lin = nn.Linear(256, 128).cuda().half()
    with torch.no_grad():
        lin.weight.view(128, 64, 4)[:, :, :2] = 0  # 2:4
    m = nn.Sequential(lin, nn.ReLU(), nn.Linear(128, 10)).cuda().half().eval()
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = m(x)
    report = sparse.to_sparse_(m, "semi24", example=x)
    assert report.converted == ["0"], report.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=2e-2, atol=2e-2)
    # not 2:4 -> dense with a reason
    lin2 = nn.Linear(256, 128).cuda().half()
    r2 = sparse.to_sparse_(nn.Sequential(lin2), "semi24", min_sparsity=0.0)
    assert r2.converted == [] and "2:4" in r2.decisions[0].reason


@pytest.mark.parametrize("stride", [1, 2])
def test_conv1x1_as_matmul_equals_the_convolution(stride: int) -> None:
    # The 2:4 path for 1x1 convolutions is this reshaping around F.linear; on CPU it runs with
    # a dense weight, so its layout is checked here even where no 2:4 kernel exists.
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 1, stride=stride).eval()
    x = torch.randn(3, 12, 9, 7)
    w2 = conv.weight.detach().reshape(20, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            sparse.conv1x1_as_matmul(x, w2, conv.bias, conv.stride), conv(x), rtol=1e-5, atol=1e-5
        )


def test_semi24_1x1_conv_falls_back_with_reason_on_cpu() -> None:
    m = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    with torch.no_grad():
        m[0].weight.view(16, 2, 4)[:, :, :2] = 0  # 2:4 along the input channels
        m[2].weight.zero_()
    report = sparse.to_sparse_(m, "semi24", conv1x1=True, layers=["0", "2"])
    reasons = {d.layer: d.reason for d in report.decisions}
    assert report.converted == [] or torch.cuda.is_available()
    assert "1x1" in reasons["2"]  # a 3x3 convolution has no 2:4 path
    if not torch.cuda.is_available():
        assert "CUDA" in reasons["0"]


@pytest.mark.gpu
def test_semi24_1x1_conv_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 kernels need compute capability >= 8.0")
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        conv = nn.Conv2d(256, 128, 1).cuda().to(dtype).eval()
        with torch.no_grad():
            conv.weight.view(128, 64, 4)[:, :, :2] = 0
        m = nn.Sequential(conv)
        x = torch.randn(8, 256, 14, 14, device="cuda", dtype=dtype)
        with torch.no_grad():
            ref = m(x)
        report = sparse.to_sparse_(m, "semi24", conv1x1=True, example=x)
        assert report.converted == ["0"], report.to_dict()
        assert isinstance(m[0], sparse.SemiStructuredConv1x1)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref, rtol=3e-2, atol=3e-2)
