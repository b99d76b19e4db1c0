"""Helpers shared by the app tests: the whole app opened on a page, picking another model,
applying a pruning through the Prune page, Plotly charts of an AppTest run as plain dicts, and
waiting for a background job of the page."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def app_on(model_ref: str, dataset_ref: str, page: str) -> AppTest:
    """The whole app (app.py's navigation) run on `model_ref` and `dataset_ref`, then page
    `page` opened (a path such as "pages/5_tradeoffs.py")."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_ref"] = model_ref
    at.session_state["dataset_ref"] = dataset_ref
    at.run()
    at.switch_page(page).run()
    return at


def pick_model(at: AppTest, model_ref: str, then: str) -> AppTest:
    """Pick `model_ref` on Model & data as a user does (its dataset follows), then open page
    `then`.

    Returns:
        `at`, for chaining.
    """
    at.switch_page("pages/1_model_and_data.py").run()
    at.selectbox(key="model_ref").set_value(model_ref).run()
    at.switch_page(then).run()
    return at


def apply_prune(
    at: AppTest,
    *,
    granularity: str | None = None,
    ratio: float | None = None,
    then: str | None = None,
) -> AppTest:
    """Open the Prune page of the whole app `at` (already run), pick `granularity` and `ratio`
    where given (the page's defaults otherwise), click Apply, then open page `then` (a path such
    as "pages/2_inspect.py"; None: stay on Prune).

    Returns:
        `at`, for chaining.
    """
    at.switch_page("pages/3_prune.py").run()
    if granularity is not None:
        at.selectbox(key="prune_granularity").set_value(granularity).run()
    if ratio is not None:
        at.slider(key="prune_ratio").set_value(ratio).run()
    at.button(key="prune_apply").click().run()
    # Checked here: a later page switch reruns the app and would hide Apply's exception.
    assert not at.exception, at.exception
    if then is not None:
        at.switch_page(then).run()
    return at


def plain(o: Any) -> Any:
    """Plotly 6 sends numeric arrays as base64 ({"dtype", "bdata"}); decode them to lists."""
    if isinstance(o, dict):
        if "bdata" in o and "dtype" in o:
            return np.frombuffer(base64.b64decode(o["bdata"]), dtype=o["dtype"]).tolist()
        return {k: plain(v) for k, v in o.items()}
    if isinstance(o, list):
        return [plain(v) for v in o]
    return o


def find_chart(at: AppTest, key: str) -> dict[str, Any] | None:
    """The spec of the chart whose element id holds `key`, or None when none is drawn."""
    for c in at.get("plotly_chart"):
        if c.proto.id and key in c.proto.id:
            return dict(plain(json.loads(c.proto.spec)))
    return None


def wait_job(at: AppTest, slot: str, timeout: float, *, handed_over_ok: bool = False) -> None:
    """Let the background job of a `tradeoff_{slot}_*` slot finish, then rerun so the page
    picks up its result (the jobs fragment hands it over and reruns; one more run settles it).

    Args:
        handed_over_ok: A quick job may have ended, and been handed over, within the click's
            run: then a kept result stands for the job. Without it, a job must have started.
    """
    from pruning_core.jobs import get_runner

    job_id = at.session_state[f"tradeoff_{slot}_job"]
    if not job_id and handed_over_ok:
        assert at.session_state[f"tradeoff_{slot}_result"], f"no {slot} job was started"
        return
    assert job_id, f"no {slot} job was started"
    job = get_runner().get(job_id)
    assert job is not None and job.wait(timeout), f"{slot} job did not finish"
    assert job.status == "done", job.error
    at.run()
    if at.session_state[f"tradeoff_{slot}_job"]:
        at.run()
