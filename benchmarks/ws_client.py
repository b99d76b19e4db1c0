"""A simulated student that speaks Streamlit's own websocket protocol: no browser.

The load test's browser students (Playwright + headless Chromium) cost a Chromium renderer each;
on a 2-core machine 30 of them take the cores from the server being measured. This client does
what the browser's Streamlit frontend does on the wire, from Python, at a few MiB and a few ms of
CPU per rerun:

- connect to `ws://127.0.0.1:PORT/_stcore/stream` (subprotocol "streamlit"; no Origin header, so
  Streamlit's same-origin and XSRF checks do not apply) and send `BackMsg.rerun_script`, a
  `ClientState`: the page's script hash (taken from the `navigation` message's app pages), the
  widget states (`WidgetStates`: a slider is `double_array_value`, a select box the option's
  label as `string_value`, a number input `double_value`, a button `trigger_value` for one run),
  the fragment id for a widget drawn inside an `st.fragment`, and the hashes of the large
  messages it already holds (Streamlit then sends a `ref_hash` instead, as to a browser);
- read `ForwardMsg`s: `new_session` starts a script run (its `metadata.run` names the run and the
  fragments it reruns), `delta`s draw elements at their `metadata.delta_path`, `script_finished`
  ends the run; `auto_rerun` asks for a fragment rerun every N s (the jobs panels), honoured in
  `AppClient.follow`.

It keeps the page as the browser would: the last element drawn at every path; after a run
settles, the elements that run did not draw are dropped (a fragment's run drops only its own).
Widgets are found by their user key (Streamlit's element ids end in `-<key>`).

A run is *settled* when its `script_finished` says FINISHED_SUCCESSFULLY (0),
FINISHED_WITH_COMPILE_ERROR (1, counted as an error too) or FINISHED_FRAGMENT_RUN_SUCCESSFULLY
(3, a run of an `st.fragment` only); FINISHED_EARLY_FOR_RERUN (2: `st.rerun()` or a newer request)
means the next run continues it. Timings are `time.perf_counter()` ms from the moment the request
was sent (for a page load, from the moment the connection was opened).

**Redrawn preview** (Prune page): the time the last of the preview's elements arrived: the
"Remaining params", "Effective MACs / image" and "Sparsity" metrics and the charts keyed
`PREVIEW_CHART_KEYS` (any Plotly chart of the run when none of those keys is drawn). That is when
the browser holds everything it needs to draw the new preview; the browser's own drawing (tens
of ms on an idle machine, see the Playwright phases in benchmarks/results.md) is not included.
The accuracy estimate that follows is timed apart (`estimate`, `estimate_final`).

Only 127.0.0.1 (or localhost) is accepted as the server's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

__all__ = [
    "PREVIEW_CHART_KEYS",
    "PREVIEW_METRICS",
    "SETTLED",
    "AppClient",
    "Drawn",
    "ProtocolError",
    "Run",
    "job_state",
    "run_sync",
]

FINISHED_OK = ForwardMsg.FINISHED_SUCCESSFULLY  # 0
COMPILE_ERROR = ForwardMsg.FINISHED_WITH_COMPILE_ERROR  # 1
EARLY_FOR_RERUN = ForwardMsg.FINISHED_EARLY_FOR_RERUN  # 2
FRAGMENT_OK = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY  # 3
SETTLED = frozenset({FINISHED_OK, COMPILE_ERROR, FRAGMENT_OK})

PREVIEW_METRICS = ("Remaining params", "Effective MACs", "Sparsity")
PREVIEW_CHART_KEYS = ("prune_layer_chart", "prune_hist_chart", "prune_mask_chart")
ESTIMATE_RE = re.compile(r"^Accuracy (estimate|on )")
CAPTION_RE = re.compile(r"Preview computed in (\d+) ms(?: \+ (\d+) ms for the estimate)?")
IMAGES_RE = re.compile(r"(?:\(|on )([\d,]+) val images")
POSITION_RE = re.compile(r"position (\d+)")
# Large messages kept to answer `ref_hash` references (a browser keeps them too); bounded.
CACHE_KEPT = 300
ALERT_FORMATS = {1: "error", 2: "warning", 3: "info", 4: "success"}
_ID_KEY = re.compile(r"^\$\$ID-[0-9a-f]+-(.*)$", re.S)


class ProtocolError(Exception):
    """The connection closed, the server refused a request, or a run did not settle in time."""


@dataclass
class Drawn:
    """One element as last drawn at its path.

    Attributes:
        kind: The element's type (`metric`, `slider`, `plotly_chart`...), or `block`.
        proto: The element's own message (e.g. a `Metric`), None for a block.
        fragment_id: The fragment that drew it ("" outside fragments).
        run_id: The script run that drew it.
    """

    kind: str
    proto: Any
    fragment_id: str
    run_id: str

    @property
    def id(self) -> str:
        """The element's id ("" for elements without one)."""
        return str(getattr(self.proto, "id", "") or "")

    @property
    def key(self) -> str:
        """The user key in the element's id ("" without one)."""
        m = _ID_KEY.match(self.id)
        return m.group(1) if m else ""

    def text(self) -> str:
        """What the element says, on one line (label and value for a metric)."""
        p = self.proto
        if p is None:
            return ""
        if self.kind == "metric":
            return f"{p.label} = {p.body}"
        if self.kind == "exception":
            return f"{p.type}: {p.message}"
        for name in ("body", "label"):
            v = getattr(p, name, None)
            if isinstance(v, str) and v:
                return " ".join(v.split())
        return ""


