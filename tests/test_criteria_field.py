"""Criteria from the field: LAMP (Lee et al. 2021), FPGM (He et al. 2019), SNIP (Lee et al. 2019).

Each one's defining property on a tiny hand-made layer, then each through `prune_` on the
sample model digits-cnn, the command line and the Prune page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.calibration import calibration_batches
from pruning_core.criteria import CRITERIA, FPGM, LAMP, SNIP, get_criterion
from pruning_core.data import DataBundle, load_dataset
from pruning_core.layers import weight_of
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, list_methods, mask_sparsity, prune_
from pruning_core.spec import InputSpec

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SPEC = InputSpec(1, 2, (0.0,), (1.0,), 4)


def two_scales() -> nn.Sequential:
    """Two hidden layers of the same shape, the second with weights 100x larger."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        weight_of(m[2]).mul_(100)
    return m


def tiny_data() -> DataBundle:
    """300 random 2x2 grey images with 4 classes: more than two calibration batches of 128."""
    g = torch.Generator().manual_seed(0)
    n = 300
    x = torch.randint(0, 256, (n, 1, 2, 2), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataBundle("tiny", (x, y), (x[:64], y[:64]), tuple("abcd"), torch.arange(n))


def check_scores(scores: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    assert set(scores) == set(shapes)
    for n, s in scores.items():
        assert tuple(s.shape) == shapes[n], n
        assert s.dtype == torch.float32 and s.device.type == "cpu"
        assert torch.isfinite(s).all() and (s >= 0).all()


# -- LAMP -----------------------------------------------------------------------------------


def test_lamp_is_the_formula_and_the_largest_weight_of_each_layer_scores_one() -> None:
    model = two_scales()
    layers = {"0": model[0], "2": model[2]}
    scores = LAMP().weight_scores(model, layers)
    check_scores(scores, {n: tuple(weight_of(m).shape) for n, m in layers.items()})
    for n, m in layers.items():
        w2 = weight_of(m).detach().square().flatten()
        s = scores[n].flatten()
        assert float(s.max()) == pytest.approx(1.0)
        assert int(s.argmax()) == int(w2.argmax())
        # Within a layer the order is magnitude's.
        assert torch.equal(s.argsort(stable=True), w2.argsort(stable=True))
        # By hand for one weight: its w^2 over the sum of the w^2 at least as large.
        i = int(w2.argsort()[len(w2) // 2])
        assert float(s[i]) == pytest.approx(float(w2[i] / w2[w2 >= w2[i]].sum()), rel=1e-5)
    # Scale-free: the 100x larger layer does not score higher overall.
    assert float(scores["2"].median()) < 10 * float(scores["0"].median())


def test_lamp_small_example_and_ties() -> None:
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
    s = LAMP().weight_scores(lin, {"l": lin})["l"]
    assert torch.allclose(s, torch.tensor([[1 / 14, 4 / 13, 1.0, 0.0]]))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 2.0, -2.0, 1.0]]))
    s = LAMP().weight_scores(lin, {"l": lin})["l"][0]
    # Equal weights score alike (the sum includes every equal weight): 4 / 12 each.
    assert torch.allclose(s, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1 / 13]))
    with torch.no_grad():
        lin.weight.zero_()
    assert torch.equal(LAMP().weight_scores(lin, {"l": lin})["l"], torch.zeros(1, 4))


def test_lamp_global_threshold_keeps_weights_in_both_layers_where_magnitude_empties_one() -> None:
    # The two hidden layers only (same size): half of their weights go.
    mag = prune_(two_scales(), PruneConfig(criterion="magnitude", ratio=0.5, ignore=("4",)))
    lamp = prune_(two_scales(), PruneConfig(criterion="lamp", ratio=0.5, ignore=("4",)))
    # Plain magnitude takes the small layer to the cap (0.98): almost empty.
    assert mag.layer_sparsity["0"] > 0.95
    assert 0.2 < lamp.layer_sparsity["0"] < 0.8 and 0.2 < lamp.layer_sparsity["2"] < 0.8
    assert mask_sparsity(lamp.masks)[0] == pytest.approx(0.5, abs=1e-3)


def test_lamp_channels_use_the_filters_squared_norms() -> None:
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 5.0)[:, None, None, None].expand(4, 2, 3, 3))
    s = LAMP().channel_scores(conv, {"c": conv})["c"]
    check_scores({"c": s}, {"c": (4,)})
    norms2 = torch.arange(1.0, 5.0).square() * 18
    expect = torch.stack([norms2[i] / norms2[i:].sum() for i in range(4)])
    assert torch.allclose(s, expect) and float(s[3]) == pytest.approx(1.0)
    assert "head" in LAMP.declines


# -- FPGM ------------------------------------------------------------------------------------


