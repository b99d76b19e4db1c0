"""Structured pruning: channels, heads and blocks, physical and mask preview, reload."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from pruning_core.checkpoint import save_model_dir
from pruning_core.errors import UserError
from pruning_core.models import architectures as A
from pruning_core.models import get_entry, load_model, model_spec
from pruning_core.prune import (
    PruneConfig,
    StructuredPreview,
    prunable_layers,
    prune_,
)
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, count_params

torch.set_num_threads(1)

SPEC32 = InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3, 10)
SPEC16 = InputSpec(3, 16, (0.5,) * 3, (0.25,) * 3, 10)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BatchNorms are identities; random statistics make the tests meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _resnet(n: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(A.CifarResNet(n=n, image_size=16))


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return A.TinyViT(image_size=16, dim=32, depth=2, num_heads=4, mlp_dim=48).eval()


def _x(spec: InputSpec, n: int = 4) -> torch.Tensor:
    return torch.randn(
        n, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(1)
    )


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_channel_keeps_outputs_and_drops_params_and_macs() -> None:
    model = _resnet()
    x = _x(SPEC16)
    before_out = model(x).shape
    p0, m0 = count_params(model), count_macs(model, SPEC16)
    res = prune_(model, PruneConfig(granularity="channel", ratio=0.5), spec=SPEC16)
    assert model(x).shape == before_out
    p1, m1 = count_params(model), count_macs(model, SPEC16)
    # Half the channels on both sides of each conv: about a quarter of the conv work remains.
    assert 0.15 < m1 / m0 < 0.4, (m0, m1)
    assert 0.15 < p1 / p0 < 0.45, (p0, p1)
    assert model.fc.out_features == 10  # the classifier's outputs are never pruned
    assert res.removed and 0.6 < res.sparsity < 0.85
    assert res.masks == {}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_no_layer_reaches_zero_width(scope: str) -> None:
    model = _resnet()
    widths = {n: c.out_channels for n, c in _convs(model).items()}
    prune_(model, PruneConfig(granularity="channel", ratio=0.95, scope=scope), spec=SPEC16)
    for n, c in _convs(model).items():
        assert c.out_channels >= 1
        assert c.out_channels >= widths[n] * (1 - 0.98) - 1e-9
    assert model(_x(SPEC16)).shape == (4, 10)


def test_max_layer_ratio_caps_global_pruning() -> None:
    model = _resnet()
    widths = {n: c.out_channels for n, c in _convs(model).items()}
    cfg = PruneConfig(granularity="channel", ratio=0.55, max_layer_ratio=0.6)
    prune_(model, cfg, spec=SPEC16)
    for n, c in _convs(model).items():
        assert c.out_channels >= widths[n] * 0.4 - 1e-9, (n, c.out_channels, widths[n])


def test_per_layer_ratio_above_max_is_refused() -> None:
    model = _resnet()
    with pytest.raises(UserError, match="max_layer_ratio"):
        cfg = PruneConfig(
            granularity="channel", ratio=0.3, layer_ratios=(("layer1.0.conv1", 0.99),)
        )
        prune_(model, cfg, spec=SPEC16)


def test_per_layer_override_and_unknown_layer() -> None:
    model = _resnet()
    cfg = PruneConfig(granularity="channel", ratio=0.0, layer_ratios=(("layer2.0.conv1", 0.75),))
    res = prune_(model, cfg, spec=SPEC16)
    assert list(res.removed) == ["layer2.0.conv1"]
    assert model.layer2[0].conv1.out_channels == 8 and model.layer3[0].conv1.out_channels == 64
    bad = PruneConfig(granularity="channel", ratio=0.2, layer_ratios=(("nope", 0.5),))
    with pytest.raises(UserError, match="nope"):
        prune_(_resnet(), bad, spec=SPEC16)


def test_round_to_is_respected() -> None:
    model = _resnet()
    touched = {n: c.out_channels for n, c in _convs(model).items()}
    prune_(model, PruneConfig(granularity="channel", ratio=0.4, round_to=8), spec=SPEC16)
    changed = [c for n, c in _convs(model).items() if c.out_channels != touched[n]]
    assert changed
    for c in _convs(model).values():
        assert c.out_channels % 8 == 0, c


def test_structured_layers_lists_groups_heads_blocks() -> None:
    names = prunable_layers(_resnet(), PruneConfig(granularity="channel"), SPEC16)
    assert "conv1" in names and "layer3.0.conv1" in names and "fc" not in names
    assert prunable_layers(_vit(), PruneConfig(granularity="head")) == [
        "blocks.0.attn",
        "blocks.1.attn",
    ]
    assert prunable_layers(_resnet(2), PruneConfig(granularity="block"), SPEC16) == [
        "layer1.0",
        "layer1.1",
        "layer2.1",
        "layer3.1",
    ]


def test_head_pruning_reduces_num_heads_and_runs() -> None:
    model = _vit()
    x = _x(SPEC16)
    res = prune_(model, PruneConfig(granularity="head", ratio=0.5, scope="layer"), spec=SPEC16)
    for blk in model.blocks:
        assert blk.attn.num_heads == 2
        assert blk.attn.qkv.out_features == 3 * 2 * blk.attn.head_dim
        assert blk.attn.proj.in_features == 2 * blk.attn.head_dim
    assert model(x).shape == (4, 10)
    assert all(len(v) == 2 for v in res.removed.values())


def test_head_pruning_without_attention_is_a_user_error() -> None:
    with pytest.raises(UserError, match="head pruning needs attention layers"):
        prune_(_resnet(), PruneConfig(granularity="head", ratio=0.5), spec=SPEC16)


def test_block_pruning_replaces_blocks_by_identity() -> None:
    model = _resnet(2)
    x = _x(SPEC16)
    m0 = count_macs(model, SPEC16)
    res = prune_(model, PruneConfig(granularity="block", ratio=0.5), spec=SPEC16)
    gone = [n for n, m in model.named_modules() if isinstance(m, nn.Identity) and n.count(".") == 1]
    assert len(gone) == 2  # half of the 4 identity-shortcut blocks
    assert sum(len(v) for v in res.removed.values()) == 2
    assert model(x).shape == (4, 10)
    assert count_macs(model, SPEC16) < m0
    with pytest.raises(UserError, match="residual block with an identity shortcut"):
        digits = A.DigitsCNN()
        prune_(digits, PruneConfig(granularity="block", ratio=0.5), spec=model_spec("digits-cnn"))


@pytest.mark.parametrize(
    ("granularity", "build"),
    [("channel", lambda: _resnet()), ("head", _vit), ("block", lambda: _resnet(2))],
)
def test_mask_preview_matches_physical(granularity: str, build) -> None:  # type: ignore[no-untyped-def]
    x = _x(SPEC16)
    phys, masked = build(), build()
    shapes = {k: v.shape for k, v in masked.state_dict().items()}
    r_phys = prune_(phys, PruneConfig(granularity=granularity, ratio=0.5), spec=SPEC16)
    cfg = PruneConfig(granularity=granularity, ratio=0.5, structured_mode="mask")
    r_mask = prune_(masked, cfg, spec=SPEC16)
    assert {k: v.shape for k, v in masked.state_dict().items()} == shapes  # nothing shrank
    assert r_mask.removed == r_phys.removed  # the same selection
    assert r_mask.masks and all(m.dtype == torch.bool for m in r_mask.masks.values())
    assert abs(r_mask.sparsity - r_phys.sparsity) < 1e-6
    # Zeroing the removed weights computes the same function as removing them.
    torch.testing.assert_close(masked(x), phys(x), atol=1e-5, rtol=1e-5)


def test_mask_zeroes_exactly_the_removed_channels() -> None:
    model = _resnet()
    cfg = PruneConfig(granularity="channel", ratio=0.5, scope="layer", structured_mode="mask")
    res = prune_(model, cfg, spec=SPEC16)
    removed = res.removed["layer2.0.conv1"]
    mask = res.masks["layer2.0.conv1"]
    dead_rows = [i for i in range(mask.shape[0]) if not mask[i].any()]
    assert dead_rows == removed and len(removed) == 16
    assert (model.layer2[0].conv1.weight[removed] == 0).all()
    # The consumer's input columns of those channels are masked too.
    assert not res.masks["layer2.0.conv2"][:, removed].any()


def test_preview_rethresholds_without_rescoring() -> None:
    model = _resnet()
    prev = StructuredPreview(model, PruneConfig(granularity="channel"), spec=SPEC16)
    a, b = prev.select(0.25), prev.select(0.5)
    assert sum(map(len, a.values())) < sum(map(len, b.values()))
    for k, v in a.items():  # a larger ratio removes a superset within each layer-scope ranking
        assert set(v) <= set(b.get(k, []))
    assert prev.masks(0.5)  # and the model itself is untouched
    assert all(c.weight.abs().sum() > 0 for c in _convs(model).values())


def test_bn_scale_and_magnitude_choose_differently() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()
    with torch.no_grad():
        # Filter norms rise with the index, BN scales fall: the two criteria disagree.
        for i in range(8):
            model[0].weight[i].fill_(0.1 * (i + 1))
            model[1].weight[i] = 1.0 / (i + 1)
    spec = InputSpec(3, 8, (0.5,) * 3, (0.25,) * 3, 10)
    mag = prune_(copy.deepcopy(model), PruneConfig(granularity="channel", ratio=0.5), spec=spec)
    bn = prune_(
        copy.deepcopy(model),
        PruneConfig(method="bn-scale", granularity="channel", ratio=0.5),
        spec=spec,
    )
    assert mag.removed["0"] == [0, 1, 2, 3]
    assert bn.removed["0"] == [4, 5, 6, 7]


@pytest.mark.parametrize(
    ("arch", "granularity", "spec_kw"),
    [
        ("resnet20", "channel", {}),
        ("digits-cnn", "channel", {}),
        ("shapes-vit", "head", {"image_size": 16}),
        ("resnet20", "block", {}),
    ],
)
def test_save_and_reload_gives_identical_outputs(
    tmp_path: Path, arch: str, granularity: str, spec_kw: dict
) -> None:  # type: ignore[type-arg]
    spec = model_spec(arch, **spec_kw)
    kw = {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.size}
    torch.manual_seed(0)
    model = _randomize_bn(get_entry(arch).builder(**kw))
    prune_(model, PruneConfig(granularity=granularity, ratio=0.5), spec=spec)
    meta = {"arch": arch, "arch_kwargs": kw, "spec": spec.to_dict()}
    save_model_dir(tmp_path / "m", model, meta, reference=get_entry(arch).builder(**kw))
    loaded = load_model(str(tmp_path / "m")).model
    x = _x(spec)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert count_params(loaded) == count_params(model)


@pytest.mark.parametrize("method", ["taylor", "activation", "apoz", "wanda"])
def test_data_driven_channel_criteria_run_through_the_adapter(method: str) -> None:
    from pruning_core.data import load_dataset

    data = load_dataset("digits")
    spec = model_spec("digits-cnn")
    torch.manual_seed(0)
    model = _randomize_bn(A.CifarResNet(n=1, in_channels=1, image_size=8))
    cfg = PruneConfig(
        method=method, granularity="channel", ratio=0.5, scope="layer", calib_batches=1
    )
    masked = copy.deepcopy(model)
    var0 = model.bn1.running_var.clone()
    res = prune_(model, cfg, spec=spec, data=data)
    assert len(res.removed["layer2.0.conv1"]) == 16
    mask_cfg = PruneConfig(
        method=method,
        granularity="channel",
        ratio=0.5,
        scope="layer",
        calib_batches=1,
        structured_mode="mask",
    )
    assert prune_(masked, mask_cfg, spec=spec, data=data).removed == res.removed
    # Both re-estimated BatchNorm statistics on calibration data and still agree.
    kept = [i for i in range(len(var0)) if i not in res.removed["conv1"]]
    assert not torch.allclose(model.bn1.running_var, var0[kept])
    x = _x(spec)
    torch.testing.assert_close(masked(x), model(x), atol=1e-4, rtol=1e-4)


def test_torchvision_vit_heads_are_pruned_and_reload() -> None:
    """torchvision's MultiheadAttention is swapped exactly, then loses heads, and reloads."""
    from torchvision.models.vision_transformer import VisionTransformer

    from pruning_core.attention import SelfAttention
    from pruning_core.surgery import apply_surgery, surgery_of

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        vit = VisionTransformer(
            32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10
        ).eval()
        torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts it at zero
        return vit

    model, x = build(), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        dense = model(x)
    spec = InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3, 10)
    prune_(model, PruneConfig(method="magnitude", granularity="head", ratio=0.5), spec=spec)
    attn = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert len(attn) == 2 and all(m.num_heads == 2 for m in attn)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    with torch.no_grad():
        pruned = model(x)
    assert pruned.shape == dense.shape and not torch.allclose(pruned, dense)
    # Reload: a fresh dense build + the recorded surgery takes the saved tensors exactly.
    fresh = build()
    state = model.state_dict()
    apply_surgery(fresh, surgery_of(model, build()), state)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned)
