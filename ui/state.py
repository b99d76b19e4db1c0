"""Session state: one place for the keys every page reads, initialised idempotently.

Every page calls `init_state()` first, so a page also works when run on its own (Streamlit's
AppTest runs files in `pages/` without app.py).

A reconnect keeps the Streamlit session, but reloading the tab starts a new one. So the URL
carries a random token (`?session=...`) and the server keeps, for a while, what that token's
session last had (`RESUMED`: selection, settings, applied model, its jobs and their results);
a new session opened with the token starts from there.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType
from streamlit.runtime.scriptrunner_utils.script_run_context import (
    ThreadState,
    get_script_run_ctx,
)

from pruning_core.criteria import Magnitude, Random
from pruning_core.errors import UserError
from pruning_core.jobs import DEFAULT_PAGE_THREADS, use_page_threads
from pruning_core.prune import PruneConfig
from pruning_core.recipe import DISTILL_WEIGHT
from pruning_core.regularize import NO_REGULARIZER
from pruning_core.train import DEFAULT_FINETUNE

_T = TypeVar("_T")
# The engine's defaults are the app's: one place says what a fresh session prunes with, and
# one what it fine-tunes with (the CLI and the Trade-offs sweeps start from the same).
_PRUNE = PruneConfig()
_FT = DEFAULT_FINETUNE

DEFAULTS: dict[str, Any] = {
    "model_ref": "digits-cnn",
    "dataset_ref": "digits",
    # --- Inspect, Prune, Fine-tune (A1) ---
    "inspect_layer": None,
    "inspect_log": False,
    "prune_method": _PRUNE.method,
    "prune_granularity": _PRUNE.granularity,
    "prune_scope": _PRUNE.scope,
    "prune_ratio": _PRUNE.ratio,
    "prune_layer": None,
    "prune_estimate": True,
    "prune_estimate_n": 500,
    "prune_bn_recal": _PRUNE.recalibrate_bn,
    "budget_quantity": "macs",
    "budget_relative": True,
    "budget_share": 0.5,
    "budget_amount": 1.0,
    "budget_batch": 32,
    "budget_threads": 1,
    "ft_schedule": "oneshot",
    "ft_steps": 3,
    "ft_epochs": _FT.epochs,
    "ft_lr": _FT.lr,
    "ft_optimizer": _FT.optimizer,
    "ft_distill": _FT.distill_weight > 0,
    "ft_distill_weight": _FT.distill_weight or DISTILL_WEIGHT,
    "ft_temperature": _FT.distill_temperature,
    "ft_keep_best": _FT.keep_best,
    "ft_reg": NO_REGULARIZER,
    "ft_reg_strength": 0.0001,
    # --- Trade-offs, Export, uploads, lesson (A2) ---
    "tradeoff_methods": [Magnitude.name, Random.name],
    "tradeoff_granularity": _PRUNE.granularity,
    "tradeoff_ratios": "0.5, 0.7, 0.9",
    "tradeoff_ft_epochs": _FT.epochs,
    "tradeoff_lat_batch": 32,
    # One thread by default: timings on a shared machine are far steadier.
    "tradeoff_lat_threads": 1,
    "tradeoff_lat_ratios": "0.5, 0.7, 0.9, 0.95",
    "tradeoff_sens_method": _PRUNE.method,
    "tradeoff_sens_ratios": "0.25, 0.5, 0.75, 0.9",
    "tradeoff_compare": [],
    "tradeoff_sweep_job": None,
    "tradeoff_latency_job": None,
    "tradeoff_sensitivity_job": None,
    "export_recipe_format": "json",
    "export_quant_mode": "static",
    "export_onnx": None,
    "export_report": None,
    "export_upload_arch": None,
    "lesson_step": 0,
}


# Widget keys whose values must survive a visit to a page that does not draw the widget. Each
# such widget is drawn with `persist_state="session"`: Streamlit then keeps its value while
# other pages run, fragment runs included (without it, model, dataset and settings fell back to
# their defaults after leaving Trade-offs while a sweep ran; a test checks every one passes it).
# `init_state` also copies the values under `_KEPT`, a plain key no widget owns, which a
# reloaded tab takes over (`RESUMED`) and which brings back a value Streamlit lost. It never
# re-assigns a drawn widget's key on every run: Streamlit sends a value set from code to the
# browser as the widget's new value, which overwrote what a user typed while a run was on its
# way (the Trade-offs epochs went back to 1 under load).
KEEP: tuple[str, ...] = (
    "model_ref",
    "dataset_ref",
    "inspect_layer",
    "inspect_log",
    "prune_method",
    "prune_granularity",
    "prune_scope",
    "prune_ratio",
    "prune_layer",
    "prune_estimate",
    "prune_estimate_n",
    "prune_bn_recal",
    "budget_quantity",
    "budget_relative",
    "budget_share",
    "budget_amount",
    "budget_batch",
    "budget_threads",
    "ft_schedule",
    "ft_steps",
    "ft_epochs",
    "ft_lr",
    "ft_optimizer",
    "ft_distill",
    "ft_distill_weight",
    "ft_temperature",
    "ft_keep_best",
    "ft_reg",
    "ft_reg_strength",
    "tradeoff_methods",
    "tradeoff_granularity",
    "tradeoff_ratios",
    "tradeoff_ft_epochs",
    "tradeoff_lat_batch",
    "tradeoff_lat_threads",
    "tradeoff_lat_ratios",
    "tradeoff_sens_method",
    "tradeoff_sens_ratios",
    "tradeoff_compare",
    "export_recipe_format",
    "export_quant_mode",
)
_KEPT = "_kept_settings"


# Plain keys a reloaded tab takes over besides `KEEP` (the fine-tune job's bookkeeping is
# `ui.actions`' `_ft_jobs`: its finished model becomes the session's once the page shows it).
# The background-job slots of `ui.jobs_panel` (one job and its kept result each) and the page
# that shows each result.
JOB_SLOTS: dict[str, str] = {
    "sweep": "Trade-offs",
    "latency": "Trade-offs",
    "sensitivity": "Trade-offs",
    "strategies": "Trade-offs",
    "perclass": "Trade-offs",
    "companions": "Trade-offs",
    "quantize": "Export",
}
RESUMED: tuple[str, ...] = (
    "prune_committed",
    "ft_job_id",
    "_ft_jobs",
    # The Prune page's per-layer ratios and what they were set for (`ui.prune_widgets`): the
    # applied model may have been built from them.
    "prune_overrides",
    "_prune_overrides_for",
    "prune_suggestion_note",
    # The settings kept by `keep_settings` (the strategies, companions, dynamic-pruning and
    # runtime panels).
    "_tradeoff_strategy_settings",
    "_tradeoff_companions_settings",
    "_inspect_dynamic_settings",
    "_model_runtime_settings",
    *(f"tradeoff_{slot}_{what}" for slot in JOB_SLOTS
      for what in ("job", "for", "result", "error")),
)  # fmt: skip
_PARAM = "session"
_TOKEN = "_resume_token"


class _Resumable:
    """What each token's session last had, for `size` tokens and `ttl` seconds at most (it
    holds the applied models of closed tabs, so it is bounded)."""

    def __init__(self, size: int = 64, ttl: float = 2 * 3600.0) -> None:
        self.size, self.ttl = size, ttl
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def put(self, token: str, values: dict[str, Any]) -> None:
        with self._lock:
            self._items[token] = (time.monotonic(), values)
            self._items.move_to_end(token)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._items.get(token)
            if hit is None or time.monotonic() - hit[0] > self.ttl:
                self._items.pop(token, None)
                return None
            return dict(hit[1])


@st.cache_resource(show_spinner=False)
def _resumable() -> _Resumable:
    """The server's one `_Resumable`, shared by every session."""
    return _Resumable()


