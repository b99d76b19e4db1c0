"""A criterion and a granularity defined only here (one class each, beside their registration)
appear everywhere the built-in ones do: `list_methods()`, the command line's choices, a recipe
round trip, the Prune page's select boxes, and they prune a sample model."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from sparsity_helpers import zero_share
from torch import nn

from pruning_core.criteria import CRITERIA, Criterion, register_criterion
from pruning_core.models import load_model
from pruning_core.plans import GRANULARITIES, register_granularity
from pruning_core.plans.masks import UnstructuredPlan
from pruning_core.prune import PruneConfig, list_methods, prune_
from pruning_core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
TOY_CRITERION = "toy-inverse"
TOY_GRANULARITY = "toy-rows"


@dataclass(frozen=True)
class InverseMagnitude(Criterion):
    """Largest |w|^power first: the opposite of magnitude (a criterion nobody should use)."""

    name = TOY_CRITERION
    label = "Inverse magnitude (toy)"
    summary = "largest |weight| first"
    reference = "this test"
    power: float = field(default=1.0, metadata={"help": "exponent of |w|"})

    def weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], data: Any = None, spec: Any = None
    ) -> dict[str, torch.Tensor]:
        return {
            n: -m.weight.detach().abs().pow(self.power).float().cpu() for n, m in layers.items()
        }


class RowPlan(UnstructuredPlan):
    """Whole output rows (neurons) zeroed, the lowest summed scores first, per layer."""

    name = TOY_GRANULARITY
    label = "Rows (toy)"
    help = "whole output rows of each layer, zeroed"
    example = TOY_GRANULARITY

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        out = {}
        for u in self.units:
            rows = self._rows[u.name]
            k = min(round(overrides.get(u.name, ratio) * rows.shape[0]), rows.shape[0] - 1)
            keep = torch.ones(rows.shape, dtype=torch.bool)
            keep[rows.sum(1).argsort(stable=True)[:k]] = False
            out[u.name] = keep.reshape(self._shapes[u.name])
        return out


@pytest.fixture
def toys() -> Iterator[None]:
    register_criterion(InverseMagnitude)
    register_granularity(RowPlan)
    try:
        yield
    finally:
        CRITERIA.pop(TOY_CRITERION, None)
        GRANULARITIES.pop(TOY_GRANULARITY, None)


def test_registered_toys_prune_a_sample_model(toys: None) -> None:
    info = {m.name: m for m in list_methods()}[TOY_CRITERION]
    assert TOY_GRANULARITY in info.granularities and "unstructured" in info.granularities
    assert info.label == InverseMagnitude.label and info.reference == "this test"
    model = load_model("digits-mlp").model
    before = model.fc1.weight.detach().abs().clone()
    config = PruneConfig(criterion=TOY_CRITERION, granularity=TOY_GRANULARITY, ratio=0.5)
    res = prune_(model, config)
    rows_zero = (model.fc1.weight == 0).all(dim=1)
    assert int(rows_zero.sum()) == 64  # half of fc1's 128 rows, whole rows
    # The rows that went are those with the largest |w| (the toy criterion's order).
    assert before[rows_zero].sum(1).min() >= before[~rows_zero].sum(1).max()
    assert res.sparsity == pytest.approx(zero_share(model), abs=1e-9) and res.sparsity > 0
    # A criterion object with its own option is accepted as well as a name.
    again = load_model("digits-mlp").model
    prune_(again, PruneConfig(criterion=InverseMagnitude(power=2.0), granularity=TOY_GRANULARITY))
    assert int((again.fc1.weight == 0).all(dim=1).sum()) == 64


def test_toys_in_recipe_round_trip_and_cli(toys: None, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = Recipe.from_settings(
        {"model": "digits-mlp", "dataset": "digits", "method": TOY_CRITERION,
         "granularity": TOY_GRANULARITY, "ratio": 0.25}
    )  # fmt: skip
    again = Recipe.from_document(json.loads(recipe.text()))
    assert again == recipe and again.prune.method == TOY_CRITERION
    code, out, _ = cli("prune", "--help")
    assert code == 0 and TOY_CRITERION in out and TOY_GRANULARITY in out
    code, _, err = cli(
        "prune", "--model", "digits-mlp", "--dataset", "digits", "--criterion", TOY_CRITERION,
        "--granularity", TOY_GRANULARITY, "--ratio", "0.25", "--quiet", "--out",
        str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["method"], metrics["granularity"]) == (TOY_CRITERION, TOY_GRANULARITY)
    code, _, err = cli("prune", "--model", "digits-mlp", "--dataset", "digits", "--method",
                       "not-registered", "--granularity", TOY_GRANULARITY, "--ratio", "0.2",
                       "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and TOY_CRITERION in err  # the choices offered come from the registry


def test_toys_in_the_prune_page_select_boxes(toys: None) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "3_prune.py"), default_timeout=120).run()
    assert not at.exception
    options = {sb.key: " | ".join(map(str, sb.options)) for sb in at.selectbox}
    # The boxes show each registry entry's own label.
    assert any(RowPlan.label in o for o in options.values()), options
    assert any(InverseMagnitude.label in o for o in options.values()), options
