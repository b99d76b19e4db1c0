"""Per-class accuracy (Hooker et al. 2019): the per-class numbers add up to the overall
accuracy exactly, and a pruned model's per-class change is consistent with its overall one."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.models import load_model
from pruning_core.per_class import (
    change_from_records,
    change_records,
    per_class_accuracy,
    per_class_change,
)
from pruning_core.plots import per_class_change_figure
from pruning_core.prune import PruneConfig, prune_

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


def test_weighted_mean_of_per_class_is_the_overall_accuracy(cnn, digits) -> None:
    df = per_class_accuracy(cnn.model, digits, cnn.spec)
    overall = evaluate(cnn.model, digits, cnn.spec).accuracy
    assert list(df["class"]) == list(digits.class_names)
    assert int(df["n"].sum()) == digits.num_examples("val")
    assert (df["accuracy"] * df["n"]).sum() / df["n"].sum() == pytest.approx(overall, abs=1e-12)
    assert int(df["correct"].sum()) == round(overall * df["n"].sum())
    assert df.attrs["accuracy"] == overall
    calib = per_class_accuracy(cnn.model, digits, cnn.spec, "calib")
    assert int(calib["n"].sum()) == digits.num_examples("calib")


def test_pruned_change_sums_to_the_overall_change(cnn, digits) -> None:
    dense = per_class_accuracy(cnn.model, digits, cnn.spec)
    m = copy.deepcopy(cnn.model)
    prune_(m, PruneConfig(method="magnitude", granularity="channel", ratio=0.6), data=digits,
           spec=cnn.spec)  # fmt: skip
    pruned = per_class_accuracy(m, digits, cnn.spec)
    change = per_class_change(dense, pruned)
    overall = 100 * (pruned.attrs["accuracy"] - dense.attrs["accuracy"])
    assert overall < 0  # 60% of the channels cost accuracy
    # n-weighted per-class changes add up to the overall change, exactly.
    weighted = (change["change"] * change["n"]).sum() / change["n"].sum()
    assert weighted == pytest.approx(overall, abs=1e-9)
    assert change.attrs["change"] == pytest.approx(overall, abs=1e-9)
    # Worst first, and the worst class lost at least the average.
    assert list(change["change"]) == sorted(change["change"])
    assert change["change"].iloc[0] <= overall
    row = change.set_index("class").loc[change["class"].iloc[0]]
    assert row["change"] == pytest.approx(100 * (row["pruned"] - row["dense"]))
    # Kept as JSON rows and read back, the frame is the same.
    back = change_from_records(change_records(change))
    assert list(back["class"]) == list(change["class"])
    assert back["change"].tolist() == pytest.approx(change["change"].tolist())
    assert back.attrs["change"] == pytest.approx(overall, abs=1e-9)
    fig = per_class_change_figure(change)
    assert fig.layout.yaxis.title.text.startswith("accuracy change")
    assert list(fig.data[0].x) == [str(c) for c in change["class"]]


def test_frames_of_different_splits_are_refused(cnn, digits) -> None:
    val = per_class_accuracy(cnn.model, digits, cnn.spec)
    calib = per_class_accuracy(cnn.model, digits, cnn.spec, "calib")
    with pytest.raises(UserError, match="same split"):
        per_class_change(val, calib)
    with pytest.raises(UserError, match="malformed"):
        change_from_records([{"class": "0", "n": 3}])


def test_the_report_has_a_per_class_section(cnn, digits) -> None:
    from pruning_core.export import pruning_report
    from pruning_core.per_class import change_headline, change_records

    dense = per_class_accuracy(cnn.model, digits, cnn.spec)
    m = copy.deepcopy(cnn.model)
    prune_(m, PruneConfig(method="magnitude", granularity="unstructured", ratio=0.9))
    change = per_class_change(dense, per_class_accuracy(m, digits, cnn.spec))
    metrics = {"model": "digits-cnn", "dataset": "digits", "method": "magnitude",
               "granularity": "unstructured", "sparsity": 0.9}  # fmt: skip
    headline = change_headline(change)
    assert headline.startswith(("Class ", "No class "))
    for page in (
        pruning_report(metrics, per_class=change),
        pruning_report({**metrics, "per_class": change_records(change)}),  # as a run keeps it
    ):
        assert "Per-class accuracy change against dense" in page
        assert "Hooker et al. 2019" in page
        assert headline in page
    assert "Per-class" not in pruning_report(metrics)


def test_change_headline_names_the_loser_or_says_none_lost() -> None:
    from pruning_core.per_class import change_headline

    def frame(changes: list[float]) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "class": [str(i) for i in range(len(changes))],
                "change": changes,
                "n": [36] * len(changes),
            }
        )
        return df.sort_values("change").reset_index(drop=True)

    assert (
        change_headline(frame([0.0, -4.17, 2.86]))
        == "Class 1 lost most: -4.17 points over 36 images"
    )
    # No class lost: the worst row's +0.00 is not "changed most" (the report said so).
    gained = change_headline(frame([0.0, 0.0, 2.86]))
    assert gained == "No class lost accuracy; class 2 gained most: +2.86 points over 36 images"
    assert change_headline(frame([0.0, 0.0])) == "No class changed accuracy"
    assert change_headline(frame([])) == ""
