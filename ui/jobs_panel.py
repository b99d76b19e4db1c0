"""The job panel shared by the Fine-tune and Trade-offs pages.

Long work runs in the server's one job runner (`pruning_core.jobs.get_runner`), recorded in the
run store. A page submits a job (`submit_job`), then follows it in a fragment polled every
second while it runs (`follow_job`): a progress bar with a Cancel button (`progress_and_cancel`)
and, once it ends, the outcome; the whole page then runs again so it reflects the result.

Trade-offs measurements keep their job and result in named *slots* of the session
(`tradeoff_<slot>_job`, `_for`, `_result`, `_error`, `_refused`): `start_button` (or
`start_measurement`), `measurement_panel` and `measurement_result` (the Export page reads the
same results). A finished job is handed over to its slot on whatever page the session is on
(`collect_finished`, from the sidebar), and its result stays until the user discards it or
measures again; `jobs_sidebar` lists the session's jobs on every page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.jobs import Job, JobContext, JobRunner, get_runner
from ui.state import JOB_SLOTS, remember
from ui.tradeoff_jobs import Measurement

__all__ = [
    "POLL_SECONDS",
    "SLOTS",
    "collect_finished",
    "discard_result",
    "follow_job",
    "job_runner",
    "jobs_sidebar",
    "measurement_panel",
    "measurement_result",
    "progress_and_cancel",
    "runner_or_stop",
    "start_button",
    "start_measurement",
    "submit_job",
]

POLL_SECONDS = 1.0
# The Trade-offs page's measurement slots.
SLOTS = tuple(JOB_SLOTS)


def job_runner() -> JobRunner:
    """The server's one job runner (bounded queue; `PRUNING_LAB_MAX_JOBS` run at once).

    Raises:
        UserError: An unwritable PRUNING_LAB_HOME or bad job settings of the server.
    """
    return get_runner()


def runner_or_stop() -> JobRunner:
    """The job runner; when the server cannot run jobs, says so and stops the page."""
    try:
        return job_runner()
    except UserError as e:
        st.error(f"Background jobs are not available on this server: {e}")
        st.stop()


def submit_job(
    fn: Callable[[JobContext], Any],
    *,
    name: str,
    kind: str,
    config: Mapping[str, Any],
    model_ref: str,
    dataset_ref: str,
) -> Job:
    """Queue `fn(ctx)` in the runner, recorded in the run store under `kind`.

    Raises:
        UserError: The queue is full, or the runner is not available.
    """
    return job_runner().submit(
        fn, name=name, kind=kind, record=True, model=model_ref, dataset=dataset_ref,
        config=config,
    )  # fmt: skip


def follow_job(
    job_id: str | None,
    draw: Callable[[Job | None], None],
    *,
    active: bool | None = None,
    every: float = POLL_SECONDS,
) -> None:
    """Draw a job's panel (`draw(job)`) in a fragment polled every `every` seconds while the job
    runs; when a job that was running ends, the whole page runs again (its Start button and
    results follow the new state).

    Args:
        job_id: The job (None or unknown: `draw(None)` once).
        draw: Draws the panel; called on every poll.
        active: Whether the page drew itself with the job running (default: running now).
        every: Seconds between polls.
    """
    runner = job_runner()
    if active is None:
        job = runner.get(job_id) if job_id else None
        active = job is not None and not job.is_finished
    was_active = active

    def panel() -> None:
        current = runner.get(job_id) if job_id else None
        draw(current)
        if was_active and current is not None and current.is_finished:
            st.rerun()

    st.fragment(run_every=every if was_active else None)(panel)()


def progress_and_cancel(
    job: Job, progress: float, text: str, *, key: str, help: str | None = None
) -> None:
    """A progress bar and, while the job runs, a Cancel button (stops within one batch)."""
    st.progress(min(max(float(progress), 0.0), 1.0), text=text)
    if not job.is_finished and st.button("Cancel", key=key, help=help):
        job.cancel()  # the next poll shows the job cancelling, then its outcome


# --- Trade-offs measurement slots -----------------------------------------------------------


def _key(slot: str, what: str) -> str:
    return f"tradeoff_{slot}_{what}"


def start_measurement(slot: str, measurement: Measurement, selection: tuple[str, str]) -> None:
    """Queue a measurement under `slot`; `measurement_panel(slot)` follows it. A refusal (a
    full queue) is kept in the slot and shown by the panel.

    Args:
        slot: `sweep`, `latency`, `sensitivity`...: where the job and result are kept.
        measurement: The job (`ui.tradeoff_jobs`); the run store's kind defaults to `slot`.
        selection: The (model, dataset) it measures.
    """
    m = measurement
    try:
        job = submit_job(
            m.fn, name=m.name, kind=m.kind or slot, config=m.config, model_ref=selection[0],
            dataset_ref=selection[1],
        )  # fmt: skip
    except UserError as e:
        st.session_state[_key(slot, "refused")] = str(e)
        return
    st.session_state[_key(slot, "job")] = job.id
    st.session_state[_key(slot, "for")] = tuple(selection)
    st.session_state[_key(slot, "error")] = None
    st.session_state[_key(slot, "refused")] = None
    remember()


def start_button(
    label: str,
    slot: str,
    build: Callable[[], Measurement],
    selection: tuple[str, str],
    *,
    key: str,
    help: str | None = None,
) -> None:
    """A button that queues `build()` under `slot`.

    The job is queued in the button's callback, which Streamlit runs before the next script
    run: queued from the page body instead, a click followed at once by a page change was lost,
    since the change cut the run short before it reached the button.

    Args:
        label: The button's text.
        slot: Where the job and its result are kept.
        build: Makes the job from the settings in session state when the button is clicked;
            a `UserError` (ratios that do not parse...) is kept in the slot and shown.
        selection: The (model, dataset) it measures.
        key: The button's key.
        help: The button's tooltip.
    """
    st.button(
        label, key=key, type="primary", help=help, on_click=_start_clicked,
        args=(slot, build, tuple(selection)),
    )  # fmt: skip


def _start_clicked(slot: str, build: Callable[[], Measurement], selection: tuple[str, str]) -> None:
    try:
        measurement = build()
    except UserError as e:
        st.session_state[_key(slot, "refused")] = str(e)
        return
    start_measurement(slot, measurement, selection)


def discard_result(slot: str) -> None:
    """Forget the kept result of `slot` (and why the last one did not finish)."""
    for what in ("result", "error", "refused"):
        st.session_state.pop(_key(slot, what), None)
    remember()


def collect_finished() -> None:
    """Hand this session's finished measurements over to their slots, on whatever page it is.

    The runner forgets old finished jobs, so a result is taken as soon as any page runs after
    its job ends; a job the runner no longer knows (the server restarted) is said so.
    """
    try:
        runner = job_runner()
    except UserError:
        return
    for slot in SLOTS:
        job_id = st.session_state.get(_key(slot, "job"))
        if not isinstance(job_id, str):
            continue
        job = runner.get(job_id)
        if job is None:
            st.session_state[_key(slot, "job")] = None
            st.session_state[_key(slot, "error")] = "the job is no longer known to this server"
        elif job.is_finished:
            _hand_over(slot, job, _measured(slot))


def _measured(slot: str) -> tuple[str, str]:
    """The (model, dataset) the slot's job measures (the current selection for a job queued
    before this was recorded)."""
    sel = st.session_state.get(_key(slot, "for"))
    if isinstance(sel, tuple) and len(sel) == 2:
        return (str(sel[0]), str(sel[1]))
    return (str(st.session_state.get("model_ref")), str(st.session_state.get("dataset_ref")))


def jobs_sidebar(every: float = 2.0) -> None:
    """This session's jobs in the sidebar of every page: what runs or waits, and which results
    are kept, so leaving a page while a job runs never looks like losing it. Polled every
    `every` seconds while one runs; when the last one ends the page runs again to show it."""
    try:
        runner = job_runner()
    except UserError:
        return  # the pages that run jobs say why

    def jobs() -> list[tuple[str, Job]]:
        ids = [(s.capitalize(), st.session_state.get(_key(s, "job"))) for s in SLOTS]
        ids.append(("Fine-tune", st.session_state.get("ft_job_id")))
        found = [(name, runner.get(i)) for name, i in ids if isinstance(i, str)]
        return [(name, job) for name, job in found if job is not None]

    was_running = any(not job.is_finished for _, job in jobs())

    def panel() -> None:
        collect_finished()
        lines, running = [], False
        for name, job in jobs():
            snap = job.snapshot()
            running = running or not job.is_finished
            lines.append(f"{name}: {snap['status']}, {float(snap['progress']):.0%}")
        for slot in SLOTS:
            if st.session_state.get(_key(slot, "job")) is None and isinstance(
                st.session_state.get(_key(slot, "result")), dict
            ):
                lines.append(f"{slot.capitalize()}: result kept ({JOB_SLOTS[slot]})")
        if lines:
            st.caption("Your jobs  \n" + "  \n".join(lines))
        if was_running and not running:
            st.rerun()

    st.fragment(run_every=every if was_running else None)(panel)()


def measurement_result(slot: str, selection: tuple[str, str]) -> dict[str, Any] | None:
    """This session's latest finished result of `slot` for this (model, dataset), or None.

    Returns:
        `df` (the measured frame), `attrs`, `cancelled`, `seconds`, `run_id`, `selection`.
    """
    collect_finished()
    res = st.session_state.get(_key(slot, "result"))
    if isinstance(res, dict) and res.get("selection") == selection:
        return res
    return None


def _hand_over(slot: str, job: Job, selection: tuple[str, str]) -> None:
    """Keep a finished job's outcome in the slot (its frame, or why there is none); the slot's
    previous result stays when the job brought none."""
    snap = job.snapshot()
    st.session_state[_key(slot, "job")] = None
    if snap["status"] == "failed":
        st.session_state[_key(slot, "error")] = snap["error"]
    elif snap["status"] == "cancelled" and not isinstance(job.result, dict):
        st.session_state[_key(slot, "error")] = f"cancelled ({snap['error']}), no results"
    elif isinstance(job.result, dict) and "frame" in job.result:
        st.session_state[_key(slot, "result")] = {
            "selection": selection,
            "df": pd.DataFrame(job.result["frame"]),
            "attrs": job.result.get("attrs", {}),
            "cancelled": snap["status"] == "cancelled",
            "seconds": snap["elapsed"],
            "run_id": job.run_id,
        }
        st.session_state[_key(slot, "error")] = None
    remember()


def measurement_panel(slot: str, selection: tuple[str, str]) -> None:
    """Show the job of `slot` while it runs (polled), then keep its outcome and say if it
    did not finish."""
    job_id = st.session_state.get(_key(slot, "job"))
    try:
        job_runner()
    except UserError as e:
        st.error(f"Background jobs are not available on this server: {e}")
        return

    def draw(job: Job | None) -> None:
        if job is None:
            return
        if job.is_finished:
            _hand_over(slot, job, _measured(slot))
            st.rerun()
        snap = job.snapshot()
        where = (
            f"queued, position {snap['queue_position']}"
            if snap["status"] == "queued"
            else snap["message"] or "running"
        )
        text = f"{job.name}: {where} ({snap['elapsed']:.0f} s)"
        progress_and_cancel(job, snap["progress"], text, key=f"tradeoff_cancel_{slot}")

    follow_job(job_id if isinstance(job_id, str) else None, draw)
    refused = st.session_state.get(_key(slot, "refused"))
    if refused:
        st.error(f"Not started: {refused}")
    if measurement_result(slot, selection) is not None and not isinstance(job_id, str):
        st.button(
            "Discard this result", key=f"tradeoff_discard_{slot}", on_click=discard_result,
            args=(slot,), help="Results are kept (on every page) until you discard them or "
            "measure again.",
        )  # fmt: skip
    err = st.session_state.get(_key(slot, "error"))
    if err and str(err).startswith("cancelled"):
        st.info(f"Measurement {err}.")  # the user's own choice, not a failure
    elif err:
        st.error(f"The measurement did not finish: {err}")
