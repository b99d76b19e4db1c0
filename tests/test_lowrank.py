"""Low-rank factorisation (`plans.lowrank`): the truncated SVD is the best rank-r matrix
(Eckart-Young), the factorised model computes what the rank-r preview computes, parameters and
MACs drop as counted by hand, the energy rule keeps what it says, factorised models save,
reopen and export, and low rank combines with channel pruning both ways."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pruning_core import export
from pruning_core.errors import UserError
from pruning_core.layers import LOW_RANK_LAYERS, LowRankConv2d, LowRankLinear
from pruning_core.models import LoadedModel, load_model
from pruning_core.models.validate import check_surgery
from pruning_core.plans.lowrank import LowRankPlan, break_even_rank, factorize
from pruning_core.prune import Preview, PruneConfig, prune_
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, count_params, layer_macs
from pruning_core.surgery import apply_surgery
from ui.texts_companions import LOWRANK_EXPLAINED

torch.set_num_threads(1)
SPEC = InputSpec(3, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 10)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 48),
        nn.ReLU(),
        nn.Linear(48, 10),
    ).eval()


def _x(channels: int = 3, size: int = 8, n: int = 6) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_truncated_svd_error_is_the_dropped_singular_values() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(12, 20).double()
    w = lin.weight.detach().clone()
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 11):
        pair = factorize(lin, r)
        assert isinstance(pair, LowRankLinear) and pair.rank == r
        wr = pair[1].weight @ pair[0].weight
        err = w - wr
        # Eckart-Young: Frobenius error^2 = sum of dropped s^2; spectral error = s_r.
        assert torch.allclose(err.square().sum(), s[r:].square().sum(), rtol=1e-9, atol=1e-12)
        assert torch.allclose(torch.linalg.matrix_norm(err, 2), s[r], rtol=1e-9)
        assert torch.equal(pair[1].bias, lin.bias)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_factorised_model_equals_rank_r_preview(scope: str) -> None:
    net = _net()
    config = PruneConfig(granularity="lowrank", ratio=0.6, scope=scope, ignore=())
    physical, masked = copy.deepcopy(net), copy.deepcopy(net)
    res = prune_(physical, config)
    prune_(masked, config.replace(structured_mode="mask"))
    kinds = [type(m) for m in physical]
    assert LowRankConv2d in kinds and LowRankLinear in kinds
    assert all(type(m) is not LowRankLinear for m in masked)  # the preview keeps the shapes
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(physical(x), masked(x), rtol=1e-4, atol=1e-5)
    assert res.removed and not res.masks
    # The masked weights have exactly the kept rank.
    for name, idx in res.removed.items():
        w = masked.get_submodule(name).weight.detach().double()
        rank = min(w.shape[0], w[0].numel()) - len(idx)
        # float32 storage: singular values below 1e-5 of the largest are rounding noise
        assert int(torch.linalg.matrix_rank(w.reshape(w.shape[0], -1), rtol=1e-5)) == rank


def test_params_and_macs_drop_as_counted() -> None:
    net = _net()
    factored = copy.deepcopy(net)
    prune_(factored, PruneConfig(granularity="lowrank", ratio=0.7, scope="layer", ignore=()))
    want_params = want_macs = 0
    for dense, new in zip(net, factored, strict=True):
        if isinstance(new, LowRankConv2d):
            r, cin, cout = new.rank, new.in_channels, new.out_channels
            k = dense.kernel_size[0] * dense.kernel_size[1]
            pixels = 4 * 4 if dense.stride[0] == 2 else 8 * 8
            want_params += r * (cin * k + cout) + cout
            want_macs += pixels * r * (cin * k + cout)
        elif isinstance(new, LowRankLinear):
            r = new.rank
            want_params += r * (new.in_features + new.out_features) + new.out_features
            want_macs += r * (new.in_features + new.out_features)
        else:
            assert not isinstance(new, nn.Linear | nn.Conv2d), "every layer is factorised at 0.7"
    assert count_params(factored) == want_params
    assert count_macs(factored, SPEC) == want_macs
    # What the preview can tell before anything is factorised: each layer's kept share.
    preview = Preview(net, PruneConfig(granularity="lowrank", ratio=0.7, ignore=()))
    plan = preview.plan
    assert isinstance(plan, LowRankPlan)
    share = plan.kept_share(preview.select(0.7, scope="layer"))
    layer_macs_dense = layer_macs(net, SPEC)
    predicted = sum(layer_macs_dense[n] * share[n] for n in share)
    assert predicted == pytest.approx(want_macs)
    assert count_params(factored) < count_params(net) and count_macs(factored, SPEC) < count_macs(
        net, SPEC
    )


def test_a_layer_that_would_not_shrink_stays_dense_and_notes_say_why() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    assert break_even_rank(32, 32) == 15  # 16 * (32 + 32) == 32 * 32: no gain at 16
    cfg = PruneConfig(granularity="lowrank", ratio=0.5, scope="layer")
    preview = Preview(net, cfg)
    assert preview.select(0.5, scope="layer")["0"] == []  # rank 16 of 32: no smaller
    assert len(preview.select(0.55, scope="layer")["0"]) == 17  # rank 15: smaller
    assert any("break-even" in n for n in preview.notes)
    out = copy.deepcopy(net)
    prune_(out, cfg)
    assert type(out[0]) is nn.Linear and count_params(out) == count_params(net)


def test_a_sparse_layer_is_factorised_only_below_its_non_zero_weights() -> None:
    # After unstructured pruning, factors sized against the dense shape added weights (shapes-
    # vit: 56,970 -> 64,460 non-zero): the break-even counts the layer's non-zeros now, and
    # the masked preview's sparsity is the factorised model's.
    net = _net()
    prune_(net, PruneConfig(granularity="unstructured", ratio=0.7, ignore=()))
    before = count_params(net, nonzero=True)
    assert break_even_rank(48, 512, 8192) == 14  # 15 * (48 + 512) = 8,400 >= 8,192 non-zeros
    for ratio in (0.3, 0.6, 0.9):
        config = PruneConfig(granularity="lowrank", ratio=ratio, ignore=())
        physical, masked = copy.deepcopy(net), copy.deepcopy(net)
        res = prune_(physical, config)
        preview = prune_(masked, config.replace(structured_mode="mask"))
        assert count_params(physical, nonzero=True) <= before
        assert preview.sparsity == pytest.approx(res.sparsity, abs=1e-9)
    assert any("non-zero weights" in n for n in res.notes)


def test_energy_keeps_the_smallest_rank_holding_the_share() -> None:
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    lin = nn.Linear(64, 8).double()
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(s) @ v.T)
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(8, 3).double())
    energy = s.square()
    for drop in (0.01, 0.05, 0.2):
        tail = [float(energy[r:].sum() / energy.sum()) for r in range(9)]
        want = min(r for r in range(9) if tail[r] <= drop)
        assert tail[want - 1] > drop  # one rank fewer would drop too much
        cfg = PruneConfig(granularity="lowrank-energy", ratio=drop)
        out = copy.deepcopy(net)
        res = prune_(out, cfg)
        assert isinstance(out[0], LowRankLinear) and out[0].rank == want, (drop, want)
        assert res.layer_sparsity["0"] == pytest.approx((8 - want) / 8)


def test_global_threshold_is_scale_free() -> None:
    torch.manual_seed(0)
    a = nn.Linear(40, 40)
    b = nn.Linear(40, 40)
    with torch.no_grad():
        b.weight.copy_(a.weight * 1000)  # same spectrum shape, 1000x the scale
    net = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(40, 2))
    sel = Preview(net, PruneConfig(granularity="lowrank", ratio=0.7)).select(0.7)
    assert len(sel["0"]) == len(sel["2"]) == 28


def test_only_magnitude_scores_components() -> None:
    with pytest.raises(UserError, match="does not support lowrank"):
        PruneConfig(criterion="taylor", granularity="lowrank")
    assert PruneConfig(granularity="lowrank-energy", ratio=0.1).granularity == "lowrank-energy"


@pytest.mark.parametrize("ref", ["shapes-resnet", "shapes-vit"])
def test_save_reopen_and_export(ref: str, tmp_path: Path) -> None:
    lm = load_model(ref)
    m = copy.deepcopy(lm.model)
    prune_(m, PruneConfig(granularity="lowrank", ratio=0.6), spec=lm.spec)
    assert count_params(m) < 0.75 * count_params(lm.model)
    out = export.save_checkpoint(
        tmp_path / "lr", m, arch=lm.arch, arch_kwargs=lm.arch_kwargs, spec=lm.spec
    )
    back = load_model(str(out))
    x = _x(lm.spec.channels, lm.spec.size)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), m.eval()(x), rtol=0, atol=0)
    assert count_macs(back.model, lm.spec) == count_macs(m, lm.spec)
    check = export.export_onnx(back.model, lm.spec, tmp_path / "lr.onnx", example=x)
    assert check.ok and check.max_abs_diff < 1e-4


def _save(lm: LoadedModel, m: nn.Module, path: Path) -> LoadedModel:
    export.save_checkpoint(path, m, arch=lm.arch, arch_kwargs=lm.arch_kwargs, spec=lm.spec)
    return load_model(str(path))


def test_combined_with_channel_pruning_both_ways(tmp_path: Path) -> None:
    lm = load_model("digits-cnn")
    x = _x(lm.spec.channels, lm.spec.size)
    # Channels first, then low rank on the reopened pruned folder.
    ch = copy.deepcopy(lm.model)
    prune_(ch, PruneConfig(granularity="channel", ratio=0.3), spec=lm.spec)
    ch_back = _save(lm, ch, tmp_path / "ch")
    both = copy.deepcopy(ch_back.model)
    prune_(both, PruneConfig(granularity="lowrank", ratio=0.6), spec=lm.spec)
    assert any(isinstance(m, LowRankConv2d | LowRankLinear) for m in both.modules())
    assert count_params(both) < count_params(ch) < count_params(lm.model)
    back = _save(lm, both, tmp_path / "ch-lr")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), both.eval()(x), rtol=0, atol=0)
    # Low rank first, then channels: the pair's inner width prunes like any channel.
    lr = copy.deepcopy(lm.model)
    prune_(lr, PruneConfig(granularity="lowrank", ratio=0.6), spec=lm.spec)
    ranks = {n: m.rank for n, m in lr.named_modules() if isinstance(m, LowRankLinear)}
    prune_(lr, PruneConfig(granularity="channel", ratio=0.3), spec=lm.spec)
    assert any(m.rank < ranks[n] for n, m in lr.named_modules() if n in ranks)
    back = _save(lm, lr, tmp_path / "lr-ch")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), lr.eval()(x), rtol=0, atol=0)


def test_combined_with_head_pruning_both_ways(tmp_path: Path) -> None:
    lm = load_model("shapes-vit")
    x = _x(lm.spec.channels, lm.spec.size)
    heads = {n: m.num_heads for n, m in lm.model.named_modules() if hasattr(m, "num_heads")}
    # Low rank first, then heads: a factorised qkv loses its output factor's rows and a
    # factorised proj its input factor's columns; the bottlenecks keep their rank.
    lr = copy.deepcopy(lm.model)
    prune_(lr, PruneConfig(granularity="lowrank", ratio=0.6), spec=lm.spec)
    attn = {n: m for n, m in lr.named_modules() if n in heads}
    assert all(isinstance(m.qkv, LowRankLinear) for m in attn.values())
    ranks = {n: (m.qkv.rank, m.proj.rank) for n, m in attn.items()}
    before = count_params(lr)
    # The masked preview is the function of the shrunk model.
    preview = copy.deepcopy(lr)
    prune_(
        preview, PruneConfig(granularity="head", ratio=0.5, structured_mode="mask"), spec=lm.spec
    )
    prune_(lr, PruneConfig(granularity="head", ratio=0.5), spec=lm.spec)
    assert {n: m.num_heads for n, m in attn.items()} == {n: h // 2 for n, h in heads.items()}
    assert {n: (m.qkv.rank, m.proj.rank) for n, m in attn.items()} == ranks
    assert count_params(lr) < before
    with torch.no_grad():
        torch.testing.assert_close(lr.eval()(x), preview.eval()(x), rtol=1e-5, atol=1e-5)
    back = _save(lm, lr, tmp_path / "lr-head")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), lr(x), rtol=0, atol=0)
    # Heads first, then low rank on the reopened folder.
    hd = copy.deepcopy(lm.model)
    prune_(hd, PruneConfig(granularity="head", ratio=0.5), spec=lm.spec)
    hd_back = _save(lm, hd, tmp_path / "head")
    both = copy.deepcopy(hd_back.model)
    prune_(both, PruneConfig(granularity="lowrank", ratio=0.6), spec=lm.spec)
    assert count_params(both) < count_params(hd)
    back = _save(lm, both, tmp_path / "head-lr")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), both.eval()(x), rtol=0, atol=0)


def test_surgery_records_are_checked() -> None:
    where = "DIR/model.json"
    ok = check_surgery({"lowrank": {"fc": {"in": 4, "rank": 2, "out": 3}}}, where)
    assert ok["lowrank"]["fc"]["rank"] == 2
    for bad in (
        {"lowrank": {"fc": {"in": 4, "rank": 0, "out": 3}}},
        {"lowrank": {"fc": {"in": 4, "rank": 2}}},
        {"lowrank": {"fc": {"in": 4, "rank": 2, "out": 3, "forward": 1}}},
        {"lowrank": ["fc"]},
    ):
        with pytest.raises(UserError, match=r"surgery\.lowrank"):
            check_surgery(bad, where)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(UserError, match="ungrouped Conv2d"):
        apply_surgery(grouped, {"lowrank": {"0": {"in": 4, "rank": 2, "out": 4}}}, {}, where=where)
    # A hand-edited record that also sets a width a low-rank pair reads from its layers.
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    both = {"lowrank": {"1": {"in": 6, "rank": 2, "out": 4}}, "attrs": {"1": {"in_features": 5}}}
    with pytest.raises(UserError, match="takes its in_features from its layers"):
        apply_surgery(model, both, {}, where=where)
    assert math.isclose(break_even_rank(10, 40), 7)


def test_teaching_text_is_two_sentences() -> None:
    text = LOWRANK_EXPLAINED.removeprefix("**Low rank.** ")
    assert text.count(". ") + text.endswith(".") == 2
    assert "r x (inputs + outputs) < inputs x outputs" in text


def test_a_factorised_pair_factorises_again_and_its_preview_matches() -> None:
    net = _net()
    once = copy.deepcopy(net)
    prune_(once, PruneConfig(granularity="lowrank", ratio=0.6, scope="layer", ignore=()))
    ranks = {n: m.rank for n, m in once.named_modules() if isinstance(m, LowRankLinear)}
    cfg = PruneConfig(granularity="lowrank", ratio=0.5, scope="layer", ignore=())
    twice, masked = copy.deepcopy(once), copy.deepcopy(once)
    prune_(twice, cfg)
    prune_(masked, cfg.replace(structured_mode="mask"))
    for n, r in ranks.items():
        pair = twice.get_submodule(n)
        assert isinstance(pair, LowRankLinear) and pair.rank == r - math.floor(0.5 * r)
        assert masked.get_submodule(n).rank == r  # the preview keeps the pair's width
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(twice(x), masked(x), rtol=1e-4, atol=1e-5)


def test_an_iterative_schedule_reaches_the_final_rank_ratio() -> None:
    from pruning_core.data import load_dataset
    from pruning_core.schedules import run_schedule

    lm = load_model("digits-cnn")
    data = load_dataset("digits")
    cfg = PruneConfig(granularity="lowrank", ratio=0.75, scope="layer")
    oneshot, agp = copy.deepcopy(lm.model), copy.deepcopy(lm.model)
    prune_(oneshot, cfg, data=data, spec=lm.spec)
    res = run_schedule(agp, cfg, "agp", steps=3, data=data, spec=lm.spec)
    assert len(res.curve) == 3
    want = {n: m.rank for n, m in oneshot.named_modules() if isinstance(m, LOW_RANK_LAYERS)}
    got = {n: m.rank for n, m in agp.named_modules() if isinstance(m, LOW_RANK_LAYERS)}
    assert set(got) == set(want) and want
    # Each step removes its share of the rank left: the end is within a rounding per step.
    assert all(abs(got[n] - want[n]) <= 2 for n in want), (got, want)
    assert res.curve[-1]["sparsity"] == pytest.approx(
        1 - count_params(agp) / count_params(lm.model), abs=0.05
    )


@pytest.mark.parametrize(
    ("model_ref", "dataset"), [("digits-cnn", "digits"), ("shapes-vit", "shapes")]
)
def test_the_slider_preview_counts_what_the_factorised_model_has(
    model_ref: str, dataset: str
) -> None:
    # The preview holds rank-r weights in dense shapes (no zeros); its parameter and MAC counts
    # must still be those of the model Apply factorises, at every position.
    from pruning_core.data import load_dataset
    from pruning_core.slider import SliderPreview

    loaded = load_model(model_ref)
    config = PruneConfig(granularity="lowrank", ratio=0.5)
    preview = SliderPreview(loaded, config, load_dataset(dataset))
    for ratio in (0.0, 0.5, 0.8):
        stats = preview.update(ratio)
        applied = copy.deepcopy(loaded.model)
        prune_(applied, config.replace(ratio=ratio))
        assert stats.params_nonzero == count_params(applied)
        assert stats.macs_effective == pytest.approx(count_macs(applied, loaded.spec), rel=1e-9)
        assert (stats.sparsity > 0) == (ratio > 0.3)  # past the break-even rank only
