"""Ratio strategies at one budget: uniform, global, sensitivity-suggested and budget-searched
ratios each meet the same measured budget, and each has accuracy before and after the same
fine-tune, recorded in the run store with its model and per-class change."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading

import pytest
import torch

from pruning_core.budget import measure_cost
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prune_
from pruning_core.store import RunStore
from pruning_core.strategies import (
    STRATEGIES,
    compare_strategies,
    suggested_for_budget,
    whole_elements,
)
from pruning_core.train import DEFAULT_FINETUNE

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


def test_four_strategies_meet_the_budget_before_and_after_finetune(cnn, digits, tmp_path) -> None:
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    store = RunStore(tmp_path / "runs.sqlite3")
    # The default fine-tune at its own batch size: one epoch of digits' 1438 images is 45 steps
    # of 32, not 288 of 5 (`min_steps_per_epoch`); still the same fine-tune for every strategy.
    tc = dataclasses.replace(DEFAULT_FINETUNE, min_steps_per_epoch=0)
    df = compare_strategies(
        cnn, digits, "macs=0.5", granularity="channel", epochs=1, store=store,
        model_ref="digits-cnn", dataset_ref="digits", search_limit=200, suggest_limit=200,
        device="cpu", train_config=tc,
    )  # fmt: skip
    assert list(df["strategy"]) == list(STRATEGIES)
    dense = measure_cost(cnn.model, cnn.spec, "macs")
    assert df.attrs["dense_cost"] == dense and not df.attrs["cancelled"]
    for _, row in df.iterrows():
        assert row["cost"] <= dense * 0.5, row["strategy"]
        assert row["met"] and row["cost_share"] <= 0.5
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["finetuned_accuracy"] <= 1.0
        # The fine-tune keeps its best epoch, the pruned weights included: never worse.
        assert row["finetuned_accuracy"] >= row["accuracy"]
        assert math.isclose(row["recovered"], 100 * (row["finetuned_accuracy"] - row["accuracy"]))
    # The strategies chose differently (not four copies of one config).
    assert df["sparsity"].nunique() >= 3
    # Each run is in the store, with its per-class change and its model, whose measured
    # cost is the one in the table.
    for _, row in df.iterrows():
        rec = store.get_run(int(row["run_id"]))
        assert rec.kind == "finetune" and rec.status == "done"
        assert rec.metrics["strategy"] == row["strategy"]
        per_class = rec.metrics["per_class"]
        assert len(per_class) == digits.num_classes
        assert min(r["change"] for r in per_class) == pytest.approx(row["worst_class_change"])
        reloaded = load_model(rec.artifacts["model"])
        assert measure_cost(reloaded.model, reloaded.spec, "macs") == row["cost"]
    # The dense model was never touched.
    assert all(torch.equal(before[k], v) for k, v in cnn.model.state_dict().items())


def test_unstructured_without_finetune_and_a_params_budget(cnn, digits) -> None:
    df = compare_strategies(
        cnn, digits, "params=0.4", granularity="unstructured", epochs=0,
        strategies=("uniform", "sensitivity"), search_limit=200, suggest_limit=200, device="cpu",
    )  # fmt: skip
    assert list(df["strategy"]) == ["uniform", "sensitivity"]
    target = df.attrs["target_cost"]
    assert (df["cost"] <= target).all() and df["met"].all()
    assert df["finetuned_accuracy"].isna().all() and df["run_id"].isna().all()


def test_suggestion_scaled_to_the_budget_is_what_its_config_prunes(cnn, digits) -> None:
    cfg = PruneConfig(method="magnitude", granularity="channel", ratio=0.0, max_layer_ratio=0.95)
    sc = suggested_for_budget(cnn.model, digits, cnn.spec, "macs=0.4", cfg, limit=200)
    dense = measure_cost(cnn.model, cnn.spec, "macs")
    assert sc.cost <= 0.4 * dense
    m = copy.deepcopy(cnn.model)
    prune_(m, sc.config, data=digits, spec=cnn.spec)
    assert measure_cost(m, cnn.spec, "macs") == sc.cost
    assert all(r <= 0.95 for _, r in sc.config.layer_ratios)


def test_whole_elements_remove_the_share_within_caps() -> None:
    sizes = {"a": 4, "b": 4, "c": 8}
    out = whole_elements({"a": 0.2, "b": 0.2, "c": 0.3}, sizes, 0.25, 0.75)
    counts = {u: round(r * sizes[u]) for u, r in out.items()}
    assert sum(counts.values()) == 4  # floor(0.25 x 16)
    assert all(counts[u] <= 0.75 * sizes[u] for u in sizes)


def test_refusals_and_cancel(cnn, digits) -> None:
    for budget, gran, words in (
        ("latency=0.6", "channel", "latency"),
        ("macs=0.5", "block", "uniform and global ratios coincide"),
        ("macs=0.5", "2:4", "no ratios"),
    ):
        with pytest.raises(UserError, match=words):
            compare_strategies(cnn, digits, budget, granularity=gran, epochs=0)
    with pytest.raises(UserError, match="unknown strategy"):
        compare_strategies(cnn, digits, "macs=0.5", strategies=("best",))
    stop = threading.Event()
    stop.set()
    df = compare_strategies(cnn, digits, "macs=0.5", granularity="channel", cancel=stop)
    assert df.empty and df.attrs["cancelled"]
