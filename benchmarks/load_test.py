"""App load test: 1, 10, 30 simulated students against the served app.

Each level starts a fresh server with the app's own start (`python -m pruning_core app`, on a
free 127.0.0.1 port, its own PRUNING_LAB_HOME in a temporary folder, run from a copy of the code
taken when the run starts so other people's saves in a shared checkout cannot reach it), opens
it once to warm it (the cold first page is reported apart), then lets N students work at once,
each in its own Streamlit session:

    open the app -> pick the model (Model & data) -> Prune -> move "Share to remove" (one step
    at a time) -> move one layer's slider -> Apply pruning -> (a share of them) Fine-tune: one
    epoch, Start, and note what the page says (running / waiting at position N / refused).

Two kinds of student (`--client`):

- `ws` (`benchmarks/ws_client.py`): speaks Streamlit's websocket protocol from Python, as the
  browser's frontend does on the wire, at a few ms of CPU per rerun, so 30 of them measure the
  server and not 30 Chromium renderers on the same 2 cores. Timings are taken when the messages
  arrive: page load from opening the connection to the first run's `script_finished`; slider ->
  redrawn preview from the rerun request to the last of the preview's metrics and charts
  (ws_client's docstring); the estimate to the accuracy metric's first and last delta. A
  student who started a fine-tune stays `--linger` s, sending the jobs panels' auto-reruns as a
  browser tab does, and records each state the page shows (the queue's behaviour).
- `browser`: one Playwright context of one shared headless Chromium per student. Timings are
  taken in the page (performance.now(), by an init script): page loads from navigation start
  (or the link click) to the page's title shown, its script run finished and the status widget
  gone; slider -> preview from the key press to the "Remaining params" number changing; the
  estimate from the key press to the accuracy-estimate metric shown again (first, and final
  after its refinements). The same script timestamps the websocket (rerun sent, first element
  delta, first metric delta, script finished) and the browser's long tasks, which split a
  redraw into server and browser time; an extra profiled session says what the browser's main
  thread does during a move.

The default (`auto`) is the browser below 10 students (the single-user numbers include the
browser's drawing, and its phases) and ws from 10 on. A level with one student goes through
every model in turn, one fresh session per model, so the single-user numbers exist for each
sample model; with more students the models are dealt out round-robin. The server's memory (RSS
of its process tree), the CPU of the server, of the client and of the rest of the machine, and
the server's health-check latency are sampled every second.

    .venv/bin/python -m benchmarks.load_test                        # 1,10,30, all four models
    .venv/bin/python -m benchmarks.load_test --students 1,10 --max-seconds 600
    .venv/bin/python -m benchmarks.load_test --students 30 --client ws --json /tmp/l.json --markdown -

Writes `benchmarks/load_test.json` and replaces its own section ("## App load test ...") of
`benchmarks/results.md`, leaving the rest of that file as it is (`--markdown-only` rewrites the
section from the JSON, e.g. after `benchmarks.run` rewrote results.md). Everything stays on
127.0.0.1 and is bounded: at most 100 students a level, `--max-seconds` (at most 3600) for the
whole run (the server is always stopped), and `--action-timeout` for each step; a step that
times out is an error of that student, with its reason, and the run goes on. Exit status 0 when
the run completed (targets may miss), 1 when a level could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.local_server import free_port, healthy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PRUNING_LAB_CHROMIUM", "/usr/bin/chromium")
# As tests/e2e/conftest.py: the system Chromium, never a downloaded one, and no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAMPLE_MODELS = ("digits-mlp", "digits-cnn", "shapes-resnet", "shapes-vit")
DEFAULT_MODEL = "digits-cnn"  # what a fresh session has selected (ui.state)
SECTION_TITLE = "## App load test ("  # replace_section finds the section by this prefix
# Acceptance targets (issue 13).
TARGET_FIRST_PAGE_S = 3.0
TARGET_PREVIEW_P50_MS = 150.0
TARGET_PREVIEW_P95_MS = 400.0
TARGET_ESTIMATE_P50_MS = 600.0
TARGET_LOADED_PREVIEW_P95_MS = 1000.0
LOADED_STUDENTS = 30
MAX_SECONDS = 3600.0  # the bound on --max-seconds: a load test never runs unattended for hours
CAPTION_RE = re.compile(r"Preview computed in (\d+) ms(?: \+ (\d+) ms for the estimate)?")
POSITION_RE = re.compile(r"position (\d+)")

PROBE_JS = r"""
// The load test's in-page probe (an init script in every page). It timestamps, in
// performance.now() ms since navigation start, what a student sees and what travels over
// Streamlit's websocket, so one slider move splits into phases. Python arms it before an action
// and reads it back after. The maps of Streamlit's protobuf field numbers come from Python.
(() => {
  if (window.__pl) return;
  const FWD = __FWD__, BACK = __BACK__, ELEM = __ELEM__;
  const now = () => performance.now();
  const pl = (window.__pl = {tArm: 0, base: {}, last: {}, tl: [], ws: [], input: [], longtasks: [], cost: 0});

  // Main-thread tasks over 50 ms (script, layout, chart drawing): the browser's share of a redraw.
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) pl.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) { pl.noLongtask = String(e); }

  // Top-level fields of a protobuf message, [number, varint or bytes]: enough to tell a
  // message's type without Streamlit's generated classes.
  function fields(u8) {
    let i = 0; const out = [];
    const varint = () => {
      let r = 0, s = 1, x;
      do { x = u8[i++]; r += (x & 0x7f) * s; s *= 128; } while ((x & 0x80) && i < u8.length);
      return r;
    };
    while (i < u8.length) {
      const key = varint(), f = Math.floor(key / 8), wt = key % 8;
      if (wt === 0) out.push([f, varint()]);
      else if (wt === 2) { const n = varint(); out.push([f, u8.subarray(i, i + n)]); i += n; }
      else if (wt === 1) i += 8;
      else if (wt === 5) i += 4;
      else break;
    }
    return out;
  }
  function bytes(d) {
    if (d instanceof ArrayBuffer) return new Uint8Array(d);
    if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    return null;
  }
  // A delta's element type (metric, plotly_chart, ...), or 'block' for a container.
  function deltaKind(u8) {
    for (const [f, v] of fields(u8)) {
      if (f === 6) return 'block';
      if (f === 3 && typeof v !== 'number') {
        for (const [g] of fields(v)) if (ELEM[g]) return ELEM[g];
        return 'element';
      }
    }
    return 'other';
  }
  function note(dir, data) {
    const u8 = bytes(data); if (!u8) return;
    const t = now(), names = dir === 'in' ? FWD : BACK;
    for (const [f, v] of fields(u8)) {
      const kind = names[f]; if (!kind) continue;
      let val = null;
      if (kind === 'script_finished') val = v;
      else if (kind === 'delta' && typeof v !== 'number') val = deltaKind(v);
      else if (kind === 'session_status_changed' && typeof v !== 'number') {
        val = 0; for (const [g, w] of fields(v)) if (g === 2) val = w;  // script_is_running
      }
      pl.ws.push([t, dir, kind, val, u8.length]);
    }
  }
  const Native = window.WebSocket;
  class Probed extends Native {
    constructor(...args) {
      super(...args);
      // Registered before Streamlit's own handler, so it runs first for every message.
      this.addEventListener('message', (ev) => { try { note('in', ev.data); } catch (e) {} });
    }
    send(d) { try { note('out', d); } catch (e) {} return super.send(d); }
  }
  window.WebSocket = Probed;

  for (const type of ['keydown', 'pointerdown', 'click']) {
    window.addEventListener(type, (e) => pl.input.push([now(), type, e.key || '']), true);
  }

  // textContent, not innerText: innerText forces a layout on every mutation and would slow the
  // very redraw being measured.
  const text = (el) => (el ? el.textContent.trim() : null);
  function metric(pattern, withLabel) {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
      const label = text(m.querySelector('[data-testid="stMetricLabel"]'));
      if (label && pattern.test(label)) {
        const value = text(m.querySelector('[data-testid="stMetricValue"]')) || '';
        return withLabel ? `${label} = ${value}` : value;
      }
    }
    return null;
  }
  function caption(prefix) {
    for (const c of document.querySelectorAll('[data-testid="stCaptionContainer"]')) {
      const t = text(c); if (t.startsWith(prefix)) return t;
    }
    return null;
  }
  const joined = (sel) => Array.from(document.querySelectorAll(sel)).map(text).join(' | ') || null;
  pl.snap = () => ({
    h1: text(document.querySelector('h1')),
    status: !!document.querySelector('[data-testid="stStatusWidget"]'),
    params: metric(/^Remaining params/),
    // The estimate's label has read "Accuracy estimate ..." and "Accuracy on N val images".
    estimate: metric(/^Accuracy (estimate|on )/),
    // With its label, which names the images counted: a refined estimate changes it.
    estimateFull: metric(/^Accuracy (estimate|on )/, true),
    caption: caption('Preview computed in'),
    success: joined('[data-testid="stAlertContentSuccess"]'),
    errors: document.querySelectorAll(
      '[data-testid="stException"], [data-testid="stAlertContentError"]').length,
  });
  function observe() {
    const t = now(), s = pl.snap();
    pl.lastMutation = t;
    for (const k in s) if (s[k] !== pl.last[k]) { pl.tl.push([t, k, s[k]]); pl.last[k] = s[k]; }
    pl.cost += now() - t;  // the probe's own time, reported so its overhead is known
  }
  new MutationObserver(observe).observe(document, {childList: true, subtree: true, characterData: true});

  // Start a measurement: forget what came before, keep the current values as the baseline.
  pl.arm = () => {
    pl.base = pl.snap(); pl.last = {...pl.base};
    pl.tl = []; pl.ws = []; pl.input = []; pl.longtasks = []; pl.cost = 0;
    pl.tArm = now();
    return pl.tArm;
  };
  // True once the rerun the action asked for has finished and Streamlit's status widget is
  // gone (and, with `h1`, the page's title is `h1`).
  pl.settled = (h1) => {
    const t0 = pl.input.length ? pl.input[0][0] : pl.tArm;
    const send = pl.ws.find((w) => w[1] === 'out' && w[2] === 'rerun_script' && w[0] >= t0);
    if (!send) return false;
    // Settled: finished (0), compile error (1), or an st.fragment's own run finished (3).
    const done = pl.ws.find((w) => w[2] === 'script_finished' && w[0] >= send[0] && [0, 1, 3].includes(w[3]));
    if (!done) return false;
    if (h1 && text(document.querySelector('h1')) !== h1) return false;
    // React draws what the last messages carried a little later: wait for a quiet DOM, so
    // those last changes are in the timeline (their times are taken when they happen).
    if (now() - (pl.lastMutation || 0) < 150) return false;
    return !document.querySelector('[data-testid="stStatusWidget"]');
  };
  pl.take = () => ({
    tArm: pl.tArm, base: pl.base, tl: pl.tl, ws: pl.ws, input: pl.input,
    longtasks: pl.longtasks, cost: pl.cost, now: now(), snap: pl.snap(),
    statusText: text(document.querySelector('[data-testid="stStatusWidget"]')),
    dcl: (performance.getEntriesByType('navigation')[0] || {}).domContentLoadedEventEnd || null,
    // The document's first byte and the last script file received: the server's share of
    // loading the app's HTML and JavaScript (DOMContentLoaded adds the browser's parsing).
    docTtfb: (performance.getEntriesByType('navigation')[0] || {}).responseStart || null,
    scriptsEnd: (() => {
      const dcl = (performance.getEntriesByType('navigation')[0] || {}).domContentLoadedEventEnd;
      const ends = performance.getEntriesByType('resource')
        .filter((e) => e.name.endsWith('.js') && (!dcl || e.responseEnd <= dcl))
        .map((e) => e.responseEnd);
      return ends.length ? Math.max(...ends) : null;  // chunks loaded later are not counted
    })(),
  });
})();
"""


def probe_script() -> str:
    """The in-page probe with the protobuf field maps of the installed Streamlit filled in."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.Element_pb2 import Element
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def oneof(msg: Any, name: str) -> str:
        fields = msg.DESCRIPTOR.fields
        return json.dumps(
            {
                f.number: f.name
                for f in fields
                if f.containing_oneof is not None and f.containing_oneof.name == name
            }
        )

    return (
        PROBE_JS.replace("__FWD__", oneof(ForwardMsg, "type"))
        .replace("__BACK__", oneof(BackMsg, "type"))
        .replace("__ELEM__", oneof(Element, "type"))
    )


