"""AppTest of the one view's learned gate on the Trade-offs page: with no fine-tune epochs it is
listed as not measured with how to get it; with one epoch it is a measured point (figure and
table) at the channel model's MACs, with no ONNX Runtime row, for the same reason as the
magnitude gate."""

from __future__ import annotations

from pathlib import Path

from apptest_helpers import find_chart, wait_job
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
LEARNED = "dynamic gating (learned)"


def _run(at: AppTest, epochs: int) -> None:
    at.number_input(key="tradeoff_comp_epochs").set_value(epochs)
    at.button(key="tradeoff_run_companions").click().run()
    assert not at.exception, at.exception
    wait_job(at, "companions", 240)
    assert not at.exception, at.exception


def test_learned_gate_needs_epochs_then_is_a_measured_point() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "5_tradeoffs.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    assert "dynamic_learned" in at.multiselect(key="tradeoff_comp_variants").value
    at.number_input(key="tradeoff_comp_images").set_value(64)
    at.selectbox(key="tradeoff_comp_batch").set_value(8)
    at.multiselect(key="tradeoff_comp_variants").set_value(["dynamic_learned"])
    _run(at, 0)
    listed = next(m.value for m in at.markdown if m.value.startswith("**Not measured**"))
    assert f"{LEARNED} in eager PyTorch" in listed and "fine-tune epochs to 1" in listed

    at.multiselect(key="tradeoff_comp_variants").set_value(
        ["channel", "dynamic", "dynamic_learned"]
    )
    _run(at, 1)
    spec = find_chart(at, "tradeoff_comp_chart")
    assert spec is not None
    assert LEARNED in {t.get("name") for t in spec["data"]}
    table = next(d.value for d in at.dataframe if "vs dense eager" in d.value.columns)
    learned = table[table["variant"] == LEARNED]
    assert list(learned["runtime"]) == ["eager PyTorch"]
    row = learned.iloc[0]
    assert 0 < row["accuracy %"] <= 100 and row["median ms"] > 0
    channel = table[
        (table["variant"] == "channel (shrunk)") & (table["runtime"] == "eager PyTorch")
    ]
    assert abs(row["MACs / image"] / channel.iloc[0]["MACs / image"] - 1) <= 0.02
    assert "trained 1 epoch" in row["how it was made"]
    listed = next(m.value for m in at.markdown if m.value.startswith("**Not measured**"))
    assert f"{LEARNED} in ONNX Runtime" in listed and "forward hooks" in listed
    assert "fine-tune epochs to 1" not in listed
