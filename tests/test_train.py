"""The training loop: learns, reports progress, cancels within one batch, distils."""

from __future__ import annotations

import threading

import pytest
import torch

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.models import create_model, model_spec
from pruning_core.train import Progress, TrainConfig, fit


def test_fit_learns_digits_and_reports_progress() -> None:
    data, spec = load_dataset("digits"), model_spec("digits-mlp")
    torch.manual_seed(0)
    model = create_model("digits-mlp", pretrained=False)
    before = evaluate(model, data, spec).accuracy
    seen: list[Progress] = []
    steps: list[int] = []
    res = fit(
        model,
        data,
        spec,
        TrainConfig(epochs=2, device="cpu"),
        progress=seen.append,
        after_step=lambda m, s: steps.append(s),
    )
    assert res.final_accuracy is not None and res.final_accuracy > 0.85 > before
    assert len(res.history) == 2 and not res.cancelled
    assert steps == list(range(1, res.steps + 1))
    assert seen[-1].val_accuracy == res.final_accuracy and seen[-1].fraction == 1.0


def test_cancel_stops_within_one_batch() -> None:
    data, spec = load_dataset("digits"), model_spec("digits-mlp")
    model = create_model("digits-mlp", pretrained=False)
    cancel = threading.Event()

    def stop_at_3(m: torch.nn.Module, step: int) -> None:
        if step == 3:
            cancel.set()

    res = fit(
        model, data, spec, TrainConfig(epochs=5, device="cpu"), after_step=stop_at_3, cancel=cancel
    )
    assert res.cancelled and res.steps == 3 and res.history == []


def test_distillation_pulls_student_towards_teacher() -> None:
    data, spec = load_dataset("digits"), model_spec("digits-mlp")
    teacher = create_model("digits-mlp")  # trained sample
    torch.manual_seed(1)
    student = create_model("digits-mlp", pretrained=False)
    cfg = TrainConfig(epochs=1, device="cpu", distill_weight=1.0, seed=1)
    fit(student, data, spec, cfg, teacher=teacher)
    x, _ = data.tensors("val", spec)
    with torch.no_grad():
        agree = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree > 0.8


def test_bad_configs_are_refused() -> None:
    for kw in (
        {"lr": -1.0},
        {"lr": float("nan")},
        {"optimizer": "lion"},
        {"epochs": -1},
        {"batch_size": 0},
    ):
        with pytest.raises(UserError):
            TrainConfig(**kw)  # type: ignore[arg-type]


def test_augment_batch_shifts_and_flips_deterministically() -> None:
    from pruning_core.train import augment_batch

    x = torch.rand(64, 3, 16, 16) + 1.0  # strictly positive, so zero padding is visible
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8
    # Every output image is the input, maybe flipped, shifted by at most 2 px (16 // 8).
    for i in range(8):
        img = a[i]
        ok = False
        for cand in (x[i], x[i].flip(-1)):
            padded = torch.nn.functional.pad(cand, (2, 2, 2, 2))
            for dy in range(5):
                for dx in range(5):
                    ok |= torch.equal(padded[:, dy : dy + 16, dx : dx + 16], img)
        assert ok, i


def test_weights_that_overflow_stop_training_by_name() -> None:
    """A step that leaves a weight non-finite (the loss was still finite) is reported, naming
    the layer, instead of a model that would be evaluated and saved."""
    data = load_dataset("digits")
    spec = model_spec("digits-mlp")
    model = create_model("digits-mlp", pretrained=False)

    last = -(-len(data.train[1]) // TrainConfig().batch_size)

    def overflow(m: torch.nn.Module, step: int) -> None:
        if step == last:  # after the last step: no later loss would show it
            with torch.no_grad():
                m.fc2.weight[0, 0] = float("inf")

    with pytest.raises(UserError, match=r"diverged.*'fc2.weight'"):
        fit(model, data, spec, TrainConfig(epochs=1), after_step=overflow)
