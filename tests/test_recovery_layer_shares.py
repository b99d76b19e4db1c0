"""Per-layer shares of the recovery benchmark's allocation variants (issue 11, point 6):
the Erdos-Renyi-kernel ratios (Evci et al. 2020) and the first-layer-dense ignore list."""

from __future__ import annotations

import pytest
from torch import nn

from benchmarks.recovery_section import _per_model, erk_ratios
from pruning_core.models import LoadedModel, model_spec


def _net() -> nn.Module:
    # A 3x3 stem with few weights, a wide hidden conv, a classifier.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 64, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def test_erk_ratios_remove_the_overall_share_and_leave_small_layers_denser() -> None:
    net = _net()
    r = erk_ratios(net, 0.9, skip=["6"])
    assert set(r) == {"0", "2"}  # the classifier is left out
    sizes = {"0": 36, "2": 2304}
    kept = sum(sizes[n] * (1 - r[n]) for n in r)
    assert kept == pytest.approx(0.1 * sum(sizes.values()), rel=1e-6)
    assert r["0"] < r["2"]  # the stem keeps more of its weights than the wide conv


def test_erk_keeps_a_layer_dense_that_the_rule_would_keep_more_than_whole() -> None:
    net = _net()
    r = erk_ratios(net, 0.5, skip=["6"])
    # At 50% the stem's (1 + 4 + 3 + 3) / 36 share times eps exceeds 1: it stays dense and the
    # wide conv takes the whole cut.
    assert r["0"] == 0.0
    assert r["2"] * 2304 == pytest.approx(0.5 * (36 + 2304), rel=1e-6)


def test_first_dense_keeps_the_first_weight_layer_and_the_classifier() -> None:
    net = _net()
    lm = LoadedModel(net, model_spec("digits-cnn"), "x", "x")
    out = _per_model(lm, {"first_dense": True, "lr": 1e-3})
    assert out == {"ignore": ["0", "6"], "lr": 1e-3}
    erk = _per_model(lm, {"erk": True})
    assert erk["scope"] == "layer" and set(erk["layer_ratios"]) == {"0", "2"}