@dataclass
class Delta:
    """One element received during a run: when, what, its key, its label and value (metrics) or
    the start of its text."""

    t: float
    kind: str
    key: str
    label: str
    value: str


@dataclass
class Run:
    """One script run this client asked for, as its messages arrived.

    Attributes:
        t_send: perf_counter() when the request left (a page load: when the connection opened).
        fragment_id: The fragment rerun asked for ("" for a whole-page run).
        run_id: The server's script run id (the last one, after restarts).
        t_started: When its `new_session` arrived.
        deltas: Elements received, in order.
        t_finished: When its settling `script_finished` arrived.
        status: That message's ScriptFinishedStatus.
        restarts: Runs of it that ended early for a rerun (status 2).
    """

    t_send: float
    fragment_id: str = ""
    run_id: str | None = None
    t_started: float | None = None
    deltas: list[Delta] = field(default_factory=list)
    t_finished: float | None = None
    status: int | None = None
    restarts: int = 0

    @property
    def settled(self) -> bool:
        """Whether the run finished with a settled status (0, 1 or 3)."""
        return self.status in SETTLED

    def ms(self, t: float | None) -> float | None:
        """`t` in ms from the request (None stays None)."""
        return None if t is None else round((t - self.t_send) * 1000, 1)

    def timings(self) -> dict[str, Any]:
        """Phases of the run in ms from the request (None: did not happen), the load test's
        `phases` record. `redrawn` is the redrawn preview (the module's docstring)."""
        d = self.deltas

        def first(pred: Callable[[Delta], bool]) -> Delta | None:
            return next((x for x in d if pred(x)), None)

        params = first(lambda x: x.kind == "metric" and x.label.startswith("Remaining params"))
        metrics = [x for x in d if x.kind == "metric" and x.label.startswith(PREVIEW_METRICS)]
        charts = [x for x in d if x.kind == "plotly_chart" and x.key in PREVIEW_CHART_KEYS]
        charts = charts or [x for x in d if x.kind == "plotly_chart"]
        redrawn = max(x.t for x in metrics + charts) if params is not None else None
        est = [
            x
            for x in d
            if x.kind == "metric" and ESTIMATE_RE.match(x.label) and x.value not in ("", "off")
        ]
        caption = next((x.label for x in reversed(d) if CAPTION_RE.search(x.label)), "")
        m = CAPTION_RE.search(caption)
        images = IMAGES_RE.search(est[-1].label) if est else None
        first_metric = first(lambda x: x.kind == "metric")
        return {
            "send": 0.0,
            "started": self.ms(self.t_started),
            "first_delta": self.ms(d[0].t) if d else None,
            "first_metric_delta": self.ms(first_metric.t if first_metric else None),
            "preview": self.ms(params.t if params else None),
            "last_chart_delta": self.ms(charts[-1].t if charts else None),
            "redrawn": self.ms(redrawn),
            "estimate": self.ms(est[0].t if est else None),
            "estimate_final": self.ms(est[-1].t if est else None),
            "estimate_final_images": int(images.group(1).replace(",", "")) if images else None,
            "finished": self.ms(self.t_finished),
            "idle": self.ms(self.t_finished),
            "deltas": len(d),
            "status": self.status,
            "restarts": self.restarts,
            "server_preview_ms": float(m.group(1)) if m else None,
            "server_estimate_ms": float(m.group(2)) if m and m.group(2) else None,
        }


