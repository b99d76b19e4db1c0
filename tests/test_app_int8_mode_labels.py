"""AppTest: the int8 mode a result shows is the mode it was measured in, whatever the int8
select says afterwards (one view on Trade-offs), and the mode the select says when the button
is clicked is the mode that runs (Export page's int8 section)."""

from __future__ import annotations

from pathlib import Path

from apptest_helpers import find_chart, wait_job
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def test_one_view_names_the_int8_mode_of_its_result_not_of_the_select() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "5_tradeoffs.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    at.number_input(key="tradeoff_comp_images").set_value(64)
    at.selectbox(key="tradeoff_comp_batch").set_value(8)
    at.multiselect(key="tradeoff_comp_variants").set_value(["int8"])
    assert at.selectbox(key="tradeoff_comp_int8").value == "static"
    at.button(key="tradeoff_run_companions").click().run()
    assert not at.exception, at.exception
    wait_job(at, "companions", 240)
    assert not at.exception, at.exception
    assert find_chart(at, "tradeoff_comp_chart") is not None

    # The select changes, nothing is run again: every word about int8 still says static.
    at.selectbox(key="tradeoff_comp_int8").set_value("dynamic").run()
    assert not at.exception, at.exception
    spec = find_chart(at, "tradeoff_comp_chart")
    assert spec is not None
    names = [str(t.get("name")) for t in spec["data"]]
    assert "int8 (static)" in names, names
    assert not any("dynamic" in n for n in names), names
    assert "dynamic" not in spec["layout"]["title"]["text"]
    table = next(d.value for d in at.dataframe if "vs dense eager" in d.value.columns)
    int8 = table[table["variant"].str.startswith("int8")]
    assert list(int8["variant"]) == ["int8 (static)"]
    assert int8["how it was made"].str.contains(r"\(static, calibrated").all()
    listed = next(m.value for m in at.markdown if m.value.startswith("**Not measured**"))
    assert "int8 (static) in eager PyTorch" in listed and "dynamic" not in listed


def test_quantize_runs_the_mode_selected_when_clicked_and_shows_the_result_s() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "6_export.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    assert at.radio(key="export_quant_mode").value == "static"
    # Chosen and clicked in one exchange (a browser sends both when the click interrupts the
    # rerun the choice started): the job must quantize what the radio says at the click.
    at.radio(key="export_quant_mode").set_value("dynamic")
    at.button(key="export_quantize").click().run()
    assert not at.exception, at.exception
    wait_job(at, "quantize", 240)
    assert not at.exception, at.exception
    assert at.session_state["tradeoff_quantize_result"]["attrs"]["mode"] == "dynamic"

    # The radio changes back, nothing is run again: the figure and the captions say dynamic.
    at.radio(key="export_quant_mode").set_value("static").run()
    assert not at.exception, at.exception
    spec = find_chart(at, "export_quant_chart")
    assert spec is not None
    title = spec["layout"]["title"]["text"]
    assert "dynamic int8" in title and "static" not in title
    cli = next(c.value for c in at.caption if "pruning-lab quantize" in c.value)
    assert "--mode dynamic" in cli


def test_variant_picker_says_head_for_a_model_with_attention() -> None:
    # The picker, the figure and the table take their words from one function: the ViT's
    # structured variant removes heads, and the picker must not offer "channel (shrunk)".
    at = AppTest.from_file(str(ROOT / "pages" / "5_tradeoffs.py"), default_timeout=180)
    at.session_state["model_ref"] = "shapes-vit"
    at.session_state["dataset_ref"] = "shapes"
    at.run()
    assert not at.exception, at.exception
    options = list(at.multiselect(key="tradeoff_comp_variants").options)
    assert "head (shrunk)" in options and "channel (shrunk)" not in options, options

    at = AppTest.from_file(str(ROOT / "pages" / "5_tradeoffs.py"), default_timeout=180).run()
    options = list(at.multiselect(key="tradeoff_comp_variants").options)
    assert "channel (shrunk)" in options and "head (shrunk)" not in options, options