# ---------------------------------------------------------------------------- the server


def snapshot_code(dest: Path, source: str) -> str:
    """Copy the app's code to `dest` and say what was copied.

    The server runs from this copy, not from the checkout: in a shared checkout other people's
    saves would otherwise reach the running server mid-level (Streamlit's file watcher reruns
    every session, and a page read while half-edited fails to import).

    Args:
        dest: An empty folder.
        source: "head" (the last commit, `git archive`) or "worktree" (tracked and untracked,
            not ignored files as they are now, uncommitted changes included).
    """

    def git(*a: str) -> bytes:
        return subprocess.run(["git", *a], cwd=ROOT, check=True, capture_output=True).stdout

    commit = git("rev-parse", "--short", "HEAD").decode().strip()
    if source == "head":
        archive = git("archive", "--format=tar", "HEAD")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return f"commit {commit} (git archive HEAD)"
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    return f"working tree of {commit}" + (" with uncommitted changes" if dirty else "")


@dataclass
class Server:
    """The app served by its own start command (`python -m pruning_core app`) on 127.0.0.1.

    Attributes:
        home: The server's PRUNING_LAB_HOME (a fresh folder).
        log: Its stdout and stderr.
        code: The copy of the app it runs from (`snapshot_code`).
        url: Where it listens.
        proc: The process (its own process group, so its children stop with it).
        started_s: Seconds from launch to a healthy server.
        env: Extra environment variables (e.g. Streamlit's STREAMLIT_* settings).
    """

    home: Path
    log: Path
    code: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float) -> None:
        """Launch and wait until healthy.

        Raises:
            RuntimeError: It exited or did not become healthy within `timeout` seconds.
        """
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # The environment the app normally gets (no thread settings forced), plus its own home.
        env = {
            **os.environ,
            "PRUNING_LAB_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = [
            sys.executable,
            "-m",
            "pruning_core",
            "app",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ]
        t = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.code,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while not healthy(self.url):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() - t > timeout:
                raise RuntimeError(f"the server was not healthy in {timeout:.0f} s: {self.tail()}")
            time.sleep(0.3)
        self.started_s = time.monotonic() - t

    def stop(self) -> None:
        """Terminate the server's process group (kill it if it lingers). Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 1500) -> str:
        """The end of the server's log, on one line."""
        try:
            return " ".join(self.log.read_text(errors="replace")[-n:].split())
        except OSError:
            return ""

    def jobs_in_store(self) -> dict[str, int]:
        """Fine-tune runs in the server's run store by status (queued jobs are not there yet)."""
        db = self.home / "runs.sqlite3"
        if not db.exists():
            return {}
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
                rows = c.execute(
                    "SELECT status, COUNT(*) FROM runs WHERE kind = 'finetune' GROUP BY status"
                ).fetchall()
        except sqlite3.Error as e:
            return {f"unreadable: {e}": 0}
        return {str(s): int(n) for s, n in rows}


# ---------------------------------------------------------------------------- /proc sampling

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, CPU ticks used, RSS bytes) for every process readable now."""
    out: dict[int, tuple[int, int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its closing one.
        rest = stat[stat.rfind(")") + 2 :].split()
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21]) * _PAGE)
    return out


def _descendants(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in seen or p not in table:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
    return seen


def nice_browser(nice: int) -> str:
    """Lower the CPU priority of the Chromium started by this process: its scheduler autogroup
    (Chromium starts its own session, so all its processes share one) gets `nice`. On a machine
    that groups by session, the server is then served first, as when each student's browser is
    on a machine of its own. Says what was done."""
    table = _proc_table()
    done = set()
    for pid in _descendants(os.getpid(), table):
        try:
            if "chrom" not in os.readlink(f"/proc/{pid}/exe"):
                continue
            with open(f"/proc/{pid}/autogroup") as f:
                group = f.read().split()[0]
            if group not in done:
                with open(f"/proc/{pid}/autogroup", "w") as f:
                    f.write(str(nice))
                done.add(group)
        except OSError as e:
            return f"not set ({e})"
    return f"Chromium's autogroup at nice {nice}" if done else "no Chromium process found"


def tree_cpu_ticks(pid: int) -> int:
    """CPU ticks used so far by `pid` and its descendants."""
    table = _proc_table()
    return sum(table[p][1] for p in _descendants(pid, table))


async def settle(
    pid: int, below: float = 0.15, quiet_s: float = 2.0, at_most: float = 90.0
) -> float:
    """Wait until the server tree has used less than `below` of a core for `quiet_s` seconds
    in a row (its start-up warm-up done: `ui.prewarm`), at most `at_most` seconds; returns the
    seconds waited. A class arrives at a server that was started before the lesson."""
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    quiet, last = 0.0, tree_cpu_ticks(pid)
    while time.monotonic() - t0 < at_most:
        await asyncio.sleep(0.5)
        now = tree_cpu_ticks(pid)
        quiet = quiet + 0.5 if (now - last) / hz / 0.5 < below else 0.0
        last = now
        if quiet >= quiet_s:
            break
    return time.monotonic() - t0


def tree_rss(pid: int) -> int:
    """RSS bytes of `pid` and its descendants."""
    table = _proc_table()
    return sum(table[p][2] for p in _descendants(pid, table))


def _pss(pid: int) -> int:
    """Proportional set size of a process in bytes (shared pages split among their users), 0
    when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _machine_busy_ticks() -> int:
    """CPU ticks the whole machine spent busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(cpu) - cpu[3] - cpu[4]


@dataclass
class Sampler:
    """Samples, every `every` seconds, the server tree's RSS, the client side's PSS (this
    process and everything below it but the server: the Playwright driver and Chromium), the CPU
    time of both, and the machine's busy time (so other people's load on a shared machine is
    known). CPU is summed over the deltas between samples; a process born since the last sample
    counts from zero, one that ended loses at most one interval."""

    server_pid: int
    url: str = ""
    every: float = 1.0
    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu: list[tuple[float, float, float, float]] = field(default_factory=list)
    health_ms: list[float | None] = field(default_factory=list)
    client_pss: list[int] = field(default_factory=list)
    server_ticks: int = 0
    client_ticks: int = 0
    machine_ticks: int = 0
    _last: dict[int, int] = field(default_factory=dict)
    _machine_last: int = 0
    _t0: float = 0.0
    _t1: float = 0.0

    def sample(self) -> None:
        """Take one sample."""
        table = _proc_table()
        busy = _machine_busy_ticks()
        server = _descendants(self.server_pid, table)
        client = _descendants(os.getpid(), table) - server
        now = time.monotonic()
        self.rss.append((now - self._t0, sum(table[p][2] for p in server)))
        # PSS walks every mapping of ~30 renderers: every 5th sample keeps the harness light.
        if len(self.rss) % 5 == 1:
            self.client_pss.append(sum(_pss(p) for p in client))
        cur = {p: table[p][1] for p in server | client}
        if self._last:
            ticks_s, ticks_c = 0, 0
            for p, ticks in cur.items():
                delta = ticks - self._last.get(p, 0)
                if p in server:
                    ticks_s += delta
                else:
                    ticks_c += delta
            machine = busy - self._machine_last
            self.server_ticks += ticks_s
            self.client_ticks += ticks_c
            self.machine_ticks += machine
            dt = max(now - self._t1, 1e-9) * _TICK
            self.cpu.append(
                (
                    round(now - self._t0, 1),
                    round(ticks_s / dt, 2),
                    round(ticks_c / dt, 2),
                    round(max(machine - ticks_s - ticks_c, 0) / dt, 2),
                )
            )
        self._last, self._machine_last = cur, busy
        self._t1 = now

    def health(self) -> None:
        """Time one health check: how long the server's event loop takes to answer at all
        (None: no answer within 10 s)."""
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=10) as r:
                r.read()
            self.health_ms.append(round((time.monotonic() - t) * 1000, 1))
        except OSError:
            self.health_ms.append(None)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set (and once more then)."""
        self._t0 = time.monotonic()
        self.sample()
        checks = asyncio.create_task(self._health_loop(stop)) if self.url else None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
            await asyncio.to_thread(self.sample)
        if checks is not None:
            await checks

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.health)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2 * self.every)

    def summary(self) -> dict[str, Any]:
        """RSS start/peak/end (MiB), client PSS peak, average cores used by the server, the
        client and everything else on the machine."""
        secs = max(self._t1 - self._t0, 1e-9)
        mib = [r / 2**20 for _, r in self.rss] or [0.0]
        others = self.machine_ticks - self.server_ticks - self.client_ticks
        return {
            "server_rss_mib": {
                "start": round(mib[0], 1),
                "peak": round(max(mib), 1),
                "end": round(mib[-1], 1),
            },
            "server_rss_series_mib": [[round(t, 1), round(r / 2**20, 1)] for t, r in self.rss],
            "client_pss_peak_mib": round(max(self.client_pss or [0]) / 2**20, 1),
            "server_cores": round(self.server_ticks / _TICK / secs, 2),
            "client_cores": round(self.client_ticks / _TICK / secs, 2),
            "other_cores": round(max(others, 0) / _TICK / secs, 2),
            "server_cpu_s": round(self.server_ticks / _TICK, 1),
            "cpu_series_cores": [list(x) for x in self.cpu],
            "server_busy_share": round(
                sum(1 for x in self.cpu if x[1] >= 0.9) / max(len(self.cpu), 1), 2
            ),
            "health_ms": _stats(list(self.health_ms)),
            "health_failures": sum(1 for h in self.health_ms if h is None),
            "seconds": round(secs, 1),
        }