def _resume(kept: dict[str, Any]) -> str:
    """This session's token; a new session opened with a known token takes over its state."""
    token = st.session_state.get(_TOKEN)
    if not isinstance(token, str):
        asked = st.query_params.get(_PARAM)
        saved = _resumable().get(asked) if asked else None
        if saved is not None and isinstance(asked, str):
            token = asked
            kept.update(saved.pop(_KEPT, {}))
            for key, value in saved.items():
                # Copies of the containers: a duplicated tab must not edit this one's.
                st.session_state[key] = dict(value) if isinstance(value, dict) else value
        else:
            token = secrets.token_urlsafe(12)
        st.session_state[_TOKEN] = token
    if st.query_params.get(_PARAM) != token:
        st.query_params[_PARAM] = token
    return token


def leave_pages_folder_mode(*, restart: bool = True) -> None:
    """Leave Streamlit's `pages/`-folder mode, in which it ran this run.

    Streamlit finds the `pages/` folder beside app.py when the server starts and runs the
    server's first script run in that mode: a first visit by link to /prune runs
    pages/3_prune.py alone, without app.py, under a navigation made of the file names ("app",
    "model and data", ...); only `st.navigation` turns the mode off, for the whole server.
    `.streamlit/config.toml` hides that navigation (`client.showSidebarNavigation = false`).
    The first time in the server, the option is turned back on for app.py's own navigation
    (a client option a script may set; Streamlit reads it when a run starts) and a page run
    alone (`restart`, what `init_state` asks) starts again, through app.py, on the page asked
    for; app.py itself, run as that mode's main page, calls this with `restart=False` and goes
    on. AppTest enters the mode on every run: after the first, the mode is only left, never
    restarted (a restart would drop the run's button clicks).

    Streamlit re-reads config.toml whenever it changes while the server runs (a `git pull`, a
    teacher's edit; it watches the file even with the file watcher off), which puts the option
    back to the file's False: the page links vanished from every tab until a restart. The
    first run after that turns it on again and, like the first time, starts again so its own
    tab shows them too.
    """
    PagesManager.uses_pages_directory = False
    # config.toml's False: the first time in the server, or the file re-read since.
    if st.get_option("client.showSidebarNavigation") is False:
        st.set_option("client.showSidebarNavigation", True)
        if restart:
            st.rerun()


