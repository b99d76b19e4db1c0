"""Which classes pay for pruning: per-class accuracy of a model, and its change against dense.

Overall accuracy hides where pruning hurts: Hooker et al. 2019 ("What do compressed deep neural
networks forget?", arXiv:1911.05248) found that compression at a small overall cost takes a
disproportionate share of it from a few classes and hard examples. `per_class_accuracy` counts
hits per class on one split (from `evaluate.evaluate`'s confusion matrix, so it is the same pass
that gives the overall number), and `per_class_change` sets a pruned model's beside the dense
one's, in points, worst first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.spec import InputSpec

__all__ = [
    "CHANGE_COLUMNS",
    "PER_CLASS_COLUMNS",
    "change_from_records",
    "change_headline",
    "change_records",
    "per_class_accuracy",
    "per_class_change",
]

PER_CLASS_COLUMNS = ("class", "n", "correct", "accuracy")
CHANGE_COLUMNS = ("class", "n", "dense", "pruned", "change")


def per_class_accuracy(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    split: str = "val",
    *,
    device: torch.device | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Top-1 accuracy of each class on one split.

    Args:
        model: The classifier (not modified; its mode is restored).
        data: The dataset (its `class_names` name the rows).
        spec: The model's input spec.
        split: `val` (default), `train` or `calib`.
        device: Where to run (default: where the model's parameters are).
        limit: Only the first `limit` images of the split.

    Returns:
        One row per class, in class order: `class` (name), `n` (images of that class),
        `correct` (top-1 hits) and `accuracy` (correct / n, a fraction; NaN when n is 0).
        `df.attrs["accuracy"]` is the overall top-1 accuracy of the same pass, which equals
        sum(correct) / sum(n).
    """
    ev = evaluate(model, data, spec, split=split, device=device, limit=limit)
    conf = torch.tensor(ev.confusion, dtype=torch.int64).reshape(data.num_classes, -1)
    n = conf.sum(1)
    correct = conf.diag()
    df = pd.DataFrame(
        {
            "class": list(data.class_names),
            "n": n.tolist(),
            "correct": correct.tolist(),
            "accuracy": [
                c / k if k else float("nan")
                for c, k in zip(correct.tolist(), n.tolist(), strict=True)
            ],
        }
    )
    df.attrs.update(accuracy=ev.accuracy, split=split, images=ev.n)
    return df


def per_class_change(dense: pd.DataFrame, pruned: pd.DataFrame) -> pd.DataFrame:
    """Per-class accuracy of a pruned model beside the dense one's, worst change first.

    Args:
        dense: `per_class_accuracy` of the dense model.
        pruned: `per_class_accuracy` of the pruned (or fine-tuned) model, same split.

    Returns:
        One row per class: `class`, `n`, `dense` and `pruned` (fractions) and `change`
        (pruned - dense, in percentage points), sorted by change ascending (the classes that
        pay most first; ties in class order). `attrs`: `dense_accuracy`, `pruned_accuracy`
        (overall, fractions) and `change` (overall, points), which equals the n-weighted mean
        of the per-class changes.

    Raises:
        UserError: The two frames do not list the same classes with the same counts (not the
            same split or dataset).
    """
    if list(dense["class"]) != list(pruned["class"]) or list(dense["n"]) != list(pruned["n"]):
        raise UserError(
            "per-class accuracies of different classes or image counts: measure both models on "
            "the same split of the same dataset"
        )
    df = pd.DataFrame(
        {
            "class": list(dense["class"]),
            "n": [int(v) for v in dense["n"]],
            "dense": dense["accuracy"].to_numpy(dtype=float),
            "pruned": pruned["accuracy"].to_numpy(dtype=float),
        }
    )
    df["change"] = 100.0 * (df["pruned"] - df["dense"])
    total = max(int(df["n"].sum()), 1)
    dense_acc = float(dense["correct"].sum()) / total
    pruned_acc = float(pruned["correct"].sum()) / total
    out = df.sort_values("change", kind="stable").reset_index(drop=True)
    out.attrs.update(
        dense_accuracy=dense_acc, pruned_accuracy=pruned_acc, change=100 * (pruned_acc - dense_acc)
    )
    return out


def change_headline(df: pd.DataFrame) -> str:
    """One sentence on a `per_class_change` frame (sorted by change, ascending): the class that
    lost most, or, when none lost, that none did and which gained most.

    Returns:
        E.g. "Class 3 lost most: -4.17 points over 36 images" or "No class lost accuracy; class
        8 gained most: +2.86 points over 35 images" ("" for an empty frame).
    """
    if not len(df):
        return ""
    worst, best = df.iloc[0], df.iloc[-1]
    if float(worst["change"]) < 0:
        return (
            f"Class {worst['class']} lost most: {float(worst['change']):+.2f} points over "
            f"{int(worst['n'])} images"
        )
    if float(best["change"]) > 0:
        return (
            f"No class lost accuracy; class {best['class']} gained most: "
            f"{float(best['change']):+.2f} points over {int(best['n'])} images"
        )
    return "No class changed accuracy"


def change_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A `per_class_change` frame as JSON-ready rows (what a run's metrics keep)."""
    return [
        {"class": str(r["class"]), "n": int(r["n"]), "dense": float(r["dense"]),
         "pruned": float(r["pruned"]), "change": float(r["change"])}
        for r in df.to_dict("records")
    ]  # fmt: skip


def change_from_records(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The frame `change_records` wrote, read back (checked: the columns and numbers).

    Raises:
        UserError: Rows without the columns of `CHANGE_COLUMNS` or with values not numbers.
    """
    try:
        df = pd.DataFrame([{k: r[k] for k in CHANGE_COLUMNS} for r in rows])
        for k in ("n", "dense", "pruned", "change"):
            df[k] = pd.to_numeric(df[k], errors="raise")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"per-class rows are malformed: {e}") from None
    if df.empty:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    total = max(int(df["n"].sum()), 1)
    dense_acc = float((df["dense"] * df["n"]).sum()) / total
    pruned_acc = float((df["pruned"] * df["n"]).sum()) / total
    out = df.sort_values("change", kind="stable").reset_index(drop=True)
    out.attrs.update(
        dense_accuracy=dense_acc, pruned_accuracy=pruned_acc, change=100 * (pruned_acc - dense_acc)
    )
    return out
