"""AppTest of the guided lesson: every step renders and measures real numbers."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _app() -> None:
    from ui.lesson import lesson_panel

    lesson_panel()


def test_a_closed_lesson_draws_nothing_inside() -> None:
    at = AppTest.from_function(_app, default_timeout=120).run()
    assert not at.exception
    # Closed (its default on Model & data): no histograms binned, no buttons.
    assert at.expander and not at.get("plotly_chart") and not at.button
    at.session_state["lesson_open"] = True  # a click on the expander
    at.run()
    assert len(at.get("plotly_chart")) == 2 and at.button(key="lesson_next")


def test_lesson_walks_through_all_steps() -> None:
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["lesson_open"] = True
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # the two weight histograms
    for step, run_key in ((1, "lesson_run_1"), (2, "lesson_run_2"), (3, "lesson_run_3")):
        at.button(key="lesson_next").click().run()
        assert at.session_state["lesson_step"] == step
        at.button(key=run_key).click().run()
        assert not at.exception, at.exception
        assert at.success, f"step {step} reported no result"
    res = at.session_state["lesson_results"]
    prune = res[1]
    at90 = prune[prune["ratio"] == 0.9].set_index("method")["accuracy"]
    assert at90["magnitude"] > at90["random"]  # the lesson's point, measured
    ft = res[2]
    rnd = ft[(ft["method"] == "random") & (ft["ratio"] == 0.9)].iloc[0]
    assert rnd["finetuned_accuracy"] > rnd["accuracy"]
    lat = res[3]
    assert {"dense", "masked", "structured"} <= set(lat[lat["status"] == "ok"]["backend"])
    at.button(key="lesson_next").click().run()
    assert at.session_state["lesson_step"] == 4 and not at.exception
    at.button(key="lesson_back").click().run()
    assert at.session_state["lesson_step"] == 3
    assert any(c.proto.id and "lesson_lat_chart" in c.proto.id for c in at.get("plotly_chart"))