def init_state() -> None:
    """Set every default key that is missing (from `_KEPT` where a value was lost) and copy the
    values of `KEEP` there (safe to call on every run, and many times in one); a reloaded tab
    takes over its last state.
    Every page calls this first, so it also gives the script run (a thread of its own) the
    server's page thread count (`pruning_core.jobs.use_page_threads`), and the server's first
    run, if Streamlit ran a page alone, starts again through app.py
    (`leave_pages_folder_mode`)."""
    leave_pages_folder_mode()
    try:
        use_page_threads()
    except UserError:  # a bad PRUNING_LAB_PAGE_THREADS: the default (the jobs page names it)
        use_page_threads(DEFAULT_PAGE_THREADS)
    kept = st.session_state.get(_KEPT)
    if not isinstance(kept, dict):
        kept = st.session_state[_KEPT] = {}
    token = _resume(kept)
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = kept.get(key, value)
    for key in KEEP:
        try:
            kept[key] = st.session_state[key]
        except KeyError:  # a widget state Streamlit lists but can no longer read
            kept.setdefault(key, DEFAULTS[key])
    remember(token)


def remember(token: str | None = None) -> None:
    """Keep what a reloaded tab takes over (`init_state` does on every run; the actions that
    change the applied model or a job call it too, so a reload right after them finds it)."""
    token = token or st.session_state.get(_TOKEN)
    kept = st.session_state.get(_KEPT)
    if not isinstance(token, str) or not isinstance(kept, dict):
        return
    saved = {key: st.session_state[key] for key in RESUMED if key in st.session_state}
    _resumable().put(token, {**saved, _KEPT: dict(kept)})


def keep(*keys: str) -> None:
    """Hold the current values of these `KEEP` widgets, as `init_state` does, from an
    `st.fragment` run (which runs no page script, so no `init_state`): the kept copy that
    `init_state` brings back when Streamlit drops a widget's value is then never older than
    what the widget last showed."""
    kept = st.session_state.get(_KEPT)
    if not isinstance(kept, dict):
        return
    for key in keys:
        if key in st.session_state:
            kept[key] = st.session_state[key]
    remember()


def restore_settings(store: str, defaults: Mapping[str, Any]) -> None:
    """Before a panel draws its widgets: each of `defaults`' keys missing from the session
    takes the value last kept under `store` (`keep_settings`), else its default. For panels
    with settings of their own besides `KEEP` (only set when missing: no value is pushed to a
    drawn widget, see `KEEP`)."""
    kept = st.session_state.setdefault(store, {})
    for key, default in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = kept.get(key, default)


def keep_settings(store: str, keys: Iterable[str]) -> None:
    """After a panel drew its widgets: keep their values under `store` for `restore_settings`."""
    kept = st.session_state.setdefault(store, {})
    for key in keys:
        if key in st.session_state:
            kept[key] = st.session_state[key]


