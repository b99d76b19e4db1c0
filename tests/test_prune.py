"""Unstructured and N:M pruning: configs, scopes, caps, the score cache and masks that hold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.models import architectures as A
from pruning_core.models import model_spec
from pruning_core.prune import (
    MaskEnforcer,
    PruneConfig,
    ScoreCache,
    apply_masks_,
    list_methods,
    mask_sparsity,
    measured_sparsity,
    prunable_layers,
    prune_,
)
from pruning_core.train import TrainConfig, fit

torch.set_num_threads(1)


def two_scales() -> nn.Module:
    """Two hidden layers, the second with weights 10x larger than the first."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        m[2].weight.mul_(10)
    return m


def test_list_methods_and_prunable_layers_keep_the_classifier() -> None:
    names = [m.name for m in list_methods()]
    assert names == [
        "magnitude", "random", "activation", "apoz", "wanda", "taylor", "bn-scale",
        "lamp", "fpgm", "snip",
    ]  # fmt: skip
    m = two_scales()
    assert prunable_layers(m, PruneConfig()) == ["0", "2"]
    assert prunable_layers(m, PruneConfig(ignore=())) == ["0", "2", "4"]
    assert prunable_layers(m, PruneConfig(ignore=("2",))) == ["0", "4"]


def test_global_and_layer_scope_differ_on_layers_of_different_scales() -> None:
    g = prune_(two_scales(), PruneConfig(ratio=0.5, scope="global"))
    layer = prune_(two_scales(), PruneConfig(ratio=0.5, scope="layer"))
    assert g.layer_sparsity["0"] > 0.9 and g.layer_sparsity["2"] < 0.1
    assert layer.layer_sparsity == pytest.approx({"0": 0.5, "2": 0.5}, abs=1e-3)
    assert mask_sparsity(g.masks)[0] == pytest.approx(0.5, abs=1e-3)
    assert mask_sparsity(layer.masks)[0] == pytest.approx(0.5, abs=1e-3)
    # The model's sparsity counts the dense classifier too: 1024 of 2176 Linear weights.
    assert g.sparsity == pytest.approx(1024 / 2176, abs=1e-3)
    assert layer.sparsity == pytest.approx(1024 / 2176, abs=1e-3)


def test_max_layer_ratio_caps_layers_and_keeps_the_global_target() -> None:
    res = prune_(two_scales(), PruneConfig(ratio=0.6, max_layer_ratio=0.7))
    assert max(res.layer_sparsity.values()) <= 0.7 + 1e-9
    assert mask_sparsity(res.masks)[0] == pytest.approx(0.6, abs=1e-3)  # the other took the rest
    with pytest.raises(UserError, match="max_layer_ratio"):
        PruneConfig(ratio=0.5, layer_ratios=(("0", 0.99),))
    with pytest.raises(UserError, match="max_layer_ratio"):
        PruneConfig(ratio=0.99)


def test_per_layer_overrides_apply_in_both_scopes() -> None:
    for scope in ("global", "layer"):
        res = prune_(two_scales(), PruneConfig(ratio=0.3, scope=scope, layer_ratios=(("2", 0.8),)))
        assert res.layer_sparsity["2"] == pytest.approx(0.8, abs=1e-3)
        assert res.layer_sparsity["0"] == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(UserError, match="not a pruned layer"):
        prune_(two_scales(), PruneConfig(layer_ratios=(("4", 0.5),)))


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_score_cache_masks_equal_a_fresh_prune(method: str, scope: str) -> None:
    cache = ScoreCache(two_scales(), PruneConfig(method=method, scope=scope))
    for ratio in (0.1, 0.5, 0.9, 0.3):
        model = two_scales()
        res = prune_(model, PruneConfig(method=method, ratio=ratio, scope=scope))
        fast = cache.masks(ratio, scope=scope)
        assert set(fast) == set(res.masks)
        assert all(torch.equal(fast[n], res.masks[n]) for n in fast)
        assert mask_sparsity(fast)[0] == pytest.approx(ratio, abs=1e-3)
        # The model holds exactly the mask's zeros.
        assert measured_sparsity(model, list(fast))[1] == pytest.approx(mask_sparsity(fast)[1])


def test_prune_reuses_a_score_cache() -> None:
    cache = ScoreCache(two_scales(), PruneConfig())
    model = two_scales()
    res = prune_(model, PruneConfig(ratio=0.7), scores=cache)
    assert mask_sparsity(res.masks)[0] == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(ValueError):
        prune_(two_scales(), PruneConfig(method="random"), scores=cache)


