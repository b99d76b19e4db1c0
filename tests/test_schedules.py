"""Schedules: one-shot, linear, AGP cubic, dynamic; iterative prune -> fine-tune cycles."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
from sparsity_helpers import pruned_share

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.models import architectures as A
from pruning_core.models import model_spec
from pruning_core.prune import PruneConfig, measured_sparsity
from pruning_core.schedules import Schedule, run_schedule, schedule_ratio
from pruning_core.train import TrainConfig

torch.set_num_threads(1)
SPEC = model_spec("digits-mlp")


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


def mlp() -> A.DigitsMLP:
    torch.manual_seed(0)
    return A.DigitsMLP()


def test_agp_follows_the_cubic_formula() -> None:
    sf, si, n = 0.9, 0.1, 5
    got = [schedule_ratio("agp", t, n, sf, si) for t in range(1, n + 1)]
    want = [sf + (si - sf) * (1 - t / n) ** 3 for t in range(1, n + 1)]
    assert got == pytest.approx(want)
    assert got[-1] == pytest.approx(sf)
    steps = [b - a for a, b in zip([si, *got], got, strict=False)]
    assert all(a > b for a, b in itertools.pairwise(steps))  # big steps first
    assert Schedule("linear", 4).ratios(0.8) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert Schedule("oneshot", 4).ratios(0.8) == [0.8]


def test_bad_schedules_are_user_errors() -> None:
    with pytest.raises(UserError):
        Schedule("cosine")
    with pytest.raises(UserError):
        Schedule("agp", 0)


@pytest.mark.parametrize("kind", ["linear", "agp"])
def test_iterative_schedules_pass_through_the_intermediate_sparsities(kind: str, digits) -> None:  # type: ignore[no-untyped-def]
    model = mlp()
    res = run_schedule(model, PruneConfig(ratio=0.8), kind, 4, TrainConfig(epochs=0), digits, SPEC)
    want = Schedule(kind, 4).ratios(0.8)
    share = pruned_share(model)  # sparsity counts the dense classifier too
    assert [r["sparsity"] for r in res.curve] == pytest.approx([w * share for w in want], abs=2e-3)
    assert [r["target_ratio"] for r in res.curve] == pytest.approx(want)
    assert res.prune.sparsity == pytest.approx(0.8 * share, abs=2e-3)
    assert all(r["finetuned_accuracy"] is None for r in res.curve)


def test_cycles_fine_tune_with_masks_held(digits) -> None:  # type: ignore[no-untyped-def]
    model = mlp()
    tc = TrainConfig(epochs=1, batch_size=256, lr=3e-3, device="cpu")
    res = run_schedule(
        model, PruneConfig(ratio=0.7), Schedule("agp", 2), train_config=tc, data=digits, spec=SPEC
    )
    assert len(res.train) == 2 and res.finetuned_accuracy is not None
    assert res.finetuned_accuracy > 0.5  # an untrained MLP learns while being pruned
    sparsity, _ = measured_sparsity(model, list(res.prune.masks))
    assert sparsity == pytest.approx(0.7 * pruned_share(model), abs=2e-3)


def test_dynamic_schedule_regrows_and_ends_at_the_target(digits) -> None:  # type: ignore[no-untyped-def]
    model = mlp()
    tc = TrainConfig(epochs=2, batch_size=128, lr=3e-3, device="cpu")
    res = run_schedule(
        model,
        PruneConfig(ratio=0.8),
        Schedule("dynamic", 6),
        train_config=tc,
        data=digits,
        spec=SPEC,
    )
    updates = [r for r in res.curve if r["step"] > 0]
    assert len(updates) >= 5
    assert sum(r["regrown"] for r in updates) > 0  # pruned weights came back
    mods = dict(model.named_modules())
    for n, mask in res.prune.masks.items():
        assert (mods[n].weight.detach()[~mask] == 0).all()
    assert res.prune.sparsity == pytest.approx(0.8 * pruned_share(model), abs=2e-3)
    assert res.finetuned_accuracy is not None and res.finetuned_accuracy > 0.5


def test_dynamic_needs_training_and_magnitude(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="epoch"):
        run_schedule(
            mlp(),
            PruneConfig(),
            "dynamic",
            train_config=TrainConfig(epochs=0),
            data=digits,
            spec=SPEC,
        )
    with pytest.raises(UserError, match="magnitude"):
        run_schedule(mlp(), PruneConfig(method="random"), "dynamic", train_config=TrainConfig(epochs=1),
                     data=digits, spec=SPEC)  # fmt: skip


def test_cancel_stops_and_says_so(digits) -> None:  # type: ignore[no-untyped-def]
    cancel = threading.Event()
    cancel.set()
    res = run_schedule(mlp(), PruneConfig(ratio=0.5), "linear", 3, TrainConfig(epochs=1, device="cpu"),
                       digits, SPEC, cancel=cancel)  # fmt: skip
    assert res.cancelled and len(res.curve) == 1


@pytest.mark.parametrize("kind", ["oneshot", "linear"])
def test_progress_counts_the_steps_fit_takes(kind: str, digits) -> None:  # type: ignore[no-untyped-def]
    # A small split trains at a smaller batch (min_steps_per_epoch): the schedule's total must
    # be fit's, or the bar sits at 100% while steps go on (it read "step 360/90").
    tc = TrainConfig(epochs=1, batch_size=256, min_steps_per_epoch=40, lr=3e-3, device="cpu")
    seen = []
    res = run_schedule(mlp(), PruneConfig(ratio=0.5), kind, 2, tc, digits, SPEC, seen.append)
    steps = [p for p in seen if p.val_accuracy is None]
    assert steps and all(p.step <= p.total_steps for p in steps)
    assert steps[-1].step == steps[-1].total_steps == sum(r.steps for r in res.train)


def test_cycle_progress_says_which_cycle(digits) -> None:  # type: ignore[no-untyped-def]
    from pruning_core.schedules import CycleProgress

    tc = TrainConfig(epochs=1, batch_size=256, min_steps_per_epoch=0, lr=3e-3, device="cpu")
    seen = []
    run_schedule(mlp(), PruneConfig(ratio=0.6), "linear", 2, tc, digits, SPEC, seen.append)
    ends = [p for p in seen if p.val_accuracy is not None]
    assert all(isinstance(p, CycleProgress) for p in seen)
    assert [(p.cycle, p.cycles, p.target_ratio) for p in ends] == [(1, 2, 0.3), (2, 2, 0.6)]
    assert ends[1].message.startswith("cycle 2/2 (ratio 0.6): epoch 1/1: loss ")
    # One cycle (one-shot) is plain fit progress.
    seen.clear()
    run_schedule(mlp(), PruneConfig(ratio=0.6), "oneshot", 1, tc, digits, SPEC, seen.append)
    assert seen and not any(isinstance(p, CycleProgress) for p in seen)


def test_dynamic_notes_that_keep_best_does_not_apply(digits) -> None:  # type: ignore[no-untyped-def]
    from pruning_core.schedules import DYNAMIC_KEEP_BEST_NOTE

    for keep in (True, False):
        tc = TrainConfig(epochs=1, batch_size=256, lr=3e-3, device="cpu", keep_best=keep)
        res = run_schedule(mlp(), PruneConfig(ratio=0.5), "dynamic", 2, tc, digits, SPEC)
        assert (DYNAMIC_KEEP_BEST_NOTE in res.prune.notes) is keep


def test_a_fixed_pattern_says_its_schedule_ran_as_one_step(digits) -> None:  # type: ignore[no-untyped-def]
    # 2:4 with a 3-step linear schedule ran one cycle without a word.
    tc = TrainConfig(epochs=0, device="cpu")
    nm = PruneConfig(granularity="2:4")
    res = run_schedule(mlp(), nm, "linear", 3, tc, digits, SPEC)
    assert len(res.curve) == 1
    assert any(
        "2:4 is one fixed pattern" in n and "3 steps ran as one" in n for n in res.prune.notes
    )
    res = run_schedule(mlp(), PruneConfig(ratio=0.5), "linear", 3, tc, digits, SPEC)
    assert len(res.curve) == 3 and not any("fixed pattern" in n for n in res.prune.notes)