def test_fpgm_sums_distances_and_the_filter_at_the_mean_scores_lowest() -> None:
    g = torch.Generator().manual_seed(1)
    others = torch.randn(5, 3, 3, 3, generator=g) * 0.1
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        # Filter 2 is the mean of the other five and has the smallest norm of all but one:
        # magnitude would not pick it first, FPGM does.
        conv.weight.copy_(torch.cat([others[:2], others.mean(0, keepdim=True), others[2:]]))
        conv.weight[0].mul_(0.01)
    s = FPGM().channel_scores(conv, {"c": conv})["c"]
    check_scores({"c": s}, {"c": (6,)})
    f = conv.weight.detach().flatten(1)
    by_hand = torch.stack([sum((f[i] - f[j]).norm() for j in range(6)) for i in range(6)])
    assert torch.allclose(s, by_hand.float(), rtol=1e-5)
    norms = f.norm(dim=1)
    assert int(norms.argmin()) == 0  # magnitude's first pick
    assert int(s.argmin()) == 2


def test_fpgm_scores_channels_only() -> None:
    info = {m.name: m for m in list_methods()}["fpgm"]
    assert "channel" in info.granularities and "unstructured" not in info.granularities
    assert not FPGM.needs_data
    with pytest.raises(Exception, match="fpgm"):
        PruneConfig(criterion="fpgm", granularity="unstructured")


# -- SNIP ------------------------------------------------------------------------------------


def snip_by_hand(model: nn.Sequential, data: DataBundle) -> torch.Tensor:
    """|w * dL/dw| of the mean loss over the calibration images, normalised to sum 1."""
    batches = calibration_batches(data, SPEC, 2)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    lin = model[1]
    assert isinstance(lin, nn.Linear)
    w = lin.weight.detach().clone().requires_grad_(True)
    out = F.linear(x.flatten(1), w, lin.bias.detach())
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), [w])
    sal = (w.detach() * g).abs()
    return sal / sal.sum()


def test_snip_equals_weight_times_gradient_by_hand_on_a_frozen_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    data = tiny_data()
    assert len(calibration_batches(data, SPEC, 2)) == 2  # the loss spans two batches
    expect = snip_by_hand(model, data)
    # The app's model copies are frozen (requires_grad=False): SNIP must still get gradients.
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = SNIP().weight_scores(model, {"1": model[1]}, data, SPEC)["1"]
    check_scores({"1": s}, {"1": (4, 4)})
    assert torch.allclose(s, expect, rtol=1e-4, atol=1e-7)
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-5)
    # Nothing left behind: frozen again, no .grad, training mode, same weights.
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ch = SNIP().channel_scores(model, {"1": model[1]}, data, SPEC)["1"]
    check_scores({"1": ch}, {"1": (4,)})
    assert torch.allclose(ch, expect.sum(1), rtol=1e-4, atol=1e-7)


def test_snip_needs_data() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(Exception, match="calibration data"):
        SNIP().weight_scores(model, {"1": model[1]})
    assert SNIP.needs_data and get_criterion("snip", calib_batches=1) == SNIP(calib_batches=1)


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


@pytest.mark.parametrize(
    ("criterion", "granularity"),
    [("lamp", "unstructured"), ("snip", "unstructured"), ("fpgm", "channel"),
     ("snip", "channel"), ("lamp", "channel")],
)  # fmt: skip
def test_prune_digits_cnn_end_to_end(criterion: str, granularity: str, digits: DataBundle) -> None:
    loaded = load_model("digits-cnn")
    model, spec = loaded.model, loaded.spec
    for p in model.parameters():
        p.requires_grad_(False)  # as the app's copies
    params = sum(p.numel() for p in model.parameters())
    cfg = PruneConfig(criterion=criterion, granularity=granularity, ratio=0.5)
    res = prune_(model, cfg, data=digits, spec=spec)
    if granularity == "unstructured":
        assert mask_sparsity(res.masks)[0] == pytest.approx(0.5, abs=2e-3)
        # The classifier stays dense.
        assert set(res.layer_sparsity) == {"conv1", "conv2", "fc1"}
        assert bool((weight_of(model.get_submodule("fc2")) != 0).all())
    else:
        assert res.removed and sum(p.numel() for p in model.parameters()) < 0.6 * params
    x = torch.zeros(2, spec.channels, spec.size, spec.size)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_cli_prunes_with_fpgm(cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    code, stdout, err = cli(
        "prune", "--model", "digits-cnn", "--dataset", "digits", "--method", "fpgm",
        "--granularity", "channel", "--ratio", "0.25", "--out", str(out_dir), "--quiet", "--json",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["method"] == "fpgm" and metrics["params_after"] < metrics["params_before"]


def test_prune_help_names_them(cli) -> None:
    code, out, _ = cli("prune", "--help")
    assert code == 0
    text = " ".join(out.split())
    for name in ("lamp", "fpgm", "snip"):
        assert f"{name}: {CRITERIA[name].summary}" in text, name


@pytest.mark.parametrize(
    ("criterion", "granularity"),
    [("lamp", "unstructured"), ("fpgm", "channel"), ("snip", "unstructured")],
)
def test_prune_page_selects_each(criterion: str, granularity: str) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "3_prune.py"), default_timeout=120)
    at.session_state["prune_granularity"] = granularity
    at.session_state["prune_method"] = criterion
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="prune_method").value == criterion
    assert CRITERIA[criterion].label in " ".join(c.value for c in at.caption)
    assert not at.error, [e.value for e in at.error]
    # The live preview ran with it: remaining parameters and the accuracy estimate are shown.
    labels = [m.label for m in at.metric]
    assert "Remaining params" in labels and any(x.startswith("Accuracy on") for x in labels)