def test_repruning_keeps_earlier_zeros_for_any_criterion() -> None:
    model = two_scales()
    first = prune_(model, PruneConfig(ratio=0.5, scope="layer"))
    second = prune_(model, PruneConfig(method="random", ratio=0.7, scope="layer"))
    for n in first.masks:
        assert not (second.masks[n] & ~first.masks[n]).any()  # nothing pruned comes back
    assert mask_sparsity(second.masks)[0] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 8)])
def test_n_m_gives_exactly_n_zeros_per_group_along_the_input(nm: tuple[int, int]) -> None:
    n, m = nm
    model = A.DigitsCNN()
    res = prune_(model, PruneConfig(granularity=f"{n}:{m}", ignore=()))
    assert "conv1" not in res.masks and any("conv1" in note for note in res.notes)  # 9 inputs
    assert set(res.masks) == {"conv2", "fc1", "fc2"}
    for name in res.masks:
        w = dict(model.named_modules())[name].weight.detach()
        groups = (w.reshape(w.shape[0], -1) == 0).reshape(w.shape[0], -1, m).sum(-1)
        assert (groups == n).all(), name
    assert mask_sparsity(res.masks)[0] == pytest.approx(n / m)
    # conv1 (288 weights) stays dense: the model's sparsity is a little under n/m.
    total = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    assert res.sparsity == pytest.approx(n / m * (total - 288) / total)


def test_mask_enforcer_rejects_bad_masks_and_apply_checks_shapes() -> None:
    model = two_scales()
    with pytest.raises(UserError):
        apply_masks_(model, {"0": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(UserError):
        MaskEnforcer(model, {"nope": torch.ones(1, dtype=torch.bool)})


@pytest.mark.parametrize("mask_grads", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_masks_stay_exactly_zero_through_fine_tuning(optimizer: str, mask_grads: bool) -> None:
    data = load_dataset("digits")
    spec = model_spec("digits-mlp")
    torch.manual_seed(0)
    model = A.DigitsMLP()
    res = prune_(model, PruneConfig(ratio=0.8))
    before = {n: dict(model.named_modules())[n].weight.detach().clone() for n in res.masks}
    cfg = TrainConfig(epochs=1, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01,
                      weight_decay=0.01, batch_size=128, device="cpu")  # fmt: skip
    violations: list[int] = []
    mods = dict(model.named_modules())

    with MaskEnforcer(model, res.masks, mask_grads=mask_grads) as enforce:

        def after_step(m: nn.Module, step: int) -> None:
            enforce(m, step)
            for n, mask in res.masks.items():
                if (mods[n].weight.detach()[~mask] != 0).any():
                    violations.append(step)

        result = fit(model, data, spec, cfg, after_step=after_step)
    assert result.steps > 5 and not violations
    for n, mask in res.masks.items():
        w = mods[n].weight.detach()
        assert (w[~mask] == 0).all()
        assert not torch.equal(w[mask], before[n][mask])  # the kept weights did train
    assert measured_sparsity(model, list(res.masks))[0] == pytest.approx(res.sparsity)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": math.nan}, "ratio"),
        ({"ratio": "half"}, "ratio"),
        ({"method": "no-such-criterion"}, "unknown method"),
        ({"granularity": "rows"}, "unknown granularity"),
        ({"granularity": "4:4"}, "N:M"),
        ({"method": "bn-scale", "granularity": "unstructured"}, "does not support"),
        ({"method": "apoz", "granularity": "block"}, "does not support"),
        ({"scope": "model"}, "scope"),
        ({"norm": 3}, "norm"),
        ({"max_layer_ratio": 1.0}, "max_layer_ratio"),
        ({"layer_ratios": (("fc1", 1.5),)}, "fc1"),
        ({"structured_mode": "fake"}, "structured_mode"),
        ({"calib_batches": 0}, "calib_batches"),
        ({"recalibrate_bn": "yes"}, "recalibrate_bn"),
    ],
)
def test_bad_configs_are_user_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        PruneConfig(**kwargs)


def test_head_pruning_on_a_cnn_and_unknown_ignore_are_user_errors() -> None:
    with pytest.raises(UserError, match="attention"):
        prune_(A.DigitsCNN(), PruneConfig(granularity="head"), spec=model_spec("digits-cnn"))
    with pytest.raises(UserError, match="matches no layer"):
        prune_(A.DigitsCNN(), PruneConfig(ignore=("fc9",)))


def test_config_round_trips_through_a_dict() -> None:
    cfg = PruneConfig(
        method="wanda", granularity=" 2:4 ", layer_ratios={"fc1": 0.2}, ignore=["fc2"]
    )  # type: ignore[arg-type]
    assert cfg.granularity == "2:4" and cfg.effective_ratio == 0.5
    again = PruneConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(UserError, match="unknown prune config keys"):
        PruneConfig.from_dict({"methd": "magnitude"})


def test_score_cache_previews_structured_channels_like_prune() -> None:
    spec = model_spec("shapes-resnet")
    torch.manual_seed(0)
    model = A.CifarResNet(n=1)
    cfg = PruneConfig(granularity="channel", structured_mode="mask", ratio=0.4)
    cache = ScoreCache(model, cfg, spec=spec)
    assert cache.layer_names and all(v > 0 for v in cache.layer_sizes.values())
    fast = cache.masks(0.4)
    res = prune_(model, cfg, spec=spec)
    assert set(fast) == set(res.masks)
    assert all(torch.equal(fast[n], res.masks[n]) for n in fast)
    assert mask_sparsity(cache.masks(0.2))[0] < mask_sparsity(fast)[0]


@pytest.mark.gpu
def test_masks_hold_on_cuda_with_amp() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = A.DigitsMLP()
    res = prune_(model, PruneConfig(ratio=0.9))
    with MaskEnforcer(model, res.masks, mask_grads=True) as enforce:
        fit(model, data, model_spec("digits-mlp"), TrainConfig(epochs=1, device="cuda", amp=True),
            after_step=enforce)  # fmt: skip
    assert measured_sparsity(model, list(res.masks))[0] == pytest.approx(res.sparsity)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.running_mean.clone()
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
    }


