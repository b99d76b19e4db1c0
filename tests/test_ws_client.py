"""The load test's websocket student (benchmarks/ws_client.py) against the served app: one
student opens the app, goes to Prune and moves the global slider once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.ws_client import SETTLED, AppClient, run_sync


def test_only_loopback_addresses_are_accepted() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
        AppClient("http://192.168.0.10:8501")


async def _one_move(url: str) -> dict[str, Any]:
    # Straight to the Prune page (a browser opening /prune): the first page's latency
    # measurement is not what this test is about.
    async with AppClient(url, timeout=40, path="prune") as app:
        assert app.page_load is not None
        page_load = app.page_load.timings()["finished"]
        title = app.title()
        before = app.metric("Remaining params")
        value = app.slider_value("prune_ratio")
        run = await app.set_slider("prune_ratio", round(value + 0.05, 2))
        return {
            "page_load": page_load,
            "title": title,
            "before": before,
            "after": app.metric("Remaining params"),
            "timings": run.timings(),
            "status": run.status,
            "errors": app.errors() + app.protocol_errors,
        }


@pytest.mark.timeout(120)
def test_a_ws_student_moves_the_prune_slider(serve_app: Callable[[float], str]) -> None:
    out = run_sync(asyncio.wait_for(_one_move(serve_app(45)), 50))
    t = out["timings"]
    assert out["title"] == "Prune"
    assert out["page_load"] is not None and out["page_load"] > 0
    # The server answered the move with a settled script_finished, and the preview changed.
    assert out["status"] in SETTLED
    assert t["redrawn"] is not None and 0 < t["redrawn"] <= t["finished"]
    assert out["after"] is not None and out["after"] != out["before"]
    assert out["errors"] == []
