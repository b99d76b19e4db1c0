"""Server start: measure once, before the class arrives, what every student's first minute
would otherwise queue for.

The first student to pick a sample model waits for its baseline (an evaluation over the whole
validation set, seconds for the shapes models) and its dense latency (a timing loop of up to
`PROTOCOL.max_seconds` per batch size); with a class arriving at once that work landed in the
busiest minute of the lesson, with every student's redraws waiting behind it (the load test's
30-student level spent about a fifth of the server's CPU on it). A thread started with the
server fills the same caches the pages read (`ui.loaders.baseline`,
`ui.latency_panel.measure_dense_latency`) for every bundled sample model with its home dataset,
on one torch thread. The latency is then taken on a machine nobody uses yet, and kept as long
as any measurement (`MeasurementCache.max_age_s`); a timing disturbed all the same (p90 above
3 x p10, `latency.is_noisy`) is not kept, and the first page that needs it times it again. It
runs at the pages' priority, not the jobs' lower one: a page that needs the same value waits on
its cache's lock for this thread, and a starved holder would make every such page wait
(priority inversion: with the warm-up at niceness 10, 30 arriving students saw model picks of
28 s at p95).

`PRUNING_LAB_PREWARM=0` turns it off (e.g. a server for one user who wants its first second).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from pruning_core.jobs import use_page_threads
from pruning_core.models import list_models

__all__ = ["prewarm", "prewarm_enabled", "prewarm_targets", "warm_when_ready"]

# Streamlit logs "missing ScriptRunContext" for cached calls made outside a page run; the
# warm-up makes them on purpose (it has no page to draw spinners on).
_CTX_LOGGER = "streamlit.runtime.scriptrunner_utils.script_run_context"
_log = logging.getLogger(__name__)


def prewarm_enabled() -> bool:
    """False when `PRUNING_LAB_PREWARM` is `0` (or `false`, `no`, `off`)."""
    return os.environ.get("PRUNING_LAB_PREWARM", "1").strip().lower() not in {
        "0",
        "false",
        "no",
        "off",
    }


def prewarm_targets(first: str | None = None) -> list[tuple[str, str]]:
    """(model, dataset) of every bundled sample model with its home dataset.

    Args:
        first: A model to put first (the app's default model: the first page shows it).
    """
    pairs = [
        (e.name, e.default_dataset)
        for e in list_models(include_external=False)
        if e.sample and e.default_dataset
    ]
    return sorted(pairs, key=lambda p: p[0] != first)


def prewarm(
    targets: Sequence[tuple[str, str]], log: Callable[[str], None] = _log.info
) -> list[str]:
    """Fill the shared caches for each (model, dataset): the model, the dataset, the baseline
    and the dense model's latency. A target that fails is logged in one line and skipped (a
    page shows its error when a user picks it).

    Returns:
        One line per target: what was warmed and in how many seconds, or why not.
    """
    from pruning_core.latency import is_noisy
    from ui.latency_panel import dense_context, latency_cache, measure_dense_latency
    from ui.loaders import baseline

    done = []
    for model_ref, dataset_ref in targets:
        t0 = time.perf_counter()
        try:
            baseline(model_ref, dataset_ref)
            got = measure_dense_latency(model_ref)
        except Exception as e:  # a broken sample must not take the server down
            line = f"prewarm {model_ref} on {dataset_ref}: skipped ({type(e).__name__}: {e})"
        else:
            line = f"prewarm {model_ref} on {dataset_ref}: {time.perf_counter() - t0:.1f} s"
            if is_noisy(got.table):
                # Timed while the machine was busy (a first page, another server starting):
                # kept, it would be shown to every student for ten minutes. The first page
                # that needs it times it again.
                latency_cache().discard(dense_context(model_ref))
                line += " (latency disturbed, p90 > 3 x p10: not kept)"
        log(line)
        done.append(line)
    return done


class _NotFrom(logging.Filter):
    """Drops the records logged by one thread."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread_id


def warm_when_ready(
    first: str | None = None, ready: Callable[[], bool] | None = None, wait_s: float = 120.0
) -> list[str]:
    """In the calling thread (the server starts one for it, `ui/serve.py`): wait until
    `ready()` (default: Streamlit's runtime exists, so the caches are the ones the pages use),
    then warm every sample model (`prewarm`) on one torch thread. Nothing when turned
    off (`prewarm_enabled`) or when `ready()` stays False for `wait_s` seconds.

    Args:
        first: Model warmed first (the app's default).
        ready: When the caches can be filled; polled every 0.2 s.
        wait_s: Seconds to wait for `ready()`.

    Returns:
        `prewarm`'s lines (empty when nothing was warmed).
    """
    if not prewarm_enabled():
        return []
    if ready is None:
        from streamlit import runtime

        ready = runtime.exists
    deadline = time.monotonic() + wait_s
    while not ready():
        if time.monotonic() > deadline:
            return []
        time.sleep(0.2)
    use_page_threads(1)
    quiet = _NotFrom(threading.get_ident())
    ctx_log = logging.getLogger(_CTX_LOGGER)
    ctx_log.addFilter(quiet)
    try:
        return prewarm(prewarm_targets(first))
    finally:
        ctx_log.removeFilter(quiet)
