"""The Prune page's sliders and live preview are an `st.fragment`, against the served app (the
load test's websocket student; AppTest reruns whole pages and cannot show it): a slider move
reruns the fragment only, and its value survives a page change that follows at once."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests
from streamlit.runtime.scriptrunner_utils.script_run_context import ThreadState

import ui.state
from benchmarks.ws_client import FRAGMENT_OK, AppClient, run_sync
from ui.state import newer_run_waiting, yield_to_newer_run


def _waiting(
    monkeypatch: pytest.MonkeyPatch, requests: ScriptRequests | None, fragment: str | None
) -> bool:
    """`newer_run_waiting()` in a run whose pending requests are `requests`, inside fragment
    `fragment` (None: outside any)."""
    ctx = SimpleNamespace(script_requests=requests)
    monkeypatch.setattr(ui.state, "get_script_run_ctx", lambda **_: ctx)

    def in_run() -> bool:
        ThreadState.initialize(fragment_id=fragment)  # as a script run's start does
        return newer_run_waiting()

    return contextvars.copy_context().run(in_run)


def test_newer_run_waiting_counts_this_fragment_or_the_whole_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not newer_run_waiting()  # no script run at all (a plain call)
    assert not _waiting(monkeypatch, None, "f1")
    requests = ScriptRequests()
    assert not _waiting(monkeypatch, requests, "f1")  # nothing asked for since this run began
    # The user moved a slider of this fragment again: its rerun waits behind this run.
    requests.request_rerun(RerunData(fragment_id="f1"))
    assert _waiting(monkeypatch, requests, "f1")
    # Only another fragment's timer (the jobs panel's) is waiting: this one's work is wanted.
    other = ScriptRequests()
    other.request_rerun(RerunData(fragment_id="jobs", is_auto_rerun=True))
    assert not _waiting(monkeypatch, other, "f1")
    assert not _waiting(monkeypatch, other, None)
    # Both, coalesced into one request: this fragment is among those waiting.
    other.request_rerun(RerunData(fragment_id="f1"))
    assert _waiting(monkeypatch, other, "f1")
    # A whole-page rerun replaces everything, fragment or not.
    page = ScriptRequests()
    page.request_rerun(RerunData())
    assert _waiting(monkeypatch, page, "f1") and _waiting(monkeypatch, page, None)


def test_a_fragment_run_yields_to_the_newer_move_a_page_run_is_left_to_streamlit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reruns: list[str] = []

    class RerunError(Exception):
        pass

    def rerun(scope: str = "app") -> None:
        reruns.append(scope)
        raise RerunError  # as st.rerun ends the run

    monkeypatch.setattr(ui.state.st, "rerun", rerun)

    def call(requests: ScriptRequests, fragments: list[str] | None) -> bool:
        ctx = SimpleNamespace(script_requests=requests, fragment_ids_this_run=fragments)
        monkeypatch.setattr(ui.state, "get_script_run_ctx", lambda **_: ctx)

        def in_run() -> bool:
            ThreadState.initialize(fragment_id="f1" if fragments else None)
            try:
                yield_to_newer_run()
            except RerunError:
                return True
            return False

        return contextvars.copy_context().run(in_run)

    idle = ScriptRequests()
    assert not call(idle, ["f1"]) and reruns == []  # nothing newer: the run goes on
    moved = ScriptRequests()
    moved.request_rerun(RerunData(fragment_id="f1"))  # the slider moved again meanwhile
    assert call(moved, ["f1"]) and reruns == ["fragment"]  # joins it, scoped to the fragment
    # In a whole-page run Streamlit stops at the next call by itself (and a fragment-scoped
    # rerun is not allowed there).
    page = ScriptRequests()
    page.request_rerun(RerunData())
    assert not call(page, None) and reruns == ["fragment"]


async def _move_then_leave(url: str) -> dict[str, Any]:
    async with AppClient(url, timeout=60, path="prune") as app:
        before = app.metric("Remaining params")
        value = app.slider_value("prune_ratio")
        move = await app.set_slider("prune_ratio", round(value + 0.2, 2))
        after = app.metric("Remaining params")
        await app.goto("Model & data")
        back = await app.goto("Prune")
        return {
            "before": before,
            "after": after,
            "move": move,
            "kinds": [d.kind for d in move.deltas],
            "headings": [d.label for d in move.deltas if d.kind == "heading"],
            "back": app.metric("Remaining params"),
            "back_status": back.status,
            "errors": app.errors() + app.protocol_errors,
        }


@pytest.mark.timeout(240)
def test_a_slider_move_reruns_the_fragment_and_survives_a_page_change(
    serve_app: Callable[[float], str],
) -> None:
    out = run_sync(asyncio.wait_for(_move_then_leave(serve_app(90)), 200))
    move = out["move"]
    # The move ran the fragment alone: Streamlit's own status for it, and none of the page's
    # elements outside the fragment (its title, the scope's radio) were sent again.
    assert move.status == FRAGMENT_OK
    assert move.fragment_id
    assert "radio" not in out["kinds"]
    assert not any(h.startswith("Prune") for h in out["headings"])
    assert any(h.startswith("Live preview") for h in out["headings"])
    assert "slider" in out["kinds"] and "plotly_chart" in out["kinds"]
    assert out["after"] is not None and out["after"] != out["before"]
    # Back on Prune after a page change: the moved ratio, not the one of the last full run.
    assert out["back"] == out["after"]
    assert out["errors"] == []
