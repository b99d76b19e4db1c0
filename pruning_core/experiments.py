"""Experiments: accuracy-vs-sparsity sweeps, per-layer sensitivity, and suggested layer ratios.

- `sweep` prunes a fresh copy of the model for every (method, ratio) point, measures it, and
  optionally fine-tunes it (masks kept by `MaskEnforcer`). Importance is scored once per method
  (`Preview`), so a sweep over many ratios costs one scoring plus one evaluation per point.
- `sensitivity` prunes one unit at a time (a layer, a coupled channel group, an attention layer,
  a residual block), over several ratios, and records the accuracy drop; its points run on an
  executor (`pruning_core.executor`: this process, or a Ray cluster).
- `suggest_ratios` turns those drop curves into per-layer ratios that reach a target overall
  sparsity with the least predicted accuracy loss.

The run store lives beside this module in `pruning_core.store` (kept separate so the job runner
and the app can record runs without importing experiment code).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.criteria import get_criterion
from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.executor import Executor, get_executor
from pruning_core.fsio import atomic_path
from pruning_core.layers import is_weight_layer, rebased_sparsity, weight_of
from pruning_core.models import LoadedModel, sparsity_base
from pruning_core.plans import get_plan
from pruning_core.progress import ProgressFn, Report
from pruning_core.prune import (
    Preview,
    PruneConfig,
    PruneResult,
    criteria_for,
    hold_masks,
    method_phrase,
    prune_,
    settle_structured,
)
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, count_params
from pruning_core.train import DEFAULT_FINETUNE, Progress, TrainConfig, fit

__all__ = [
    "DEFAULT_SENSITIVITY_RATIOS",
    "SENSITIVITY_COLUMNS",
    "SWEEP_COLUMNS",
    "ProgressFn",
    "check_suggestion",
    "layer_sizes",
    "lower_hull",
    "method_label",
    "predicted_drop",
    "sensitivity",
    "suggest_ratios",
    "sweep",
    "write_csv",
]

SWEEP_COLUMNS = (
    "method", "granularity", "ratio", "sparsity", "accuracy", "finetuned_accuracy",
    "params_nonzero", "macs", "seconds",
)  # fmt: skip
# `members` came later than the others: readers of older CSV files may not find it.
# `layer_sparsity`: the unit's own share removed (as metrics.json's per-layer key), not the
# model's sparsity (`terms.SPARSITY_MEANS`).
SENSITIVITY_COLUMNS = (
    "layer", "ratio", "accuracy", "drop", "params", "layer_sparsity", "members",
)  # fmt: skip
DEFAULT_SENSITIVITY_RATIOS = (0.25, 0.5, 0.75, 0.9)


def method_label(method: str, granularity: str) -> str:
    """A sweep row's `method`: the criterion, or for a granularity that takes one criterion
    only (low rank) the granularity alone, as `prune.method_phrase` names it ("lowrank"): its
    criterion says nothing a user chose, and "magnitude" would read as magnitude pruning.

    Args:
        method: The criterion's registry name.
        granularity: The granularity (`unstructured`, `lowrank`, ...); an unknown one keeps
            the criterion's name.
    """
    try:
        only_one = len(criteria_for(granularity)) == 1
    except UserError:
        return method
    return granularity if only_one else method


def _unpack(
    model: nn.Module | LoadedModel, spec: InputSpec | None, what: str
) -> tuple[nn.Module, InputSpec]:
    """The module and its spec, from a LoadedModel (`spec` overrides its own) or a module."""
    if isinstance(model, LoadedModel):
        return model.model, spec if spec is not None else model.spec
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what}: pass a LoadedModel, or an nn.Module and its spec, got {type(model).__name__}"
        )
    if spec is None:
        raise UserError(f"{what} needs the model's input spec")
    return model, spec


def _check_ratios(ratios: Iterable[float], what: str = "ratios") -> list[float]:
    out = []
    for r in ratios:
        try:
            v = float(r)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{what} must be numbers in [0, 1), got {r!r}") from None
        if not (math.isfinite(v) and 0.0 <= v < 1.0):
            raise UserError(f"{what} must be in [0, 1) (share of weights removed), got {r}")
        out.append(v)
    if not out:
        raise UserError(f"give at least one value in {what}")
    return out


def _fresh(model: nn.Module) -> nn.Module:
    """A private copy in eval mode: the caller's model is never touched."""
    m = copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.grad = None
    return m