# ---------------------------------------------------------------------------- one student


@dataclass
class Settings:
    """What the students do and how long anything may take."""

    moves: int
    layer_moves: int
    think: tuple[float, float]
    action_timeout_ms: float
    seed: int
    linger_s: float = 0.0


class StepError(Exception):
    """A step of a student failed (timed out, or the page showed an error)."""


@dataclass
class Student:
    """One simulated student's session and what it measured."""

    index: int
    model: str
    finetune: bool
    settings: Settings
    rng: random.Random
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    job: dict[str, Any] | None = None
    dataset: str | None = None
    messages: int = 0

    def record(self, kind: str, **values: Any) -> None:
        """Keep one measurement (kind: first_page, page, pick, move, layer_move, apply...)."""
        self.records.append({"kind": kind, "model": self.model, "student": self.index, **values})

    async def think(self) -> None:
        """A student's pause between actions (seeded, uniform in the think range)."""
        lo, hi = self.settings.think
        await asyncio.sleep(self.rng.uniform(lo, hi))


def _first(items: list[list[Any]], pred: Callable[[list[Any]], bool]) -> list[Any] | None:
    return next((x for x in items if pred(x)), None)


def _images(label: str | None) -> int | None:
    """The number of images an accuracy-estimate label names ("... (500 val images) = ...")."""
    m = re.search(r"\(([\d,]+) val images\)", label or "") or re.search(
        r"on ([\d,]+) val images", label or ""
    )
    return int(m.group(1).replace(",", "")) if m else None


def analyse(data: dict[str, Any], *, h1: str | None = None) -> dict[str, Any]:
    """Turn a probe reading into times (ms from the input, or from navigation start for a first
    page) of each phase; None for a phase that did not happen."""
    t0 = data["input"][0][0] if data["input"] else data["tArm"]
    ws, tl, base = data["ws"], data["tl"], data["base"]

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 1)

    send = _first(ws, lambda w: w[1] == "out" and w[2] == "rerun_script" and w[0] >= t0)
    ts = send[0] if send else t0
    new_session = _first(ws, lambda w: w[2] == "new_session" and w[0] >= ts)
    first_delta = _first(ws, lambda w: w[2] == "delta" and w[0] >= ts)
    first_metric = _first(ws, lambda w: w[2] == "delta" and w[3] == "metric" and w[0] >= ts)
    # Settled statuses as ws_client.SETTLED: 3 is the end of an st.fragment's own run.
    finished = _first(ws, lambda w: w[2] == "script_finished" and w[0] >= ts and w[3] in (0, 1, 3))
    tf = finished[0] if finished else None
    charts = [w[0] for w in ws if w[2] == "delta" and w[3] == "plotly_chart" and w[0] >= ts]
    # The last time the status widget went away, up to the end of the run (it fades for 200 ms).
    gone = [e[0] for e in tl if e[1] == "status" and e[2] is False]
    idle = max([tf or 0.0, *gone]) if tf is not None else None

    # The estimate is shown after a first chunk of images and refined in the same run: its last
    # state is the final one (drawn after the script-finished message is read, at times).
    fulls = [e for e in tl if e[1] == "estimateFull" and e[2] and e[0] >= t0]
    final_estimate = fulls[-1] if fulls else None

    def changed(key: str) -> float | None:
        """When `key` first showed a value other than the baseline (a blank in between counts:
        a slot is emptied early in the run and filled at its end)."""
        blanked = False
        for t, k, v in tl:
            if k != key or t < t0:
                continue
            if v in (None, ""):
                blanked = True
            elif blanked or v != base.get(key):
                return float(t)
        return None

    title = None
    if h1 is not None:
        hit = _first(tl, lambda e: e[1] == "h1" and e[2] == h1 and e[0] >= t0)
        title = hit[0] if hit else (t0 if base.get("h1") == h1 else None)
    interactive = max(idle, title) if idle is not None and title is not None else None
    busy = sum(
        min(s + d, idle or data["now"]) - max(s, t0)
        for s, d in data["longtasks"]
        if s + d > t0 and s < (idle or data["now"])
    )
    caption = data["snap"].get("caption") or ""
    m = CAPTION_RE.search(caption)
    return {
        "send": rel(ts if send else None),
        "new_session": rel(new_session[0] if new_session else None),
        "first_delta": rel(first_delta[0] if first_delta else None),
        "first_metric_delta": rel(first_metric[0] if first_metric else None),
        "last_chart_delta": rel(max(charts) if charts else None),
        "finished": rel(tf),
        "idle": rel(idle),
        "title": rel(title),
        "interactive": rel(interactive),
        "preview": rel(changed("params")),
        "estimate": rel(changed("estimate")),
        "estimate_final": rel(final_estimate[0] if final_estimate else None),
        "estimate_final_images": _images(final_estimate[2] if final_estimate else None),
        "caption_changed": rel(changed("caption")),
        "longtask_ms": round(busy, 1),
        "probe_ms": round(float(data.get("cost") or 0.0), 1),
        "deltas": sum(1 for w in ws if w[2] == "delta" and w[0] >= ts),
        "server_preview_ms": float(m.group(1)) if m else None,
        "server_estimate_ms": float(m.group(2)) if m and m.group(2) else None,
        "dcl": data.get("dcl"),
        "doc_ttfb": data.get("docTtfb"),
        "scripts_received": data.get("scriptsEnd"),
        "errors_shown": int(data["snap"].get("errors") or 0),
    }


async def _settle(page: Any, s: Student, h1: str | None = None) -> dict[str, Any]:
    """Wait for the armed action's rerun to finish; read and analyse the probe.

    Raises:
        StepError: It did not finish within the action timeout (the reason says how far it got).
    """
    try:
        await page.wait_for_function(
            "h1 => window.__pl && window.__pl.settled(h1)",
            arg=h1,
            timeout=s.settings.action_timeout_ms,
            polling=100,
        )
    except Exception as e:
        if "Timeout" not in type(e).__name__:
            raise
        why = await _why_not_settled(page)
        raise StepError(f"not done after {s.settings.action_timeout_ms / 1000:.0f} s: {why}") from e
    return analyse(await page.evaluate("() => window.__pl.take()"), h1=h1)


async def _why_not_settled(page: Any) -> str:
    """How far an unfinished rerun got, from the probe (for the error message)."""
    try:
        data = await page.evaluate("() => window.__pl.take()")
    except Exception as e:
        return f"the page does not answer ({type(e).__name__})"
    t0 = data["input"][0][0] if data["input"] else data["tArm"]
    ws = [w for w in data["ws"] if w[0] >= t0]
    kinds: dict[str, int] = {}
    for w in ws:
        name = f"{w[1]}:{w[2]}" + (f"={w[3]}" if w[2] == "script_finished" else "")
        kinds[name] = kinds.get(name, 0) + 1
    last = f"{data['now'] - ws[-1][0]:.0f} ms ago" if ws else "never"
    snap = data["snap"]
    return (
        f"websocket since the action {kinds or 'nothing'} (last message {last}); "
        f"status widget {repr(data.get('statusText')) if snap['status'] else 'gone'}; "
        f"title {snap['h1']!r}"
    )


async def _errors_shown(page: Any) -> list[str]:
    """Texts of Streamlit exception boxes and st.error boxes now on the page (one line each)."""
    texts = await page.locator(
        '[data-testid="stException"], [data-testid="stAlertContentError"]'
    ).all_inner_texts()
    return [" ".join(t.split())[:300] for t in texts]


async def _check(page: Any, s: Student, where: str, allow: str | None = None) -> None:
    """Record any error box shown (except one matching `allow`) as an error of this student."""
    for t in await _errors_shown(page):
        if allow is None or not re.search(allow, t):
            msg = f"{where}: {t}"
            if msg not in s.errors:
                s.errors.append(msg)


async def _nav(page: Any, s: Student, title: str) -> None:
    """Go to a page by its sidebar link and record the page switch.

    The click is dispatched (as in tests/e2e): Playwright's click also waits for navigations,
    and Streamlit's page switch with the URL's session token can leave that wait hanging.
    """
    await page.evaluate("() => window.__pl.arm()")
    link = page.locator('[data-testid="stSidebarNav"] a', has_text=title).first
    await link.dispatch_event("click", timeout=s.settings.action_timeout_ms)
    r = await _settle(page, s, h1=title)
    s.record("page", page=title, ms=r["interactive"], phases=r)
    await _check(page, s, title)


async def _open(page: Any, s: Student, url: str) -> None:
    """Open the app; record navigation start -> first page interactive."""
    await page.goto(url, wait_until="commit", timeout=s.settings.action_timeout_ms)
    r = await _settle(page, s, h1="Model & data")
    s.record("first_page", page="Model & data", ms=r["interactive"], phases=r)
    await _check(page, s, "Model & data (opened)")


async def _pick_model(page: Any, s: Student) -> None:
    """Choose the student's model in the Model & data select box (timed from the option click);
    the app switches the dataset itself, which the sidebar then shows."""
    if s.model != DEFAULT_MODEL:
        t = s.settings.action_timeout_ms
        for attempt in range(4):
            await page.locator(".st-key-model_ref").click(timeout=t)
            option = page.get_by_role("option", name=re.compile(f"^{re.escape(s.model)} "))
            try:
                # Generous: a list that takes long to draw on a loaded machine is not closed.
                await option.wait_for(timeout=20_000)
                await page.evaluate("() => window.__pl.arm()")
                await option.click(timeout=20_000)
                break
            except Exception:
                # A rerun (e.g. the sidebar's job list) closed the list under us: reopen it.
                if attempt == 3:
                    raise
                await page.keyboard.press("Escape")
        r = await _settle(page, s)
        s.record("pick", ms=r["idle"], phases=r)
    sidebar = await page.locator('[data-testid="stSidebar"]').inner_text(
        timeout=s.settings.action_timeout_ms
    )
    m = re.search(r"Model\s+(\S+)\s+Dataset\s+(\S+)", sidebar)
    if not m or m.group(1) != s.model:
        raise StepError(f"after picking {s.model} the sidebar says: {' '.join(sidebar.split())}")
    s.dataset = m.group(2)
    await _check(page, s, "Model & data (picked)")