def newer_run_waiting() -> bool:
    """True when the browser has already asked for a run that replaces this one's output: a
    rerun of the whole page, or of the fragment this code runs in (the user moved a slider
    again while this run computes).

    A whole-page request stops this run at its next Streamlit call anyway; a request for the
    same fragment does not (Streamlit lets a fragment run finish), so a fragment can skip work
    whose result the next run redraws at once. A request for another fragment only (the jobs
    panel's timer) does not count. Reads Streamlit's pending request without its lock, as its
    own run loop does; False when there is no run context (a plain call, a thread) or
    Streamlit's internals differ.
    """
    ctx = get_script_run_ctx(suppress_warning=True)
    requests = getattr(ctx, "script_requests", None)
    if getattr(requests, "_state", None) is not ScriptRequestType.RERUN:
        return False
    queued = getattr(getattr(requests, "_rerun_data", None), "fragment_id_queue", None)
    if not isinstance(queued, list):
        return False
    if not queued:  # no fragment named: the whole page reruns
        return True
    try:
        return ThreadState.get().fragment_id in queued
    except RuntimeError:  # a thread Streamlit never set up
        return False


def yield_to_newer_run() -> None:
    """End this fragment run now when the user has already asked for the next one (the slider
    moved again while this run computes), so the next position is drawn without waiting for
    this one's preview and charts (under a class's load that wait was the slider's p95).

    `st.rerun(scope="fragment")` joins the waiting request, which keeps its widget values (the
    newest), and Streamlit starts it at once; a run stopped for a rerun clears nothing, so the
    page keeps showing this run's elements until the next run redraws them. A whole-page run
    needs nothing: Streamlit stops it at its next call by itself.
    """
    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or not getattr(ctx, "fragment_ids_this_run", None):
        return
    if newer_run_waiting():
        st.rerun(scope="fragment")


class Lane:
    """Work that one session of the server does at a time (the slider's accuracy estimate),
    with the count of sessions waiting for their turn.

    Sessions run in threads of one process on a few cores: many forward passes at once only
    slow each other and every session's redraws. In one lane they go one after the other, and
    a holder that sees others waiting can stop early (the estimate keeps its first step).

    While sessions queue, the lane also rests after each turn for `rest` times as long as the
    turn took, so estimates take at most 1 / (1 + rest) of one core's time and the redraws of
    a busy class get the rest (30 students: the estimates' back-to-back forward passes held
    one of the two cores). A lone user never waits for a rest.

    Args:
        rest: Rest after a turn, as a multiple of the turn's time, when others wait (>= 0).
        clock: Time source (seconds), replaceable in tests.
    """

    def __init__(self, rest: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rest = max(0.0, float(rest))
        self._clock = clock
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0
        self._open_at = 0.0

    @property
    def waiting(self) -> int:
        """Sessions waiting for the lane now."""
        return self._waiting

    @contextmanager
    def turn(self, give_up: Callable[[], bool], poll_s: float = 0.05) -> Iterator[bool]:
        """Wait for the lane (and its rest); yields True while holding it, False when
        `give_up()` turned True first (checked every `poll_s` seconds: the user moved on)."""
        with self._count:
            self._waiting += 1
        got = False
        try:
            while not got and not give_up():
                got = self._lock.acquire(timeout=poll_s)
                while got and (wait := self._open_at - self._clock()) > 0:
                    if give_up():
                        self._lock.release()
                        got = False
                        break
                    time.sleep(min(wait, poll_s))
                if not got and give_up():
                    break
        finally:
            with self._count:
                self._waiting -= 1
        start = self._clock()
        try:
            yield got
        finally:
            if got:
                with self._count:
                    if self._waiting > 0:
                        self._open_at = self._clock() + (self._clock() - start) * self.rest
                self._lock.release()


@st.cache_resource(show_spinner=False)
def estimate_lane() -> Lane:
    """The server's lane for the Prune page's accuracy estimates (one at a time)."""
    return Lane()


def selection() -> tuple[str, str]:
    """The (model, dataset) the user picked."""
    init_state()
    return st.session_state["model_ref"], st.session_state["dataset_ref"]


def session_cached(key: str, token: Any, make: Callable[[], _T]) -> _T:
    """`make()` once per `token` in this session: a one-entry cache under `key`.

    The stale entry is dropped before `make()` runs, so a session holds one value at a time
    (one model copy for the Prune preview, not two).
    """
    hit = st.session_state.get(key)
    if isinstance(hit, tuple) and len(hit) == 2 and hit[0] == token:
        return hit[1]
    st.session_state.pop(key, None)
    value = make()
    st.session_state[key] = (token, value)
    return value
