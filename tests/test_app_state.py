"""State that survives: selection, settings, the applied model and jobs outlive page changes.

Streamlit drops the value of a widget that a run does not draw (and, before the fix, lost the
kept copy too after a polling fragment ran: model, dataset and settings fell back to their
defaults after leaving Trade-offs while a sweep ran). `ui.state.init_state` keeps them.
"""

from __future__ import annotations

import re
from pathlib import Path

from apptest_helpers import apply_prune
from streamlit.testing.v1 import AppTest

from ui.state import DEFAULTS, KEEP

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def _widget_keys() -> set[str]:
    """Every literal widget key in pages/ and ui/."""
    keys: set[str] = set()
    for path in [*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py")]:
        keys |= set(re.findall(r"\bkey=\"([A-Za-z0-9_]+)\"", path.read_text(encoding="utf-8")))
    return keys


def test_every_setting_widget_is_kept() -> None:
    # A default that a widget edits is a setting: it must be kept across pages.
    settings = set(DEFAULTS) & _widget_keys()
    assert settings, "no widget keys found: the pattern no longer matches the sources"
    assert settings <= set(KEEP), sorted(settings - set(KEEP))
    assert set(KEEP) <= set(DEFAULTS), sorted(set(KEEP) - set(DEFAULTS))


def _on_tradeoffs() -> AppTest:
    """The whole app with digits-mlp picked, on the Trade-offs page."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.run()
    return at.switch_page("pages/5_tradeoffs.py").run()


def test_a_dropped_widget_value_comes_back() -> None:
    at = _on_tradeoffs()
    at.text_input(key="tradeoff_ratios").set_value("0.3, 0.8").run()
    at.number_input(key="tradeoff_ft_epochs").set_value(0).run()
    at.switch_page("pages/2_inspect.py").run()
    assert not at.exception
    # What Streamlit did after a polling fragment: the values are gone from the session.
    for key in ("model_ref", "tradeoff_ratios", "tradeoff_ft_epochs"):
        del at.session_state[key]
    at.run()
    at.switch_page("pages/5_tradeoffs.py").run()
    assert not at.exception
    assert at.session_state["model_ref"] == "digits-mlp"
    assert at.text_input(key="tradeoff_ratios").value == "0.3, 0.8"
    assert at.number_input(key="tradeoff_ft_epochs").value == 0


def _wait(job_id: str, timeout: float = 240.0) -> None:
    from ui.jobs_panel import job_runner

    job = job_runner().get(job_id)
    assert job is not None and job.wait(timeout), "the job did not finish"
    assert job.status == "done", job.error


def _applied(ratio: float) -> AppTest:
    """The whole app with digits-mlp pruned at `ratio` and applied on the Prune page."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    return apply_prune(at.run(), ratio=ratio)


def test_sweep_and_finetune_survive_page_changes() -> None:
    at = _applied(0.6)
    applied = at.session_state["prune_committed"]
    at.switch_page("pages/4_finetune.py").run()
    # Not the default's epochs, so coming back to them shows the setting survived.
    at.number_input(key="ft_epochs").set_value(2).run()
    at.button(key="ft_start").click().run()
    ft_job = at.session_state["ft_job_id"]
    at.switch_page("pages/5_tradeoffs.py").run()
    at.text_input(key="tradeoff_ratios").set_value("0.5, 0.9").run()
    at.number_input(key="tradeoff_ft_epochs").set_value(0).run()
    at.button(key="tradeoff_run_sweep").click().run()
    sweep_job = at.session_state["tradeoff_sweep_job"]
    assert isinstance(sweep_job, str) and isinstance(ft_job, str)

    # Leave while both run (one worker: the sweep waits behind the fine-tune), come back later.
    for page in ("pages/2_inspect.py", "pages/1_model_and_data.py", "pages/3_prune.py"):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert at.session_state["model_ref"] == "digits-mlp"
        assert at.session_state["prune_committed"] is applied
    _wait(ft_job)
    _wait(sweep_job)
    # Another page runs: the sweep's result is taken into the session there already.
    at.switch_page("pages/6_export.py").run()
    assert not at.exception, at.exception
    assert at.session_state["tradeoff_sweep_result"]["selection"] == ("digits-mlp", "digits")

    at.switch_page("pages/5_tradeoffs.py").run()
    assert not at.exception, at.exception
    assert at.session_state["model_ref"] == "digits-mlp"
    assert at.text_input(key="tradeoff_ratios").value == "0.5, 0.9"
    assert at.number_input(key="tradeoff_ft_epochs").value == 0
    charts = [c.proto.id for c in at.get("plotly_chart")]
    assert any("tradeoff_acc_chart" in c for c in charts), charts
    assert list(at.session_state["tradeoff_sweep_result"]["df"]["ratio"].unique()) == [0.5, 0.9]

    at.switch_page("pages/4_finetune.py").run()
    assert not at.exception, at.exception
    assert at.number_input(key="ft_epochs").value == 2
    assert any("Done in" in s.value for s in at.success), [s.value for s in at.success]
    model = at.session_state["prune_committed"]
    assert model.stage == "fine-tuned" and model.config == applied.config

    # A result stays until the user discards it.
    at.switch_page("pages/5_tradeoffs.py").run()
    at.button(key="tradeoff_discard_sweep").click().run()
    assert not at.exception, at.exception
    assert "tradeoff_sweep_result" not in at.session_state
    assert not any("tradeoff_acc_chart" in c.proto.id for c in at.get("plotly_chart"))


def test_a_finetune_whose_session_is_gone_lands_in_the_store() -> None:
    from pruning_core.store import RunStore
    from ui.jobs_panel import job_runner

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    apply_prune(at.run(), then="pages/4_finetune.py")
    at.number_input(key="ft_epochs").set_value(1).run()
    at.button(key="ft_start").click().run()
    job_id = at.session_state["ft_job_id"]
    del at  # the tab is closed: no page ever polls this job again
    job = job_runner().get(job_id)
    assert job is not None and job.wait(240) and job.status == "done", job and job.error
    assert job.run_id is not None
    run = RunStore().get_run(job.run_id)
    assert run.status == "done" and run.kind == "finetune"
    assert 0.0 < run.metrics["accuracy"] <= 1.0


def test_a_reloaded_tab_takes_over_its_session_and_only_its_own() -> None:
    at = _applied(0.7)
    token = at.query_params["session"]
    assert token and at.session_state["prune_committed"].config.ratio == 0.7

    # Reloading the tab: a new Streamlit session with the same URL.
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["session"] = token
    again.run()
    assert not again.exception, again.exception
    assert again.session_state["model_ref"] == "digits-mlp"
    assert again.session_state["prune_ratio"] == 0.7
    assert again.session_state["prune_committed"].config.ratio == 0.7

    # Another student (no token, or an unknown one) starts afresh.
    other = AppTest.from_file(APP, default_timeout=120)
    other.query_params["session"] = "not-a-known-token"
    other.run()
    assert other.session_state["model_ref"] == DEFAULTS["model_ref"]
    assert "prune_committed" not in other.session_state
    assert other.query_params["session"] != token


def _kept_widget_calls() -> list[tuple[str, str, str | None]]:
    """(file, key, persist_state) of every widget call in pages/ and ui/ keyed by a `KEEP` key."""
    import ast

    found = []
    for path in [*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            key = kw.get("key")
            if isinstance(key, ast.Constant) and key.value in KEEP:
                persist = kw.get("persist_state")
                value = persist.value if isinstance(persist, ast.Constant) else None
                found.append((path.name, str(key.value), value))
    return found


def test_every_kept_widget_persists_for_the_session() -> None:
    calls = _kept_widget_calls()
    assert {key for _, key, _ in calls} == set(KEEP), "a kept key without its widget call"
    missing = [(f, k) for f, k, persist in calls if persist != "session"]
    assert not missing, missing


def test_a_rerun_does_not_push_kept_values_to_the_browser() -> None:
    # A value set from code reaches the browser as the widget's new value ("set_value") and
    # overwrites what the user is typing while that run is on its way; only a real change may.
    at = _on_tradeoffs()
    at.text_input(key="tradeoff_ratios").set_value("0.3, 0.8").run()
    at.run()  # a rerun that changes nothing (a button elsewhere, a polling fragment)
    assert not at.exception
    assert not at.text_input(key="tradeoff_ratios").proto.set_value
    assert not at.number_input(key="tradeoff_ft_epochs").proto.set_value
    assert at.text_input(key="tradeoff_ratios").value == "0.3, 0.8"


def test_what_a_reloaded_tab_needs_is_resumed() -> None:
    # The literal keys in `RESUMED` are these modules' own: a rename must not drop them.
    from ui import companions_panel, dynamic_panel, prune_widgets, runtime_panel, tradeoff_panels
    from ui.state import RESUMED

    wanted = {prune_widgets._OVERRIDES, prune_widgets._OWNER, prune_widgets._NOTE,
              tradeoff_panels._KEPT, companions_panel._KEPT, dynamic_panel._KEPT,
              runtime_panel._KEPT}  # fmt: skip
    assert wanted <= set(RESUMED), sorted(wanted - set(RESUMED))


def test_a_reloaded_tab_keeps_the_per_layer_ratios_and_panel_settings() -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    at.run()
    at.switch_page("pages/3_prune.py").run()
    at.session_state["prune_overrides"] = {"fc2": 0.55}
    at.switch_page("pages/5_tradeoffs.py").run()
    at.number_input(key="tradeoff_strat_epochs").set_value(0).run()
    at.switch_page("pages/2_inspect.py").run()
    at.toggle(key="inspect_log").set_value(True).run()
    assert not at.exception
    token = at.query_params["session"]

    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["session"] = token
    again.run()
    again.switch_page("pages/2_inspect.py").run()
    assert again.toggle(key="inspect_log").value is True
    again.switch_page("pages/3_prune.py").run()
    assert not again.exception
    assert again.session_state["prune_overrides"] == {"fc2": 0.55}
    again.switch_page("pages/5_tradeoffs.py").run()
    assert again.number_input(key="tradeoff_strat_epochs").value == 0


def test_the_dynamic_and_runtime_panels_keep_their_settings() -> None:
    # Their widgets had no kept copy: a page change or a reloaded tab brought back keep 0.5,
    # image 0, the magnitude gate and every batch size.
    at = AppTest.from_file(APP, default_timeout=180).run()  # Model & data, digits-cnn
    at.multiselect(key="runtime_batches").set_value([1, 8]).run()
    at.switch_page("pages/2_inspect.py").run()
    at.radio(key="dynamic_gate").set_value("learned").run()
    at.slider(key="dynamic_keep").set_value(0.25).run()
    at.number_input(key="dynamic_image").set_value(7).run()
    assert not at.exception, at.exception
    at.switch_page("pages/1_model_and_data.py").run()
    assert at.multiselect(key="runtime_batches").value == [1, 8]
    at.switch_page("pages/2_inspect.py").run()
    assert not at.exception, at.exception
    assert at.slider(key="dynamic_keep").value == 0.25

    again = AppTest.from_file(APP, default_timeout=180)
    again.query_params["session"] = at.query_params["session"]
    again.run()
    assert not again.exception, again.exception
    assert again.multiselect(key="runtime_batches").value == [1, 8]
    again.switch_page("pages/2_inspect.py").run()
    assert not again.exception, again.exception
    assert again.radio(key="dynamic_gate").value == "learned"
    assert again.slider(key="dynamic_keep").value == 0.25
    assert again.number_input(key="dynamic_image").value == 7