async def _slider_value(locator: Any, t: float) -> float:
    return float(await locator.input_value(timeout=t))


async def _move(page: Any, s: Student, thumb: Any, kind: str, lo: float, hi: float) -> None:
    """Press one arrow key on a focused slider thumb (direction kept inside [lo, hi]) and
    record slider -> redrawn preview and slider -> estimate."""
    t = s.settings.action_timeout_ms
    value = await _slider_value(thumb, t)
    if value <= lo:
        key = "ArrowRight"
    elif value >= hi:
        key = "ArrowLeft"
    else:
        key = s.rng.choice(["ArrowRight", "ArrowLeft"])
    await thumb.focus(timeout=t)
    await page.evaluate("() => window.__pl.arm()")
    await page.keyboard.press(key)
    r = await _settle(page, s)
    if r["preview"] is None:
        s.errors.append(f"{kind} {value}->{key}: the preview's numbers did not change")
    s.record(kind, ms=r["preview"], estimate_ms=r["estimate"], from_value=value, key=key, phases=r)
    await _check(page, s, f"Prune ({kind})")


async def _prune(page: Any, s: Student) -> None:
    """Prune page: global moves, one layer's slider, Apply."""
    t = s.settings.action_timeout_ms
    glob = page.locator('.st-key-prune_ratio input[type="range"]')
    for _ in range(s.settings.moves):
        await s.think()
        await _move(page, s, glob, "move", 0.1, 0.85)
    if s.settings.layer_moves:
        await s.think()
        summary = page.locator('[data-testid="stExpander"] summary', has_text="Per-layer ratios")
        await summary.click(timeout=t)
        units = page.locator('[class*="st-key-prune_unit_"] input[type="range"]')
        try:
            await units.first.wait_for(state="visible", timeout=10_000)
        except Exception:
            s.record("layer_move_skipped", reason="no per-layer sliders (a table, or none)")
        else:
            # One layer, chosen per student; its slider is found by its label each time since
            # the key holds the global ratio (the element is redrawn).
            n = await units.count()
            i = s.rng.randrange(n)
            label = (
                await page.locator('[class*="st-key-prune_unit_"]')
                .nth(i)
                .get_attribute("class", timeout=t)
            )
            key_class = next(c for c in (label or "").split() if c.startswith("st-key-prune_unit_"))
            for _ in range(s.settings.layer_moves):
                await s.think()
                thumb = page.locator(f'.{key_class} input[type="range"]')
                await _move(page, s, thumb, "layer_move", 0.05, 0.9)
    await s.think()
    await page.evaluate("() => window.__pl.arm()")
    await page.get_by_role("button", name="Apply pruning").click(timeout=t)
    await page.locator('[data-testid="stAlertContentSuccess"]', has_text="Session model").wait_for(
        timeout=t
    )
    r = await _settle(page, s)
    s.record("apply", ms=r["idle"], phases=r)
    await _check(page, s, "Prune (applied)")


async def _finetune(page: Any, s: Student) -> None:
    """Fine-tune page: one epoch, Start, then what the page says about the job."""
    t = s.settings.action_timeout_ms
    await s.think()
    await _nav(page, s, "Fine-tune")
    epochs = page.locator(".st-key-ft_epochs input")
    # An unchanged value sends no rerun, so there would be nothing to wait for.
    if (await epochs.input_value(timeout=t)).strip() != "1":
        await epochs.fill("1", timeout=t)
        await page.evaluate("() => window.__pl.arm()")
        await epochs.press("Enter", timeout=t)
        await _settle(page, s)
    await page.evaluate("() => window.__pl.arm()")
    await page.get_by_role("button", name="Start fine-tuning").click(timeout=t)
    await _settle(page, s)
    # What the page says: waiting with a position, running, done, or refused (an error box).
    states = {
        "refused": '[data-testid="stAlertContentError"]:has-text("Cannot start")',
        "waiting": '[data-testid="stAlertContentInfo"]:has-text("Waiting in the queue")',
        "done": '[data-testid="stAlertContentSuccess"]:has-text("Done in")',
        "running": '[data-testid="stCaptionContainer"]:has-text("Running for")',
        "failed": '[data-testid="stAlertContentError"]:has-text("Failed")',
    }
    deadline = time.monotonic() + min(t / 1000, 60)
    state, text = "unknown", ""
    while time.monotonic() < deadline and state == "unknown":
        for name, sel in states.items():
            loc = page.locator(sel)
            if await loc.count():
                state, text = name, " ".join((await loc.first.inner_text()).split())
                break
        else:
            await asyncio.sleep(0.25)
    runner = page.locator('[data-testid="stCaptionContainer"]:has-text("Job runner:")')
    runner_text = (
        " ".join((await runner.first.inner_text()).split()) if await runner.count() else ""
    )
    m = POSITION_RE.search(text)
    s.job = {
        "state": state,
        "position": int(m.group(1)) if state == "waiting" and m else None,
        "text": text[:300],
        "one_line": "\n" not in text.strip(),
        "runner": runner_text,
    }
    if state in ("unknown", "failed"):
        s.errors.append(f"Fine-tune: the job's state was not shown as expected ({state}: {text})")
    await _check(page, s, "Fine-tune", allow=r"^Cannot start: .*queue is full")


async def run_student(browser: Any, url: str, s: Student, probe: str) -> None:
    """One student's whole visit in a fresh browser context; failures become errors."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    step = "open"
    try:
        await ctx.add_init_script(probe)
        page = await ctx.new_page()
        page.on("console", lambda m: s.console.append(m.text[:300]) if m.type == "error" else None)
        page.on("pageerror", lambda e: s.console.append(f"pageerror: {str(e)[:300]}"))
        await _open(page, s, url)
        await s.think()
        step = "pick model"
        await _pick_model(page, s)
        await s.think()
        step = "go to Prune"
        await _nav(page, s, "Prune")
        step = "prune"
        await _prune(page, s)
        if s.finetune:
            step = "fine-tune"
            await _finetune(page, s)
    except asyncio.CancelledError:
        s.errors.append(f"{step}: cut by the run's time bound")
        raise
    except Exception as e:
        first = " ".join(str(e).split())[:300]
        s.errors.append(f"{step}: {type(e).__name__}: {first}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.close(), 30)


# ---------------------------------------------------------------------------- one ws student

SIDEBAR_RE = re.compile(r"\*\*Model\*\* `([^`]+)`.*?\*\*Dataset\*\* `([^`]+)`", re.S)


def _ws_check(app: Any, s: Student, where: str, allow: str | None = None) -> None:
    """Record the error boxes on the page (but one matching `allow`) and protocol errors."""
    found = [f"{where}: {e}" for e in app.errors(allow)]
    found += [f"{where}: protocol: {e}" for e in app.protocol_errors]
    app.protocol_errors.clear()
    for msg in found:
        if msg not in s.errors:
            s.errors.append(msg)


async def _ws_move(app: Any, s: Student, key: str, kind: str, lo: float, hi: float) -> None:
    """Move slider `key` by one step of 0.05 (direction kept inside [lo, hi]); record slider ->
    redrawn preview (ws_client.Run.timings: `redrawn`) and slider -> estimate."""
    value = app.slider_value(key)
    if value <= lo:
        sign = 1
    elif value >= hi:
        sign = -1
    else:
        sign = s.rng.choice([1, -1])
    to = round(value + sign * 0.05, 2)
    before = app.metric("Remaining params")
    run = await app.set_slider(key, to)
    r = run.timings()
    if r["redrawn"] is None or app.metric("Remaining params") == before:
        s.errors.append(f"{kind} {value}->{to}: the preview's numbers did not change")
    s.record(kind, ms=r["redrawn"], estimate_ms=r["estimate"], from_value=value, to=to, phases=r)
    _ws_check(app, s, f"Prune ({kind})")


async def run_ws_student(url: str, s: Student) -> None:
    """One student's whole visit over Streamlit's websocket (benchmarks.ws_client); failures
    become errors of the student."""
    from benchmarks.ws_client import AppClient, job_state

    app = AppClient(url, timeout=s.settings.action_timeout_ms / 1000)
    step = "open"
    try:
        r = (await app.open()).timings()
        s.record("first_page", page="Model & data", ms=r["finished"], phases=r)
        _ws_check(app, s, "Model & data (opened)")
        await s.think()
        step = "pick model"
        if s.model != DEFAULT_MODEL:
            r = (await app.select("model_ref", s.model)).timings()
            s.record("pick", ms=r["finished"], phases=r)
        m = SIDEBAR_RE.search(" ".join(app.captions()))
        if not m or m.group(1) != s.model:
            raise StepError(f"after picking {s.model} the sidebar says: {m and m.group(0)}")
        s.dataset = m.group(2)
        _ws_check(app, s, "Model & data (picked)")
        await s.think()
        step = "go to Prune"
        r = (await app.goto("Prune")).timings()
        s.record("page", page="Prune", ms=r["finished"], phases=r)
        _ws_check(app, s, "Prune")
        step = "prune"
        for _ in range(s.settings.moves):
            await s.think()
            await _ws_move(app, s, "prune_ratio", "move", 0.1, 0.85)
        units = app.widgets("prune_unit_")
        if s.settings.layer_moves and not units:
            # The per-layer sliders are drawn while their expander is open: open it, as a
            # student clicks on it.
            with contextlib.suppress(KeyError):
                await s.think()
                await app.set_expander("prune_layers_open", True)
            units = app.widgets("prune_unit_")
        if s.settings.layer_moves and not units:
            s.record("layer_move_skipped", reason="no per-layer sliders (a table, or none)")
        elif s.settings.layer_moves:
            unit = s.rng.choice(units)
            top = float(unit.proto.max) - 0.05
            for _ in range(s.settings.layer_moves):
                await s.think()
                # By key: the per-layer sliders keep their keys when the global one moves.
                await _ws_move(app, s, unit.key, "layer_move", 0.05, top)
        await s.think()
        step = "apply"
        r = (await app.click("prune_apply")).timings()
        if not any(f == "success" and "Session model" in t for f, t in app.alerts()):
            raise StepError(f"Apply pruning: no 'Session model' box; alerts {app.alerts()}")
        s.record("apply", ms=r["finished"], phases=r)
        _ws_check(app, s, "Prune (applied)")
        if s.finetune:
            step = "fine-tune"
            await s.think()
            r = (await app.goto("Fine-tune")).timings()
            s.record("page", page="Fine-tune", ms=r["finished"], phases=r)
            el = app.widget("ft_epochs")
            if float(el.proto.value if el.proto.set_value else el.proto.default) != 1:
                await app.set_number("ft_epochs", 1)
            await app.click("ft_start")
            t0 = time.monotonic()
            job = job_state(app)
            timeline = [[0.0, job["state"], job["position"]]]

            def seen(_run: Any) -> None:
                j = job_state(app)
                if [j["state"], j["position"]] != timeline[-1][1:]:
                    timeline.append([round(time.monotonic() - t0, 1), j["state"], j["position"]])

            # As an open browser tab: the jobs panels poll by themselves (auto-reruns).
            polls = await app.follow(s.settings.linger_s, on_run=seen)
            s.job = {**job, "timeline": timeline, "polls": polls, "final": job_state(app)}
            if job["state"] in ("unknown", "failed"):
                s.errors.append(f"Fine-tune: the job's state was not shown as expected: {job}")
            _ws_check(app, s, "Fine-tune", allow=r"^Cannot start: .*queue is full")
    except asyncio.CancelledError:
        s.errors.append(f"{step}: cut by the run's time bound")
        raise
    except Exception as e:
        first = " ".join(str(e).split())[:300]
        s.errors.append(f"{step}: {type(e).__name__}: {first}")
    finally:
        s.messages = app.messages
        await app.close()


async def _ws_warm(url: str, s: Student) -> None:
    from benchmarks.ws_client import AppClient

    app = AppClient(url, timeout=s.settings.action_timeout_ms / 1000)
    try:
        r = (await app.open()).timings()
        s.record("first_page", page="Model & data", ms=r["finished"], phases=r)
    except Exception as e:
        s.errors.append(f"warm-up: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    finally:
        await app.close()


async def _ws_observe_runner(url: str, timeout_s: float) -> str:
    """The job runner's line on the Fine-tune page, seen by a fresh ws session."""
    from benchmarks.ws_client import AppClient

    app = AppClient(url, timeout=timeout_s)
    try:
        await app.open()
        await app.goto("Fine-tune")
        return next((c for c in app.captions() if c.startswith("Job runner:")), "(no line)")
    except Exception as e:
        return f"(not read: {type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        await app.close()


