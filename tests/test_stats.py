"""Per-layer statistics, sizes, histograms and activation statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning_core import stats
from pruning_core.spec import InputSpec

SPEC = InputSpec(channels=1, size=4, mean=(0.0,), std=(1.0,), num_classes=3)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.fc(x)))


def _tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():
        # fc: a 2:4 pattern (columns 0,1 of every group of 4 zeroed) -> exactly half zeros
        w = m.fc.weight
        w.view(8, 16, 4)[:, :, :2] = 0
        # conv: first two filters entirely zero
        m.conv.weight[:2] = 0
    return m


def test_layer_table_counts_and_sizes() -> None:
    m = _tiny()
    t = stats.layer_table(m, SPEC).set_index("layer")
    assert list(t.index) == ["conv", "fc", "out"]
    fc = t.loc["fc"]
    w = m.fc.weight.detach()
    nnz = int((w != 0).sum())
    assert fc["params"] == 8 * 64 and fc["nonzero"] == nnz == 256
    assert fc["sparsity"] == pytest.approx(0.5)
    # sizes computed independently: values 4 B, int32 indices, bias dense
    assert fc["size_dense"] == 8 * 64 * 4 + 8 * 4
    assert fc["size_csr"] == nnz * 4 + nnz * 4 + (8 + 1) * 4 + 8 * 4
    assert fc["size_bitmask"] == nnz * 4 + math.ceil(8 * 64 / 8) + 8 * 4
    assert bool(fc["is_24"]) and fc["size_24"] == 8 * 64 / 2 * 4 + 8 * 64 / 8 + 8 * 4
    # MACs: conv 4 out ch x 16 px x 9 taps; fc 8 x 64
    assert t.loc["conv", "macs"] == 4 * 16 * 9
    assert fc["macs"] == 8 * 64
    assert fc["macs_effective"] == pytest.approx(8 * 64 * 0.5)
    conv = t.loc["conv"]
    assert conv["zero_channels"] == 2 and conv["ch_l1_min"] == 0.0
    assert not bool(conv["is_24"]) and math.isnan(conv["size_24"])
    assert not bool(t.loc["out", "is_24"])


def test_model_stats_totals() -> None:
    m = _tiny()
    t = stats.layer_table(m, SPEC)
    s = stats.model_stats(m, SPEC, t)
    assert s["params"] == stats.count_params(m)
    assert s["macs"] == stats.count_macs(m, SPEC)
    assert s["macs_effective"] < s["macs"]
    assert s["macs"] - s["macs_effective"] == pytest.approx(
        float((t.macs - t.macs_effective).sum())
    )
    assert s["size_bitmask"] < s["size_dense"]
    assert s["layers_24"] == 1
    zeros = int(t.params.sum() - t.nonzero.sum())
    assert s["sparsity"] == pytest.approx(zeros / int(t.params.sum()))


def test_is_n_m() -> None:
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]])
    assert stats.is_n_m(w)
    w[0, 1] = 5
    assert not stats.is_n_m(w)
    assert not stats.is_n_m(torch.ones(2, 6))  # 6 not a multiple of 4


@pytest.mark.parametrize("drop_zeros", [False, True])
def test_weight_histograms_sum_to_weights(drop_zeros: bool) -> None:
    m = _tiny()
    h = stats.weight_histograms(m, bins=17, drop_zeros=drop_zeros)
    assert set(h) == {"conv", "fc", "out"}
    for name, mod in [("conv", m.conv), ("fc", m.fc), ("out", m.out)]:
        edges, counts = h[name]
        assert len(edges) == 18 and len(counts) == 17
        expected = int((mod.weight != 0).sum()) if drop_zeros else mod.weight.numel()
        assert sum(counts) == expected
        assert (
            edges[0] <= float(mod.weight.detach().min())
            and edges[-1] >= float(mod.weight.detach().max()) - 1e-6
        )
    frame = stats.histograms_frame(h)
    assert len(frame) == 3 * 17
    with pytest.raises(KeyError):
        stats.weight_histograms(m, layers=["nope"])


class ReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def test_activation_apoz_crafted() -> None:
    m = ReluNet()
    with torch.no_grad():
        m.fc.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
        m.fc.bias.copy_(torch.tensor([-1.0, 2.0, 0.0]))  # ch0 always 0 after ReLU, ch1 never
    x = torch.cat([torch.ones(30, 2), -torch.ones(10, 2)])  # ch2 positive for 30 of 40 inputs
    a = stats.activation_stats(m, x, SPEC, batches=2, batch_size=20, bins=10)
    assert a.batches == 2
    ch = a.channels["fc"]
    assert ch["apoz"].tolist() == pytest.approx([1.0, 0.0, 10 / 40])
    assert ch["mean_abs"].tolist() == pytest.approx([1.0, 2.0, 1.0])
    row = a.table.set_index("layer").loc["fc"]
    assert row["dead_channels"] == 1 and row["n"] == 120
    _edges, counts = a.histograms["fc"]
    assert len(counts) == 10 and sum(counts) == 120


def test_activation_after_batchnorm() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        m[1].bias.copy_(torch.tensor([-100.0, 100.0, 0.0, 0.0]))
    x = torch.randn(8, 1, 4, 4)
    a = stats.activation_stats(m, x, SPEC, batches=1, batch_size=8)
    ch = a.channels["0"]
    assert bool(a.table.set_index("layer").loc["0", "after_bn"])
    assert ch["apoz"][0] == 1.0 and ch["apoz"][1] == 0.0


def test_activation_stats_on_dataset() -> None:
    from pruning_core.data import load_dataset
    from pruning_core.models import load_model

    lm = load_model("digits-cnn")
    a = stats.activation_stats(lm.model, load_dataset("digits"), lm.spec, batches=1, batch_size=16)
    assert set(a.table.layer) == {"conv1", "conv2", "fc1", "fc2"}
    assert a.table.apoz.between(0, 1).all()
    assert len(a.channels["conv1"]) == 32
