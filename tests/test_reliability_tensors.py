"""Tensor contents: refused dtypes and NaN/inf at load, pruning caps that hold, finite stats.

Policy: a NaN/inf (or bool/int/complex where the model is floating) tensor is refused with one
line naming it, at load for every file, and by pruning for in-memory models; statistics count
non-finite weights in a column and bin only the finite ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pruning_core import stats
from pruning_core.checkpoint import MODEL_FILE
from pruning_core.errors import UserError
from pruning_core.models import create_model, get_entry, load_model
from pruning_core.prune import PruneConfig, ScoreCache, StructuredPreview, mask_sparsity, prune_

State = dict[str, torch.Tensor]


def _mlp_state() -> State:
    torch.manual_seed(0)
    return {
        k: v.clone() for k, v in create_model("digits-mlp", pretrained=False).state_dict().items()
    }


def _poison(key: str, value: float, every: int = 5) -> Callable[[State], object]:
    def mutate(sd: State) -> None:
        sd[key].view(-1)[::every] = value

    return mutate


def _retype(key: str, dtype: torch.dtype) -> Callable[[State], object]:
    def mutate(sd: State) -> None:
        sd[key] = sd[key].to(dtype)

    return mutate


def _save_pt(sd: dict[str, object], path: Path) -> None:
    torch.save(sd, path)


# (case id, file suffix, mutation, expected text in the one stderr line)
FILE_CASES: list[tuple[str, str, Callable[[State], object], str]] = [
    ("nan first layer", ".safetensors", _poison("fc1.weight", math.nan), "tensor 'fc1.weight' holds 1639 NaN/inf values"),
    ("+inf bias", ".safetensors", _poison("fc2.bias", math.inf), "tensor 'fc2.bias' holds 13 NaN/inf values"),
    ("-inf last layer", ".safetensors", _poison("fc3.weight", -math.inf, 64), "tensor 'fc3.weight' holds 10 NaN/inf values"),
    ("nan in a .pt", ".pt", _poison("fc2.weight", math.nan, 1), "tensor 'fc2.weight' holds 8192 NaN/inf values"),
    ("int32 weights", ".safetensors", _retype("fc1.weight", torch.int32), "tensor 'fc1.weight' is int32 but the model's is floating"),
    ("bool bias", ".safetensors", _retype("fc3.bias", torch.bool), "tensor 'fc3.bias' is bool but the model's is floating"),
    ("int64 weights in a .pt", ".pt", _retype("fc2.weight", torch.int64), "tensor 'fc2.weight' is int64 but the model's is floating"),
    ("uint8 weights", ".safetensors", _retype("fc2.weight", torch.uint8), "tensor 'fc2.weight' is uint8"),
    ("complex in a .pt", ".pt", _retype("fc1.weight", torch.complex64), "tensor 'fc1.weight' is complex64; refusing it"),
    ("complex in a .safetensors", ".safetensors", _retype("fc3.weight", torch.complex64), "tensor 'fc3.weight' is complex64"),
    (
        "float64 beyond float32",
        ".safetensors",
        lambda sd: sd.__setitem__("fc1.bias", torch.full((128,), 1e300, dtype=torch.float64)),
        "tensor 'fc1.bias' holds 128 values that are NaN/inf in the model's float32",
    ),
    (
        "nan in a tensor named with a newline",
        ".safetensors",
        lambda sd: sd.__setitem__("fc1.weight\nboom", torch.full((2,), math.nan)),
        "tensor 'fc1.weight\\nboom' holds 2 NaN/inf values",
    ),
    (
        "a list among the tensors",
        ".pt",
        lambda sd: sd.__setitem__("fc1.extra", [1, 2, 3]),
        "entry 'fc1.extra' is a list, not a tensor",
    ),
    (
        "a sparse tensor",
        ".pt",
        lambda sd: sd.__setitem__("fc3.weight", sd["fc3.weight"].to_sparse()),
        "tensor 'fc3.weight' is torch.sparse_coo (only dense tensors load)",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("suffix", "mutate", "expected"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_bad_tensors_in_files_exit_2_naming_the_tensor(
    cli, tmp_path: Path, suffix: str, mutate: Callable[[State], object], expected: str
) -> None:  # type: ignore[no-untyped-def]
    sd = _mlp_state()
    mutate(sd)
    f = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        _save_pt(dict(sd), f)
    else:
        save_file(sd, str(f))
    before = f.read_bytes()
    code, out, err = cli("inspect", "--model", str(f), "--arch", "digits-mlp")
    lines = err.strip().splitlines()
    assert code == 2 and out == "", err
    assert len(lines) == 1 and "internal error" not in err, err
    assert f"checkpoint bad{suffix}" in lines[0] and expected in lines[0], lines[0]
    assert f.read_bytes() == before


def test_nan_model_dir_and_nan_prune_write_nothing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The handed case: NaN in a folder's tensors is refused before `prune` writes anything."""
    sd = _mlp_state()
    sd["fc2.weight"].view(-1)[::2] = math.nan
    d = tmp_path / "m"
    d.mkdir()
    save_file(sd, str(d / MODEL_FILE))
    (d / "model.json").write_text('{"arch": "digits-mlp"}')
    out = tmp_path / "out"
    code, _, err = cli(
        "prune", "--model", str(d), "--dataset", "digits", "--method", "magnitude",
        "--granularity", "unstructured", "--ratio", "0.5", "--out", str(out),
    )  # fmt: skip
    assert code == 2 and f"{d / MODEL_FILE}: tensor 'fc2.weight' holds 4096 NaN/inf" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_accepted_dtypes(tmp_path: Path) -> None:
    """float16/bfloat16/float64 weights load (cast within floating point); integer BN counters stay."""
    x = torch.randn(2, 1, 8, 8)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        sd = {k: v.to(dtype) for k, v in _mlp_state().items()}
        save_file(sd, str(tmp_path / "w.safetensors"))
        m = load_model(str(tmp_path / "w.safetensors"), arch="digits-mlp").model
        assert m.fc1.weight.dtype == torch.float32
        assert torch.equal(m.fc1.weight, sd["fc1.weight"].float()), dtype
        assert torch.isfinite(m(x)).all()
    resnet = create_model("shapes-resnet", pretrained=False)
    sd = resnet.state_dict()
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    for name in ("r.pt", "r.safetensors"):
        (
            torch.save(sd, tmp_path / name)
            if name.endswith(".pt")
            else save_file(sd, str(tmp_path / name))
        )
        loaded = load_model(str(tmp_path / name), arch="shapes-resnet")
        assert loaded.model.bn1.num_batches_tracked.dtype == torch.int64
    sd["bn1.num_batches_tracked"] = sd["bn1.num_batches_tracked"].float()
    save_file(sd, str(tmp_path / "f.safetensors"))
    with pytest.raises(
        UserError, match=r"'bn1\.num_batches_tracked' is float32 but the model's is integer"
    ):
        load_model(str(tmp_path / "f.safetensors"), arch="shapes-resnet")


