"""Sweeps, per-layer sensitivity and suggested ratios, measured on the digits sample models."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

import pruning_core.experiments as E
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.layers import counted_weights
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prunable_layers
from pruning_core.train import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sweep_grid_and_input_untouched(cnn, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real = E.Preview

    class CountingCache(real):  # type: ignore[misc, valid-type]
        def __init__(self, model, config, *a, **kw):
            built.append(config.method)
            super().__init__(model, config, *a, **kw)

    monkeypatch.setattr(E, "Preview", CountingCache)
    before = _state(cnn.model)
    messages: list[tuple[float, str]] = []
    df = E.sweep(
        cnn, digits, methods=["magnitude", "random"], ratios=[0.5, 0.9], device="cpu",
        progress=lambda p: messages.append((p.fraction, p.message)),
    )  # fmt: skip
    assert _same(before, _state(cnn.model))  # the caller's model is never pruned
    assert built == ["magnitude", "random"]  # scored once per method, not once per point
    assert list(df.columns[: len(E.SWEEP_COLUMNS)]) == list(E.SWEEP_COLUMNS)
    assert list(zip(df["method"], df["ratio"], strict=True)) == [
        ("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5), ("random", 0.9),
    ]  # fmt: skip
    assert (df["sparsity"] - df["ratio"]).abs().max() < 0.01
    assert df["finetuned_accuracy"].isna().all()
    assert (df["granularity"] == "unstructured").all()
    # fewer non-zero parameters at the higher ratio; unstructured zeros do not cut dense MACs
    by = df.set_index(["method", "ratio"])
    assert (
        by.loc[("magnitude", 0.9), "params_nonzero"] < by.loc[("magnitude", 0.5), "params_nonzero"]
    )
    assert df["macs"].nunique() == 1
    # the literature's shape: random pruning falls off before magnitude does
    assert by.loc[("magnitude", 0.9), "accuracy"] > by.loc[("random", 0.9), "accuracy"] + 0.2
    assert [f for f, _ in messages] == [0.25, 0.5, 0.75, 1.0]
    assert (df["seconds"] > 0).all()


def test_sweep_finetune_cancel_and_structured(cnn, digits) -> None:
    cfg = TrainConfig(lr=1e-3, batch_size=128, device="cpu")
    df = E.sweep(
        cnn, digits, methods=["random"], ratios=[0.8], finetune_epochs=1, train_config=cfg,
        device="cpu",
    )  # fmt: skip
    # fine-tuning recovers much of what random pruning lost
    assert df.loc[0, "finetuned_accuracy"] > df.loc[0, "accuracy"] + 0.05
    assert abs(df.loc[0, "sparsity"] - 0.8) < 0.01

    cancel = threading.Event()
    part = E.sweep(
        cnn, digits, methods=["magnitude"], ratios=[0.3, 0.5, 0.7], device="cpu", cancel=cancel,
        progress=lambda p: cancel.set(),
    )  # fmt: skip
    assert len(part) == 1 and part.attrs["cancelled"]

    ch = E.sweep(cnn, digits, methods=["magnitude"], ratios=[0.5], granularity="channel",
                 device="cpu")  # fmt: skip
    assert ch.loc[0, "macs"] < 0.6 * df.loc[0, "macs"]  # structured pruning really cuts work

    nm = E.sweep(cnn, digits, methods=["magnitude"], ratios=[0.3, 0.9], granularity="2:4",
                 device="cpu")  # fmt: skip
    # 2:4 leaves conv1 (9 inputs a row) and the classifier dense.
    sizes = counted_weights(cnn.model)
    want = 0.5 * (sizes["conv2"] + sizes["fc1"]) / sum(sizes.values())
    assert list(nm["ratio"]) == [0.5] and abs(nm.loc[0, "sparsity"] - want) < 1e-6


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"methods": ["magnitud"]}, "unknown method"),
        ({"ratios": [0.5, 1.0]}, r"\[0, 1\)"),
        ({"ratios": []}, "at least one"),
        ({"methods": ["bn-scale"]}, "does not support"),
    ],
)
def test_sweep_bad_input(cnn, digits, kw, match) -> None:
    args = {"methods": ["magnitude"], "ratios": [0.5], **kw}
    with pytest.raises(UserError, match=match):
        E.sweep(cnn, digits, methods=args["methods"], ratios=args["ratios"], device="cpu")


def test_sensitivity_rows(cnn, digits) -> None:
    before = _state(cnn.model)
    ratios = (0.5, 0.9)
    df = E.sensitivity(cnn.model, digits, cnn.spec, ratios=ratios, device="cpu")
    assert _same(before, _state(cnn.model))
    layers = prunable_layers(cnn.model, PruneConfig())
    assert layers == ["conv1", "conv2", "fc1"]  # the classifier stays dense
    assert list(df.columns) == list(E.SENSITIVITY_COLUMNS)
    assert list(zip(df["layer"], df["ratio"], strict=True)) == [
        (n, r) for n in layers for r in ratios
    ]
    base = df.attrs["base_accuracy"]
    assert base > 0.95
    assert ((base - df["accuracy"] - df["drop"]).abs() < 1e-12).all()
    assert (df["layer_sparsity"] - df["ratio"]).abs().max() < 0.01
    assert df.set_index("layer")["params"].to_dict() == {
        "conv1": 288,
        "conv2": 18432,
        "fc1": 131072,
    }
    # the tiny first conv is the sensitive one
    at = df[df["ratio"] == 0.9].set_index("layer")["drop"]
    assert at["conv1"] > at["fc1"] + 0.05

    with pytest.raises(UserError, match="per-layer"):
        E.sensitivity(cnn.model, digits, cnn.spec, granularity="2:4")
    with pytest.raises(UserError, match="not a prunable layer"):
        E.sensitivity(cnn.model, digits, cnn.spec, layers=["fc2"])


def test_suggestion_beats_uniform_on_digits_cnn(cnn, digits) -> None:
    # Drops measured on the calibration split (training images); the suggestion is then judged
    # on the validation split, which the choice never saw.
    sens = E.sensitivity(cnn.model, digits, cnn.spec, split="calib", device="cpu")
    sizes = E.layer_sizes(cnn.model, ["conv1", "conv2", "fc1"])
    target = 0.8
    ratios = E.suggest_ratios(sens, sizes, target)
    reached = sum(ratios[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert reached == pytest.approx(target, abs=1e-9)
    check = E.check_suggestion(cnn.model, digits, cnn.spec, ratios, device="cpu")
    assert check["target_ratio"] == pytest.approx(target, abs=1e-9)
    assert check["sparsity"] == pytest.approx(check["uniform_sparsity"], abs=1e-3)
    # The model's sparsity (all Linear/Conv weights): the dense classifier fc2 counts too.
    fc2 = cnn.model.fc2.weight.numel()
    assert check["sparsity"] == pytest.approx(
        target * sum(sizes.values()) / (sum(sizes.values()) + fc2), abs=1e-3
    )
    assert check["accuracy"] > check["uniform_accuracy"] + 0.02, check
    assert ratios["conv1"] < target  # the sensitive layer is spared


def _synthetic(curves: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"layer": n, "ratio": r, "drop": d} for n, pts in curves.items() for r, d in pts]
    )


def test_suggest_ratios_optimises_the_predicted_loss() -> None:
    sens = _synthetic(
        {
            "robust": [(0.5, 0.0), (0.9, 0.01)],
            "fragile": [(0.5, 0.05), (0.9, 0.5)],
            "noisy": [(0.5, -0.01), (0.7, 0.02), (0.9, 0.01)],  # noise: never predicted < 0
        }
    )
    sizes = {"robust": 1000, "fragile": 1000, "noisy": 1000}
    out = E.suggest_ratios(sens, sizes, 0.5)
    assert sum(out[n] * sizes[n] for n in sizes) / 3000 == pytest.approx(0.5)
    assert out["fragile"] < out["robust"]
    uniform = dict.fromkeys(sizes, 0.5)
    assert E.predicted_drop(sens, out) < E.predicted_drop(sens, uniform)
    # exhaustive check on a grid: no allocation reaching the target predicts a smaller loss
    grid = [i / 20 for i in range(19)]
    best = min(
        E.predicted_drop(sens, {"robust": a, "fragile": b, "noisy": 1.5 - a - b})
        for a in grid
        for b in grid
        if 0 <= 1.5 - a - b <= 0.9
    )
    assert E.predicted_drop(sens, out) <= best + 1e-9
    # zero-loss stretches are shared out evenly rather than piled onto one layer
    flat = E.suggest_ratios(
        _synthetic({"a": [(0.9, 0.0)], "b": [(0.9, 0.0)]}), {"a": 10, "b": 30}, 0.45
    )
    assert flat == pytest.approx({"a": 0.45, "b": 0.45})

    with pytest.raises(UserError, match="larger ratios"):
        E.suggest_ratios(sens, sizes, 0.95)
    with pytest.raises(UserError, match="no sensitivity"):
        E.suggest_ratios(sens, {"other": 10}, 0.5)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        E.suggest_ratios(sens, sizes, 1.0)


def test_write_csv_atomic(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, math.nan]})
    out = E.write_csv(df, tmp_path / "sub" / "x.csv")
    back = pd.read_csv(out)
    assert back["a"].tolist() == [1, 2] and math.isnan(back["b"][1])
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]  # no temp file left behind
    with pytest.raises(UserError, match="directory"):
        E.write_csv(df, tmp_path)


def test_sweep_names_low_rank_alone_as_prune_does(cnn, digits) -> None:  # type: ignore[no-untyped-def]
    from pruning_core.prune import method_phrase

    df = E.sweep(cnn, digits, methods=["magnitude"], ratios=[0.5], granularity="lowrank",
                 device="cpu", eval_limit=32)  # fmt: skip
    assert list(df["method"]) == ["lowrank"] == [method_phrase("magnitude", "lowrank")]
    assert E.method_label("magnitude", "channel") == "magnitude"  # a criterion chosen: kept
    assert E.method_label("magnitude", "lowrank-energy") == "lowrank-energy"