# ---------------------------------------------------------------------------- one level


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None when there is nothing to summarise."""
    return float(np.percentile(values, q)) if values else None


def _stats(values: list[float | None]) -> dict[str, Any]:
    v = [float(x) for x in values if x is not None]
    p50, p95 = pct(v, 50), pct(v, 95)
    return {
        "n": len(v),
        "p50": None if p50 is None else round(p50, 1),
        "p95": None if p95 is None else round(p95, 1),
        "max": round(max(v), 1) if v else None,
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95 of every measured action and of the phases of the slider moves."""

    def of(kind: str, key: str = "ms") -> list[float | None]:
        return [r.get(key) for r in records if r["kind"] == kind]

    def phase(kinds: tuple[str, ...], key: str) -> dict[str, Any]:
        return _stats([r["phases"].get(key) for r in records if r["kind"] in kinds])

    moves = ("move", "layer_move")
    return {
        "first_page_ms": _stats(of("first_page")),
        "page_switch_ms": _stats(of("page")),
        "pick_model_ms": _stats(of("pick")),
        "preview_global_ms": _stats(of("move")),
        "preview_layer_ms": _stats(of("layer_move")),
        "preview_all_ms": _stats([r["ms"] for r in records if r["kind"] in moves]),
        "estimate_ms": _stats([r["estimate_ms"] for r in records if r["kind"] in moves]),
        "estimate_final_ms": phase(moves, "estimate_final"),
        "estimate_final_images": _stats(
            [r["phases"].get("estimate_final_images") for r in records if r["kind"] in moves]
        ),
        "move_done_ms": phase(moves, "idle"),
        "apply_ms": _stats(of("apply")),
        "phases": {
            k: phase(moves, k)
            for k in (
                "send",
                "started",
                "first_delta",
                "first_metric_delta",
                "preview",
                "last_chart_delta",
                "redrawn",
                "estimate",
                "estimate_final",
                "finished",
                "idle",
                "longtask_ms",
                "server_preview_ms",
                "server_estimate_ms",
                "probe_ms",
            )
        },
        "first_page_phases": {
            k: phase(("first_page",), k)
            for k in (
                "doc_ttfb",
                "scripts_received",
                "dcl",
                "send",
                "new_session",
                "first_delta",
                "title",
                "finished",
                "idle",
                "interactive",
                "longtask_ms",
            )
        },
    }


