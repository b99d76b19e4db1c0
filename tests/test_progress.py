"""One progress-callback style and one (model, data, spec) order across the public API."""

from __future__ import annotations

import inspect

import pytest

import pruning_core as pl
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.experiments import check_suggestion, sensitivity, sweep
from pruning_core.jobs import JobContext, JobRunner
from pruning_core.models import load_model
from pruning_core.progress import ProgressReport, Report
from pruning_core.stats import activation_stats
from pruning_core.tradeoffs import latency_vs_sparsity
from pruning_core.train import Progress
from pruning_core.workflow import measure


def test_report_and_training_progress_satisfy_the_protocol() -> None:
    r = Report(0.5, "half")
    assert isinstance(r, ProgressReport) and (r.fraction, r.message) == (0.5, "half")
    step = Progress(2, 3, 40, 250, 0.1234, 1e-3)
    assert isinstance(step, ProgressReport)
    assert step.fraction == pytest.approx(40 / 250)
    assert step.message == "epoch 2/3, step 40/250, loss 0.1234"
    end = Progress(2, 3, 166, 250, 0.1, 1e-3, val_accuracy=0.95)
    assert end.message == "epoch 2/3: loss 0.1000, val accuracy 0.9500"
    assert "\n" not in step.message + end.message
    assert pl.ProgressReport is ProgressReport


@pytest.mark.parametrize(
    "fn", [sweep, sensitivity, check_suggestion, activation_stats, measure, pl.evaluate, pl.fit]
)
def test_model_data_spec_come_first_in_that_order(fn) -> None:
    assert list(inspect.signature(fn).parameters)[:3] == ["model", "data", "spec"]


def test_latency_vs_sparsity_takes_model_then_spec() -> None:
    assert list(inspect.signature(latency_vs_sparsity).parameters)[:2] == ["model", "spec"]


def test_sensitivity_and_sweep_take_a_loaded_model_without_spec() -> None:
    loaded, data = load_model("digits-mlp"), load_dataset("digits")
    seen: list[ProgressReport] = []
    df = sensitivity(loaded, data, ratios=[0.5], layers=["fc1"], limit=64, device="cpu",
                     progress=seen.append)  # fmt: skip
    assert list(df["layer"]) == ["fc1"]
    assert [(p.fraction, p.message.startswith("fc1 ratio 0.5")) for p in seen] == [(1.0, True)]
    sw = sweep(loaded, data, methods=["magnitude"], ratios=[0.5], eval_limit=64, device="cpu")
    same = sweep(loaded.model, data, loaded.spec, methods=["magnitude"], ratios=[0.5],
                 eval_limit=64, device="cpu")  # fmt: skip
    assert list(sw["accuracy"]) == list(same["accuracy"])
    with pytest.raises(UserError, match="input spec"):
        sensitivity(loaded.model, data)
    with pytest.raises(TypeError, match="LoadedModel"):
        sweep((loaded.model, loaded.spec), data, methods=["magnitude"], ratios=[0.5])


def test_job_context_follows_any_progress_report() -> None:
    runner = JobRunner(max_workers=1, torch_threads=1)
    try:

        def fn(ctx: JobContext) -> list[tuple[float, str]]:
            seen = []
            for p in (Report(0.25, "a quarter"), Progress(1, 1, 3, 4, 0.5, 1e-3)):
                ctx.follow(p)
                seen.append((ctx.job.progress, ctx.job.message))
            return seen

        job = runner.submit(fn, name="follow", kind="test")
        assert job.wait(5) and job.status == "done"
        assert job.result == [(0.25, "a quarter"), (0.75, "epoch 1/1, step 3/4, loss 0.5000")]
    finally:
        runner.shutdown(timeout=5)


def test_measure_takes_data_before_spec() -> None:
    loaded, data = load_model("digits-mlp"), load_dataset("digits")
    with_acc = measure(loaded.model, data, loaded.spec)
    without = measure(loaded.model, None, loaded.spec)
    assert with_acc.accuracy is not None and with_acc.accuracy > 0.8
    assert without.accuracy is None and without.params == with_acc.params > 0
