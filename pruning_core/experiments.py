"""Experiments: accuracy-vs-sparsity sweeps, per-layer sensitivity, and suggested layer ratios.

- `sweep` prunes a fresh copy of the model for every (method, ratio) point, measures it, and
  optionally fine-tunes it (masks kept by `MaskEnforcer`). Importance is scored once per method
  (`Preview`), so a sweep over many ratios costs one scoring plus one evaluation per point.
- `sensitivity` prunes one layer at a time, over several ratios, and records the accuracy drop.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.fsio import atomic_path
from pruning_core.layers import is_weight_layer, weight_of
from pruning_core.models import LoadedModel
from pruning_core.plans import get_plan
from pruning_core.progress import ProgressFn, Report
from pruning_core.prune import (
    Preview,
    PruneConfig,
    PruneResult,
    hold_masks,
    prunable_layers,
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
SENSITIVITY_COLUMNS = ("layer", "ratio", "accuracy", "drop", "params", "sparsity")
DEFAULT_SENSITIVITY_RATIOS = (0.25, 0.5, 0.75, 0.9)


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
        One row per point with the columns of `SWEEP_COLUMNS` plus `dense_accuracy`: method,
        granularity, ratio, sparsity (measured over pruned layers), accuracy (pruned, before
        fine-tune), finetuned_accuracy, params_nonzero, macs, seconds.

    Raises:
        UserError: Unknown methods, bad ratios, a method that does not fit the granularity, no
            spec for a plain module.
    """
    net, spec = _unpack(model, spec, "sweep")
    # A pruned folder's own zeros stay zero through every fine-tune (`prune.hold_masks`).
    keep_zeros = isinstance(model, LoadedModel) and "pruned" in model.meta
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
                "method": method,
                "granularity": cfg.granularity,
                "ratio": r,
                "sparsity": res.sparsity,
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
                        f"{method} {cfg.granularity} ratio {r:g}: sparsity {res.sparsity:.3f}, "
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
) -> pd.DataFrame:
    """Per-layer sensitivity: prune one layer at a time (on a copy) and record the accuracy.

    Args:
        model: The model (never modified), or a LoadedModel (then `spec` may be None).
        data: The dataset; accuracy is measured on `split`.
        spec: The model's input spec (default: the LoadedModel's).
        ratios: Shares of the layer removed, each in [0, 1).
        method: Criterion name.
        granularity: `unstructured`, `channel` or `head` (per-layer ratios must make sense).
        limit: Evaluate on only the first N images of the split (faster, noisier).
        progress: Called with a `progress.ProgressReport` (`fraction` of the points done,
            `message`) after each point.
        split: `val` (default) or `calib`; measuring on `calib` keeps the validation split
            unseen by the ratio choice.
        layers: Only these layers (default: every layer the method would prune).
        device: Where to evaluate.
        cancel: When set, stops after the current point; `df.attrs["cancelled"]` says so.
        seed: Seed of the random criterion.

    Returns:
        One row per (layer, ratio): layer, ratio, accuracy, drop (dense minus pruned accuracy,
        positive = worse), params (weights in the layer), sparsity (measured share removed in
        the layer). `df.attrs["base_accuracy"]` is the unpruned accuracy.

    Raises:
        UserError: Bad ratios, unknown method or layers, N:M or block granularity, no spec for
            a plain module.
    """
    net, spec = _unpack(model, spec, "sensitivity")
    data.check_spec(spec)
    ratios = sorted(set(_check_ratios(ratios)))
    plan, _ = get_plan(granularity)
    if plan.fixed_ratio or not plan.per_layer:
        raise UserError(
            f"sensitivity needs per-layer ratios; {granularity} granularity has none "
            "(use unstructured, channel or head)"
        )
    config = PruneConfig(method=method, granularity=granularity, ratio=0.0, seed=seed)
    all_layers = prunable_layers(net, config)
    if layers is not None:
        unknown = [n for n in layers if n not in all_layers]
        if unknown:
            raise UserError(
                f"'{unknown[0]}' is not a prunable layer (prunable: {', '.join(all_layers)})"
            )
        all_layers = list(layers)
    if not all_layers:
        raise UserError("the model has no prunable layer for this method and granularity")
    for n in all_layers:
        for r in ratios:
            config.replace(ratio=0.0, layer_ratios=((n, r),))  # validate up front
    dev = resolve_device(device)
    work = _fresh(net).to(dev)
    base_acc = evaluate(work, data, spec, split=split, device=dev, limit=limit).accuracy
    # Scored once on the dense copy: every point starts from the dense weights, so its scores
    # are these. Structured plans preview in mask mode (the same function as shrinking).
    mode = "mask" if config.structured else config.structured_mode
    cache = Preview(work, config.replace(structured_mode=mode), data, spec)
    sizes = layer_sizes(work, all_layers)
    mods = dict(work.named_modules())
    structured = config.structured
    dense = {k: v.detach().clone() for k, v in work.state_dict().items()} if structured else {}
    total = len(all_layers) * len(ratios)
    rows: list[dict[str, Any]] = []
    cancelled = False
    for layer in all_layers:
        for r in ratios:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if not structured:
                # Mask one layer of the shared working copy, measure, then restore its weights.
                w = mods[layer].weight
                saved = w.detach().clone()
                mask = cache.masks(0.0, {layer: r}, scope="layer")[layer]
                with torch.no_grad():
                    w.masked_fill_(~mask.to(w.device), 0.0)
                sp = 1.0 - float(torch.count_nonzero(w)) / w.numel()
                acc = evaluate(work, data, spec, split=split, device=dev, limit=limit).accuracy
                with torch.no_grad():
                    w.copy_(saved)
            else:
                # As `prune_` in mask mode would: zero the unit's selection, re-estimate
                # BatchNorm, measure; then every tensor and statistic goes back to dense.
                selection = cache.select(0.0, {layer: r}, scope="layer")
                done = cache.plan.apply(work, selection, physical=False)
                settle_structured(work, config, data, spec)
                sp = len(done.removed.get(layer, ())) / max(cache.layer_sizes[layer], 1)
                acc = evaluate(work, data, spec, split=split, device=dev, limit=limit).accuracy
                with torch.no_grad():
                    for k, v in work.state_dict().items():
                        v.copy_(dense[k])
            rows.append(
                {"layer": layer, "ratio": r, "accuracy": acc, "drop": base_acc - acc,
                 "params": sizes[layer], "sparsity": sp}
            )  # fmt: skip
            if progress is not None:
                progress(Report(len(rows) / total, f"{layer} ratio {r:g}: accuracy {acc:.4f}"))
        if cancelled:
            break
    df = pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))
    df.attrs.update(base_accuracy=base_acc, method=method, granularity=granularity, split=split,
                    cancelled=cancelled)  # fmt: skip
    return df


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


