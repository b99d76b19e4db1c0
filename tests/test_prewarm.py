"""The server's start-up warm-up (`ui.prewarm`): which models, when, and what it leaves in the
caches the pages read."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from pruning_core import latency
from pruning_core.models import list_models
from ui import prewarm as pw
from ui.latency_panel import dense_context, latency_cache


def test_targets_are_the_sample_models_with_their_home_datasets_default_first() -> None:
    samples = {e.name: e.default_dataset for e in list_models(include_external=False) if e.sample}
    targets = pw.prewarm_targets(first="shapes-vit")
    assert targets[0] == ("shapes-vit", samples["shapes-vit"])
    assert sorted(targets) == sorted((m, d) for m, d in samples.items() if d)
    assert len(targets) >= 4


def test_off_switch_and_a_runtime_that_never_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def never() -> bool:
        asked.append(1)
        return False

    monkeypatch.setenv("PRUNING_LAB_PREWARM", "0")
    assert not pw.prewarm_enabled()
    assert pw.warm_when_ready(ready=never) == [] and asked == []
    monkeypatch.setenv("PRUNING_LAB_PREWARM", "1")
    t0 = time.monotonic()
    assert pw.warm_when_ready(ready=never, wait_s=0.5) == []
    assert asked and time.monotonic() - t0 < 5


def test_prewarm_leaves_the_latency_a_page_reads_and_skips_a_broken_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A quiet machine's timing (CI's may be disturbed: that case is the next test's).
    monkeypatch.setattr(latency, "is_noisy", lambda table: False)
    lines = pw.prewarm([("digits-mlp", "digits"), ("no-such-model", "digits")])
    assert lines[0].startswith("prewarm digits-mlp on digits: ") and lines[0].endswith(" s")
    assert "no-such-model" in lines[1] and "skipped" in lines[1]
    kept = latency_cache().get(dense_context("digits-mlp"))
    assert kept is not None and len(kept.table) > 0
    # A second warm-up (or the page) reuses it: the same measurement object.
    pw.prewarm([("digits-mlp", "digits")])
    assert latency_cache().get(dense_context("digits-mlp")) is kept


def test_a_disturbed_timing_is_not_kept_for_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "is_noisy", lambda table: True)
    latency_cache().discard(dense_context("digits-mlp"))
    lines = pw.prewarm([("digits-mlp", "digits")])
    assert lines[0].endswith("(latency disturbed, p90 > 3 x p10: not kept)")
    assert latency_cache().get(dense_context("digits-mlp")) is None


def test_is_noisy_reads_the_p10_p90_spread() -> None:
    quiet = pd.DataFrame({"p10_ms": [1.0, 10.0], "p90_ms": [1.2, 29.9]})
    assert not latency.is_noisy(quiet)
    assert latency.is_noisy(quiet.assign(p90_ms=[1.2, 30.1]))
    assert latency.is_noisy(pd.DataFrame({"p10_ms": [0.0], "p90_ms": [0.0]}))
    assert not latency.is_noisy(quiet.assign(p90_ms=[1.2, 30.1]), spread=4.0)
