"""AppTest of Model & data's "Eager PyTorch vs ONNX Runtime" control: batch sizes, Measure, the
batch-sweep figure with both runtimes, the ratios, the protocol beside it and Re-measure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from apptest_helpers import find_chart
from streamlit.testing.v1 import AppTest

from pruning_core.latency import SWEEP_BATCH_SIZES
from ui.runtime_panel import runtime_ratios
from ui.texts_runtime import RUNTIMES_EXPLAINED

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "1_model_and_data.py")


def test_measure_draws_both_runtimes_per_batch_with_the_protocol() -> None:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["model_ref"] = "digits-cnn"
    at.session_state["dataset_ref"] = "digits"
    at.run()
    assert not at.exception, at.exception
    ms = at.multiselect(key="runtime_batches")
    assert list(ms.value) == list(SWEEP_BATCH_SIZES)  # the default sweep: 1, 8, 32, 64
    assert any(m.value == RUNTIMES_EXPLAINED for m in at.markdown)
    # Before a measurement: words, not an empty chart.
    assert find_chart(at, "runtime_chart") is None
    assert at.button(key="runtime_measure").label == "Measure"

    ms.set_value([1, 4]).run()
    at.button(key="runtime_measure").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    spec = find_chart(at, "runtime_chart")
    assert spec is not None
    names = [t["name"] for t in spec["data"]]
    assert names == ["eager PyTorch", "ONNX Runtime"]
    for t in spec["data"]:
        assert t["x"] == [1, 4]
        ys, up, down = t["y"], t["error_y"]["array"], t["error_y"]["arrayminus"]
        assert all(y > 0 for y in ys)
        assert all(u >= 0 for u in up) and all(d >= 0 for d in down)  # p10 <= median <= p90
    assert "per image" in spec["layout"]["yaxis"]["title"]["text"]
    ratios = next(d.value for d in at.dataframe if "ORT is" in d.value.columns)
    assert list(ratios["batch"]) == [1, 4]
    assert (ratios["eager / ORT"] > 0).all()
    protocol = " ".join(c.value for c in at.caption if c.value.startswith("Protocol:"))
    for words in ("1 thread", "warm-up", "timed calls", "batch sizes 1, 4", "Measured at"):
        assert words in protocol, protocol
    assert at.button(key="runtime_measure").label == "Re-measure"

    # No batch size: nothing to measure, and the page says so.
    at.multiselect(key="runtime_batches").set_value([]).run()
    assert not at.exception
    assert at.button(key="runtime_measure").disabled
    assert any("Pick at least one batch size" in c.value for c in at.caption)


def test_ratios_pair_the_runtimes_per_batch() -> None:
    df = pd.DataFrame({
        "backend": ["dense", "onnxruntime", "dense", "onnxruntime"],
        "status": ["ok", "ok", "ok", "skipped"],
        "batch_size": [1, 1, 8, 8],
        "ms_per_image": [0.4, 0.1, 0.05, float("nan")],
        "speedup": [1.0, 4.0, 1.0, float("nan")],
        "vs_dense": ["the reference", "4.00x faster", "the reference", ""],
    })  # fmt: skip
    r = runtime_ratios(df)
    # Batch 8 has no ONNX Runtime timing: no ratio is made up for it.
    assert list(r["batch"]) == [1]
    assert r["eager / ORT"].tolist() == [4.0]
    assert r["ORT is"].tolist() == ["4.00x faster"]