def sweep(
    model: nn.Module | LoadedModel,
    data: DataBundle,
    spec: InputSpec | None = None,
    *,
    methods: Sequence[str],
    ratios: Sequence[float],
    granularity: str = "unstructured",
    finetune_epochs: int = 0,
    train_config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    scope: str = "global",
    device: str = "auto",
    eval_limit: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy against sparsity for each method and ratio (one fresh pruned copy per point).

    Args:
        model: The model, or a LoadedModel (then `spec` may be None); it is never modified.
        data: The dataset (val split for accuracy, calibration split for data-driven criteria,
            train split for fine-tuning).
        spec: The model's input spec (default: the LoadedModel's).
        methods: Criterion names (`magnitude`, `random`, `wanda`, ...).
        ratios: Target shares removed, each in [0, 1). N:M granularity ignores them (one point
            per method at N/M).
        granularity: unstructured, N:M (e.g. `2:4`), channel, head or block.
        finetune_epochs: Fine-tune each pruned copy this many epochs (0: no fine-tune, and
            `finetuned_accuracy` is NaN).
        train_config: Fine-tune settings (its `epochs` is replaced by `finetune_epochs`;
            default `train.DEFAULT_FINETUNE`).
        progress: Called with a `progress.ProgressReport` (`fraction` of the sweep done,
            `message`) after each point, and after each fine-tuning step.
        cancel: When set, the sweep stops after the current point (fine-tuning stops within a
            batch) and returns the rows done so far; `df.attrs["cancelled"]` is then True.
        scope: `global` or `layer` ratio scope.
        device: Where to evaluate and fine-tune (`auto`, `cpu`, `cuda`).
        eval_limit: Evaluate on only the first N validation images (a quick estimate).
        seed: Seed of the random criterion.

    Returns:
        One row per point with the columns of `SWEEP_COLUMNS` plus `dense_accuracy`: method
        (the criterion; `lowrank` for low rank, `method_label`), granularity, ratio, sparsity (measured, `terms.SPARSITY_MEANS`), accuracy (pruned, before
        fine-tune), finetuned_accuracy, params_nonzero, macs, seconds.

    Raises:
        UserError: Unknown methods, bad ratios, a method that does not fit the granularity, no
            spec for a plain module.
    """
    net, spec = _unpack(model, spec, "sweep")
    # A pruned folder's own zeros stay zero through every fine-tune (`prune.hold_masks`).
    keep_zeros = isinstance(model, LoadedModel) and "pruned" in model.meta
    # A shrunk folder: its points' sparsity against the dense architecture, as `evaluate`.
    counted, dense_count = sparsity_base(model) if isinstance(model, LoadedModel) else (1, 1)
    data.check_spec(spec)
    ratios = _check_ratios(ratios)
    methods = [str(m).strip() for m in methods if str(m).strip()]
    if not methods:
        raise UserError("give at least one method")
    if finetune_epochs < 0:
        raise UserError(f"fine-tune epochs must be >= 0, got {finetune_epochs}")
    plan, canonical = get_plan(granularity)
    grid_ratios = [plan.effective_ratio(canonical, 0.0)] if plan.fixed_ratio else ratios
    # Validate every config up front so a typo fails before any work is done.
    configs = {
        m: PruneConfig(
            method=m, granularity=granularity, ratio=grid_ratios[0], scope=scope, seed=seed
        )
        for m in methods
    }
    for m in methods:
        for r in grid_ratios:
            configs[m].replace(ratio=r)
    # A criterion the model cannot feed (bn-scale without BatchNorm) fails here, not after the
    # other methods' points are done and lost; a granularity the model cannot take at all is
    # said by its own plan below, whatever the criterion.
    if plan.refusal(net, spec) is None:
        refused = plan.criterion_refusals([get_criterion(m) for m in methods], net, spec)
        for m in methods:
            if m in refused:
                raise UserError(f"criterion '{m}' cannot score this model: {refused[m]}")
    ft_config = None
    if finetune_epochs > 0:
        ft_config = dataclasses.replace(train_config or DEFAULT_FINETUNE, epochs=finetune_epochs)
    dev = resolve_device(device)
    base = _fresh(net)
    dense_acc = evaluate(base.to(dev), data, spec, device=dev, limit=eval_limit).accuracy
    base.cpu()
    total = len(methods) * len(grid_ratios)
    rows: list[dict[str, Any]] = []
    cancelled = False
    done = 0
    for method in methods:
        cfg = configs[method]
        cache: Preview | None = None
        t_score = 0.0
        if not cfg.structured:
            t0 = time.perf_counter()
            cache = Preview(_fresh(base), cfg, data, spec)
            t_score = time.perf_counter() - t0
        for r in grid_ratios:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            t0 = time.perf_counter()
            pruned = _fresh(base)
            res = prune_(pruned, cfg.replace(ratio=r), data=data, spec=spec, scores=cache)
            acc = _accuracy(pruned, data, spec, dev, eval_limit)
            # The scoring is shared by the method's points; charge it to the first one.
            seconds = time.perf_counter() - t0 + t_score
            t_score = 0.0
            row: dict[str, Any] = {
                "method": method_label(method, cfg.granularity),
                "granularity": cfg.granularity,
                "ratio": r,
                "sparsity": rebased_sparsity(res.sparsity, counted, dense_count),
                "accuracy": acc,
                "finetuned_accuracy": math.nan,
                "params_nonzero": count_params(pruned, nonzero=True),
                "macs": count_macs(pruned, spec),
                "dense_accuracy": dense_acc,
            }
            if ft_config is not None:
                t0 = time.perf_counter()
                step_report = None
                if progress is not None:
                    done_before, label = done, f"{method} ratio {r:g}: fine-tune"

                    def step_report(p: Progress, d: int = done_before, lb: str = label) -> None:
                        progress(
                            Report((d + p.fraction) / total, f"{lb} step {p.step}/{p.total_steps}")
                        )

                ft_acc, was_cancelled = _finetune(
                    pruned, res, data, spec, ft_config, cancel, eval_limit, step_report, keep_zeros
                )
                seconds += time.perf_counter() - t0
                # A fine-tune cut short measures nothing meaningful: leave it NaN.
                row["finetuned_accuracy"] = math.nan if was_cancelled else ft_acc
                cancelled = cancelled or was_cancelled
            row["seconds"] = seconds
            rows.append(row)
            done += 1
            if progress is not None:
                ft = "" if ft_config is None else f", fine-tuned {row['finetuned_accuracy']:.4f}"
                progress(
                    Report(
                        done / total,
                        f"{method_phrase(method, cfg.granularity)} ratio {r:g}: sparsity {row['sparsity']:.3f}, "
                        f"accuracy {row['accuracy']:.4f}{ft}",
                    )
                )
            if cancelled:
                break
        if cancelled:
            break
    cols = [*SWEEP_COLUMNS, "dense_accuracy"]
    df = pd.DataFrame(rows, columns=cols)
    df.attrs["cancelled"] = cancelled
    return df


def _accuracy(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    dev: torch.device,
    limit: int | None,
    split: str = "val",
) -> float:
    model.to(dev)
    acc = evaluate(model, data, spec, split=split, device=dev, limit=limit).accuracy
    model.cpu()
    return acc


def _finetune(
    model: nn.Module,
    res: PruneResult,
    data: DataBundle,
    spec: InputSpec,
    config: TrainConfig,
    cancel: threading.Event | None,
    limit: int | None,
    on_progress: Callable[[Progress], None] | None = None,
    keep_zeros: bool = False,
) -> tuple[float, bool]:
    """Fine-tune in place keeping pruned weights at zero; returns (val accuracy, cancelled)."""
    enforcer = hold_masks(model, res.masks, keep_zeros=keep_zeros)
    if enforcer is not None:
        with enforcer:
            tr = fit(
                model, data, spec, config, after_step=enforcer, cancel=cancel, progress=on_progress
            )
    else:
        tr = fit(model, data, spec, config, cancel=cancel, progress=on_progress)
    return _accuracy(model, data, spec, resolve_device(config.device), limit), tr.cancelled


def layer_sizes(model: nn.Module, layers: Iterable[str]) -> dict[str, int]:
    """Weights per named layer (what `suggest_ratios` weighs the ratios by); a unit that is not
    one layer (an attention layer, for head pruning) counts the Conv/Linear weights inside it.

    Raises:
        UserError: A name that is neither a layer with weights nor a module holding some.
    """
    mods = dict(model.named_modules())
    out = {}
    for n in layers:
        m = mods.get(n)
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            out[n] = int(w.numel())
            continue
        inner = [weight_of(s).numel() for s in m.modules() if is_weight_layer(s)] if m else []
        if not inner:
            raise UserError(f"no layer with weights named '{n}' in the model")
        out[n] = int(sum(inner))
    return out


def sensitivity(
    model: nn.Module | LoadedModel,
    data: DataBundle,
    spec: InputSpec | None = None,
    ratios: Sequence[float] = DEFAULT_SENSITIVITY_RATIOS,
    method: str = "magnitude",
    granularity: str = "unstructured",
    limit: int | None = None,
    progress: ProgressFn | None = None,
    *,
    split: str = "val",
    layers: Sequence[str] | None = None,
    device: str = "auto",
    cancel: threading.Event | None = None,
    seed: int = 0,
    executor: Executor | str | None = None,
) -> pd.DataFrame:
    """Per-unit sensitivity: prune one unit at a time (on a copy) and record the accuracy.

    A unit is what the granularity prunes as one piece, so each point is what pruning really
    does to the model. Unstructured: one layer's weights. Channel: one channel group, the
    layers Torch-Pruning's dependency graph couples through residual additions and
    concatenations (DepGraph, Fang et al. 2023), which lose the same channels together; the
    unit carries the name per-layer ratios give it (the group's root layer, usually its first)
    and its layers are listed in `members`. Head: one
    attention layer's heads. Block: one residual block removed (replaced by the identity),
    one point per block whatever `ratios` say. The points are independent, so they run on an
    `executor` (`pruning_core.executor`: this process, or a Ray cluster); every executor
    measures the same numbers.

    Args:
        model: The model (never modified), or a LoadedModel (then `spec` may be None).
        data: The dataset; accuracy is measured on `split`.
        spec: The model's input spec (default: the LoadedModel's).
        ratios: Shares of each unit removed, each in [0, 1) (not used by block granularity).
        method: Criterion name.
        granularity: `unstructured`, `channel`, `head` or `block` (any granularity with a
            choice per unit; N:M fixes the share everywhere and is refused).
        limit: Evaluate on only the first N images of the split (faster, noisier).
        progress: Called with a `progress.ProgressReport` (`fraction` of the points done,
            `message`) after each point.
        split: `val` (default) or `calib`; measuring on `calib` keeps the validation split
            unseen by the ratio choice.
        layers: Only these units (default: every unit the method would prune); a member
            layer of a channel group names its group.
        device: Where to evaluate (resolved on each worker for a remote executor).
        cancel: When set, stops after the current point (a remote executor cancels the
            pending ones); `df.attrs["cancelled"]` says so.
        seed: Seed of the random criterion.
        executor: Where the points run: an `Executor`, a registry name (`inprocess`, `ray`:
            a local Ray runtime, shut down at the end) or None (this process). Remote
            workers get the dense model (architecture and weights), the settings and the
            dataset's reference (the bundle itself when it was not loaded by reference), and
            score the model once per worker.

    Returns:
        One row per (unit, ratio), in unit then ratio order, with the columns of
        `SENSITIVITY_COLUMNS`: layer (the unit), ratio (1.0 for a removed block), accuracy,
        drop (dense minus pruned accuracy, positive = worse), params (weights in the unit's
        named layer; in a block or an attention layer, all of its Conv/Linear weights),
        sparsity (measured share of the unit removed), members (comma-separated Conv/Linear
        layers the unit prunes, in model order). `df.attrs` holds base_accuracy, method,
        granularity, split, cancelled and executor.

    Raises:
        UserError: Bad ratios, unknown method, executor or layers, N:M granularity, no spec
            for a plain module, and the executor's own refusals (Ray missing).
    """
    net, spec = _unpack(model, spec, "sensitivity")
    data.check_spec(spec)
    ratios = sorted(set(_check_ratios(ratios)))
    plan, _ = get_plan(granularity)
    if plan.fixed_ratio:
        raise UserError(
            f"sensitivity needs per-layer (or per-block) choices; {granularity} granularity "
            "removes the same share everywhere (use unstructured, channel, head or block)"
        )
    config = PruneConfig(method=method, granularity=granularity, ratio=0.0, seed=seed)
    # Structured plans measure in mask mode (the same function as shrinking, shapes kept),
    # so one working copy serves every point.
    config = config.replace(structured_mode="mask") if config.structured else config
    owned = executor is None or isinstance(executor, str)
    runner = executor if isinstance(executor, Executor) else get_executor(executor or "inprocess")
    job = _SensitivityJob(
        key=uuid.uuid4().hex, model=net, spec=spec, data=data, config=config, split=split,
        limit=limit, device=device,
    )  # fmt: skip
    try:
        ctx = _SensitivityContext(job, net, data, with_base=True)
        units = ctx.units()
        if layers is not None:
            units = ctx.pick(layers)
        if not units:
            raise UserError("the model has no prunable layer for this method and granularity")
        points = ctx.points(units, ratios)
        sizes = layer_sizes(ctx.work, units)
        members = {u: ctx.members(u) for u in units}
        base_acc = ctx.base_accuracy
        if runner.local:
            _register_context(job.key, ctx)
        else:
            job = dataclasses.replace(job, model=_fresh(net).cpu(), data=_data_for_workers(data))
        total = len(points)
        done = [0]

        def on_done(i: int, out: tuple[float, float]) -> None:
            done[0] += 1
            if progress is not None:
                p = points[i]
                what = "removed" if p.whole else f"ratio {p.ratio:g}"
                progress(Report(done[0] / total, f"{p.unit} {what}: accuracy {out[0]:.4f}"))

        results = runner.map(_measure_point, points, shared=job, on_done=on_done, cancel=cancel)
    finally:
        _CONTEXTS.pop(job.key, None)
        if owned:
            runner.close()
    rows = []
    for i, acc_sp in results.items():
        p, (acc, sp) = points[i], acc_sp
        rows.append(
            {"layer": p.unit, "ratio": p.ratio, "accuracy": acc, "drop": base_acc - acc,
             "params": sizes[p.unit], "layer_sparsity": sp, "members": members[p.unit]}
        )  # fmt: skip
    df = pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))
    df.attrs.update(base_accuracy=base_acc, method=method, granularity=granularity, split=split,
                    cancelled=len(results) < total, executor=runner.name)  # fmt: skip
    return df


@dataclasses.dataclass(frozen=True)
class _DataRef:
    """A dataset by the reference it loads from, and what it must look like when loaded."""

    name: str
    fingerprint: tuple[Any, ...]

    def load(self) -> DataBundle:
        from pruning_core.data import load_dataset

        data = load_dataset(self.name)
        if _fingerprint(data) != self.fingerprint:
            raise UserError(
                f"dataset '{self.name}' loads differently on this worker than where the work "
                "was sent from (other files or version): give every node the same data"
            )
        return data


def _fingerprint(data: DataBundle) -> tuple[Any, ...]:
    """Sizes, shapes and a checksum of the labels and the calibration indices: enough to tell
    two loads of a dataset apart without hashing every image."""
    labels = data.val[1].numpy().tobytes() + data.train[1].numpy().tobytes()
    crc = zlib.crc32(data.calib_index.numpy().tobytes(), zlib.crc32(labels))
    return (tuple(data.train[0].shape), tuple(data.val[0].shape), data.class_names, crc)


def _data_for_workers(data: DataBundle) -> DataBundle | _DataRef:
    """The dataset as remote workers should get it: its reference when loading that
    reference here gives this very data (workers load it themselves), else the bundle."""
    from pruning_core.data import load_dataset

    try:
        again = load_dataset(data.name)
    except (UserError, OSError):  # not a reference this process can load
        return data
    fp = _fingerprint(data)
    return _DataRef(data.name, fp) if again is data or _fingerprint(again) == fp else data


@dataclasses.dataclass(frozen=True)
class _SensitivityJob:
    """What every point of one sensitivity run shares (picklable; sent once per executor map).

    Attributes:
        key: Names the run, so a process keeps one working copy per run (`_CONTEXTS`).
        model: The dense model (a CPU copy when it travels).
        spec: Its input spec.
        data: The dataset, or its reference for remote workers.
        config: Criterion and granularity (structured plans in mask mode).
        split, limit, device: Where accuracy is measured.
    """

    key: str
    model: nn.Module
    spec: InputSpec
    data: DataBundle | _DataRef
    config: PruneConfig
    split: str
    limit: int | None
    device: str


@dataclasses.dataclass(frozen=True)
class _Point:
    """One measurement: `unit` pruned at `ratio` (`whole`: the unit removed, e.g. a block)."""

    unit: str
    ratio: float
    whole: bool = False


class _SensitivityContext:
    """A process's working copy for one run: the model on its device, scored once, and its
    dense tensors to put back after each point."""

    def __init__(
        self, job: _SensitivityJob, net: nn.Module, data: DataBundle, *, with_base: bool = False
    ) -> None:
        self.job, self.data = job, data
        self.dev = resolve_device(job.device)
        self.work = _fresh(net).to(self.dev)
        self.base_accuracy = math.nan
        if with_base:
            self.base_accuracy = self._evaluate()
        # Scored once on the dense copy: every point starts from the dense weights.
        self.preview = Preview(self.work, job.config, data, job.spec)
        self.plan = self.preview.plan
        self.structured = job.config.structured
        # A granularity with one ratio for all its units (blocks) removes their elements:
        # each element is a unit of sensitivity, removed whole.
        self.elements = not self.plan.per_layer
        self.dense = (
            {k: v.detach().clone() for k, v in self.work.state_dict().items()}
            if self.structured
            else {}
        )

    def _evaluate(self) -> float:
        j = self.job
        return evaluate(
            self.work, self.data, j.spec, split=j.split, device=self.dev, limit=j.limit
        ).accuracy

    def units(self) -> list[str]:
        """Every unit, in model order."""
        if self.elements:
            return [m for u in self.plan.units for m in u.members]
        return [u.name for u in self.plan.units]

    def pick(self, names: Sequence[str]) -> list[str]:
        """The units `names` address (a member layer addresses its channel group).

        Raises:
            UserError: A name that is neither a unit nor a member of one.
        """
        units = self.units()
        by_name = {u: u for u in units}
        if not self.elements:
            for u in self.plan.units:
                for m in u.members:
                    by_name.setdefault(m, u.name)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UserError(
                f"'{unknown[0]}' is not a prunable layer (prunable: {', '.join(units)})"
            )
        return list(dict.fromkeys(by_name[n] for n in names))

    def points(self, units: Sequence[str], ratios: Sequence[float]) -> list[_Point]:
        """The (unit, ratio) grid, checked against the configuration up front."""
        if self.elements:
            return [_Point(u, 1.0, whole=True) for u in units]
        for u in units:
            for r in ratios:
                self.job.config.replace(layer_ratios=((u, r),))  # a typo fails before any work
        return [_Point(u, r) for u in units for r in ratios]

    def members(self, unit: str) -> str:
        """The Conv/Linear layers a unit prunes, comma-separated, in model order."""
        names = [unit]
        if not self.elements:
            names += [m for u in self.plan.units if u.name == unit for m in u.members]
        mods = dict(self.work.named_modules())
        order = {n: i for i, n in enumerate(mods)}
        found: set[str] = set()
        for n in names:
            m = mods.get(n)
            if m is None:
                continue
            found.update(
                f"{n}.{s}" if s else n for s, sub in m.named_modules() if is_weight_layer(sub)
            )
        return ",".join(sorted(found, key=order.__getitem__))

    def measure(self, p: _Point) -> tuple[float, float]:
        """(accuracy, share of the unit removed) with `p` applied; the copy is dense after."""
        j, work = self.job, self.work
        if not self.structured:
            # Mask one layer's weights, measure, then restore them.
            w = weight_of(work.get_submodule(p.unit))
            saved = w.detach().clone()
            mask = self.preview.masks(0.0, {p.unit: p.ratio}, scope="layer")[p.unit]
            with torch.no_grad():
                w.masked_fill_(~mask.to(w.device), 0.0)
            sp = 1.0 - float(torch.count_nonzero(w)) / w.numel()
            acc = self._evaluate()
            with torch.no_grad():
                w.copy_(saved)
            return acc, sp
        # As `prune_` in mask mode would: zero the unit's selection, re-estimate BatchNorm,
        # measure; then every tensor and statistic goes back to dense.
        if self.elements:
            owner = next(u for u in self.plan.units if p.unit in u.members)
            selection: dict[str, Any] = {owner.name: [owner.members.index(p.unit)]}
        else:
            selection = self.preview.select(0.0, {p.unit: p.ratio}, scope="layer")
        done = self.plan.apply(work, selection, physical=False)
        settle_structured(work, j.config, self.data, j.spec)
        if self.elements:
            sp = 1.0
        else:
            sp = len(done.removed.get(p.unit, ())) / max(self.preview.layer_sizes[p.unit], 1)
        acc = self._evaluate()
        with torch.no_grad():
            for k, v in work.state_dict().items():
                v.copy_(self.dense[k])
        return acc, sp


# Working copies by run key: the caller's own (in-process executor) until its run ends, and a
# remote worker's last few (a worker runs one task at a time, many tasks of one run).
_CONTEXTS: OrderedDict[str, _SensitivityContext] = OrderedDict()
_CONTEXTS_LOCK = threading.Lock()
_WORKER_CONTEXTS = 2


def _register_context(key: str, ctx: _SensitivityContext) -> None:
    with _CONTEXTS_LOCK:
        _CONTEXTS[key] = ctx


def _measure_point(job: _SensitivityJob, point: _Point) -> tuple[float, float]:
    """One sensitivity point, in whatever process runs it: (accuracy, sparsity)."""
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(job.key)
    if ctx is None:
        data = job.data.load() if isinstance(job.data, _DataRef) else job.data
        ctx = _SensitivityContext(job, job.model, data)
        with _CONTEXTS_LOCK:
            _CONTEXTS[job.key] = ctx
            while len(_CONTEXTS) > _WORKER_CONTEXTS:
                _CONTEXTS.popitem(last=False)
    return ctx.measure(point)


def _drop_curve(sens: pd.DataFrame, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Measured (ratio, drop) points of a layer, from (0, 0), made non-decreasing.

    Noise can make a little pruning look helpful; a drop is never predicted below zero or
    below the drop at a smaller ratio.
    """
    sub = sens.loc[sens["layer"] == layer, ["ratio", "drop"]].astype(float)
    means = sub.groupby("ratio")["drop"].mean().sort_index()
    r = np.concatenate([[0.0], means.index.to_numpy(float)])
    d = np.concatenate([[0.0], np.maximum(means.to_numpy(float), 0.0)])
    if r[1:].size and r[1] == 0.0:
        r, d = r[1:], d[1:]
    return r, np.maximum.accumulate(d)


