"""The one view's learned-gate point (FBS, `dynamic_learned`): trained for the fine-tune epochs
with the fine-tune loop and measured like the other points (accuracy, effective MACs per image
at the channel model's, size, eager latency, no ONNX Runtime row), drawn and reported; with no
fine-tune epochs, or on a model without convolutions, a row that says why instead."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import pytest

import pruning_core.dynamic as dynamic
from pruning_core.companions import NOT_APPLICABLE, CompanionConfig, compare_companions
from pruning_core.data import load_dataset
from pruning_core.models import load_model

FAST = {"limit": 64, "repeats": 3, "batch_size": 4}


def _row(df: pd.DataFrame, variant: str, runtime: str) -> pd.Series:
    sel = df[(df["variant"] == variant) & (df["runtime"] == runtime)]
    assert len(sel) == 1, (variant, runtime)
    return sel.iloc[0]


def _small_digits() -> Any:
    """digits with its first 512 training images: one epoch is a few steps."""
    data = load_dataset("digits")
    x, y = data.train
    idx = data.calib_index
    return dataclasses.replace(
        data, train=(x[:512], y[:512]), calib_index=idx[idx < 512], _cache={}
    )


@pytest.fixture(scope="module")
def trained() -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    real = dynamic.train_gates

    def recording(dyn, data, **kw):  # type: ignore[no-untyped-def]
        result = real(dyn, data, **kw)
        calls.append({**kw, "steps": result.steps})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic, "train_gates", recording)
        df = compare_companions(
            load_model("digits-cnn"), _small_digits(),
            CompanionConfig(epochs=1, variants=("dense", "channel", "dynamic",
                                                "dynamic_learned"), **FAST),
        )  # fmt: skip
    return df, calls


def test_learned_gate_is_trained_and_measured_at_the_channel_models_macs(
    trained: tuple[pd.DataFrame, list[dict[str, Any]]],
) -> None:
    df, calls = trained
    # Trained once, gates and network, for the config's epochs.
    assert len(calls) == 1
    assert calls[0]["epochs"] == 1 and calls[0]["train_network"] is True
    assert calls[0]["steps"] > 0
    r = _row(df, "dynamic_learned", "eager")
    assert r["status"] == "ok", r["reason"]
    assert 0.0 <= r["accuracy"] <= 1.0
    ch = _row(df, "channel", "eager")
    assert abs(r["macs"] / ch["macs"] - 1) <= 0.02, (r["macs"], ch["macs"])
    assert math.isfinite(r["median_ms"]) and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert r["vs_dense"] and "not faster" in r["reason"]
    dense = _row(df, "dense", "eager")
    # The whole network and the predictors are kept: more than dense, never less.
    assert r["params"] > dense["params"] and r["size_bytes"] > dense["size_bytes"]
    assert "trained 1 epoch" in r["how"] and "learned gate" in r["how"]
    assert r["label"] != _row(df, "dynamic", "eager")["label"]
    ort = _row(df, "dynamic_learned", "onnxruntime")
    assert ort["status"] == NOT_APPLICABLE and "forward hooks" in ort["reason"]
    assert ort["reason"] == _row(df, "dynamic", "onnxruntime")["reason"]


def test_learned_gate_is_drawn_and_reported(
    trained: tuple[pd.DataFrame, list[dict[str, Any]]],
) -> None:
    from pruning_core.export import pruning_report
    from pruning_core.plots_companions import VARIANT_COLORS, companions_figure

    df, _ = trained
    label = str(_row(df, "dynamic_learned", "eager")["label"])
    fig = companions_figure(df)
    r = _row(df, "dynamic_learned", "eager")
    traces = {t.xaxis: t for t in fig.data if t.name == label}
    assert set(traces) == {"x", "x2"}  # against size and against latency
    for t in traces.values():
        assert t.marker.color == VARIANT_COLORS["dynamic_learned"]
        assert list(t.y) == [r["accuracy"]]  # the eager point only
    assert list(traces["x2"].x) == [r["median_ms"]]
    page = pruning_report({"model": "digits-cnn", "dataset": "digits"}, companions=df)
    assert label in page


def test_no_fine_tune_epochs_says_how_to_get_the_learned_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("gates trained with no fine-tune epochs")

    monkeypatch.setattr(dynamic, "train_gates", never)
    df = compare_companions(load_model("digits-cnn"), load_dataset("digits"),
                            CompanionConfig(variants=("dense", "dynamic_learned"), **FAST))  # fmt: skip
    for runtime in ("eager", "onnxruntime"):
        r = _row(df, "dynamic_learned", runtime)
        assert r["status"] == NOT_APPLICABLE and "fine-tune epochs to 1" in r["reason"]
        assert math.isnan(r["accuracy"])


def test_model_without_convolutions_gets_the_plain_reason_first() -> None:
    for epochs in (0, 1):
        df = compare_companions(load_model("digits-mlp"), load_dataset("digits"),
                                CompanionConfig(variants=("dense", "dynamic_learned"),
                                                epochs=epochs, **FAST))  # fmt: skip
        r = _row(df, "dynamic_learned", "eager")
        assert r["status"] == NOT_APPLICABLE and "convolutions" in r["reason"], epochs
        assert "fine-tune epochs" not in r["reason"]
