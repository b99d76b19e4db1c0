"""Latency vs sparsity per backend, and the Pareto front."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from sparsity_helpers import pruned_share

from pruning_core.errors import UserError
from pruning_core.models import load_model
from pruning_core.tradeoffs import latency_vs_sparsity, pareto_front


def test_latency_vs_sparsity_times_every_backend() -> None:
    lm = load_model("digits-mlp")
    for p in lm.model.parameters():  # as the app's shared, read-only models are
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    df = latency_vs_sparsity(lm.model, lm.spec, [0.5, 0.9], batch_size=4, threads=1, repeats=3)
    assert set(df["ratio"]) == {0.5, 0.9}
    ok = df[df["status"] == "ok"]
    assert {"dense", "masked", "structured", "csr"} <= set(ok["backend"])
    assert (ok["median_ms"] > 0).all() and (ok["threads"] == 1).all()
    masked = df[df["backend"] == "masked"].set_index("ratio")["sparsity"]
    # The model's sparsity: 90% of the pruned layers, the dense classifier counted too.
    assert masked[0.9] == pytest.approx(0.9 * pruned_share(lm.model), abs=0.01)
    if not torch.cuda.is_available():
        semi = df[df["backend"] == "semi24"]
        assert (semi["status"] == "skipped").all() and semi["reason"].str.contains("CUDA").all()
    # The caller's model is never modified.
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert df.attrs["batch_size"] == 4 and df.attrs["threads"] == 1


def test_latency_rejects_bad_ratios() -> None:
    lm = load_model("digits-mlp")
    with pytest.raises(UserError):
        latency_vs_sparsity(lm.model, lm.spec, [0.0])
    with pytest.raises(UserError):
        latency_vs_sparsity(lm.model, lm.spec, [0.5], batch_size=0)


def test_pareto_front() -> None:
    df = pd.DataFrame(
        {"size": [10, 5, 5, 2, 8, 1], "acc": [0.99, 0.97, 0.95, 0.90, 0.96, math.nan]}
    )
    front = pareto_front(df, "size", "acc")
    # (5, .95) loses to (5, .97); (8, .96) loses to (5, .97); NaN is never on the front.
    assert front.tolist() == [True, True, False, True, False, False]