async def _observe_runner(browser: Any, url: str, probe: str, timeout_ms: float) -> str:
    """The job runner's line on the Fine-tune page, seen by a fresh session at the level's end."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        await ctx.add_init_script(probe)
        page = await ctx.new_page()
        await page.goto(f"{url}/finetune", wait_until="commit", timeout=timeout_ms)
        cap = page.locator('[data-testid="stCaptionContainer"]:has-text("Job runner:")').first
        return " ".join((await cap.inner_text(timeout=timeout_ms)).split())
    except Exception as e:
        return f"(not read: {type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.close(), 30)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def host_speed_ms(repeats: int = 5) -> dict[str, float]:
    """Time a fixed single-threaded workload (a Python loop and zlib over 4 MiB): the host's
    speed when a level starts and ends, best and median of `repeats`, in ms (lower = faster).

    On a shared virtual machine the same code measured slider -> preview p50 of 118-156 ms and
    70-101 ms a quarter of an hour apart, with a quiet load average both times: this number
    says which kind of minutes a run had, so runs compare (a noisy neighbour shows as a median
    well above the best, or a best above other runs' best).
    """
    import zlib

    block = bytes(range(256)) * 16384  # 4 MiB
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        acc = 0
        for i in range(300_000):
            acc += i * i % 7
        zlib.compress(block, 6)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"best": round(times[0], 1), "median": round(times[len(times) // 2], 1)}


async def run_level(
    browser: Any,
    client: str,
    n: int,
    models: list[str],
    args: argparse.Namespace,
    deadline: float,
    probe: str,
    code: Path,
) -> dict[str, Any]:
    """Start a fresh server, warm it, run `n` students at once (or one student through every
    model when `n` is 1), stop the server; return the level's measurements.

    Args:
        browser: The shared Chromium (None with the ws client).
        client: "ws" (benchmarks.ws_client) or "browser" (a Playwright context per student).
    """
    settings = Settings(
        moves=args.solo_moves if n == 1 else args.moves,
        layer_moves=args.layer_moves,
        think=args.think,
        action_timeout_ms=args.action_timeout * 1000,
        seed=args.seed,
        linger_s=args.linger if client == "ws" else 0.0,
    )
    level: dict[str, Any] = {
        "students": n,
        "client": client,
        "loadavg_start": _loadavg(),
        "host_speed_start_ms": host_speed_ms(),
    }

    def student(url: str, s: Student) -> Awaitable[None]:
        if client == "ws":
            return run_ws_student(url, s)
        return run_student(browser, url, s, probe)

    students: list[Student] = []
    t_level = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix=f"load-{n}-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        server = Server(home=Path(tmp) / "home", log=Path(tmp) / "server.log", code=code)
        try:
            server.start(timeout=min(120.0, max(deadline - time.monotonic(), 1.0)))
            assert server.proc is not None
            level["server_start_s"] = round(server.started_s, 1)
            level["server_rss_mib_before_warmup"] = round(tree_rss(server.proc.pid) / 2**20, 1)
            # Warm-up: the first page after a start imports torch and fills the shared caches;
            # a teacher opens the app before the class does. Measured and reported apart.
            warm = Student(-1, DEFAULT_MODEL, False, settings, random.Random(0))
            await asyncio.wait_for(
                _ws_warm(server.url, warm)
                if client == "ws"
                else _warm(browser, server.url, warm, probe),
                max(deadline - time.monotonic(), 1.0),
            )
            level["cold_first_page_ms"] = next(
                (r["ms"] for r in warm.records if r["kind"] == "first_page"), None
            )
            level["warmup_errors"] = warm.errors
            level["settle_s"] = round(await settle(server.proc.pid), 1)
            sampler = Sampler(server.proc.pid, server.url)
            stop = asyncio.Event()
            sampling = asyncio.create_task(sampler.run(stop))
            stack.callback(stop.set)
            rng = random.Random(f"{args.seed}-{n}")
            if n == 1:
                if args.profile_moves and client == "browser":
                    level["browser_profile"] = await asyncio.wait_for(
                        profile_moves(
                            browser, server.url, probe, settings, args.profile_moves, models[0]
                        ),
                        max(deadline - time.monotonic(), 1.0),
                    )
                # The fine-tune comes last: a job running while the next model is measured
                # would take the cores from the single-user numbers.
                last = len(models) - 1
                plan = [(0, m, i == last and args.finetune_share > 0) for i, m in enumerate(models)]
            else:
                k = round(args.finetune_share * n)
                tuners = set(rng.sample(range(n), k))
                plan = [(i, models[i % len(models)], i in tuners) for i in range(n)]
            students = [
                Student(i, m, ft, settings, random.Random(f"{args.seed}-{n}-{j}"))
                for j, (i, m, ft) in enumerate(plan)
            ]
            t0 = time.monotonic()
            if n == 1:
                work: Awaitable[Any] = _one_by_one(student, server.url, students)
            else:
                work = asyncio.gather(
                    *(
                        _after(
                            rng.uniform(0, n * args.ramp),
                            student(server.url, s),
                        )
                        for s in students
                    )
                )
            try:
                await asyncio.wait_for(work, max(deadline - time.monotonic(), 1.0))
                level["cut_by_time_bound"] = False
            except TimeoutError:
                level["cut_by_time_bound"] = True
            level["students_seconds"] = round(time.monotonic() - t0, 1)
            level["runner_at_end"] = await (
                _ws_observe_runner(server.url, min(args.action_timeout, 30.0))
                if client == "ws"
                else _observe_runner(
                    browser, server.url, probe, min(settings.action_timeout_ms, 30_000)
                )
            )
            stop.set()
            await sampling
            level["jobs_in_store"] = server.jobs_in_store()
            level["resources"] = sampler.summary()
            level["server_alive_at_end"] = server.proc.poll() is None
        except Exception as e:
            level["failed"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
            level["server_log_tail"] = server.tail()
        finally:
            server.stop()
    records = [r for s in students for r in s.records]
    level["summary"] = summarise(records)
    level["per_model"] = {m: summarise([r for r in records if r["model"] == m]) for m in models}
    level["errors"] = [f"student {s.index} ({s.model}): {e}" for s in students for e in s.errors]
    level["console_errors"] = [f"student {s.index}: {c}" for s in students for c in s.console]
    level["jobs"] = [{"student": s.index, "model": s.model, **s.job} for s in students if s.job]
    level["client_messages"] = sum(s.messages for s in students)
    level["datasets"] = {s.model: s.dataset for s in students if s.dataset}
    level["records"] = records
    level["reruns"] = len(records)
    level["loadavg_end"] = _loadavg()
    level["host_speed_end_ms"] = host_speed_ms()
    level["wall_s"] = round(time.monotonic() - t_level, 1)
    return level


async def profile_moves(
    browser: Any, url: str, probe: str, settings: Settings, moves: int, model: str = DEFAULT_MODEL
) -> dict[str, Any]:
    """One extra session on `model` (the first of --models), not counted in the statistics, with Chrome's
    sampling profiler on during `moves` global slider moves: where the browser's main thread
    spends a move, by script (Streamlit's bundle, the Plotly chunk...) and by function.

    "(program)" is the browser's own work outside JavaScript (style, layout, paint, parsing);
    "(garbage collector)" is V8's GC. Idle time is left out.
    """
    s = Student(-2, model, False, settings, random.Random(settings.seed))
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        await ctx.add_init_script(probe)
        page = await ctx.new_page()
        await _open(page, s, url)
        await _pick_model(page, s)
        await _nav(page, s, "Prune")
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Profiler.enable")
        await cdp.send("Profiler.setSamplingInterval", {"interval": 500})  # microseconds
        await cdp.send("Profiler.start")
        glob = page.locator('.st-key-prune_ratio input[type="range"]')
        for _ in range(moves):
            await s.think()
            await _move(page, s, glob, "move", 0.1, 0.85)
        profile = (await cdp.send("Profiler.stop"))["profile"]
    except Exception as e:
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.close(), 30)
    out = summarise_profile(profile, moves)
    out["moves"] = [
        {k: r["phases"][k] for k in ("preview", "estimate", "idle", "longtask_ms")}
        for r in s.records
        if r["kind"] == "move"
    ]
    return out


def summarise_profile(profile: dict[str, Any], moves: int) -> dict[str, Any]:
    """Self time (ms per move) of a CDP CPU profile by script file and by function."""
    nodes = {n["id"]: n["callFrame"] for n in profile["nodes"]}
    deltas = profile.get("timeDeltas") or []
    samples = profile.get("samples") or []
    by_script: dict[str, float] = {}
    by_function: dict[str, float] = {}
    # A sample lasts until the next one: its duration is the next sample's time delta (us).
    for i, node in enumerate(samples):
        us = deltas[i + 1] if i + 1 < len(deltas) else 0
        frame = nodes[node]
        name = frame.get("functionName") or "(anonymous)"
        if name == "(idle)":
            continue
        url = frame.get("url") or ""
        script = url.rsplit("/", 1)[-1].split("?")[0].split(".")[0] if url else name
        by_script[script] = by_script.get(script, 0.0) + us / 1000
        fn = f"{name} ({script})" if url else name
        by_function[fn] = by_function.get(fn, 0.0) + us / 1000

    def top(d: dict[str, float], k: int) -> list[list[Any]]:
        return [[n, round(v / moves, 1)] for n, v in sorted(d.items(), key=lambda x: -x[1])[:k]]

    return {
        "busy_ms_per_move": round(sum(by_script.values()) / moves, 1),
        "by_script": top(by_script, 10),
        "by_function": top(by_function, 15),
    }


async def _after(delay: float, coro: Awaitable[Any]) -> Any:
    await asyncio.sleep(delay)
    return await coro


async def _warm(browser: Any, url: str, s: Student, probe: str) -> None:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        await ctx.add_init_script(probe)
        page = await ctx.new_page()
        await _open(page, s, url)
    except Exception as e:
        s.errors.append(f"warm-up: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.close(), 30)


async def _one_by_one(
    student: Callable[[str, Student], Awaitable[None]], url: str, students: list[Student]
) -> None:
    for s in students:
        await student(url, s)


# ---------------------------------------------------------------------------- report


def _fmt(v: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if v is None else f"{v / scale:,.{digits}f}"


def _pp(st: dict[str, Any], scale: float = 1.0, digits: int = 0) -> str:
    """A `_stats` summary as "p50 / p95 (n=...)", scaled and rounded."""
    if not st["n"]:
        return "-"
    return f"{_fmt(st['p50'], scale, digits)} / {_fmt(st['p95'], scale, digits)} (n={st['n']})"


def _verdict(measured: float | None, goal: float) -> str:
    if measured is None:
        return "not measured"
    return "pass" if measured < goal else "**miss**"


def _jobs_line(level: dict[str, Any]) -> str:
    jobs = level.get("jobs", [])
    if not jobs:
        return "none started"
    count: dict[str, int] = {}
    for j in jobs:
        count[j["state"]] = count.get(j["state"], 0) + 1
    positions = sorted(j["position"] for j in jobs if j["position"] is not None)
    parts = [f"{v} {k}" for k, v in sorted(count.items())]
    if positions:
        parts.append("positions " + ", ".join(map(str, positions)))
    return "; ".join(parts)


def _queue_line(level: dict[str, Any]) -> str:
    """How the queue moved while the ws students who started a fine-tune stayed: each one's
    states in order (e.g. "waiting 3 -> running"), counted."""
    seen: dict[str, int] = {}
    for j in level.get("jobs", []):
        steps = [f"{st} {pos}" if pos is not None else st for _, st, pos in j.get("timeline", [])]
        if steps:
            path = " -> ".join(steps)
            seen[path] = seen.get(path, 0) + 1
    if not seen:
        return "-"
    return "; ".join(f"{n}x {path}" for path, n in sorted(seen.items(), key=lambda x: -x[1]))


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The acceptance targets of issue 13 against this run."""
    rows: list[dict[str, Any]] = []
    levels = {lv["students"]: lv for lv in doc["levels"] if "summary" in lv}
    solo = levels.get(1)
    if solo:
        rows.append(
            {
                "target": "first page interactive p50, 1 student",
                "unit": "s",
                "measured": _div(solo["summary"]["first_page_ms"]["p50"], 1000),
                "goal": TARGET_FIRST_PAGE_S,
            }
        )
        for m, sm in solo["per_model"].items():
            pv, est = sm["preview_all_ms"], sm["estimate_ms"]
            rows += [
                {
                    "target": f"slider -> preview p50, {m}",
                    "unit": "ms",
                    "measured": pv["p50"],
                    "goal": TARGET_PREVIEW_P50_MS,
                },
                {
                    "target": f"slider -> preview p95, {m}",
                    "unit": "ms",
                    "measured": pv["p95"],
                    "goal": TARGET_PREVIEW_P95_MS,
                },
                {
                    "target": f"accuracy estimate first shown p50, {m}",
                    "unit": "ms",
                    "measured": est["p50"],
                    "goal": TARGET_ESTIMATE_P50_MS,
                },
            ]
    loaded = levels.get(LOADED_STUDENTS)
    if loaded:
        rows.append(
            {
                "target": f"slider -> preview p95, {LOADED_STUDENTS} students",
                "unit": "ms",
                "measured": loaded["summary"]["preview_all_ms"]["p95"],
                "goal": TARGET_LOADED_PREVIEW_P95_MS,
            }
        )
        rows.append(
            {
                "target": f"errors, {LOADED_STUDENTS} students",
                "unit": "",
                "measured": float(len(loaded["errors"])),
                "goal": 0.5,
            }
        )
        unknown = [
            j
            for j in loaded["jobs"]
            if j["state"] not in ("running", "waiting", "refused", "done") or not j["one_line"]
        ]
        rows.append(
            {
                "target": f"every job running, waiting with position or refused in one "
                f"line, {LOADED_STUDENTS} students",
                "unit": "jobs not so",
                "measured": float(len(unknown)),
                "goal": 0.5,
            }
        )
    for r in rows:
        r["result"] = _verdict(r["measured"], r["goal"])
    return rows


def _div(v: float | None, d: float) -> float | None:
    return None if v is None else round(v / d, 2)


def render_section(doc: dict[str, Any]) -> str:
    """The markdown section for benchmarks/results.md."""
    levels = doc["levels"]
    names = [f"{lv['students']} student{'s' if lv['students'] > 1 else ''}" for lv in levels]
    by_client: dict[str, list[str]] = {}
    for lv in levels:
        by_client.setdefault(lv.get("client", "browser"), []).append(str(lv["students"]))
    kinds = {"ws": "websocket clients", "browser": "Playwright"}
    out = [
        SECTION_TITLE
        + "; ".join(
            f"{', '.join(ns)} student{'s' if ns != ['1'] else ''}: {kinds.get(c, c)}"
            for c, ns in by_client.items()
        )
        + ")",
        "",
        f"- date: {doc['date']}; command: `{doc['command']}`; whole run {doc['seconds']:.0f} s; "
        f"code served: {doc.get('code', '?')}",
        f"- machine: {doc['machine']['cpu_count']} cores, load average at start "
        f"{doc['machine']['loadavg_start']}, at end {doc['machine']['loadavg_end']}; "
        f"Chromium {doc['machine'].get('chromium', '?')}, Streamlit {doc['machine']['streamlit']}",
        f"- each level: a fresh server (`python -m pruning_core app --host 127.0.0.1`, its own "
        f"PRUNING_LAB_HOME, the job runner's default settings), opened once to warm it, left to "
        "settle (its start-up warm-up of the sample models done: under 0.15 core for 2 s, at "
        f"most 90 s), then the students; {doc['settings']['moves']} global slider moves "
        f"({doc['settings']['solo_moves']} per model with one student) and "
        f"{doc['settings']['layer_moves']} moves of one layer's slider each, think time "
        f"{doc['settings']['think'][0]}-{doc['settings']['think'][1]} s, arrivals spread over "
        f"{doc['settings']['ramp']:g} s per student (30 students arrive within "
        f"{30 * doc['settings']['ramp']:g} s), {doc['settings']['finetune_share']:.0%} of the "
        "students start a one-epoch fine-tune after applying (with one student, in the last "
        "round). With 1 student, one session per sample model in turn; with more, models dealt "
        "round-robin.",
    ]
    if "ws" in by_client:
        out.append(
            f"- **websocket clients** ({', '.join(by_client['ws'])} students): each student is a "
            "Streamlit session driven from this Python process over the app's own websocket "
            "protocol (`benchmarks/ws_client.py`), no browser, so the cores go to the server. "
            "Slider -> preview is the rerun request -> the last of the preview's metrics and "
            "charts received (the browser's drawing, tens of ms, is not in it); page loads are "
            "connection opened -> the run's script_finished. Students who started a fine-tune "
            f"stay {doc['settings'].get('linger_s', 0):g} s polling the jobs panels as an open "
            "tab does."
        )
    if "browser" in by_client:
        out.append(
            f"- **Playwright** ({', '.join(by_client['browser'])} students): headless Chromium "
            "on the same cores as the server; with many students the browsers take CPU from the "
            "server (client cores below), so such numbers are pessimistic for a classroom where "
            "each student has a machine"
            + (f" ({doc['browser_nice']})" if doc.get("browser_nice") else "")
            + "."
        )
    out += [
        "- The machine may be shared with other work: its CPU is in the rest-of-machine row.",
        "",
        "### Targets",
        "",
        "| target | measured | goal | result |",
        "| --- | --- | --- | --- |",
    ]
    for t in targets(doc):
        meas = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}".strip()
        out.append(f"| {t['target']} | {meas} | < {t['goal']:g} | {t['result']} |")
    out += ["", "### Per level (times: p50 / p95, n = samples)", ""]
    out.append("| | " + " | ".join(names) + " |")
    out.append("| --- |" + " --- |" * len(levels))

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for lv in levels:
            try:
                cells.append(fn(lv))
            except (KeyError, TypeError):
                cells.append("-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    row("students are", lambda lv: kinds.get(lv.get("client", "browser"), "?"))
    row(
        "cold first page after the server started (s)",
        lambda lv: _fmt(lv.get("cold_first_page_ms"), 1000, 2),
    )
    row("then settled in (s)", lambda lv: _fmt(lv.get("settle_s"), 1, 1))
    row("first page interactive (s)", lambda lv: _pp(lv["summary"]["first_page_ms"], 1000, 2))
    row("page switch (s)", lambda lv: _pp(lv["summary"]["page_switch_ms"], 1000, 2))
    row("pick a model, rerun done (s)", lambda lv: _pp(lv["summary"]["pick_model_ms"], 1000, 2))
    row("slider -> preview, global (ms)", lambda lv: _pp(lv["summary"]["preview_global_ms"]))
    row("slider -> preview, per-layer (ms)", lambda lv: _pp(lv["summary"]["preview_layer_ms"]))
    row(
        "slider -> accuracy estimate first shown (ms)",
        lambda lv: _pp(lv["summary"]["estimate_ms"]),
    )
    row(
        "slider -> accuracy estimate final, after its refinements (ms)",
        lambda lv: (
            _pp(lv["summary"]["estimate_final_ms"])
            + f", on {_fmt(lv['summary']['estimate_final_images']['p50'])} images"
        ),
    )
    row(
        "slider -> rerun done (ms; browser: status widget gone, ws: script_finished)",
        lambda lv: _pp(lv["summary"]["move_done_ms"]),
    )
    row("Apply pruning (s)", lambda lv: _pp(lv["summary"]["apply_ms"], 1000, 2))
    row("errors (students' steps)", lambda lv: str(len(lv["errors"])))
    row("browser console errors", lambda lv: str(len(lv["console_errors"])))
    row("fine-tunes as the page showed them", _jobs_line)
    row("the queue while the students stayed (ws: --linger)", _queue_line)
    row("job runner at the level's end", lambda lv: lv.get("runner_at_end") or "-")
    row(
        "fine-tune runs in the store at the end",
        lambda lv: ", ".join(f"{v} {k}" for k, v in lv["jobs_in_store"].items()) or "none",
    )
    row(
        "server RSS (MiB): started / warm, students start / peak / end",
        lambda lv: "{:,.0f} / {start:,.0f} / {peak:,.0f} / {end:,.0f}".format(
            lv["server_rss_mib_before_warmup"], **lv["resources"]["server_rss_mib"]
        ),
    )
    row(
        "server RSS growth per student, peak over warm (MiB)",
        lambda lv: "{:,.1f}".format(
            (lv["resources"]["server_rss_mib"]["peak"] - lv["resources"]["server_rss_mib"]["start"])
            / lv["students"]
        ),
    )
    row(
        "CPU, cores on average: server / client (this harness, + Chromium and Playwright for "
        "the browser) / rest of machine",
        lambda lv: "{server_cores:.2f} / {client_cores:.2f} / {other_cores:.2f}".format(
            **lv["resources"]
        ),
    )
    row(
        "share of seconds the server used >= 0.9 core",
        lambda lv: f"{lv['resources']['server_busy_share']:.0%}",
    )
    row(
        "server health check answered in (ms; its event loop's lag)",
        lambda lv: (
            _pp(lv["resources"]["health_ms"])
            + (
                f", {lv['resources']['health_failures']} unanswered in 10 s"
                if lv["resources"]["health_failures"]
                else ""
            )
        ),
    )
    row(
        "server CPU seconds per measured rerun (fine-tune jobs included)",
        lambda lv: f"{lv['resources']['server_cpu_s'] / max(lv['reruns'], 1):.2f}",
    )
    row(
        "client memory peak (PSS, MiB: harness, + Chromium and Playwright for the browser)",
        lambda lv: f"{lv['resources']['client_pss_peak_mib']:,.0f}",
    )
    row("load average start -> end", lambda lv: f"{lv['loadavg_start']} -> {lv['loadavg_end']}")
    row(
        "host speed check, best / median of 5 (ms, lower = faster; `host_speed_ms`): start -> end",
        lambda lv: (
            " -> ".join(
                f"{h['best']:g} / {h['median']:g}"
                for h in (lv["host_speed_start_ms"], lv["host_speed_end_ms"])
            )
            if "host_speed_start_ms" in lv
            else "-"
        ),
    )
    row(
        "wall time (s)",
        lambda lv: (
            f"{lv['wall_s']:.0f}"
            + (" (cut by the time bound)" if lv.get("cut_by_time_bound") else "")
        ),
    )

    solo = next((lv for lv in levels if lv["students"] == 1 and "per_model" in lv), None)
    if solo:
        out += [
            "",
            "### One student, per sample model",
            "",
            f"| model | dataset | first page p50 (s) | < {TARGET_FIRST_PAGE_S:g} | pick model (s) "
            f"| slider -> preview p50 (ms) | < {TARGET_PREVIEW_P50_MS:g} | p95 (ms) "
            f"| < {TARGET_PREVIEW_P95_MS:g} | estimate first shown p50 (ms) "
            f"| < {TARGET_ESTIMATE_P50_MS:g} | estimate final p50 (ms) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m, sm in solo["per_model"].items():
            fp = _div(sm["first_page_ms"]["p50"], 1000)
            pv, est = sm["preview_all_ms"], sm["estimate_ms"]
            out.append(
                f"| {m} | {solo['datasets'].get(m, '-')} | {_fmt(fp, 1, 2)} "
                f"| {_verdict(fp, TARGET_FIRST_PAGE_S)} "
                f"| {_fmt(sm['pick_model_ms']['p50'], 1000, 2)} "
                f"| {_fmt(pv['p50'])} | {_verdict(pv['p50'], TARGET_PREVIEW_P50_MS)} "
                f"| {_fmt(pv['p95'])} | {_verdict(pv['p95'], TARGET_PREVIEW_P95_MS)} "
                f"| {_fmt(est['p50'])} | {_verdict(est['p50'], TARGET_ESTIMATE_P50_MS)} "
                f"| {_fmt(sm['estimate_final_ms']['p50'])} |"
            )
    out += [
        "",
        "### Where a slider move's time goes (p50 ms from the key press)",
        "",
        "Taken in the page: the rerun request leaving the websocket, the first element delta "
        "back (the server started the page's script), the first metric delta (the server has "
        "the preview), the preview number changed in the DOM, the last chart delta, the "
        "estimate metric filled, the script-finished message, the status widget gone; "
        "long tasks = main-thread work over 50 ms in the browser during the move (chart drawing, "
        "React); server preview/estimate = what the page's caption says the computation took. "
        "With the websocket clients there is no page: every row is when the message arrived "
        '(preview number = the "Remaining params" metric\'s delta, preview redrawn = the last '
        "of the preview's metrics and charts), and there is no status widget (its row is the "
        "script-finished message).",
        "",
        "| phase | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(levels),
    ]
    labels = {
        "send": "rerun request sent",
        "first_delta": "first element delta received",
        "first_metric_delta": "first metric delta received",
        "preview": "preview number changed (DOM)",
        "last_chart_delta": "last chart delta received",
        "redrawn": "preview redrawn: all its metrics and charts received (ws)",
        "estimate": "estimate metric first shown (DOM)",
        "estimate_final": "estimate metric final (DOM)",
        "finished": "script finished received",
        "idle": "status widget gone",
        "longtask_ms": "browser long tasks during the move (ms)",
        "server_preview_ms": "server: preview computed in (caption)",
        "server_estimate_ms": "server: estimate computed in (caption)",
        "probe_ms": "this probe's own time in the page (ms)",
    }
    for k, label in labels.items():
        row(label, functools.partial(_phase_p50, "phases", k))
    out += ["", "First page (p50 ms from navigation start):", ""]
    out += ["| phase | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(levels)]
    fp_labels = {
        "doc_ttfb": "HTML's first byte from the server",
        "scripts_received": "last JavaScript file of the first paint received",
        "dcl": "HTML + JS parsed (DOMContentLoaded)",
        "send": "first rerun request sent (websocket open)",
        "first_delta": "first element delta received",
        "title": "title shown",
        "finished": "script finished received",
        "interactive": "interactive (status widget gone)",
        "longtask_ms": "browser long tasks (ms)",
    }
    for k, label in fp_labels.items():
        row(label, functools.partial(_phase_p50, "first_page_phases", k))
    prof = next((lv["browser_profile"] for lv in levels if lv.get("browser_profile")), None)
    if prof and "error" not in prof:
        out += [
            "",
            "### The browser's main thread during a move (Chrome's profiler, one student)",
            "",
            f"An extra session on {DEFAULT_MODEL} before the single-student rounds, not in the "
            f"statistics: {len(prof['moves'])} global moves with the sampling profiler on; "
            f"{prof['busy_ms_per_move']:.0f} ms of main-thread work per move. Self time per "
            "move by script (PlotlyChart = the Plotly chunk, index = Streamlit's app and React, "
            "(program) = style, layout, paint and parsing outside JavaScript):",
            "",
            "| script | ms per move |",
            "| --- | --- |",
            *[f"| {n} | {v:g} |" for n, v in prof["by_script"]],
            "",
            "Top functions (self time, ms per move): "
            + "; ".join(f"{n} {v:g}" for n, v in prof["by_function"][:10])
            + ".",
        ]
    elif prof:
        out += ["", f"Browser profile: not taken ({prof['error']})."]
    jobs = [(lv["students"], j) for lv in levels for j in lv.get("jobs", [])]
    if jobs:
        out += ["", "### Fine-tunes: what each student's page said right after Start", ""]
        out += [
            "| students | student | model | state | position | page text (one line) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for n, j in jobs:
            text = j["text"].replace("|", "/")[:160]
            out.append(
                f"| {n} | {j['student']} | {j['model']} | {j['state']} "
                f"| {j['position'] or '-'} | {text} |"
            )
    errs = [(lv["students"], e) for lv in levels for e in lv["errors"]]
    fails = [(lv["students"], lv["failed"]) for lv in levels if lv.get("failed")]
    out += ["", "### Errors", ""]
    if not errs and not fails:
        out.append("None: no exception boxes, no error boxes, no step timed out.")
    for n, e in fails:
        out.append(f"- {n} students: the level failed: {e}")
    for n, e in errs[:12]:
        out.append(f"- {n} students: {e}")
    if len(errs) > 12:
        out.append(f"- ... {len(errs) - 12} more in the JSON")
    cons = [(lv["students"], c) for lv in levels for c in lv["console_errors"]]
    if cons:
        out += ["", "Browser console errors (first few):", ""]
        out += [f"- {n} students: {c}" for n, c in cons[:6]]
    notes = doc.get("notes") or []
    if notes:
        out += ["", "### Notes", ""] + [f"- {x}" for x in notes]
    return "\n".join(out) + "\n"


def _phase_p50(group: str, key: str, level: dict[str, Any]) -> str:
    return _fmt(level["summary"][group][key]["p50"])


def replace_section(md_path: Path, section: str) -> None:
    """Put `section` into the markdown file in place of an earlier one (from its heading to the
    next `## ` heading), or at its end; the rest of the file is left as it is."""
    old = md_path.read_text() if md_path.exists() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(SECTION_TITLE)), None)
    if start is None:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(md_path)


# ---------------------------------------------------------------------------- main


def _chromium_version() -> str:
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


async def run_all(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every level in turn, one shared Chromium; the document written to JSON."""
    import streamlit

    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    probe = probe_script()
    clients = {client_for(n, args.client) for n in args.students}
    doc: dict[str, Any] = {
        "schema": 1,
        "command": command,
        "settings": {
            "students": args.students,
            "models": args.models,
            "moves": args.moves,
            "solo_moves": args.solo_moves,
            "layer_moves": args.layer_moves,
            "think": list(args.think),
            "ramp": args.ramp,
            "finetune_share": args.finetune_share,
            "action_timeout_s": args.action_timeout,
            "max_seconds": args.max_seconds,
            "browser_nice": args.browser_nice,
            "client": args.client,
            "linger_s": args.linger,
            "seed": args.seed,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "python": sys.version.split()[0],
            "streamlit": streamlit.__version__,
            "chromium": _chromium_version() if "browser" in clients else "not used",
        },
        "levels": [],
        "notes": [],
    }
    with contextlib.ExitStack() as stack:
        code = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-code-")))
        doc["code"] = snapshot_code(code, args.code)
        log(f"serving {doc['code']} from a copy in {code}")
        await _levels(args, doc, deadline, probe, code)
    doc["machine"]["loadavg_end"] = _loadavg()
    doc["seconds"] = round(time.monotonic() - t0, 1)
    doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return doc


def client_for(n: int, choice: str) -> str:
    """The kind of student a level of `n` uses: `choice`, or with "auto" the browser below 10
    students (the single-user numbers include the browser's drawing) and ws from 10 on (30
    Chromium renderers would take the server's cores)."""
    if choice != "auto":
        return choice
    return "browser" if n < 10 else "ws"


async def _levels(
    args: argparse.Namespace, doc: dict[str, Any], deadline: float, probe: str, code: Path
) -> None:
    clients = {n: client_for(n, args.client) for n in args.students}
    async with contextlib.AsyncExitStack() as stack:
        browser = None
        if "browser" in clients.values():
            from playwright.async_api import async_playwright

            p = await stack.enter_async_context(async_playwright())
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            stack.push_async_callback(browser.close)
            if args.browser_nice:
                doc["browser_nice"] = nice_browser(args.browser_nice)
                log(doc["browser_nice"])
        for n in args.students:
            left = deadline - time.monotonic()
            if left < 60:
                doc["notes"].append(f"{n} students: not run, {left:.0f} s left of the bound")
                continue
            log(f"level {n} ({clients[n]} client): starting ({left:.0f} s left)")
            level = await run_level(
                browser, clients[n], n, args.models, args, deadline, probe, code
            )
            doc["levels"].append(level)
            s = level["summary"]
            log(
                f"level {n}: {level['wall_s']} s, preview p50/p95 "
                f"{s['preview_all_ms']['p50']}/{s['preview_all_ms']['p95']} ms, "
                f"errors {len(level['errors'])}"
                + (f", FAILED {level['failed']}" if level.get("failed") else "")
            )


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[load_test {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers") from e
    if not out or any(x < 1 or x > 100 for x in out):
        raise argparse.ArgumentTypeError(f"{text!r}: each level between 1 and 100 students")
    return out


def _models(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in out if m not in SAMPLE_MODELS]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"models among {', '.join(SAMPLE_MODELS)}; got {text!r}")
    return out


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: two numbers, e.g. 0.5,1.5") from e
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: 0 <= low <= high")
    return lo, hi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.load_test", description=(__doc__ or "").splitlines()[0]
    )
    ap.add_argument(
        "--students",
        type=_ints,
        default=[1, 10, 30],
        help="levels run in turn, each on a fresh server (default 1,10,30)",
    )
    ap.add_argument(
        "--models",
        type=_models,
        default=list(SAMPLE_MODELS),
        help="sample models, dealt round-robin (default all four)",
    )
    ap.add_argument("--moves", type=int, default=6, help="global slider moves per student")
    ap.add_argument(
        "--solo-moves",
        type=int,
        default=10,
        help="global slider moves per model with one student (the per-model p95 needs them)",
    )
    ap.add_argument(
        "--layer-moves",
        type=int,
        default=2,
        help="moves of one per-layer slider per student (0: none)",
    )
    ap.add_argument(
        "--think",
        type=_range,
        default=(0.5, 1.5),
        help="think time between actions, seconds low,high (default 0.5,1.5)",
    )
    ap.add_argument(
        "--ramp",
        type=float,
        default=1.0,
        help="arrivals spread over this many seconds per student (default 1: 30 students "
        "open the app within 30 s)",
    )
    ap.add_argument(
        "--finetune-share",
        type=float,
        default=0.4,
        help="share of the students who start a one-epoch fine-tune (default 0.4: "
        "30 students overfill the default queue of 1 running + 8 waiting)",
    )
    ap.add_argument(
        "--action-timeout",
        type=float,
        default=120.0,
        help="seconds one step may take before it counts as an error (default 120)",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="bound on the whole run; the server is stopped in any case (default 900)",
    )
    ap.add_argument(
        "--code",
        choices=["head", "worktree"],
        default="head",
        help="what the server runs, copied when the run starts: the last commit (default) or "
        "the working tree with its uncommitted changes",
    )
    ap.add_argument(
        "--profile-moves",
        type=int,
        default=6,
        help="before the single-student rounds, this many extra moves with Chrome's profiler "
        "on, reported apart (0: none)",
    )
    ap.add_argument(
        "--browser-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0..19",
        help="run Chromium at this autogroup nice so the server gets the cores first, as "
        "when each student has a machine (default 0: they share the cores evenly)",
    )
    ap.add_argument(
        "--client",
        choices=["auto", "ws", "browser"],
        default="auto",
        help="the simulated students: ws (Streamlit's websocket protocol from Python, "
        "benchmarks/ws_client.py), browser (Playwright + headless Chromium), or auto (default: "
        "browser below 10 students, ws from 10)",
    )
    ap.add_argument(
        "--linger",
        type=float,
        default=20.0,
        help="seconds a ws student who started a fine-tune stays on the page, polling as a "
        "browser tab does, to see the queue move (default 20)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--note",
        action="append",
        help="a line for the section's notes (repeatable; with --markdown-only, added to the JSON)",
    )
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "load_test.json")
    ap.add_argument(
        "--markdown",
        type=Path,
        default=ROOT / "benchmarks" / "results.md",
        help="file whose load-test section is replaced ('-': none)",
    )
    ap.add_argument(
        "--markdown-only",
        action="store_true",
        help="rewrite the markdown section from --json without running",
    )
    args = ap.parse_args(argv)
    if not 0 <= args.finetune_share <= 1:
        ap.error("--finetune-share is between 0 and 1")
    if min(args.moves, args.solo_moves) < 1 or args.layer_moves < 0 or args.ramp < 0:
        ap.error("--moves and --solo-moves >= 1, --layer-moves and --ramp >= 0")
    if not 0 < args.max_seconds <= MAX_SECONDS or not 0 <= args.linger <= 600:
        ap.error(f"0 < --max-seconds <= {MAX_SECONDS:.0f}, 0 <= --linger <= 600")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test (or only rewrite its markdown section), write JSON and markdown."""
    args = parse_args(argv)
    if args.markdown_only:
        doc = json.loads(args.json.read_text())
        if args.note:
            doc["notes"] = [*doc.get("notes", []), *args.note]
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    else:
        browser = any(client_for(n, args.client) == "browser" for n in args.students)
        if browser and not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
            log(f"no Chromium at {CHROMIUM} (set PRUNING_LAB_CHROMIUM, or use --client ws)")
            return 1
        command = "python -m benchmarks.load_test " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        doc = asyncio.run(run_all(args, command.strip()))
        doc["notes"] += args.note or []
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        log(f"wrote {args.json}")
    if str(args.markdown) != "-":
        replace_section(args.markdown, render_section(doc))
        log(f"wrote the section of {args.markdown}")
    ok = bool(doc["levels"]) and not any(lv.get("failed") for lv in doc["levels"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