def _ws_url(base_url: str) -> str:
    """`http://127.0.0.1:PORT` -> `ws://127.0.0.1:PORT/_stcore/stream` (loopback only)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "ws") or parts.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the load client talks to 127.0.0.1 only, not {base_url!r}")
    path = parts.path.rstrip("/")
    return f"ws://{parts.hostname}:{parts.port or 80}{path}/_stcore/stream"


class AppClient:
    """One browser tab's Streamlit session over the websocket (see the module's docstring).

    Use as `async with AppClient(url) as app:`, then `app.page_load` is the first page's `Run`.

    Args:
        base_url: The app's address, `http://127.0.0.1:PORT`.
        timeout: Seconds a request may take to settle before `ProtocolError`.
        path: The page to open first, by its URL path ("prune"; "": the default page), as a
            browser opening `http://127.0.0.1:PORT/prune` does.

    Raises:
        ValueError: `base_url` is not on 127.0.0.1.
    """

    def __init__(self, base_url: str, *, timeout: float = 120.0, path: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.ws_url = _ws_url(base_url)
        self.timeout = timeout
        self.pages: dict[str, tuple[str, str]] = {}  # title -> (script hash, url path)
        self.elements: dict[tuple[int, ...], Drawn] = {}
        self.page_hash = ""
        self.page_path = path.strip("/")
        self.page_load: Run | None = None
        self.protocol_errors: list[str] = []
        self.messages = 0
        self.bytes_in = 0
        self._values: dict[str, WidgetState] = {}
        self._cache: OrderedDict[str, ForwardMsg] = OrderedDict()
        self._auto: dict[str, float] = {}  # fragment id -> interval (s)
        self._pending: Run | None = None
        self._current: tuple[str, tuple[str, ...]] = ("", ())
        self._drawn_by_run: set[tuple[int, ...]] = set()
        self._notify = asyncio.Event()
        self._closed: str | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connection

    async def __aenter__(self) -> AppClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> Run:
        """Connect and run the first page (what a browser does on load); the page load's `Run`
        is timed from the moment the connection was opened.

        Raises:
            ProtocolError: The connection failed or the first run did not settle in time.
        """
        from websockets.asyncio.client import connect

        run = Run(t_send=time.perf_counter())
        try:
            # No pings: a browser sends none, and a busy server's late pong would close us.
            self._ws = await asyncio.wait_for(
                connect(
                    self.ws_url,
                    subprotocols=["streamlit"],  # type: ignore[list-item]
                    max_size=None,
                    ping_interval=None,
                    compression=None,
                ),
                self.timeout,
            )
        except (OSError, TimeoutError) as e:
            raise ProtocolError(f"cannot connect to {self.ws_url}: {e}") from e
        self._reader = asyncio.create_task(self._read())
        self.page_load = await self._request(run)
        return self.page_load

    async def close(self) -> None:
        """Close the connection (the server ends the session); safe to call twice."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 10)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    # ------------------------------------------------------------------ what the page shows

    def widget(self, key: str) -> Drawn:
        """The widget drawn with user key `key`.

        Raises:
            KeyError: No such widget on the page now (the message lists the keys there are).
        """
        for el in self.elements.values():
            if el.key == key and el.kind != "block":
                return el
        keys = sorted({e.key for e in self.elements.values() if e.key})
        raise KeyError(f"no widget with key {key!r} on the page; keys: {', '.join(keys)}")

    def widgets(self, prefix: str) -> list[Drawn]:
        """Widgets whose user key starts with `prefix`, in page order."""
        return [
            self.elements[p]
            for p in sorted(self.elements)
            if self.elements[p].key.startswith(prefix) and self.elements[p].kind != "block"
        ]

    def drawn(self, kind: str | None = None) -> list[Drawn]:
        """Elements on the page now (of `kind`), in page order."""
        return [
            self.elements[p]
            for p in sorted(self.elements)
            if kind is None or self.elements[p].kind == kind
        ]

    def metric(self, label_prefix: str) -> str | None:
        """The value of the first metric whose label starts with `label_prefix`."""
        for el in self.drawn("metric"):
            if el.proto.label.startswith(label_prefix):
                return str(el.proto.body)
        return None

    def alerts(self) -> list[tuple[str, str]]:
        """(format: error/warning/info/success, text) of every alert box on the page."""
        return [
            (ALERT_FORMATS.get(el.proto.format, "?"), " ".join(el.proto.body.split()))
            for el in self.drawn("alert")
        ]

    def captions(self) -> list[str]:
        """Texts of the markdown elements (captions included), one line each."""
        return [el.text() for el in self.drawn("markdown")]

    def title(self) -> str | None:
        """The first heading's text."""
        heads = self.drawn("heading")
        return heads[0].text() if heads else None

    def errors(self, allow: str | None = None) -> list[str]:
        """Exception boxes and error alerts on the page now (not those matching `allow`)."""
        out = [f"exception {el.text()}"[:300] for el in self.drawn("exception")]
        out += [t[:300] for f, t in self.alerts() if f == "error"]
        return [e for e in out if allow is None or not re.search(allow, e)]

    # ------------------------------------------------------------------ actions

    async def goto(self, title: str) -> Run:
        """Switch to the page titled `title` (a sidebar link click).

        Raises:
            KeyError: No such page in the app's navigation.
        """
        if title not in self.pages:
            raise KeyError(f"no page {title!r}; pages: {', '.join(self.pages)}")
        page_hash, path = self.pages[title]
        return await self._request(Run(t_send=0.0), page=(page_hash, path))

    async def set_slider(self, key: str, value: float | tuple[float, ...]) -> Run:
        """Move the slider with user key `key` to `value` (a range slider: a tuple)."""
        el = self.widget(key)
        state = WidgetState(id=el.id)
        state.double_array_value.data.extend(
            [float(v) for v in value] if isinstance(value, tuple) else [float(value)]
        )
        return await self._change(el, state)

    async def select(self, key: str, option_prefix: str) -> Run:
        """Choose the first option of select box `key` whose label starts with `option_prefix`.

        Raises:
            KeyError: No such option.
        """
        el = self.widget(key)
        options = list(el.proto.options)
        pick = next(
            (
                o
                for want in (lambda o: o == option_prefix, lambda o: o.startswith(option_prefix))
                for o in options
                if want(o)
            ),
            None,
        )
        if pick is None:
            raise KeyError(f"{key}: no option {option_prefix!r} among {options}")
        return await self._change(el, WidgetState(id=el.id, string_value=pick))

    async def set_expander(self, key: str, open_: bool) -> Run:
        """Open (or close) the stateful expander with user key `key` (`st.expander(key=...,
        on_change="rerun")`, whose contents the app draws only while it is open).

        Raises:
            KeyError: No such expander on the page now.
        """
        el = next((e for e in self.elements.values() if e.kind == "block" and e.key == key), None)
        if el is None:
            raise KeyError(f"no expander with key {key!r} on the page")
        return await self._change(el, WidgetState(id=el.id, bool_value=bool(open_)))

    async def set_number(self, key: str, value: float) -> Run:
        """Type `value` into number input `key`."""
        el = self.widget(key)
        return await self._change(el, WidgetState(id=el.id, double_value=float(value)))

    async def click(self, key: str) -> Run:
        """Click button `key` (a trigger: true for this run only)."""
        el = self.widget(key)
        if getattr(el.proto, "disabled", False):
            raise ProtocolError(f"button {key!r} is disabled")
        return await self._request(
            Run(t_send=0.0, fragment_id=el.fragment_id), trigger=WidgetState(id=el.id)
        )

    def slider_value(self, key: str) -> float:
        """The value slider `key` shows now (the one this client set, or the server's)."""
        el = self.widget(key)
        mine = self._values.get(el.id)
        if mine is not None:
            return float(mine.double_array_value.data[0])
        vals = el.proto.value if el.proto.set_value else el.proto.default
        return float(vals[0])

    async def follow(
        self,
        seconds: float,
        on_run: Callable[[Run], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Stay on the page for `seconds`, sending the fragment reruns the server asked for with
        `auto_rerun` (every `interval` s, as the browser's timers do); calls `on_run` after each
        settles. Stops early when `until()` is true. Returns the number of reruns sent.
        """
        end = time.monotonic() + seconds
        due: dict[str, float] = {}
        sent = 0
        while time.monotonic() < end and not (until and until()):
            if self._closed:
                raise ProtocolError(f"connection closed: {self._closed}")
            now = time.monotonic()
            for frag, every in list(self._auto.items()):
                due.setdefault(frag, now + every)
            for frag in [f for f in due if f not in self._auto]:
                del due[frag]
            ready = [f for f, t in due.items() if t <= now]
            if not ready:
                nxt = min(due.values(), default=end)
                await asyncio.sleep(max(0.05, min(nxt, end) - now))
                continue
            for frag in ready:
                try:
                    # Streamlit drops a rerun of a fragment that a full run removed, without
                    # an answer: a short wait, then forget that timer (a browser's fires into
                    # the void likewise).
                    wait = max(10.0, 5 * self._auto.get(frag, 0.0))
                    run = await self._request(
                        Run(t_send=0.0, fragment_id=frag), auto=True, timeout=wait
                    )
                except ProtocolError:
                    if self._closed:
                        raise
                    self._auto.pop(frag, None)
                    continue
                sent += 1
                due[frag] = time.monotonic() + self._auto.get(frag, 0.0)
                if on_run is not None:
                    on_run(run)
        return sent

    async def _change(self, el: Drawn, state: WidgetState) -> Run:
        self._values[el.id] = state
        return await self._request(Run(t_send=0.0, fragment_id=el.fragment_id))

    # ------------------------------------------------------------------ the wire

    def _back_msg(
        self,
        fragment_id: str,
        page: tuple[str, str] | None,
        trigger: WidgetState | None,
        auto: bool,
    ) -> BackMsg:
        msg = BackMsg()
        cs = msg.rerun_script
        page_hash, path = page if page is not None else (self.page_hash, self.page_path)
        cs.query_string = ""
        cs.page_script_hash = page_hash
        cs.page_name = path
        cs.fragment_id = fragment_id
        cs.is_auto_rerun = auto
        cs.cached_message_hashes.extend(self._cache)
        cs.context_info.timezone = "UTC"
        cs.context_info.locale = "en-US"
        cs.context_info.url = f"{self.base_url}/{path}"
        present = {el.id for el in self.elements.values() if el.id}
        for wid, state in self._values.items():
            if wid in present:
                cs.widget_states.widgets.append(state)
        if trigger is not None:
            t = cs.widget_states.widgets.add()
            t.id = trigger.id
            t.trigger_value = True
        return msg

    async def _request(
        self,
        run: Run,
        *,
        page: tuple[str, str] | None = None,
        trigger: WidgetState | None = None,
        auto: bool = False,
        timeout: float | None = None,
    ) -> Run:
        """Send one rerun request and wait until its run settles (`timeout`: the client's).

        Raises:
            ProtocolError: The connection closed or the run did not settle within the timeout.
        """
        if self._closed:
            raise ProtocolError(f"connection closed: {self._closed}")
        if self._pending is not None:
            raise ProtocolError("one request at a time")
        msg = self._back_msg(run.fragment_id, page, trigger, auto)
        self._pending = run
        if not run.t_send:
            run.t_send = time.perf_counter()
        try:
            await self._ws.send(msg.SerializeToString())
            limit = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + limit
            while not run.settled:
                if self._closed:
                    raise ProtocolError(f"connection closed: {self._closed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolError(
                        f"no settled script_finished after {limit:.0f} s "
                        f"(run started: {run.t_started is not None}, {len(run.deltas)} "
                        f"elements received, restarts {run.restarts})"
                    )
                ev = self._notify
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), left)
        finally:
            self._pending = None
        if run.status == COMPILE_ERROR:
            self.protocol_errors.append("script finished with a compile error")
        return run

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self._ws:
                t = time.perf_counter()
                if isinstance(raw, str):
                    self.protocol_errors.append("a text frame from the server")
                    continue
                self.messages += 1
                self.bytes_in += len(raw)
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                self._handle(msg, t)
                self._wake()
        except ConnectionClosed as e:
            self._closed = f"{e.rcvd.code if e.rcvd else '-'} {e.rcvd.reason if e.rcvd else ''}"
        except Exception as e:  # a bug here must end the waits, not hang them
            self._closed = f"reader failed: {type(e).__name__}: {e}"
        finally:
            self._closed = self._closed or "closed"
            self._wake()

    def _wake(self) -> None:
        ev, self._notify = self._notify, asyncio.Event()
        ev.set()

    def _handle(self, msg: ForwardMsg, t: float) -> None:
        if msg.HasField("ref_hash"):
            cached = self._cache.get(msg.ref_hash)
            if cached is None:
                self.protocol_errors.append(f"unknown ref_hash {msg.ref_hash[:12]}")
                return
            self._cache.move_to_end(msg.ref_hash)
            full = ForwardMsg()
            full.CopyFrom(cached)
            full.metadata.CopyFrom(msg.metadata)
            msg = full
        elif msg.metadata.cacheable and msg.hash:
            self._cache[msg.hash] = msg
            while len(self._cache) > CACHE_KEPT:
                self._cache.popitem(last=False)
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self._started(msg, t)
        elif kind == "navigation":
            for p in msg.navigation.app_pages:
                self.pages[p.page_name] = (p.page_script_hash, p.url_pathname)
            if msg.navigation.page_script_hash:
                self.page_hash = msg.navigation.page_script_hash
                self.page_path = next(
                    (h[1] for h in self.pages.values() if h[0] == self.page_hash), ""
                )
        elif kind == "delta":
            self._delta(msg, t)
        elif kind == "script_finished":
            self._finished(msg, t)
        elif kind == "auto_rerun":
            self._auto[msg.auto_rerun.fragment_id] = max(float(msg.auto_rerun.interval), 0.1)
        elif kind == "stop_auto_rerun":
            for frag in msg.stop_auto_rerun.fragment_ids:
                self._auto.pop(frag, None)
        elif kind == "session_event":
            if msg.session_event.HasField("script_compilation_exception"):
                e = msg.session_event.script_compilation_exception
                self.protocol_errors.append(f"script compilation exception: {e.type}: {e.message}")
        elif kind == "page_not_found":
            self.protocol_errors.append(f"page not found: {msg.page_not_found.page_name}")

    def _started(self, msg: ForwardMsg, t: float) -> None:
        run_id = msg.metadata.run.script_run_id
        frags = tuple(msg.metadata.run.fragment_ids)
        self._current = (run_id, frags)
        self._drawn_by_run = set()
        if not frags:
            # A whole-page run: the browser forgets its timers; fragments drawn again re-ask.
            self._auto.clear()
            if msg.new_session.page_script_hash:
                self.page_hash = msg.new_session.page_script_hash
        for p in msg.new_session.app_pages:
            if p.page_name and p.page_name not in self.pages:
                self.pages[p.page_name] = (p.page_script_hash, p.url_pathname)
        run = self._pending
        if run is not None and run.run_id is None and run.t_send <= t:
            wanted = run.fragment_id
            if (not wanted and not frags) or (wanted and wanted in frags) or run.restarts:
                run.run_id = run_id
                if run.t_started is None:
                    run.t_started = t

    def _delta(self, msg: ForwardMsg, t: float) -> None:
        delta = msg.delta
        path = tuple(msg.metadata.delta_path)
        which = delta.WhichOneof("type")
        run_id = self._current[0]
        kind: str
        if which == "new_element":
            kind = delta.new_element.WhichOneof("type") or "element"
            proto = getattr(delta.new_element, kind, None)
        elif which == "add_block":
            kind, proto = "block", delta.add_block  # its id: a stateful expander's widget id
        else:
            return  # transients (spinners, toasts) are not part of the page
        drawn = Drawn(kind, proto, delta.fragment_id, run_id)
        # A block drawn again starts empty: what was inside it goes unless drawn again.
        self.elements[path] = drawn
        self._drawn_by_run.add(path)
        if drawn.id and drawn.id in self._values and getattr(proto, "set_value", False):
            del self._values[drawn.id]  # the server set this widget: its value wins
        run = self._pending
        if run is not None and run.run_id == run_id and run.t_finished is None:
            label, value = "", ""
            if kind == "metric":
                label, value = proto.label, proto.body  # type: ignore[union-attr]
            else:
                label = drawn.text()[:300]
            run.deltas.append(Delta(t, kind, drawn.key, label, value))

    def _finished(self, msg: ForwardMsg, t: float) -> None:
        status = msg.script_finished
        run_id = msg.metadata.run.script_run_id or self._current[0]
        frags = self._current[1] if run_id == self._current[0] else ()
        if status in (FINISHED_OK, COMPILE_ERROR):
            self.elements = {p: e for p, e in self.elements.items() if p in self._drawn_by_run}
        elif status == FRAGMENT_OK:
            self.elements = {
                p: e
                for p, e in self.elements.items()
                if p in self._drawn_by_run or e.fragment_id not in frags
            }
        run = self._pending
        if run is None or run.run_id != run_id:
            return
        if status == EARLY_FOR_RERUN:
            run.restarts += 1
            run.run_id = None  # the next run continues this request
            return
        run.status = status
        run.t_finished = t


def job_state(app: AppClient) -> dict[str, Any]:
    """What the Fine-tune page says about this session's job now: `state` (refused / waiting /
    running / done / failed / cancelled / unknown), the queue `position` when waiting, the
    `text` that says it, whether that text is one line, and the job runner's caption."""
    alerts = app.alerts()
    caps = app.captions()
    state, text = "unknown", ""
    checks: list[tuple[str, Callable[[str, str], bool]]] = [
        ("refused", lambda f, x: f == "error" and x.startswith("Cannot start")),
        ("failed", lambda f, x: f == "error" and x.startswith("Failed")),
        ("waiting", lambda f, x: x.startswith("Waiting in the queue")),
        ("done", lambda f, x: x.startswith("Done in")),
        ("cancelled", lambda f, x: x.startswith("Cancelled")),
        ("running", lambda f, x: f == "caption" and x.startswith("Running for")),
    ]
    items = alerts + [("caption", c) for c in caps]
    for name, pred in checks:
        hit = next((x for f, x in items if pred(f, x)), None)
        if hit is not None:
            state, text = name, hit
            break
    m = POSITION_RE.search(text)
    runner = next((c for c in caps if c.startswith("Job runner:")), "")
    raw = next(
        (
            el.proto.body
            for el in app.drawn()
            if el.kind in ("alert", "markdown") and " ".join(el.proto.body.split()) == text
        ),
        text,
    )
    return {
        "state": state,
        "position": int(m.group(1)) if state == "waiting" and m else None,
        "text": text[:300],
        "one_line": "\n" not in raw.strip(),
        "runner": runner,
    }


def run_sync(coro: Any) -> Any:
    """Run a coroutine to its end from synchronous code, also where this thread already runs an
    event loop (a test after Playwright's sync API, a notebook): then in a fresh thread, since
    `asyncio.run` refuses a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