def test_bn_recalibration_switch_keeps_or_reestimates_the_statistics() -> None:
    """`recalibrate_bn=False` leaves the dense statistics of the kept channels; on (the
    default) re-estimates them, which recovers accuracy lost to the mismatch; the preview's
    estimate with either setting is the accuracy the applied model has."""
    from pruning_core.evaluate import evaluate
    from pruning_core.layers import trainable_copy
    from pruning_core.models import load_model
    from pruning_core.slider import SliderPreview

    torch.set_num_threads(1)
    loaded, data = load_model("shapes-resnet"), load_dataset("shapes")
    on = PruneConfig(granularity="channel", ratio=0.3, scope="layer", calib_batches=1)
    off = on.replace(recalibrate_bn=False)
    assert on.recalibrate_bn and PruneConfig.from_dict(off.to_dict()) == off
    dense = _bn_stats(loaded.model)
    acc = {}
    for cfg in (on, off):
        model = trainable_copy(loaded.model)
        res = prune_(model, cfg, data=data, spec=loaded.spec)
        assert res.removed  # channels really went
        after = _bn_stats(model)
        # Off: each kept channel keeps its dense running mean; on: they are re-estimated.
        same = all(bool(torch.isin(after[n], dense[n]).all()) for n in after)
        assert same is (not cfg.recalibrate_bn)
        acc[cfg.recalibrate_bn] = evaluate(model, data, loaded.spec, limit=200).accuracy
    assert acc[True] > acc[False] + 0.1  # the mismatch costs far more than noise

    preview = SliderPreview(loaded, on, data)
    assert preview.has_batchnorm and preview.recalibrates() and not preview.recalibrates(False)
    stats = preview.update(0.3, scope="layer")
    for recal in (False, True, False):  # either order: each estimate sets its own statistics
        preview._estimates.clear()
        got = preview.estimate(stats, 200, recalibrate_bn=recal).accuracy
        assert got == acc[recal], (recal, got, acc)


def test_cli_prune_no_bn_recalibration_and_executor_options(cli: Any, tmp_path: Path) -> None:
    import json

    code, out, err = cli(
        "prune", "--model", "digits-cnn", "--dataset", "digits", "--method", "magnitude",
        "--granularity", "channel", "--ratio", "0.3", "--no-bn-recalibration", "--quiet",
        "--out", str(tmp_path / "off"), "--json",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["recipe"]["prune"]["recalibrate_bn"] is False
    code, _, err = cli(
        "prune", "--model", "digits-cnn", "--dataset", "digits", "--method", "magnitude",
        "--granularity", "channel", "--ratio", "0.3", "--executor", "inprocess",
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert code == 2 and "--executor and --address apply to --budget" in err
    code, _, err = cli(
        "prune", "--model", "digits-cnn", "--dataset", "digits", "--method", "magnitude",
        "--granularity", "channel", "--budget", "macs=0.8", "--address", "auto",
        "--out", str(tmp_path / "y"),
    )  # fmt: skip
    assert code == 2 and "--address applies to --executor ray only" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
