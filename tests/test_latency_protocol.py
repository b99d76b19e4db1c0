"""One latency protocol: the comparison verdict, the settings shared by bench and the app, and
the measurement cache keyed by its context. No assertion here is about how long anything takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from pruning_core import latency
from pruning_core.cli import build_parser
from pruning_core.cli.measure import bench_protocol
from pruning_core.errors import UserError
from pruning_core.timing import (
    NO_DIFFERENCE,
    PROTOCOL,
    Latency,
    LatencyProtocol,
    compare,
)

ROOT = Path(__file__).resolve().parents[1]


def _lat(p10: float, median: float, p90: float) -> Latency:
    return Latency(median, p10, p90, repeats=30, batch_size=32, device="cpu", threads=1)


def test_overlapping_ranges_are_no_measurable_difference() -> None:
    base = _lat(70.0, 100.0, 596.0)
    other = _lat(60.0, 67.6, 400.0)  # medians 1.48x apart, ranges overlap: the reported case
    d = compare(base, other)
    assert d.text == NO_DIFFERENCE and not d.measurable
    assert d.ratio == pytest.approx(100.0 / 67.6)


def test_apart_ranges_say_faster_or_slower() -> None:
    base = _lat(9.0, 10.0, 11.0)
    fast, slow = compare(base, _lat(4.0, 5.0, 6.0)), compare(base, _lat(19.0, 20.0, 22.0))
    assert fast.measurable and fast.text == "2.00x faster"
    assert slow.measurable and slow.text == "2.00x slower"
    # Touching ranges still overlap.
    assert compare(base, _lat(11.0, 12.0, 13.0)).text == NO_DIFFERENCE


def test_backend_table_uses_the_shared_comparison() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    df = latency.benchmark_backends(
        model, torch.randn(4, 64), backends=("dense", "masked"), repeats=9, warmup=1
    )
    rows = df.set_index("backend")
    as_lat = {b: _lat(r.p10_ms, r.median_ms, r.p90_ms) for b, r in rows.iterrows()}
    assert rows.loc["masked", "vs_dense"] == compare(as_lat["dense"], as_lat["masked"]).text
    assert rows.loc["dense", "vs_dense"] == "the reference"
    assert df.attrs["protocol"] == PROTOCOL.with_(repeats=9, warmup=1).describe(batch_size=4)


def test_protocol_describes_itself_and_refuses_nonsense() -> None:
    text = PROTOCOL.describe(batch_size=1)
    assert f"{PROTOCOL.threads} thread" in text and "batch 1" in text
    assert f"{PROTOCOL.repeats} timed calls" in text and f"{PROTOCOL.warmup} warm-up" in text
    assert PROTOCOL.with_() is PROTOCOL and PROTOCOL.with_(threads=PROTOCOL.threads) is PROTOCOL
    assert PROTOCOL.with_(batch_size=8).batch_sizes == (8,)
    with pytest.raises(UserError):
        LatencyProtocol(threads=0)
    with pytest.raises(UserError):
        PROTOCOL.with_(repeats=0)


def test_bench_defaults_are_the_app_protocol() -> None:
    args = build_parser().parse_args(["bench", "--model", "digits-cnn"])
    assert bench_protocol(args) is PROTOCOL
    assert args.batch_size == PROTOCOL.batch_size
    changed = build_parser().parse_args(["bench", "--model", "digits-cnn", "--threads", "2"])
    assert bench_protocol(changed) == PROTOCOL.with_(threads=2) != PROTOCOL
    report = build_parser().parse_args(
        ["export", "--pruned", "x", "--format", "report", "--out", "r.html"]
    )
    assert report.batch_size == PROTOCOL.batch_size


def test_tradeoffs_widget_defaults_are_the_protocol() -> None:
    from ui.state import DEFAULTS

    assert DEFAULTS["tradeoff_lat_batch"] == PROTOCOL.batch_size
    assert DEFAULTS["tradeoff_lat_threads"] == PROTOCOL.threads


def test_model_page_and_bench_time_with_the_same_settings_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    real = latency.benchmark_backends

    def spy(*args: Any, **kwargs: Any) -> pd.DataFrame:
        seen.append(kwargs.get("protocol"))
        return real(*args, **{**kwargs, "protocol": kwargs["protocol"].with_(repeats=3)})

    monkeypatch.setattr(latency, "benchmark_backends", spy)
    from pruning_core.cli import main
    from ui.latency_panel import latency_cache

    latency_cache.clear()  # a measurement kept by an earlier test would not be timed again
    assert main(["bench", "--model", "digits-mlp", "--backends", "dense", "--json"]) == 0
    at = AppTest.from_file(str(ROOT / "pages" / "1_model_and_data.py"), default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.run()
    assert not at.exception
    # bench once, then Model & data once per batch size: all with the one protocol object.
    assert len(seen) == 1 + len(PROTOCOL.batch_sizes)
    assert all(p is PROTOCOL for p in seen)
    captions = " ".join(c.value for c in at.caption)
    assert PROTOCOL.describe(device="cpu").split(";")[0] in captions and "measured at" in captions
    # The re-measure button measures again, in the same context.
    at.button(key="latency_remeasure").click().run()
    assert not at.exception and len(seen) == 1 + 2 * len(PROTOCOL.batch_sizes)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_is_keyed_by_context_and_expires() -> None:
    clock = _Clock()
    cache = latency.MeasurementCache(max_entries=2, max_age_s=60.0, clock=clock)
    calls: list[str] = []

    def fn(tag: str) -> Any:
        return lambda: calls.append(tag) or pd.DataFrame({"tag": [tag]})

    ctx = ("dense", "digits-cnn", PROTOCOL, "cpu")
    first = cache.measure(ctx, fn("a"))
    assert cache.measure(ctx, fn("b")) is first and calls == ["a"]
    # Another protocol, model or device is another context: measured, never reused.
    cache.measure(("dense", "digits-cnn", PROTOCOL.with_(threads=2), "cpu"), fn("c"))
    assert calls == ["a", "c"]
    assert cache.get(("dense", "digits-mlp", PROTOCOL, "cpu")) is None
    # A re-measure replaces it; so does age.
    again = cache.measure(ctx, fn("d"), refresh=True)
    assert again is not first and calls[-1] == "d"
    clock.now += 61.0
    assert cache.get(ctx) is None
    assert cache.measure(ctx, fn("e")).table["tag"].iloc[0] == "e"
    assert "measured at" in again.when(clock.now) and "1 min ago" in again.when(clock.now)
    # Bounded: the oldest context goes first.
    cache.measure(("x",), fn("f"))
    cache.measure(("y",), fn("g"))
    assert cache.get(ctx) is None and cache.get(("y",)) is not None


def test_one_measurement_of_a_context_at_a_time() -> None:
    """Callers who ask while the same context is being timed wait for that measurement
    (thirty students opening one model time it once); another context is not held up."""
    import threading

    cache = latency.MeasurementCache()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> pd.DataFrame:
        calls.append("slow")
        started.set()
        assert release.wait(10)
        return pd.DataFrame({"tag": ["slow"]})

    got: list[Any] = []
    first = threading.Thread(target=lambda: got.append(cache.measure(("m",), slow)))
    first.start()
    assert started.wait(10)
    waiters = [
        threading.Thread(target=lambda: got.append(cache.measure(("m",), slow))) for _ in range(3)
    ]
    for t in waiters:
        t.start()
    # Another context measures at once, while ("m",) is still being timed.
    other = cache.measure(("n",), lambda: pd.DataFrame({"tag": ["n"]}))
    assert other.table["tag"].iloc[0] == "n"
    release.set()
    for t in [first, *waiters]:
        t.join(10)
    assert calls == ["slow"] and len(got) == 4 and all(g is got[0] for g in got)


def test_a_failed_measurement_leaves_the_next_caller_to_measure() -> None:
    cache = latency.MeasurementCache()

    def broken() -> pd.DataFrame:
        raise RuntimeError("no kernel")

    with pytest.raises(RuntimeError, match="no kernel"):
        cache.measure(("m",), broken)
    assert cache.measure(("m",), lambda: pd.DataFrame({"tag": ["ok"]})).table["tag"].iloc[0] == "ok"
