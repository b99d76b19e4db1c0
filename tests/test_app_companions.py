"""AppTest of the Trade-offs page's "Companions: one view" tab: an empty state before any run,
the measurement as a background job on a few validation images, then the figure and the table
with dense, low rank and int8 rows in both runtimes, and the CSV download."""

from __future__ import annotations

from pathlib import Path

from apptest_helpers import find_chart
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "5_tradeoffs.py")


def test_companions_tab_empty_state_then_one_view() -> None:
    from pruning_core.jobs import get_runner

    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception, at.exception
    assert find_chart(at, "tradeoff_comp_chart") is None
    assert any("Run the measurement to see every variant" in i.value for i in at.info)

    at.number_input(key="tradeoff_comp_images").set_value(64)
    at.selectbox(key="tradeoff_comp_batch").set_value(8)
    at.button(key="tradeoff_run_companions").click().run()
    assert not at.exception, at.exception
    assert not at.session_state["tradeoff_companions_refused"], [e.value for e in at.error]
    job_id = at.session_state["tradeoff_companions_job"]
    if job_id:
        job = get_runner().get(job_id)
        assert job is not None and job.wait(240), "companions job did not finish"
        assert job.status == "done", job.error
        at.run()
        if at.session_state["tradeoff_companions_job"]:
            at.run()
    assert not at.exception, at.exception
    spec = find_chart(at, "tradeoff_comp_chart")
    assert spec is not None
    layout = spec["layout"]
    assert layout["xaxis"]["title"]["text"].endswith("(KiB)")
    assert "(ms, log scale)" in layout["xaxis2"]["title"]["text"]
    assert (
        "batch 8" in layout["title"]["text"] and "64 validation images" in layout["title"]["text"]
    )
    names = {t.get("name") for t in spec["data"]}
    assert {"dense", "low rank", "int8 (static)", "Pareto front", "eager PyTorch",
            "ONNX Runtime"} <= names  # fmt: skip
    tables = [d.value for d in at.dataframe if "vs dense eager" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    measured = table[table["status"] == "ok"]
    pairs = set(zip(measured["variant"], measured["runtime"], strict=True))
    for variant in ("dense", "low rank"):
        for runtime in ("eager PyTorch", "ONNX Runtime"):
            assert (variant, runtime) in pairs, (variant, runtime)
    assert ("int8 (static)", "ONNX Runtime") in pairs
    # Rows not measured are not in the table but listed with their reason.
    assert (table["status"] == "ok").all()
    listed = next(m.value for m in at.markdown if m.value.startswith("**Not measured**"))
    assert "int8 (static) in eager PyTorch" in listed and "only in ONNX Runtime" in listed
    assert (measured["accuracy %"] > 50).all()
    assert measured["params"].min() > 0
    assert any(b.proto.label == "Download CSV" for b in at.get("download_button"))

    # The result survives a page change: the page run again shows it without a new job.
    at.run()
    assert find_chart(at, "tradeoff_comp_chart") is not None


def test_export_report_includes_the_last_one_view_of_this_selection() -> None:
    import pandas as pd

    from pruning_core.companions import COMPANION_COLUMNS

    export_page = str(ROOT / "pages" / "6_export.py")
    at = AppTest.from_file(export_page, default_timeout=180).run()
    assert not at.exception, at.exception
    sel = (at.session_state["model_ref"], at.session_state["dataset_ref"])
    assert not any("companion trade-offs" in c.value for c in at.caption)
    rows = [
        {"variant": "dense", "label": "dense", "runtime": "eager", "status": "ok",
         "accuracy": 0.97, "size_bytes": 605824, "params": 151306, "macs": 1330432,
         "median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.2, "vs_dense": "the reference",
         "pareto_size": False, "pareto_latency": False, "reason": ""},
        {"variant": "int8", "label": "int8", "runtime": "onnxruntime", "status": "ok",
         "accuracy": 0.965, "size_bytes": 162161, "params": 151306, "macs": 1330432,
         "median_ms": 0.6, "p10_ms": 0.55, "p90_ms": 0.7, "vs_dense": "3.33x faster",
         "pareto_size": True, "pareto_latency": True, "reason": ""},
    ]  # fmt: skip
    df = pd.DataFrame(rows).reindex(columns=list(COMPANION_COLUMNS))
    at.session_state["tradeoff_companions_result"] = {
        "selection": sel, "df": df, "cancelled": False, "seconds": 1.0, "run_id": None,
        "attrs": {"protocol": "CPU, 1 thread, batch 32 (test)", "n_val": 64},
    }  # fmt: skip
    at.run()
    assert not at.exception, at.exception
    assert any("companion trade-offs" in c.value for c in at.caption)
    at.button(key="export_make_report").click().run()
    assert not at.exception, at.exception
    _version, page = at.session_state["export_report"]
    assert "Companion trade-offs (one row per variant and runtime)" in page
    assert "CPU, 1 thread, batch 32 (test)" in page and "605,824" in page
