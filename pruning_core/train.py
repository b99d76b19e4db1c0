"""Training and fine-tuning: one loop for dense baselines and for pruned models.

The loop knows nothing about pruning itself. Pruning plugs in through two hooks: `after_step`
(called after every optimizer step, e.g. to re-apply masks so pruned weights stay exactly zero,
or to recompute masks in a dynamic schedule) and `extra_loss` (a regulariser such as L1 on
BatchNorm scales). Knowledge distillation from a dense teacher is built in.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.evaluate import EvalResult, evaluate
from pruning_core.layers import batchnorm_frozen, main_logits
from pruning_core.spec import InputSpec
from pruning_core.validate import check_seed, number

__all__ = [
    "DEFAULT_FINETUNE",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "STRUCTURED_FINETUNE",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "distillation_loss",
    "epoch_batch_size",
    "fit",
    "make_optimizer",
    "planned_steps",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
# Learning-rate schedules of fine-tuning (the pruning schedules are `schedules.SCHEDULES`).
LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: Passes over the training split (0 trains nothing).
        lr: Peak learning rate.
        optimizer: `sgd` (momentum 0.9, Nesterov), `adam` or `adamw`.
        schedule: `cosine` (decay to 0 over all steps) or `constant`.
        batch_size: Examples per step (at most: see `min_steps_per_epoch`).
        weight_decay: Decoupled (adamw) or L2 (sgd/adam) weight decay.
        device: `auto`, `cpu` or `cuda`.
        amp: Mixed precision (bf16/fp16 autocast) when on CUDA; ignored on CPU.
        seed: Seeds initial shuffling and dropout; a run repeats exactly on CPU.
        distill_weight: Share of the loss from the teacher's soft targets (0 = off).
        distill_temperature: Softmax temperature for distillation.
        val_limit: Evaluate only this many validation examples per epoch (None = all).
        augment: Random shifts (up to 1/8 of the side, zero padded) and horizontal flips of
            each training batch; seeded, so a run still repeats.
        warmup: Share of all steps over which the learning rate rises linearly from 0 to `lr`
            before the schedule (Goyal et al. 2017); 0 starts at `lr`.
        keep_best: Measure validation accuracy before the first epoch too, and hand back the
            weights of the epoch with the best one (ties: the earlier epoch), epoch 0 (the
            model as it came) included: a fine-tune then never returns a model worse on
            the validation split than the one it was given (early stopping by validation,
            Prechelt 1998). Off: the weights of the last epoch.
        min_steps_per_epoch: When an epoch at `batch_size` would take fewer optimizer steps
            than this, the batch shrinks until it takes at least this many (never below one
            example): a small dataset then gets as many updates per epoch as a larger one
            (`epoch_batch_size`). 0 keeps `batch_size` whatever the dataset.
    """

    epochs: int = 3
    lr: float = 2e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    batch_size: int = 32
    weight_decay: float = 0.0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    val_limit: int | None = None
    augment: bool = False
    warmup: float = 0.0
    keep_best: bool = False
    min_steps_per_epoch: int = 0

    def __post_init__(self) -> None:
        number(self.epochs, "epochs", integer=True, lo=0)
        number(self.lr, "learning rate", lo=0, lo_open=True)
        number(self.weight_decay, "weight decay", lo=0)
        number(self.distill_temperature, "distillation temperature", lo=0, lo_open=True)
        check_seed(self.seed)
        if self.val_limit is not None:
            number(self.val_limit, "val_limit", integer=True, lo=1)
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"unknown optimizer '{self.optimizer}' (choose from {', '.join(OPTIMIZERS)})"
            )
        if self.schedule not in LR_SCHEDULES:
            raise UserError(
                f"unknown schedule '{self.schedule}' (choose from {', '.join(LR_SCHEDULES)})"
            )
        number(self.batch_size, "batch size", integer=True, lo=1)
        number(self.min_steps_per_epoch, "minimum steps per epoch", integer=True, lo=0)
        number(self.distill_weight, "distillation weight", lo=0, hi=1)
        number(self.warmup, "warm-up share", lo=0, hi=1, hi_open=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


# The one default fine-tune after pruning, whatever the granularity: the app's Fine-tune page
# and Trade-offs sweeps, `pruning-lab prune --finetune-epochs N` and `pruning-lab sweep` all
# start from it (a setting given explicitly replaces its field). Adam at 5e-3 with a linear
# warm-up over the first 10% of the steps, then cosine decay; batch 32, but every epoch takes at
# least 250 optimizer steps (a small dataset trains in smaller batches: digits' 1438 images at
# 5, 288 steps, as many as the 8000-image datasets get at 32); the best epoch kept.
# How it was chosen (issue 11, point 6; benchmark sections `recovery` and `finetune_defaults`):
# 95% unstructured magnitude pruning plus 3 epochs on proxies that chose nothing reported
# (digits-mlp and LeNet-5 retrained on 80% of their training split, measured on the other 20%,
# 2 seeds each; shapes models measured on 2000 freshly generated images, seed 3). Steps are
# what a 95%-pruned model lacks on a small dataset: digits-mlp ended 4.9 / 8.0 points below its
# proxy at batch 32 (108 steps), 1.7 / 0.7 at 864 steps, 0.7 / 0.35 after 30 epochs. A higher
# rate moves a heavily pruned model further: LeNet-5 0.81 / 0.25 points below at 2e-3, 0.25 /
# 0.19 at 5e-3 with warm-up; 90%, one epoch: shapes-resnet 0.9515 against 0.940, shapes-vit
# 0.659 against 0.585. At 50% the higher rate is worse on the ViT (0.855, 0.863 with the
# warm-up, against 0.8755 at 2e-3), still far above pruning alone (0.833), and keeping the best
# epoch never hands back less than the pruned model on validation. What it did where it reports
# (`recovery`, 95% + 3 epochs, points below dense, before -> now): digits-mlp 2.79 -> 0.28,
# LeNet-5 0.60 -> 0.10, digits-cnn 0.0 -> 0.56 (2 images), shapes-resnet 7.95 -> 5.3,
# shapes-vit 45.7 -> 36.3; `finetune_defaults` (one epoch, 50-90%): never lower than pruned,
# on validation or held out; 90% better (shapes-vit 0.587 -> 0.6485, shapes-resnet 0.9395 ->
# 0.945), 50-70% on shapes 0.5-1.5 points lower (shapes-vit at 50% 0.8775 -> 0.8625).
DEFAULT_FINETUNE = TrainConfig(
    epochs=1,
    lr=5e-3,
    optimizer="adam",
    schedule="cosine",
    batch_size=32,
    keep_best=True,
    warmup=0.1,
    min_steps_per_epoch=250,
)
# `pruning-lab prune` on a structured granularity (channel, head, block), unless told the
# optimizer, rate or distillation: a physically shrunk network re-learns how its surviving
# filters combine, and SGD at 0.01 with distillation from the dense model does that best in a
# few epochs (shapes-resnet, channel 0.5, 2 epochs: 0.948 with, 0.9315 without distillation,
# 0.938 with Adam at 2e-3; dense 0.9705). The best epoch is kept as by default; no warm-up and
# no minimum of steps per epoch (batch 64 on any dataset), as measured.
STRUCTURED_FINETUNE = dataclasses.replace(
    DEFAULT_FINETUNE,
    optimizer="sgd",
    lr=0.01,
    weight_decay=5e-4,
    distill_weight=0.5,
    batch_size=64,
    warmup=0.0,
    min_steps_per_epoch=0,
)


@dataclass(frozen=True)
class Progress:
    """One progress report: after every step, and with `val_accuracy` at each epoch's end.

    It satisfies `progress.ProgressReport` (`fraction` and `message`), so a callback written for
    any long-running function also serves `fit`; the other fields are for callbacks that plot
    the training curve.

    Attributes:
        epoch: The current epoch, from 1.
        epochs: Epochs in all.
        step: Optimizer steps taken so far.
        total_steps: Optimizer steps in all.
        loss: The step's training loss (at an epoch's end: the epoch's mean loss).
        lr: The learning rate of the step.
        val_accuracy: Validation accuracy, only in the report at an epoch's end.
    """

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    lr: float
    val_accuracy: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the work done, in [0, 1]."""
        return self.step / self.total_steps if self.total_steps else 1.0

    @property
    def message(self) -> str:
        """One line for people: `epoch 2/3, step 40/250, loss 0.1234`, or at an epoch's end
        `epoch 2/3: loss 0.1234, val accuracy 0.9512`."""
        if self.val_accuracy is not None:
            return (
                f"epoch {self.epoch}/{self.epochs}: loss {self.loss:.4f}, "
                f"val accuracy {self.val_accuracy:.4f}"
            )
        return (
            f"epoch {self.epoch}/{self.epochs}, step {self.step}/{self.total_steps}, "
            f"loss {self.loss:.4f}"
        )


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        history: One row per epoch: epoch, train loss, val accuracy, val loss, seconds.
        steps: Optimizer steps taken.
        cancelled: True when stopped by the cancel event (the model keeps what it learned;
            with `keep_best`, the best epoch finished).
        seconds: Wall time.
        final_accuracy: Validation accuracy of the model handed back (None if no epoch
            finished and the start was not measured).
        start_accuracy: Validation accuracy before the first epoch (measured with
            `keep_best` only, else None).
        best_epoch: With `keep_best`, the epoch whose weights were handed back (0: the model
            as it came, no epoch improved on it); None without `keep_best`.
        batch_size: Examples per step it trained with (`epoch_batch_size`; 0 before it ran).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    final_accuracy: float | None = None
    step_losses: list[float] = field(default_factory=list)
    start_accuracy: float | None = None
    best_epoch: int | None = None
    batch_size: int = 0


def epoch_batch_size(config: TrainConfig, examples: int) -> int:
    """The batch size `fit` trains with on a training split of `examples` images.

    `config.batch_size`, unless an epoch would then take fewer than
    `config.min_steps_per_epoch` optimizer steps: then the largest batch that gives at least
    that many, `examples // min_steps_per_epoch`, and at least 1.

    Example: batch 32 and 250 steps per epoch: 8000 images train at 32 (250 steps), the 1438
    of digits at 5 (288 steps), 500 images at 2.
    """
    if config.min_steps_per_epoch <= 0:
        return config.batch_size
    return max(1, min(config.batch_size, examples // config.min_steps_per_epoch))


def planned_steps(config: TrainConfig, examples: int) -> int:
    """Optimizer steps `fit` takes for `config` on a training split of `examples` images
    (at `epoch_batch_size`, the last batch of an epoch possibly smaller)."""
    return math.ceil(examples / epoch_batch_size(config, examples)) * config.epochs


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `fit` uses for `cfg` over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate schedule: linear warm-up over `cfg.warmup` of the steps, then
    cosine decay to 0 (Loshchilov & Hutter 2017) or a constant rate."""
    warm = round(cfg.warmup * total)
    if warm == 0:
        if cfg.schedule == "constant":
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    rest = max(total - warm, 1)

    def factor(step: int) -> float:
        # `step` counts the steps taken: the first step runs at 1/(warm+1) of the peak.
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, rest) / rest))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass(frozen=True)
class _Best:
    """The best validation result seen so far and the weights that gave it."""

    accuracy: float
    epoch: int
    state: dict[str, torch.Tensor]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights and buffers (a GPU's memory is kept for training), with the
    state dict's `_metadata`: some modules' loaders need their version from it (torchvision's
    MNASNet refuses a state dict without one)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = OrderedDict(
        (k, v.detach().to("cpu", copy=True)) for k, v in state.items()
    )
    setattr(out, "_metadata", getattr(state, "_metadata", None))  # noqa: B010 (not a field)
    return out


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1/8 of its side (zero padding) and flip half horizontally."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    # Gather every crop at once: row/column indices per image.
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(
        n, x.shape[1], h, w + 2 * pad
    )
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. (2015) soft-target loss, scaled by T^2 so gradients keep their size."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


def fit(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    start: EvalResult | None = None,
) -> TrainResult:
    """Train `model` in place on the dataset's train split, evaluating on val each epoch.

    Args:
        model: The model (moved to the chosen device; moved back to CPU at the end).
        data: The dataset.
        spec: The model's input spec.
        config: Hyper-parameters.
        teacher: Dense teacher for distillation (used when config.distill_weight > 0).
        after_step: Called as after_step(model, step) after each optimizer step.
        extra_loss: A regulariser added to the loss each step.
        progress: Called with a `Progress` (a `progress.ProgressReport`: `fraction`, `message`,
            plus epoch, step, loss...) after every step, and with `val_accuracy` at each
            epoch's end.
        cancel: When set, training stops within one batch and the result says cancelled.
        start: With `config.keep_best`, the model's validation result as it comes in, when the
            caller has just measured it (with the same `val_limit`); None measures it here.

    Returns:
        A TrainResult; the model holds the trained weights (with `config.keep_best`, those of
        the best epoch, also when cancelled).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    opt = make_optimizer(model, config)
    batch_size = epoch_batch_size(config, data.num_examples("train"))
    total = planned_steps(config, data.num_examples("train"))
    sched = _lr_scheduler(opt, config, total)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    result = TrainResult(batch_size=batch_size)
    t_start = time.perf_counter()
    step = 0
    aug_gen = torch.Generator().manual_seed(config.seed + 7919)
    best: _Best | None = None
    if config.keep_best and config.epochs > 0:
        ev0 = (
            start
            if start is not None
            else evaluate(model, data, spec, device=device, limit=config.val_limit)
        )
        best = _Best(ev0.accuracy, 0, _snapshot(model))
        result.start_accuracy = result.final_accuracy = ev0.accuracy
        result.best_epoch = 0
    for epoch in range(config.epochs):
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for xb, yb in data.batches(
            "train", spec, batch_size, shuffle=True, seed=config.seed * 1000 + epoch
        ):
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                break
            if config.augment:
                xb = augment_batch(xb, aug_gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with (
                torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp),
                batchnorm_frozen(model, len(yb) < 2),
            ):
                logits = main_logits(model(xb))
                loss = F.cross_entropy(logits.float(), yb)
                if teacher is not None and config.distill_weight > 0:
                    with torch.no_grad():
                        t_logits = main_logits(teacher(xb)).float()
                    kd = distillation_loss(logits.float(), t_logits, config.distill_temperature)
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * kd
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                raise UserError(
                    f"training diverged (loss {loss.item()}) at step {step}: lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            step += 1
            if after_step is not None:
                after_step(model, step)
            lv = loss.item()
            result.step_losses.append(lv)
            loss_sum += lv * len(yb)
            seen += len(yb)
            if progress is not None:
                progress(
                    Progress(epoch + 1, config.epochs, step, total, lv, opt.param_groups[0]["lr"])
                )
        if result.cancelled:
            break
        # A finite loss can still take a step that overflows the weights; such a model must
        # never be evaluated as if it were one, nor saved.
        bad = next((n for n, p in model.named_parameters() if not bool(p.isfinite().all())), None)
        if bad is not None:
            raise UserError(
                f"training diverged: the weights of '{bad}' are no longer finite after epoch "
                f"{epoch + 1}: lower the learning rate"
            )
        ev = evaluate(model, data, spec, device=device, limit=config.val_limit)
        result.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "val_accuracy": ev.accuracy,
                "val_loss": ev.loss,
                "seconds": time.perf_counter() - t0,
            }
        )
        result.final_accuracy = ev.accuracy
        # Only a measured gain replaces what came in: on a tie the earlier weights stay, so a
        # fine-tune that changes nothing measurable hands back the model it was given.
        if best is not None and ev.accuracy > best.accuracy:
            best = _Best(ev.accuracy, epoch + 1, _snapshot(model))
        if progress is not None:
            progress(
                Progress(
                    epoch + 1,
                    config.epochs,
                    step,
                    total,
                    loss_sum / max(seen, 1),
                    opt.param_groups[0]["lr"],
                    ev.accuracy,
                )
            )
    if best is not None:
        if best.epoch != len(result.history) or result.cancelled:
            model.load_state_dict(best.state)
        result.best_epoch, result.final_accuracy = best.epoch, best.accuracy
    result.steps = step
    result.seconds = time.perf_counter() - t_start
    model.cpu().eval()
    if teacher is not None:
        teacher.cpu()
    return result
