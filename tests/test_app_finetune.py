"""AppTest of the Fine-tune page: a background job that completes, and one that is cancelled.

The job runner is the process-wide one (`pruning_core.jobs.get_runner`) recording into the run
store under the test session's temporary PRUNING_LAB_HOME (tests/conftest.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from apptest_helpers import apply_prune
from streamlit.testing.v1 import AppTest

from pruning_core.jobs import Job
from pruning_core.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 90.0


def _pruned_session(ratio: float = 0.5) -> AppTest:
    """digits-mlp pruned at `ratio` through the Prune page, now on the Fine-tune page."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["model_ref"] = "digits-mlp"
    apply_prune(at.run(), ratio=ratio, then="pages/4_finetune.py")
    assert not at.exception
    return at


def _job(at: AppTest) -> Job:
    from ui.jobs_panel import job_runner

    job = job_runner().get(at.session_state["ft_job_id"])
    assert job is not None
    return job


def _poll(at: AppTest, until: str) -> None:
    """Re-run the page (as the polling fragment would) until the job reaches a status."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        status = _job(at).status
        if status == until or (until == "finished" and status in ("done", "cancelled", "failed")):
            return
        time.sleep(0.5)
    raise AssertionError(f"job did not reach {until} within {DEADLINE_S} s")


def test_start_needs_a_pruned_model() -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "4_finetune.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Nothing to fine-tune" in i.value for i in at.info)
    assert at.button(key="ft_start").disabled


def test_one_epoch_finetune_completes_and_becomes_the_session_model() -> None:
    at = _pruned_session(0.5)
    at.number_input(key="ft_epochs").set_value(1).run()
    # The last epoch's weights, trained (the pruned ones could come back as the best epoch,
    # and their zeros would then say nothing about masks held through training).
    at.toggle(key="ft_keep_best").set_value(False).run()
    at.button(key="ft_start").click().run()
    _poll(at, "finished")
    at.run()
    assert not at.exception
    assert any("Done" in s.value for s in [*at.success, *at.warning]), [e.value for e in at.error]
    run_id = at.session_state["prune_committed"].finetune["run_id"]
    rec = RunStore().get_run(run_id)
    assert rec.status == "done" and rec.kind == "finetune"
    assert any(p.get("accuracy") is not None for p in rec.curve)
    assert rec.config["train"]["epochs"] == 1 and rec.config["train"]["keep_best"] is False
    committed = at.session_state["prune_committed"]
    assert committed.stage == "fine-tuned"
    # Masks held through training: the pruned layers are still 50% zeros.
    mods = dict(committed.model.named_modules())
    zeros = sum(int((mods[n].weight == 0).sum()) for n in committed.masks)
    total = sum(mods[n].weight.numel() for n in committed.masks)
    assert abs(zeros / total - 0.5) < 0.01
    assert torch.equal(mods["fc1"].weight != 0, committed.masks["fc1"])


def test_cancel_leaves_a_cancelled_run_with_its_partial_curve() -> None:
    at = _pruned_session(0.7)
    at.number_input(key="ft_epochs").set_value(60).run()
    at.button(key="ft_start").click().run()
    _poll(at, "running")
    deadline = time.monotonic() + DEADLINE_S
    job = _job(at)
    while len(job.curve) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    # The user wanders off to another page and comes back: the job keeps running.
    at.switch_page("pages/2_inspect.py").run()
    assert not job.is_finished
    at.switch_page("pages/4_finetune.py").run()
    at.button(key="ft_cancel").click().run()
    _poll(at, "finished")
    at.run()
    assert job.status == "cancelled"
    assert any("Cancelled" in w.value for w in at.warning)
    assert job.run_id is not None
    rec = RunStore().get_run(job.run_id)
    assert rec.status == "cancelled"
    assert 0 < len(rec.curve) < 60 * 45  # partial: far from 60 epochs of 45 steps
    # The session keeps the model it had: pruned, not fine-tuned.
    assert at.session_state["prune_committed"].stage == "pruned"


def test_a_queued_job_shows_its_place_and_can_be_cancelled_before_it_starts() -> None:
    from ui.jobs_panel import job_runner

    runner = job_runner()
    if runner.max_workers != 1:
        pytest.skip("needs the default single worker")
    release = threading.Event()
    blocker = runner.submit(lambda ctx: release.wait(60), name="someone else's job")
    try:
        at = _pruned_session(0.5)
        at.button(key="ft_start").click().run()
        assert not at.exception
        assert _job(at).status == "queued"
        assert any("position 1" in i.value for i in at.info)
        at.button(key="ft_cancel").click().run()
        at.run()
        assert _job(at).status == "cancelled"
        assert any("Cancelled" in w.value for w in at.warning)
        assert at.session_state["prune_committed"].stage == "pruned"
    finally:
        release.set()
        blocker.wait(30)


def _outcome_page(pruned: float, finetuned: float) -> None:
    """The Fine-tune page's outcome for a finished job with these accuracies (no job runs)."""
    from types import SimpleNamespace

    from ui.finetune_panel import _outcome

    done = SimpleNamespace(
        id="finished-elsewhere",
        result={"accuracy": finetuned, "pruned_accuracy": pruned, "sparsity": 0.5,
                "finetuned_accuracy": finetuned, "finetune_kept_epoch": None},
    )  # fmt: skip
    snap = {"status": "done", "elapsed": 3.0, "metrics": {}, "run_id": None}
    _outcome(done, snap, 2, 0.99)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pruned", "finetuned", "lowered"), [(0.9889, 0.9749, True), (0.9, 0.95, False)]
)
def test_the_outcome_says_plainly_when_fine_tuning_lowered_accuracy(
    pruned: float, finetuned: float, lowered: bool
) -> None:
    at = AppTest.from_function(_outcome_page, args=(pruned, finetuned), default_timeout=60)
    at.run()
    assert not at.exception
    said = [w.value for w in at.warning] if lowered else [s.value for s in at.success]
    assert len(said) == 1 and "Done in 3 s" in said[0]
    if lowered:
        assert "Fine-tuning lowered accuracy by 1.40 points" in said[0] and not at.success
    else:
        assert "Fine-tuning raised accuracy by 5.00 points" in said[0] and not at.warning