def test_scalar_metadata_beside_tensors_is_kept_out(tmp_path: Path) -> None:
    sd: dict[str, object] = dict(_mlp_state())
    sd["epoch"] = 3
    torch.save(sd, tmp_path / "a.pt")
    assert load_model(str(tmp_path / "a.pt"), arch="digits-mlp").arch == "digits-mlp"


# ----------------------------------------------------------------------------- pruning


def _net() -> nn.Sequential:
    """16 -> 32 -> 32 -> 4: prunable layers "1" and "3" ("5" is the classifier)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


SPEC16 = get_entry("digits-mlp").spec.with_(size=4)  # 1x4x4 inputs


def _fill(m: nn.Sequential, layer: str, value: float, every: int = 1) -> nn.Sequential:
    with torch.no_grad():
        dict(m.named_modules())[layer].weight.view(-1)[::every] = value
    return m


@pytest.mark.parametrize(
    ("granularity", "layer", "value"),
    [
        ("unstructured", "1", math.nan),
        ("unstructured", "3", math.inf),
        ("2:4", "1", -math.inf),
        ("channel", "3", math.nan),
        ("channel", "1", math.inf),
    ],
)
def test_pruning_refuses_a_nonfinite_layer(granularity: str, layer: str, value: float) -> None:
    m = _fill(_net(), layer, value, every=7)
    with pytest.raises(UserError, match=rf"layer '{layer}' holds \d+ NaN/inf weights"):
        prune_(m, PruneConfig(granularity=granularity, ratio=0.5), spec=SPEC16)


def test_nonfinite_scores_are_refused_and_a_cache_checks_the_model() -> None:
    m = _net()
    scores = {n: dict(m.named_modules())[n].weight.detach().abs() for n in ("1", "3")}
    scores["3"] = scores["3"].clone()
    scores["3"][0, 0] = math.nan
    with pytest.raises(UserError, match="layer '3' holds 1 NaN/inf scores"):
        ScoreCache(m, PruneConfig(), scores=scores)
    cache = ScoreCache(_net(), PruneConfig())
    with pytest.raises(UserError, match="layer '1' holds"):
        prune_(_fill(_net(), "1", math.nan, every=3), PruneConfig(), scores=cache)


def _constant(value: float) -> nn.Sequential:
    m = _net()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.fill_(value)
    return m


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("weights", ["constant", "zeros", "zero layer"])
def test_the_cap_holds_whatever_the_ties(method: str, scope: str, weights: str) -> None:
    m = _constant(0.0 if weights == "zeros" else 0.3)
    if weights == "zero layer":
        _fill(m, "3", 0.0)
    cap = 0.6
    cfg = PruneConfig(method=method, scope=scope, ratio=0.5, max_layer_ratio=cap)
    mods = dict(m.named_modules())
    # Wanda is row-wise and needs data; given scores (|w|) exercise the same row path.
    scores = {n: mods[n].weight.detach().abs() for n in ("1", "3")}
    cache = ScoreCache(m, cfg, scores=scores)
    for ratio in (0.0, 0.3, 0.5, 0.6):
        overall, per = mask_sparsity(cache.masks(ratio, scope=scope))
        assert set(per) == {"1", "3"}
        assert max(per.values()) <= cap + 1e-9, (ratio, per)
        if weights == "constant":
            # Ties are shared out exactly: the ratio is met (up to rounding a 16-wide row).
            assert overall == pytest.approx(ratio, abs=1 / 32), (ratio, per)
        if weights == "zero layer":
            # A layer of zeros stays masked as far as the cap allows, and no further.
            width = 32 if method == "wanda" else 1024  # the cap applies per row for wanda
            assert per["3"] == pytest.approx(math.floor(cap * width) / width)
    if method == "magnitude":
        res = prune_(m, cfg)
        for n, mask in res.masks.items():
            assert 1 - mask.float().mean().item() <= cap + 1e-9, n


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("weights", ["constant", "zero layer"])
def test_structured_cap_holds_with_ties(scope: str, weights: str) -> None:
    m = create_model("digits-cnn", pretrained=False)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                mod.weight.fill_(0.2)
        if weights == "zero layer":
            m.conv1.weight.zero_()
    cap = 0.5
    cfg = PruneConfig(granularity="channel", scope=scope, ratio=0.5, max_layer_ratio=cap)
    preview = StructuredPreview(m, cfg, spec=get_entry("digits-cnn").spec)
    for ratio in (0.3, 0.5):
        removed = preview.select(ratio, scope=scope)
        for name, size in preview.layer_sizes.items():
            assert len(removed.get(name, [])) <= math.floor(size * cap), (name, ratio)
        assert removed  # something was pruned: the check above is not vacuous


def test_prune_config_seed_range() -> None:
    for bad in (-1, 2**32, True):
        with pytest.raises(UserError, match="seed"):
            PruneConfig(seed=bad)
    assert PruneConfig(seed=2**32 - 1).seed == 2**32 - 1


# ----------------------------------------------------------------------------- statistics


def test_stats_count_nonfinite_and_bin_only_finite_values() -> None:
    m = _net()
    with torch.no_grad():
        m[1].weight[:2] = math.nan  # two whole neurons: 32 of 512
        m[3].weight.view(-1)[::32] = math.inf  # 32 of 1024
        m[3].weight.view(-1)[1] = -math.inf
    t = stats.layer_table(m, SPEC16).set_index("layer")
    assert t.loc["1", "nonfinite"] == 32 and t.loc["3", "nonfinite"] == 33
    assert t.loc["5", "nonfinite"] == 0
    for col in ("w_mean", "w_std", "w_abs_mean", "ch_l1_min", "ch_l1_max"):
        assert t[col].map(math.isfinite).all(), col
    w1 = m[1].weight.detach()
    assert t.loc["1", "w_mean"] == pytest.approx(float(w1[2:].mean()), abs=1e-6)
    hists = stats.weight_histograms(m, bins=10)
    assert sum(hists["1"][1]) == 512 - 32 and sum(hists["3"][1]) == 1024 - 33
    assert all(math.isfinite(e) for e in hists["3"][0])
    s = stats.model_stats(m, SPEC16, t.reset_index())
    assert s["params"] == stats.count_params(m)
    act = stats.activation_stats(m, torch.randn(8, 1, 4, 4), SPEC16, batches=1)
    row = act.table.set_index("layer").loc["1"]
    assert row["nonfinite"] == 8 * 2 and row["n"] == 8 * 30
    assert math.isfinite(row["mean"]) and math.isfinite(row["std"])
    edges, counts = act.histograms["1"]
    assert all(math.isfinite(e) for e in edges) and sum(counts) == 8 * 30
