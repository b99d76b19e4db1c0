"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence

from pruning_core.checkpoint import CHECKPOINT_SUFFIXES
from pruning_core.data import DataBundle, load_dataset
from pruning_core.errors import UserError
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, ProgressReport
from pruning_core.recipe import SETTING_CHECKS
from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE, Progress

__all__ = [
    "WARMUP",
    "add_model_args",
    "add_step_args",
    "check_fixed_ratio",
    "criterion_name",
    "granularity_name",
    "resolve",
    "stderr_progress",
    "warn_mismatch",
]

# `--warmup`: checked as a recipe file's `warmup` is (and `TrainConfig`), [0, 1): one range.
WARMUP = SETTING_CHECKS["warmup"]


def add_model_args(
    p: argparse.ArgumentParser, *, dataset: bool = True, dataset_required: bool = True
) -> None:
    """--model/--arch/--trust-pickle (and --dataset)."""
    p.add_argument(
        "--model", required=True, help="registry name, model directory or checkpoint file"
    )
    p.add_argument("--arch", help="architecture of a checkpoint file (a registry name)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a full pickled module (it can run code: only for files you trust)",
    )
    if dataset:
        p.add_argument(
            "--dataset",
            required=dataset_required,
            help="registry name, idx:DIR, folder:DIR or FILE.zip",
        )


def add_step_args(p: argparse.ArgumentParser, *, structured: bool, fill: bool) -> None:
    """--warmup and --min-steps-per-epoch (`TrainConfig.warmup`, `.min_steps_per_epoch`).

    Args:
        p: The command's parser.
        structured: The command fine-tunes structured pruning with `STRUCTURED_FINETUNE`
            (`Recipe.from_settings`): the help says its defaults too.
        fill: Give `DEFAULT_FINETUNE`'s values as argparse defaults (else None: a recipe's or
            the granularity's default applies).
    """
    ft, st = DEFAULT_FINETUNE, STRUCTURED_FINETUNE

    def also(value: str) -> str:
        if not structured:
            return ""
        return f"; structured granularities {value} unless --optimizer, --lr or --distill is given"

    p.add_argument(
        "--warmup",
        type=WARMUP,
        metavar="SHARE",
        default=ft.warmup if fill else None,
        help="fine-tune warm-up: share of the optimizer steps over which the learning rate "
        f"rises linearly from 0, in [0, 1) (default {ft.warmup:g}{also(f'{st.warmup:g}')})",
    )
    p.add_argument(
        "--min-steps-per-epoch",
        type=SETTING_CHECKS["min_steps_per_epoch"],
        metavar="N",
        default=ft.min_steps_per_epoch if fill else None,
        help="fine-tune: a dataset too small for this many optimizer steps per epoch at "
        "--batch-size trains in smaller batches until it takes them; 0 keeps the batch size, "
        f"an integer >= 0 (default {ft.min_steps_per_epoch}{also(str(st.min_steps_per_epoch))})",
    )


def resolve(args: argparse.Namespace) -> tuple[LoadedModel, DataBundle | None]:
    """Load the dataset (if any) first so a checkpoint file can take its class count."""
    data = load_dataset(args.dataset) if getattr(args, "dataset", None) else None
    is_file = args.model.endswith(CHECKPOINT_SUFFIXES)
    loaded = load_model(
        args.model,
        arch=args.arch,
        trust=args.trust_pickle,
        num_classes=data.num_classes if (data is not None and is_file and args.arch) else None,
    )
    if data is not None:
        data.check_spec(loaded.spec)
        warn_mismatch(args.model, args.dataset)
    return loaded, data


def warn_mismatch(model_ref: str, dataset_ref: str) -> None:
    """Warn (once, after the command's output) when the dataset is not the model's own."""
    from pruning_core.pairing import dataset_mismatch

    note = dataset_mismatch(str(model_ref), str(dataset_ref))
    if note:
        warnings.warn(note, stacklevel=2)


def criterion_name(text: str) -> str:
    """argparse type: a registered criterion's name (read from the registry when parsing)."""
    from pruning_core.criteria import CRITERIA

    if text not in CRITERIA:
        raise argparse.ArgumentTypeError(
            f"unknown criterion '{text}' (choose from {', '.join(CRITERIA)})"
        )
    return text


def granularity_name(text: str) -> str:
    """argparse type: a registered granularity, in its canonical form (`2:4`, `channel`...)."""
    from pruning_core.plans import get_plan

    try:
        return get_plan(text)[1]
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_fixed_ratio(granularity: str, ratios: Sequence[float], flag: str) -> None:
    """Refuse ratios a fixed-ratio granularity (N:M) would not use.

    N:M removes N of every M weights whatever ratio is asked: taking `--ratio 0.3` and
    writing a 2:4 result at 0.5 would hand back something other than what was asked, so the
    command says so before any work (as an option that cannot apply is refused elsewhere).

    Args:
        granularity: The granularity given (`2:4`, `channel`, ...).
        ratios: The ratios given on the command line (not defaults).
        flag: The option's name, for the message (`--ratio`, `--ratios`).

    Raises:
        UserError: A ratio other than the granularity's own.
    """
    from pruning_core.plans import get_plan

    plan, canonical = get_plan(granularity)
    if not plan.fixed_ratio:
        return
    fixed = plan.effective_ratio(canonical, 0.0)
    other = [r for r in ratios if not math.isclose(r, fixed, abs_tol=1e-9)]
    if other:
        raise UserError(
            f"{flag} {other[0]:g}: {canonical} granularity fixes the ratio at {fixed:g} "
            f"({canonical.replace(':', ' of every ')} weights removed); leave {flag} out or give "
            f"{fixed:g}"
        )


def stderr_progress(label: str, quiet: bool = False) -> ProgressFn:
    """A `progress=` callback (`progress.ProgressReport`) writing to stderr.

    A training report (`train.Progress`) prints one line per epoch (and a live bar on a
    terminal); any other report prints `label  42.0%  message`, one line each.
    """
    from pruning_core.schedules import CycleProgress

    tty = sys.stderr.isatty()

    def report(p: ProgressReport) -> None:
        if quiet:
            return
        # A linear/AGP schedule's epochs are its cycle's: say which cycle.
        where = f"{label} {p.where}" if isinstance(p, CycleProgress) else label
        if not isinstance(p, Progress):
            sys.stderr.write(f"{label} {p.fraction * 100:5.1f}%  {p.message}\n")
        elif p.val_accuracy is not None:
            end = "\n"
            sys.stderr.write(
                f"\r{where} epoch {p.epoch}/{p.epochs}  loss {p.loss:.4f}  val acc {p.val_accuracy:.4f}{end}"
            )
        elif tty:
            bar = int(30 * p.fraction)
            sys.stderr.write(
                f"\r{where} [{'#' * bar}{'.' * (30 - bar)}] {p.step}/{p.total_steps} loss {p.loss:.4f}"
            )
        sys.stderr.flush()

    return report
