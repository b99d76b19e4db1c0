"""Pruning schedules: when to prune and how much, around fine-tuning.

- `oneshot`: prune to the target once, then fine-tune.
- `linear`: N prune -> fine-tune cycles, the ratio rising in equal steps.
- `agp`: N cycles following Zhu & Gupta's (2017) automated gradual pruning,
  s_t = s_f + (s_i - s_f) (1 - t/N)^3: big steps first, while the network has redundancy
  to spare, small steps at the end.
- `dynamic`: prune once, then recompute the masks from the current weights every k optimizer
  steps *during* fine-tuning. The forward pass uses the pruned weights, but the update (the
  gradient taken at the pruned model) is applied to a dense copy, so pruned weights keep
  learning and may come back (Guo et al. 2016, "Dynamic Network Surgery"; Lin et al. 2020,
  "Dynamic Model Pruning with Feedback").

All training goes through `train.fit`; masks are kept by `prune.MaskEnforcer` (its
`after_step` hook) and regularisers come in as `extra_loss`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from pruning_core.criteria import Magnitude
from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.evaluate import EvalResult, evaluate
from pruning_core.layers import counted_weights, measured_model_sparsity
from pruning_core.prune import (
    Preview,
    PruneConfig,
    PruneResult,
    apply_masks_,
    hold_masks,
    measured_sparsity,
    prunable_layers,
    prune_,
)
from pruning_core.spec import InputSpec
from pruning_core.train import Progress, TrainConfig, TrainResult, fit, planned_steps

__all__ = [
    "DYNAMIC_KEEP_BEST_NOTE",
    "SCHEDULES",
    "CycleProgress",
    "Schedule",
    "ScheduleResult",
    "run_schedule",
    "schedule_ratio",
]

SCHEDULES = ("oneshot", "linear", "agp", "dynamic")
DYNAMIC_DEFAULT_UPDATES = 10
# The dynamic schedule's note when the fine-tune asked for its best epoch (`TrainConfig.keep_best`).
DYNAMIC_KEEP_BEST_NOTE = (
    "keep-best does not apply to the dynamic schedule: it hands back its last epoch, since "
    "earlier epochs' weights belong to masks it has moved on from"
)


def schedule_ratio(kind: str, t: int, n: int, final: float, initial: float = 0.0) -> float:
    """Target ratio after step `t` of `n` (t = 1..n): the s_t of Zhu & Gupta 2017, a share of the
    pruned layers, not of the whole model (`terms.SPARSITY_MEANS`).

    Args:
        kind: `oneshot` (the final ratio at once), `linear`, `agp` (cubic) or `dynamic`
            (the final ratio at once; masks then move during training).
        t: Step, 1..n.
        n: Number of steps.
        final: Final ratio s_f.
        initial: Starting ratio s_i.
    """
    if kind in ("oneshot", "dynamic") or n <= 1:
        return final
    frac = min(max(t / n, 0.0), 1.0)
    if kind == "linear":
        return initial + (final - initial) * frac
    if kind == "agp":
        return final + (initial - final) * (1.0 - frac) ** 3
    raise UserError(f"unknown schedule '{kind}' (choose from {', '.join(SCHEDULES)})")


@dataclass(frozen=True)
class Schedule:
    """How pruning is spread over time.

    Attributes:
        kind: `oneshot`, `linear`, `agp` or `dynamic`.
        steps: Prune -> fine-tune cycles (linear/agp; each cycle fine-tunes for the train
            config's epochs), or mask updates spread over fine-tuning (dynamic).
        initial_ratio: s_i, the sparsity the ramp starts from (linear/agp).
        update_every: Dynamic only: optimizer steps between mask updates (None: spread `steps`
            updates evenly over training).
    """

    kind: str = "oneshot"
    steps: int = 1
    initial_ratio: float = 0.0
    update_every: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.kind}' (choose from {', '.join(SCHEDULES)})")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"schedule steps must be an integer >= 1, got {self.steps}")
        if not (math.isfinite(self.initial_ratio) and 0.0 <= self.initial_ratio < 1.0):
            raise UserError(f"initial ratio must be in [0, 1), got {self.initial_ratio}")
        if self.update_every is not None and self.update_every < 1:
            raise UserError(f"update_every must be >= 1, got {self.update_every}")

    def ratios(self, final: float) -> list[float]:
        """Target ratio after each pruning step (one entry for oneshot and dynamic)."""
        n = self.steps if self.kind in ("linear", "agp") else 1
        return [schedule_ratio(self.kind, t, n, final, self.initial_ratio) for t in range(1, n + 1)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class ScheduleResult:
    """What a schedule did.

    Attributes:
        prune: The last pruning step's result (masks and sparsity after fine-tuning for
            unstructured/N:M).
        curve: One row per pruning step (or mask update, dynamic): step, target_ratio,
            sparsity, pruned_accuracy (right after pruning), finetuned_accuracy.
        train: The fine-tuning runs, in order (a regularised pre-training run first, if any).
        cancelled: True when the cancel event stopped it (the model keeps what was done).
        seconds: Wall time.
        pruned_accuracy: Accuracy right after the last pruning step, before its fine-tune.
        finetuned_accuracy: Accuracy after the last fine-tune (None without fine-tuning).
        regularized_accuracy: Accuracy after the regularised training phase (None without).
    """

    prune: PruneResult
    curve: list[dict[str, Any]] = field(default_factory=list)
    train: list[TrainResult] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    pruned_accuracy: float | None = None
    finetuned_accuracy: float | None = None
    regularized_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "prune": self.prune.to_dict(),
            "curve": self.curve,
            "train": [
                {"history": r.history, "steps": r.steps, "cancelled": r.cancelled}
                for r in self.train
            ],
            "cancelled": self.cancelled,
            "seconds": self.seconds,
            "pruned_accuracy": self.pruned_accuracy,
            "finetuned_accuracy": self.finetuned_accuracy,
            "regularized_accuracy": self.regularized_accuracy,
        }


def _measure(
    model: nn.Module, data: DataBundle, spec: InputSpec, device: torch.device, limit: int | None
) -> EvalResult:
    model.to(device)
    try:
        return evaluate(model, data, spec, device=device, limit=limit)
    finally:
        model.cpu()


def _accuracy(
    model: nn.Module, data: DataBundle, spec: InputSpec, device: torch.device, limit: int | None
) -> float:
    return _measure(model, data, spec, device, limit).accuracy


@dataclass(frozen=True)
class CycleProgress(Progress):
    """A fine-tune report from one prune -> fine-tune cycle of a linear or AGP schedule: its
    epochs are the cycle's own (each cycle fine-tunes for the train config's epochs), so the
    report also says which cycle it is, and the ratio that cycle pruned to.

    Attributes:
        cycle: The cycle, 1..cycles.
        cycles: Cycles in all (`Schedule.steps`).
        target_ratio: The ratio the cycle pruned to (`schedule_ratio`).
    """

    cycle: int = 1
    cycles: int = 1
    target_ratio: float = 0.0

    @property
    def where(self) -> str:
        """`cycle 2/3 (ratio 0.6)`."""
        return f"cycle {self.cycle}/{self.cycles} (ratio {self.target_ratio:.3g})"

    @property
    def message(self) -> str:
        """`cycle 2/3 (ratio 0.6): epoch 1/2: loss 0.1234, val accuracy 0.9512`."""
        return f"{self.where}: {super().message}"


def _offset_progress(
    progress: Callable[[Progress], None] | None,
    offset: int,
    total: int,
    cycle: tuple[int, int, float] | None = None,
) -> Callable[[Progress], None] | None:
    """Report fit's per-run steps as steps of the whole schedule; with `cycle` (t, n, target
    ratio) as `CycleProgress` of cycle t of n."""
    if progress is None:
        return None

    def report(p: Progress) -> None:
        moved = replace(p, step=offset + p.step, total_steps=total)
        if cycle is not None:
            t, n, r = cycle
            own = {f.name: getattr(moved, f.name) for f in fields(Progress)}
            moved = CycleProgress(**own, cycle=t, cycles=n, target_ratio=r)
        progress(moved)

    return report


def _steps_per_fit(data: DataBundle, tc: TrainConfig) -> int:
    # `fit`'s own count: a small split trains at a smaller batch (`min_steps_per_epoch`).
    return planned_steps(tc, data.num_examples("train"))


def run_schedule(
    model: nn.Module,
    config: PruneConfig,
    schedule: Schedule | str = "oneshot",
    steps: int | None = None,
    train_config: TrainConfig | None = None,
    data: DataBundle | None = None,
    spec: InputSpec | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    teacher: nn.Module | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    keep_zeros: bool = False,
) -> ScheduleResult:
    """Prune `model` in place following a schedule, fine-tuning with masks held.

    Args:
        model: The model (pruned and fine-tuned in place; on CPU at the end).
        config: The final pruning target (its ratio and layer ratios are reached at the end).
        schedule: A Schedule, or its kind name (then `steps` gives its steps).
        steps: Steps for a kind name (default 1; dynamic: 10 mask updates).
        train_config: Fine-tuning of each cycle (None or 0 epochs: prune only).
        data: The dataset (training, evaluation, calibration).
        spec: The model's input spec.
        progress: Called with fit's `train.Progress` (a `progress.ProgressReport`: `fraction`,
            `message`, plus epoch, step, loss...), steps counted over the whole schedule.
        cancel: Stops within one batch; the result says cancelled.
        teacher: Dense teacher for distillation (used when train_config.distill_weight > 0).
        regularizer: An `extra_loss` (see `pruning_core.regularize`): used in a sparsity
            training phase of train_config's epochs *before* the first pruning step, as network
            slimming does (train with the penalty, prune, fine-tune).
        keep_zeros: The model came pruned (a folder written by `prune`): every training phase
            also holds the zeros it came with (`prune.hold_masks`), so they never regrow. The
            dynamic schedule regrows by design and ignores it.

    Returns:
        A ScheduleResult with the per-step sparsity/accuracy curve.

    Raises:
        UserError: Bad schedule, missing data, dynamic without fine-tuning or with a
            data-driven or structured criterion.
    """
    start = time.perf_counter()
    if isinstance(schedule, str):
        default = DYNAMIC_DEFAULT_UPDATES if schedule == "dynamic" else 1
        schedule = Schedule(schedule, steps if steps is not None else default)
    if data is None or spec is None:
        raise UserError("a pruning schedule needs a dataset (evaluation and fine-tuning)")
    tc = train_config or TrainConfig(epochs=0)
    device = resolve_device(tc.device)
    result = ScheduleResult(prune=PruneResult())
    if regularizer is not None and tc.epochs > 0:
        hold = hold_masks(model, {}, keep_zeros=keep_zeros)
        # The penalty phase trains for sparsity, not accuracy: its last epoch is what is pruned.
        r = fit(
            model,
            data,
            spec,
            replace(tc, keep_best=False),
            teacher=teacher,
            after_step=hold,
            extra_loss=regularizer,
            progress=progress,
            cancel=cancel,
        )
        result.train.append(r)
        result.regularized_accuracy = r.final_accuracy
        if r.cancelled:
            result.cancelled = True
            result.seconds = time.perf_counter() - start
            return result
    if schedule.kind == "dynamic":
        _dynamic(model, config, schedule, tc, data, spec, device, progress, cancel, teacher, result)
    else:
        _cycles(
            model, config, schedule, tc, data, spec, device, progress, cancel, teacher, result,
            keep_zeros,
        )  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def _step_config(config: PruneConfig, kind: str, t: int, n: int, initial: float) -> PruneConfig:
    """The config of cycle t: ratios along the schedule; for physical structured pruning the
    share of what is *left* (the model has already shrunk)."""

    def at(final: float) -> float:
        r = schedule_ratio(kind, t, n, final, min(initial, final))
        if config.structured and config.structured_mode == "physical" and t > 1:
            prev = schedule_ratio(kind, t - 1, n, final, min(initial, final))
            r = 1.0 - (1.0 - r) / (1.0 - prev)
        return max(r, 0.0)

    layer = tuple((name, at(r)) for name, r in config.layer_ratios)
    return config.replace(ratio=at(config.ratio), layer_ratios=layer)


def _cycles(
    model: nn.Module,
    config: PruneConfig,
    schedule: Schedule,
    tc: TrainConfig,
    data: DataBundle,
    spec: InputSpec,
    device: torch.device,
    progress: Callable[[Progress], None] | None,
    cancel: threading.Event | None,
    teacher: nn.Module | None,
    result: ScheduleResult,
    keep_zeros: bool = False,
) -> None:
    # N:M is one fixed pattern: ramping it makes no sense, so it is always one step.
    n = schedule.steps if schedule.kind in ("linear", "agp") and not config.fixed_ratio else 1
    per_fit = _steps_per_fit(data, tc)
    total = per_fit * n
    shrinking = config.structured and config.structured_mode == "physical"
    original = counted_weights(model)
    for t in range(1, n + 1):
        kind = schedule.kind if n > 1 else "oneshot"
        cfg = _step_config(config, kind, t, n, schedule.initial_ratio)
        res = prune_(model, cfg, data=data, spec=spec)
        if shrinking:
            # A step's own count is against what it started from: report the original's.
            res.sparsity = measured_model_sparsity(model, original)
        row: dict[str, Any] = {
            "step": t,
            "target_ratio": schedule_ratio(
                kind, t, n, config.effective_ratio, min(schedule.initial_ratio, config.ratio)
            ),
            "sparsity": res.sparsity,
            "pruned_accuracy": None,
            "finetuned_accuracy": None,
        }
        pruned = _measure(model, data, spec, device, tc.val_limit)
        row["pruned_accuracy"] = result.pruned_accuracy = pruned.accuracy
        if tc.epochs > 0:
            cycle = (t, n, row["target_ratio"]) if n > 1 else None
            report = _offset_progress(progress, (t - 1) * per_fit, total, cycle)
            hold = hold_masks(model, res.masks, keep_zeros=keep_zeros)
            with hold or contextlib.nullcontext():
                tr = fit(
                    model,
                    data,
                    spec,
                    tc,
                    teacher=teacher,
                    after_step=hold,
                    progress=report,
                    cancel=cancel,
                    start=pruned,
                )
            result.train.append(tr)
            row["finetuned_accuracy"] = tr.final_accuracy
            result.finetuned_accuracy = tr.final_accuracy
            if res.masks and not config.structured:
                res.sparsity, res.layer_sparsity = measured_sparsity(model, list(res.masks))
            row["sparsity"] = res.sparsity
            if tr.cancelled:
                result.cancelled = True
        result.curve.append(row)
        if n == 1 and schedule.kind in ("linear", "agp") and schedule.steps > 1:
            res.notes.append(
                f"{config.granularity} is one fixed pattern: the {schedule.kind} schedule's "
                f"{schedule.steps} steps ran as one (nothing to ramp)"
            )
        result.prune = res
        if result.cancelled or (cancel is not None and cancel.is_set()):
            result.cancelled = True
            break


def _dynamic(
    model: nn.Module,
    config: PruneConfig,
    schedule: Schedule,
    tc: TrainConfig,
    data: DataBundle,
    spec: InputSpec,
    device: torch.device,
    progress: Callable[[Progress], None] | None,
    cancel: threading.Event | None,
    teacher: nn.Module | None,
    result: ScheduleResult,
) -> None:
    if config.structured:
        raise UserError(
            "the dynamic schedule works on unstructured or N:M masks, not structured pruning"
        )
    if not isinstance(config.criterion_object(), Magnitude):
        raise UserError(
            "the dynamic schedule recomputes masks from the current weights every few steps: "
            "use method magnitude"
        )
    if tc.epochs < 1:
        raise UserError(
            "the dynamic schedule moves masks during fine-tuning: give at least 1 fine-tune epoch"
        )
    total = _steps_per_fit(data, tc)
    every = schedule.update_every or max(1, total // schedule.steps)
    mods = dict(model.named_modules())
    names = prunable_layers(model, config)
    # The dense weights that keep learning; the model's weights are always dense * mask. The
    # copy starts from the *unpruned* values so a weight that comes back resumes where it was.
    dense = {n: mods[n].weight.detach().clone() for n in names}
    res = prune_(model, config, data=data, spec=spec)
    layers = list(res.masks)
    params = {n: mods[n].weight for n in layers}
    state: dict[str, Any] = {"masks": res.masks, "device": None}
    pruned_acc = _accuracy(model, data, spec, device, tc.val_limit)
    result.pruned_accuracy = pruned_acc
    result.curve.append(
        {"step": 0, "target_ratio": config.effective_ratio, "sparsity": res.sparsity,
         "pruned_accuracy": pruned_acc, "finetuned_accuracy": None, "regrown": 0}
    )  # fmt: skip

    def after_step(m: nn.Module, step: int) -> None:
        with torch.no_grad():
            if state["device"] is None or dense[layers[0]].device != params[layers[0]].device:
                for n in layers:
                    dense[n] = dense[n].to(params[n].device)
                state["masks"] = {n: k.to(params[n].device) for n, k in state["masks"].items()}
                state["device"] = params[layers[0]].device
            masks = state["masks"]
            for n, p in params.items():
                # p = dense*mask - update: pruned entries held 0, so their new value is the update.
                dense[n].mul_(~masks[n]).add_(p)
            if step % every == 0 and step < total:
                scores = {n: dense[n].abs().pow(config.norm).cpu() for n in layers}
                cache = Preview(m, config, scores=scores, zeros_first=False)
                new = cache.masks(config.ratio, dict(config.layer_ratios), config.scope)
                new = {n: k.to(params[n].device) for n, k in new.items()}
                regrown = sum(int((new[n] & ~masks[n]).sum()) for n in layers)
                state["masks"] = masks = new
                result.curve.append(
                    {"step": step, "target_ratio": config.effective_ratio, "sparsity": None,
                     "pruned_accuracy": None, "finetuned_accuracy": None, "regrown": regrown}
                )  # fmt: skip
            for n, p in params.items():
                p.copy_(dense[n] * masks[n])

    # Earlier weights belong to earlier masks, which the dense copy has moved on from: the
    # dynamic schedule hands back its last epoch.
    tr = fit(
        model,
        data,
        spec,
        replace(tc, keep_best=False),
        teacher=teacher,
        after_step=after_step,
        progress=progress,
        cancel=cancel,
    )
    result.train.append(tr)
    final = {n: k.cpu() for n, k in state["masks"].items()}
    apply_masks_(model, final)
    sparsity, per = measured_sparsity(model, layers)
    notes = list(res.notes)
    if tc.keep_best:
        notes.append(DYNAMIC_KEEP_BEST_NOTE)
    result.prune = PruneResult(
        masks=final, layer_sparsity=per, sparsity=sparsity, seconds=res.seconds, notes=notes
    )
    result.finetuned_accuracy = tr.final_accuracy
    result.cancelled = tr.cancelled
    for row in result.curve:
        if row["sparsity"] is None:
            row["sparsity"] = sparsity
    if result.curve:
        result.curve[-1]["finetuned_accuracy"] = tr.final_accuracy