def _lower_hull(xs: np.ndarray, ys: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by x (monotone chain)."""
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
    target_sparsity: float,
) -> dict[str, float]:
    """Per-layer ratios reaching `target_sparsity` overall with the least predicted loss.

    Each layer's measured drop curve (linear between measured ratios, from 0 at ratio 0) is
    replaced by its lower convex hull; hull segments from every layer are then taken in order of
    accuracy lost per weight removed until the target share of weights is removed, the last one
    partly. This is the exact optimum of the convexified, additive model (a Lagrangian
    relaxation: every layer ends where its marginal loss per weight matches the others').

    Args:
        sens_df: Output of `sensitivity` (columns layer, ratio, drop).
        layer_sizes: Weights per layer; the layers to assign (each needs sensitivity rows).
        target_sparsity: Share of all weights of these layers to remove, in [0, 1).

    Returns:
        {layer: ratio}, with sum(ratio * size) / sum(size) == target_sparsity (to rounding).

    Raises:
        UserError: Target outside [0, 1), a layer without sensitivity rows, or a target beyond
            what the measured ratios reach (measure larger ratios).
    """
    target = _check_ratios([target_sparsity], "target sparsity")[0]
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
        hull = _lower_hull(xs * size, ys)
        for a, b in itertools.pairwise(hull):
            slope = (ys[b] - ys[a]) / max((xs[b] - xs[a]) * size, 1e-12)
            segments.append((slope, xs[b], layer, xs[a], xs[b]))
    if need > reach + 1e-9:
        raise UserError(
            f"target sparsity {target:g} needs larger ratios than measured (the measured ratios "
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
    """Measure suggested per-layer ratios against a uniform ratio at the same overall sparsity.

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
        {"target_sparsity", "sparsity", "accuracy", "uniform_ratio", "uniform_sparsity",
        "uniform_accuracy", "base_accuracy"}; `target_sparsity` is the size-weighted mean of
        `ratios` and the uniform ratio applied to every layer.
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
    out: dict[str, Any] = {"target_sparsity": target, "uniform_ratio": target}
    for key, cfg in (("", suggested), ("uniform_", uniform)):
        m = _fresh(model)
        res = prune_(m, cfg, data=data, spec=spec)
        out[f"{key}sparsity"] = (
            sum(res.layer_sparsity.get(n, 0.0) * sizes[n] for n in sizes) / total
        )
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
