"""Dynamic (per-input) channel gating: exact top-k, honest MACs, equal-MACs search, no side
effects on the model passed in."""

from __future__ import annotations

import itertools
import math
import threading

import pytest
import torch
from torch import nn

from pruning_core.data import load_dataset
from pruning_core.dynamic import (
    DynamicConfig,
    DynamicModel,
    equal_macs_config,
    gateable_layers,
    image_usage,
    measure_dynamic,
    saliency_l1,
    static_channel_baseline,
    train_gates,
)
from pruning_core.errors import UserError
from pruning_core.models import load_model
from pruning_core.models.architectures import CifarResNet
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs
from pruning_core.train import TrainResult

SPEC = InputSpec(3, 16, (0.5,) * 3, (0.25,) * 3, 10)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """A tiny residual CNN with BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    m = CifarResNet(n=1, widths=(8, 12, 16), image_size=16)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def _x(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("gate", ["magnitude", "output"])
def test_each_image_keeps_exactly_k_channels_and_zeroes_the_rest(
    resnet: nn.Module, gate: str
) -> None:
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.4, gate=gate), SPEC)
    seen: dict[str, torch.Tensor] = {}
    mods = dict(dyn.net.named_modules())
    for name, point in dyn.gate_point.items():
        # Registered after the gate's hook: sees the gated output.
        mods[point].register_forward_hook(
            lambda _m, _i, o, name=name: seen.__setitem__(name, o.detach())
        )
    dyn(_x())
    assert set(dyn.last.masks) == set(gateable_layers(resnet)) == set(dyn.k)
    for name, mask in dyn.last.masks.items():
        c = dyn.convs[name].out_channels
        k = math.ceil(0.4 * c)
        assert (mask.sum(1) == k).all(), name
        out = seen[name]
        assert (out[~mask] == 0).all(), name  # skipped channels output exactly 0
        assert (out[mask].flatten(1).abs().sum(1) > 0).any(), name
    # Different images choose different channels somewhere (the gate depends on the input).
    assert any((m != m[0]).any() for m in dyn.last.masks.values())


def test_keep_one_is_the_dense_model(resnet: nn.Module) -> None:
    dyn = DynamicModel(resnet, DynamicConfig(keep=1.0), SPEC)
    x = _x()
    assert torch.equal(dyn(x), resnet(x))
    assert not dyn.last.masks
    assert (dyn.effective_macs() == count_macs(resnet, SPEC)).all()


def test_effective_macs_fall_with_keep_and_count_the_residual_honestly(resnet: nn.Module) -> None:
    dense = count_macs(resnet, SPEC)
    keeps = [1.0, 0.9, 0.75, 0.6, 0.5, 0.4, 0.25, 0.1]
    macs = []
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5), SPEC)
    for keep in keeps:
        dyn.set_keep(DynamicConfig(keep=keep))
        dyn(_x(3))
        m = dyn.effective_macs()
        assert (m == m[0]).all()  # top-k: every image costs the same
        macs.append(float(m[0]))
    assert macs[0] == dense
    assert all(a > b for a, b in itertools.pairwise(macs)), macs
    # A block's second conv feeds an addition with the shortcut: its gate saves nothing in the
    # next block; the first conv's gate feeds the second conv directly.
    feeds = {c: [p for p, _ in ps] for c, ps in dyn.feeds.items()}
    assert feeds["layer1.0.conv2"] == ["layer1.0.conv1"]
    assert "layer1.0.conv2" not in {p for ps in feeds.values() for p in ps}
    assert "layer2.0.conv1" not in feeds  # reads relu(block output + shortcut)
    # Gated layer1.0.conv2 at keep 0.5: 4 of 8 outputs, 4 of 8 inputs (from conv1's gate).
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5), SPEC)
    dyn(_x(2))
    assert float(dyn.last.macs["layer1.0.conv2"][0]) == dyn.conv_dense["layer1.0.conv2"] / 4


def test_output_gate_saves_only_in_the_next_layer(resnet: nn.Module) -> None:
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5, gate="output"), SPEC)
    dyn(_x(2))
    # conv1 of the first block is computed in full; the second conv loses half its inputs.
    assert float(dyn.last.macs["layer1.0.conv1"][0]) < dyn.conv_dense["layer1.0.conv1"]  # stem
    assert float(dyn.last.macs["layer2.0.conv1"][0]) == dyn.conv_dense["layer2.0.conv1"]
    assert float(dyn.last.macs["layer1.0.conv2"][0]) == dyn.conv_dense["layer1.0.conv2"] / 2
    pred = DynamicModel(resnet, DynamicConfig(keep=0.5), SPEC)
    pred(_x(2))
    assert float(pred.effective_macs()[0]) < float(dyn.effective_macs()[0])


def test_the_model_passed_in_is_not_modified(resnet: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    x = _x()
    y = resnet(x)
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.3), SPEC)
    dyn(x)
    equal_macs_config(resnet, SPEC, count_macs(resnet, SPEC) * 0.5)
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet.modules())
    assert torch.equal(resnet(x), y)
    assert not resnet.training


def test_equal_macs_lands_within_one_percent_of_static_channel_pruning() -> None:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    static = static_channel_baseline(loaded.model, data, loaded.spec, 0.5, split=None)
    assert static.macs < static.dense_macs
    config, macs = equal_macs_config(loaded.model, loaded.spec, static.macs)
    assert abs(macs - static.macs) / static.macs < 0.01
    report = measure_dynamic(loaded.model, data, loaded.spec, config, limit=200)
    assert abs(report.mean_macs - macs) < 1e-6 * macs
    assert report.n == 200 and 0.0 <= report.accuracy <= 1.0
    assert 0 < report.skipped < 1
    assert set(report.usage) == {"conv1", "conv2"}
    assert all(((u >= 0) & (u <= 1)).all() for u in report.usage.values())


def test_image_usage_matches_the_batch_run(resnet: nn.Module) -> None:
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5), SPEC)
    x = _x(3)
    dyn(x)
    batch = {n: m[1].numpy() for n, m in dyn.last.masks.items()}
    one = image_usage(dyn, x[1])
    assert set(one.masks) == set(batch)
    assert all((one.masks[n] == batch[n]).all() for n in batch)
    frame = one.frame()
    assert list(frame["layer"]) == list(one.masks)
    assert one.macs < one.dense_macs
    with pytest.raises(UserError, match="one image"):
        image_usage(dyn, x)


def test_bad_configs_and_models_are_refused_in_one_line(resnet: nn.Module) -> None:
    for bad in (0.0, 1.5, "x"):
        with pytest.raises(UserError, match="keep"):
            DynamicConfig(keep=bad)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown gate"):
        DynamicConfig(gate="nope")
    with pytest.raises(UserError, match="matches no Conv2d"):
        DynamicModel(resnet, DynamicConfig(layers=("nope",)), SPEC)
    mlp = load_model("digits-mlp")
    with pytest.raises(UserError, match="no Conv2d"):
        DynamicModel(mlp.model, DynamicConfig(), mlp.spec)
    with pytest.raises(UserError, match="outside what gating reaches"):
        equal_macs_config(resnet, SPEC, 10.0)


def test_recalibration_changes_only_the_copy(resnet: nn.Module) -> None:
    data = load_dataset("digits")

    def stats(m: nn.Module) -> torch.Tensor:
        bn = m.get_submodule("bn1")
        assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
        return bn.running_mean.clone()

    before = stats(resnet)
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5), SPEC)
    # The tiny ResNet reads 3-channel 16 px images: digits adapt to that spec.
    assert dyn.recalibrate(data, batches=1)
    assert not torch.equal(stats(dyn.net), before)
    assert torch.equal(stats(resnet), before)


# ----------------------------------------------------------------------------- learned gate (FBS)


def test_an_untrained_learned_gate_selects_what_the_magnitude_gate_selects(
    resnet: nn.Module,
) -> None:
    x = _x()
    mag = DynamicModel(resnet, DynamicConfig(keep=0.4), SPEC)
    learned = DynamicModel(resnet, DynamicConfig(keep=0.4, gate="learned"), SPEC)
    y_mag, y_learned = mag(x), learned(x)
    assert set(learned.last.masks) == set(mag.last.masks) == set(mag.k)
    for name, mask in mag.last.masks.items():
        assert torch.equal(learned.last.masks[name], mask), name
    # Kept channels are kept as they are (not boosted): the same outputs exactly.
    assert torch.equal(y_learned, y_mag)
    # Its predictors are the only trainable parameters, and they carry a gradient.
    trainable = [n for n, p in learned.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("gate.predictors.") for n in trainable)
    assert saliency_l1(learned).requires_grad


def test_the_learned_gate_counts_its_predictor_in_the_effective_macs(resnet: nn.Module) -> None:
    dyn = DynamicModel(resnet, DynamicConfig(keep=0.5, gate="learned"), SPEC)
    inputs: dict[str, tuple[int, ...]] = {}
    for name in dyn.k:
        dyn.convs[name].register_forward_pre_hook(
            lambda _m, i, name=name: inputs.__setitem__(name, tuple(i[0].shape[1:]))
        )
    dyn(_x(2))
    convs = sum(dyn.last.macs.values())
    assert isinstance(convs, torch.Tensor)
    gates = dyn.effective_macs() - convs - dyn.other_macs
    # Pooling (Cin x H x W) plus the dense predictor (Cin x Cout) of every gated layer.
    expected = sum(
        math.prod(inputs[n]) + dyn.convs[n].in_channels * dyn.convs[n].out_channels for n in dyn.k
    )
    assert (gates == expected).all()
    assert expected > 0


def _gates(dyn: DynamicModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in dyn.state_dict().items() if k.startswith("gate.")}


def _trained(steps: int, seed: int = 0) -> tuple[DynamicModel, TrainResult]:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    dyn = DynamicModel(loaded.model, DynamicConfig(keep=0.5, gate="learned"), loaded.spec)
    reports: list[float] = []
    result = train_gates(
        dyn,
        data,
        batch_size=32,
        train_limit=32 * steps,
        val_limit=64,
        lr=1e-2,
        l1=1e-3,
        seed=seed,
        progress=lambda p: reports.append(p.fraction),
    )
    assert reports[-1] == 1.0
    return dyn, result


def test_training_moves_the_gates_only_and_repeats_for_a_seed() -> None:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    start = DynamicModel(loaded.model, DynamicConfig(keep=0.5, gate="learned"), loaded.spec)
    dyn, result = _trained(steps=4)
    assert result.steps == 4 and not result.cancelled
    gates0, gates1 = _gates(start), _gates(dyn)
    assert any(not torch.equal(gates0[k], gates1[k]) for k in gates0)
    # The network is untouched: the gated copy's weights and BatchNorm statistics, and the
    # model it was built from.
    net0, net1 = loaded.model.state_dict(), dyn.net.state_dict()
    assert all(torch.equal(net0[k], net1[k]) for k in net0)
    assert not any(p.requires_grad for p in dyn.net.parameters()) and not dyn.training
    x, y = data.tensors("val", loaded.spec, limit=64)
    with torch.no_grad():
        before, after = start(x), dyn(x)
    assert torch.isfinite(after).all()
    acc = float((after.argmax(1) == y).float().mean())
    assert not math.isnan(acc)
    # Training changed which channels some images use.
    start(x)
    assert any(not torch.equal(start.last.masks[n], dyn.last.masks[n]) for n in dyn.k)
    assert not torch.equal(before, after)
    again, _ = _trained(steps=4)
    assert all(torch.equal(v, _gates(again)[k]) for k, v in gates1.items())


def test_training_gates_is_refused_for_a_data_free_gate_and_stops_on_cancel() -> None:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    mag = DynamicModel(loaded.model, DynamicConfig(keep=0.5), loaded.spec)
    with pytest.raises(UserError, match="only a learned gate trains"):
        train_gates(mag, data)
    dyn = DynamicModel(loaded.model, DynamicConfig(keep=0.5, gate="learned"), loaded.spec)
    before = _gates(dyn)
    stop = threading.Event()
    stop.set()
    result = train_gates(dyn, data, train_limit=64, cancel=stop)
    assert result.cancelled and result.steps == 0
    assert before and all(torch.equal(before[k], v) for k, v in _gates(dyn).items())
