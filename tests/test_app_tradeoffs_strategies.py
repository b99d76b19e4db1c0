"""AppTest of the Trade-offs page's ratio strategies and per-class panels: an empty state
before any run, the comparison as a background job (figure and table from real runs), then the
per-class change of one of its runs against dense, with an HTML report that has the section."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import find_chart, wait_job
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "5_tradeoffs.py")


def test_strategies_job_then_per_class_of_one_of_its_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The budget-searched strategy still chooses among candidates after a short recovery, on
    # 10 steps instead of 100 (a fifth of the job's time), and the fine-tune runs at its own
    # batch size (45 steps of 32 on digits, not 288 of 5): the page's figure, table and runs
    # are what is checked here, not which candidate wins (tests/test_budget.py checks that)
    # nor how much a fine-tune recovers.
    import dataclasses

    import pruning_core.budget
    import pruning_core.strategies

    monkeypatch.setattr(pruning_core.budget, "DEFAULT_RECOVERY_STEPS", 10)
    fast = dataclasses.replace(pruning_core.strategies.DEFAULT_FINETUNE, min_steps_per_epoch=0)
    monkeypatch.setattr(pruning_core.strategies, "DEFAULT_FINETUNE", fast)
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception, at.exception
    # Before any run: an empty state, not an empty chart.
    assert find_chart(at, "tradeoff_strat_chart") is None
    assert any("Run the comparison" in i.value for i in at.info)
    assert find_chart(at, "tradeoff_perclass_chart") is None

    at.selectbox(key="tradeoff_strat_quantity").set_value("macs")
    at.number_input(key="tradeoff_strat_share").set_value(0.5)
    at.selectbox(key="tradeoff_strat_granularity").set_value("channel")
    at.number_input(key="tradeoff_strat_epochs").set_value(1)
    at.button(key="tradeoff_run_strategies").click().run()
    assert not at.exception, at.exception
    wait_job(at, "strategies", 180.0, handed_over_ok=True)
    assert not at.exception, at.exception
    spec = find_chart(at, "tradeoff_strat_chart")
    assert spec is not None
    names = [t["name"] for t in spec["data"]]
    assert names == ["before fine-tune", "after 1-epoch fine-tune"]
    labels = ["uniform", "global threshold", "sensitivity-suggested", "budget-searched"]
    for trace in spec["data"]:
        assert trace["x"] == labels
        assert all(0.0 < y <= 1.0 for y in trace["y"])
        assert all("of dense" in c for c in trace["customdata"])  # cost in the hover
    assert "macs" in spec["layout"]["title"]["text"]
    assert spec["layout"]["yaxis"]["title"]["text"].startswith("top-1 accuracy")
    tables = [d.value for d in at.dataframe if "how" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert list(table["strategy"]) == labels
    assert (table["cost"] <= table["target"]).all()

    # The four runs are in the store; pick one and see its per-class change against dense.
    runs = at.selectbox(key="tradeoff_perclass_run").options
    assert sum("macs=0.5" in r for r in runs) >= 4
    at.button(key="tradeoff_run_perclass").click().run()
    assert not at.exception, at.exception
    assert not at.session_state["tradeoff_perclass_refused"], [e.value for e in at.error]
    wait_job(at, "perclass", 180.0, handed_over_ok=True)
    assert not at.exception, at.exception
    pc = find_chart(at, "tradeoff_perclass_chart")
    assert pc is not None
    assert len(pc["data"][0]["x"]) == 10  # digits: ten classes
    ys = pc["data"][0]["y"]
    assert ys == sorted(ys)  # worst first
    assert pc["layout"]["yaxis"]["title"]["text"].startswith("accuracy change")
    assert at.get("download_button")