def predicted_drop(sens: pd.DataFrame, ratios: Mapping[str, float]) -> float:
    """Predicted accuracy drop of per-layer `ratios`: the sum of each layer's interpolated
    drop (treating layers as independent, the usual sensitivity-analysis assumption)."""
    total = 0.0
    for layer, r in ratios.items():
        xs, ys = _drop_curve(sens, layer)
        total += float(np.interp(r, xs, ys))
    return total


def lower_hull(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by x (Andrew's monotone chain; used by
    `suggest_ratios` and the budget search on drop-vs-cost curves).

    Args:
        xs: The points' x, ascending; shape (n,).
        ys: Their y; shape (n,).

    Returns:
        Indices into `xs` of the hull's vertices, left to right (the first and last included).
    """
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (xs[b] - xs[a]) * (ys[i] - ys[a]) - (ys[b] - ys[a]) * (xs[i] - xs[a])
            if cross <= 0:  # b lies on or above the segment a-i
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def suggest_ratios(
    sens_df: pd.DataFrame,
    layer_sizes: Mapping[str, int],
    target_ratio: float,
) -> dict[str, float]:
    """Per-layer ratios reaching `target_ratio` overall with the least predicted loss.

    Each layer's measured drop curve (linear between measured ratios, from 0 at ratio 0) is
    replaced by its lower convex hull; hull segments from every layer are then taken in order of
    accuracy lost per weight removed until the target share of weights is removed, the last one
    partly. This is the exact optimum of the convexified, additive model (a Lagrangian
    relaxation: every layer ends where its marginal loss per weight matches the others').

    Args:
        sens_df: Output of `sensitivity` (columns layer, ratio, drop).
        layer_sizes: Weights per layer; the layers to assign (each needs sensitivity rows).
        target_ratio: Share of all weights (or units) of these layers to remove, in [0, 1): a
            ratio, as the global slider and `--ratio` count it (the model's sparsity is then
            that of a uniform ratio, `terms.SPARSITY_MEANS`).

    Returns:
        {layer: ratio}, with sum(ratio * size) / sum(size) == target_ratio (to rounding).

    Raises:
        UserError: Target outside [0, 1), a layer without sensitivity rows, or a target beyond
            what the measured ratios reach (measure larger ratios).
    """
    target = _check_ratios([target_ratio], "target ratio")[0]
    if not layer_sizes:
        raise UserError("no layers to assign ratios to")
    missing = [n for n in layer_sizes if not (sens_df["layer"] == n).any()]
    if missing:
        raise UserError(f"no sensitivity measured for layer '{missing[0]}'")
    total = float(sum(layer_sizes.values()))
    need = target * total
    segments: list[tuple[float, float, str, float, float]] = []  # slope, end, layer, r0, r1
    reach = 0.0
    for layer, size in layer_sizes.items():
        xs, ys = _drop_curve(sens_df, layer)
        reach += xs[-1] * size
        hull = lower_hull(xs * size, ys)
        for a, b in itertools.pairwise(hull):
            slope = (ys[b] - ys[a]) / max((xs[b] - xs[a]) * size, 1e-12)
            segments.append((slope, xs[b], layer, xs[a], xs[b]))
    if need > reach + 1e-9:
        raise UserError(
            f"target ratio {target:g} needs larger ratios than measured (the measured ratios "
            f"reach at most {reach / total:.3f} overall); measure up to a higher ratio"
        )
    segments.sort(key=lambda s: s[0])
    out = dict.fromkeys(layer_sizes, 0.0)
    removed = 0.0
    i = 0
    while i < len(segments) and removed < need - 1e-9:
        # Segments with equal loss per weight (several zero-drop stretches, typically) form one
        # group; a group that only partly fits is shared in proportion, so free pruning is
        # spread over the layers rather than piled onto whichever came first.
        j = i + 1
        while j < len(segments) and math.isclose(
            segments[j][0], segments[i][0], rel_tol=1e-9, abs_tol=1e-15
        ):
            j += 1
        group = segments[i:j]
        gain = sum((r1 - r0) * layer_sizes[layer] for _, _, layer, r0, r1 in group)
        share = 1.0 if removed + gain <= need else (need - removed) / gain
        for _, _, layer, r0, r1 in group:
            out[layer] = float(r0 + share * (r1 - r0))
        removed += share * gain
        i = j
    return out


def check_suggestion(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    ratios: Mapping[str, float],
    *,
    method: str = "magnitude",
    granularity: str = "unstructured",
    split: str = "val",
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Measure suggested per-layer ratios against a uniform ratio at the same overall ratio.

    Both are applied to copies (the model is not modified) and evaluated before any fine-tune,
    so the comparison is measured rather than predicted.

    Args:
        model: The dense model (never modified).
        data: The dataset; accuracy is measured on `split`.
        spec: The model's input spec.
        ratios: {layer: ratio}, e.g. from `suggest_ratios`.
        method: Criterion name.
        granularity: `unstructured`, `channel` or `head`.
        split: The split to measure on (`val` by default).
        limit: Evaluate on only the first N images of the split.
        device: Where to evaluate.

    Returns:
        {"target_ratio", "sparsity", "accuracy", "uniform_ratio", "uniform_sparsity",
        "uniform_accuracy", "base_accuracy"}; `target_ratio` is the size-weighted mean of
        `ratios` and the uniform ratio applied to every layer; `sparsity` and
        `uniform_sparsity` are measured (`terms.SPARSITY_MEANS`).
    """
    if not ratios:
        raise UserError("no suggested ratios to check")
    sizes = layer_sizes(model, ratios)
    total = float(sum(sizes.values()))
    target = sum(r * sizes[n] for n, r in ratios.items()) / total
    dev = resolve_device(device)
    base_acc = _accuracy(_fresh(model), data, spec, dev, limit, split)
    suggested = PruneConfig(
        method=method, granularity=granularity, ratio=0.0,
        layer_ratios=tuple((n, float(r)) for n, r in ratios.items()),
    )  # fmt: skip
    uniform = PruneConfig(
        method=method, granularity=granularity, ratio=0.0,
        layer_ratios=tuple((n, target) for n in ratios),
    )  # fmt: skip
    out: dict[str, Any] = {"target_ratio": target, "uniform_ratio": target}
    for key, cfg in (("", suggested), ("uniform_", uniform)):
        m = _fresh(model)
        res = prune_(m, cfg, data=data, spec=spec)
        out[f"{key}sparsity"] = res.sparsity
        m.to(dev)
        out[f"{key}accuracy"] = evaluate(
            m, data, spec, split=split, device=dev, limit=limit
        ).accuracy
    out["base_accuracy"] = base_acc
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV atomically (temp file + rename); returns the path."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"--out {target} is a directory; give a file name such as results.csv")
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)
    return target
