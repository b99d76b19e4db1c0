"""Threads per job and jobs at once on a shared server, chosen from measurement (issue 13).

The app is one process: every student's page runs in its own script thread, and background
jobs (fine-tunes, sweeps) run in the `JobRunner`'s worker threads. torch's OpenMP pool is per
calling thread, so every thread that computes brings its own team of `torch.get_num_threads()`
threads: two jobs at two threads and a student's preview at two threads are six busy threads on
two cores, and spinning OpenMP threads then slow everyone by far more than the share of CPU.

This benchmark reproduces that server in one process: `--students` threads move the Prune
page's slider on shapes-resnet (`SliderPreview.update` + the accuracy estimate, with a think
time between moves, as a student does), while two identical one-epoch fine-tunes of shapes-resnet
are submitted at once to a `JobRunner` with `workers` jobs at once and `threads` torch threads
per job; the students' script threads use `ui_threads`. For every setting it reports each
job's run time and queue wait, the time until both finished, and the students' p50/p95 preview
and estimate times. The winning setting is the app's rule (`pruning_core.jobs`); then a
one-epoch fine-tune of every sample model runs alone under it, with one student, to state its
time.

Run from the project root: `python -m benchmarks.job_threads [--quick]`; results go to
`benchmarks/job_threads.json` and a section of `benchmarks/results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning_core.data import load_dataset
from pruning_core.jobs import JobContext, JobRunner
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel, load_model
from pruning_core.prune import PruneConfig
from pruning_core.recipe import Recipe
from pruning_core.slider import SliderPreview
from pruning_core.train import TrainConfig
from pruning_core.workflow import run_recipe

SAMPLES = {
    "digits-mlp": "digits",
    "digits-cnn": "digits",
    "shapes-resnet": "shapes",
    "shapes-vit": "shapes",
}
SECTION = "## Jobs on a shared server: threads per job and jobs at once"


@dataclass(frozen=True)
class Setting:
    """One server configuration under test."""

    workers: int
    threads: int
    ui_threads: int

    @property
    def label(self) -> str:
        return f"{self.workers} job(s) x {self.threads} thread(s), pages {self.ui_threads}"


def _finetune_job(model_ref: str, epochs: int) -> Any:
    dense = load_model(model_ref)
    data = load_dataset(SAMPLES[model_ref])
    recipe = Recipe(
        model=model_ref,
        dataset=SAMPLES[model_ref],
        prune=PruneConfig(criterion="magnitude", granularity="unstructured", ratio=0.5),
        finetune=TrainConfig(epochs=epochs),
    )

    def job(ctx: JobContext) -> dict[str, Any]:
        student = LoadedModel(
            trainable_copy(dense.model), dense.spec, dense.arch, dense.source, dict(dense.meta)
        )
        result = run_recipe(recipe, model=student, data=data, cancel=ctx.cancel)
        return {"accuracy": result.after.accuracy}

    return job


class Students:
    """Threads that move a slider and wait for the estimate, as students on the Prune page."""

    def __init__(self, count: int, ui_threads: int, n_eval: int, think: float) -> None:
        base = load_model("shapes-resnet")
        data = load_dataset("shapes")
        self.previews = [
            SliderPreview(base, PruneConfig(criterion="magnitude", granularity="channel"), data)
            for _ in range(count)
        ]
        self.ui_threads, self.n_eval, self.think = ui_threads, n_eval, think
        self.update_ms: list[float] = []
        self.estimate_ms: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.update_ms, self.estimate_ms = [], []
        for i, p in enumerate(self.previews):
            t = threading.Thread(target=self._loop, args=(p, i), daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads = []

    def _loop(self, preview: SliderPreview, seed: int) -> None:
        torch.set_num_threads(self.ui_threads)  # per thread: what a script run would set
        rng = random.Random(seed)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            stats = preview.update(rng.choice([0.2, 0.3, 0.4, 0.5, 0.6]))
            preview._estimates.clear()  # a new position each time: the worst case
            t1 = time.perf_counter()
            preview.estimate(stats, self.n_eval)
            t2 = time.perf_counter()
            self.update_ms.append((t1 - t0) * 1000)
            self.estimate_ms.append((t2 - t1) * 1000)
            self._stop.wait(self.think * (0.5 + rng.random()))


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_setting(
    setting: Setting, students: Students | None, model_ref: str, epochs: int, jobs: int
) -> dict[str, Any]:
    """Submit `jobs` identical fine-tunes at once under `setting`; measure them and the pages."""
    runner = JobRunner(setting.workers, max_queue=8, torch_threads=setting.threads)
    fns = [_finetune_job(model_ref, epochs) for _ in range(jobs)]
    if students is not None:
        students.start()
    t0 = time.time()
    submitted = [runner.submit(fn, name=f"ft {i}") for i, fn in enumerate(fns)]
    for j in submitted:
        j.wait()
    makespan = time.time() - t0
    if students is not None:
        students.stop()
    runner.shutdown(wait=True)
    runs = [float(j.finished - j.started) for j in submitted]  # type: ignore[operator]
    waits = [float(j.started - t0) for j in submitted]  # type: ignore[operator]
    return {
        "setting": setting.label,
        "workers": setting.workers,
        "threads": setting.threads,
        "ui_threads": setting.ui_threads,
        "model": model_ref,
        "status": [j.status for j in submitted],
        "errors": [j.error for j in submitted if j.error],
        "run_s": runs,
        "wait_s": waits,
        "makespan_s": makespan,
        "slowest_over_fastest": max(runs) / min(runs),
        "students": 0 if students is None else len(students.previews),
        "update_p50_ms": _pct(students.update_ms, 0.5) if students else None,
        "update_p95_ms": _pct(students.update_ms, 0.95) if students else None,
        "estimate_p50_ms": _pct(students.estimate_ms, 0.5) if students else None,
        "estimate_p95_ms": _pct(students.estimate_ms, 0.95) if students else None,
        "moves": len(students.update_ms) if students else 0,
    }


def _score(r: dict[str, Any]) -> float:
    """What a student waits for: their own job's run (mean, s) and, ten times weighted, the
    page's estimate p50 (s): a page redraws many times while one job runs. Queue waits are
    shown with a position on the page and reported beside the score, not in it."""
    return float(sum(r["run_s"]) / len(r["run_s"]) + 10 * (r["estimate_p50_ms"] or 0) / 1000)


def rule_text(results: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """The paragraph that states the chosen setting and why, from the measured rows."""
    rows = "; ".join(
        f"{r['setting']}: jobs {min(r['run_s']):.0f}-{max(r['run_s']):.0f} s, both done "
        f"{r['makespan_s']:.0f} s, estimate p50 {r['estimate_p50_ms']:.0f} ms"
        for r in results
    )
    return (
        f"Chosen: **{best['setting']}** (the lowest mean job run + 10 x estimate p50: what a "
        f"student waits for). Measured: {rows}. The rule in `pruning_core.jobs`: one torch "
        "thread per job and per page run, jobs at once on half the cores (one here), so two "
        "students' identical jobs run equally fast, the second after the first with its queue "
        "position shown."
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    """The results.md section for one run of this benchmark."""
    lines = [
        SECTION,
        "",
        f"`{result['command']}`; {result['date']}; {result['cpus']} cores; load average "
        f"{result['loadavg_start']} at start, {result['loadavg_end']} at end; "
        f"{result['seconds']:.0f} s. The machine was shared with other benchmarks and browsers "
        "while this ran (the load average above): absolute times are inflated; the settings ran "
        "one after the other under similar load.",
        "",
        f"Two identical one-epoch fine-tunes of {result['model']} (magnitude 0.5) submitted at "
        f"once, while {result['students']} simulated students move a channel slider on "
        f"shapes-resnet with the {result['n_eval']}-image estimate ({result['think']} s think "
        "time), all in one process as in the app server.",
        "",
        "| setting | job run s | queue wait s | both done s | slowest/fastest run | "
        "preview p50/p95 ms | estimate p50/p95 ms | moves |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["settings"]:
        lines.append(
            f"| {r['setting']} | {_fmt(r['run_s'])} | {_fmt(r['wait_s'])} | "
            f"{_fmt(r['makespan_s'])} | {_fmt(r['slowest_over_fastest'])} | "
            f"{_fmt(r['update_p50_ms'])} / {_fmt(r['update_p95_ms'])} | "
            f"{_fmt(r['estimate_p50_ms'])} / {_fmt(r['estimate_p95_ms'])} | {r['moves']} |"
        )
    lines += ["", result["rule"], ""]
    if result.get("per_model"):
        lines += [
            "One-epoch fine-tune of every sample model under the rule, one at a time, with one "
            "student moving a slider meanwhile:",
            "",
            "| model | one epoch (s) | student estimate p50/p95 ms |",
            "| --- | --- | --- |",
        ]
        for r in result["per_model"]:
            lines.append(
                f"| {r['model']} | {_fmt(r['run_s'][0])} | "
                f"{_fmt(r['estimate_p50_ms'])} / {_fmt(r['estimate_p95_ms'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_section(results_md: Path, section: str) -> None:
    """Replace this benchmark's section of results.md (or append it), keeping the rest."""
    text = results_md.read_text() if results_md.exists() else "# Pruning Lab benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes job_threads.json and the results.md section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks", help="folder of results.md")
    ap.add_argument("--quick", action="store_true", help="digits-mlp, fewer settings")
    ap.add_argument("--students", type=int, default=2)
    ap.add_argument("--think", type=float, default=1.0, help="seconds between slider moves")
    ap.add_argument("--n-eval", type=int, default=200, help="images of the estimate")
    ap.add_argument(
        "--settings",
        default="1x2x2,1x1x1,2x1x1,2x2x2",
        help="workers x threads per job x page threads, comma-separated",
    )
    ap.add_argument("--model", default="shapes-resnet", help="the model both jobs fine-tune")
    ap.add_argument("--no-per-model", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.time()
    load0 = [round(x, 2) for x in os.getloadavg()]
    model = "digits-mlp" if args.quick else args.model
    settings = [Setting(*(int(x) for x in s.split("x"))) for s in args.settings.split(",")]
    results = []
    for s in settings:
        students = Students(args.students, s.ui_threads, args.n_eval, args.think)
        r = run_setting(s, students, model, epochs=1, jobs=2)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
    best = min(results, key=_score)
    rule = rule_text(results, best)
    per_model = []
    if not args.no_per_model and not args.quick:
        for ref in SAMPLES:
            s = Setting(best["workers"], best["threads"], best["ui_threads"])
            students = Students(1, s.ui_threads, args.n_eval, args.think)
            r = run_setting(s, students, ref, epochs=1, jobs=1)
            print(json.dumps(r), file=sys.stderr, flush=True)
            per_model.append(r)
    result = {
        "command": "python -m benchmarks.job_threads " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.time() - t_start,
        "model": model,
        "students": args.students,
        "think": args.think,
        "n_eval": args.n_eval,
        "settings": results,
        "rule": rule,
        "per_model": per_model,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job_threads.json").write_text(json.dumps(result, indent=1))
    write_section(out / "results.md", markdown(result))
    print(json.dumps({"out": str(out), "rule": rule}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
