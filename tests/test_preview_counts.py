"""Dense MAC counts shared by the previews of one model (a class opening Prune on the shared
sample model counts them once), and counted anew when the model's structure changes."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from pruning_core import slider
from pruning_core.data import load_dataset
from pruning_core.models import LoadedModel, load_model
from pruning_core.prune import PruneConfig
from pruning_core.slider import SliderPreview
from pruning_core.stats import count_macs


def test_previews_of_one_model_count_its_macs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(model: nn.Module, spec: Any, batch_size: int = 1) -> int:
        calls.append(1)
        return count_macs(model, spec, batch_size)

    monkeypatch.setattr(slider, "count_macs", counting)
    monkeypatch.setattr(slider, "_COUNTS", type(slider._COUNTS)())
    base = load_model("digits-cnn")
    data = load_dataset("digits")
    one = SliderPreview(base, PruneConfig(criterion="magnitude"), data)
    two = SliderPreview(base, PruneConfig(criterion="random"), data)
    assert len(calls) == 1
    assert one.macs_dense == two.macs_dense == count_macs(base.model, base.spec)
    assert one.layer_macs == two.layer_macs and one.layer_macs is not two.layer_macs
    # The same architecture in another object, or this one changed in shape, counts again.
    other = load_model("digits-cnn")
    SliderPreview(other, PruneConfig(criterion="magnitude"), data)
    assert len(calls) == 2
    fc = next(n for n, m in base.model.named_modules() if isinstance(m, nn.Linear))
    parent, _, leaf = fc.rpartition(".")
    old = base.model.get_submodule(fc)
    holder = base.model.get_submodule(parent) if parent else base.model
    setattr(holder, leaf, nn.Linear(old.in_features, old.out_features, bias=False))
    shrunk = SliderPreview(LoadedModel(base.model, base.spec, "x", "x"), PruneConfig(), data)
    assert len(calls) == 3 and shrunk.macs_dense == count_macs(base.model, base.spec)
