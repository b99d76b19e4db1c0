"""Ratio strategies at one budget: uniform, global, sensitivity-suggested and budget-searched
per-layer ratios, each meeting the same measured cost, pruned, and fine-tuned the same way.

The question every pruning user asks is how to choose per-layer ratios; this answers it with
measured runs rather than a prediction. For one budget (`budget.Budget`: MACs, non-zero
parameters or size of the weights file, relative or absolute) and one criterion and
granularity, four ways of choosing ratios:

- **uniform**: one ratio in every unit, the least that meets the budget
  (`budget.baseline_for_budget`, scope `layer`);
- **global**: one score threshold over all units, the least that meets it (scope `global`;
  Han et al. 2015's global magnitude threshold when the criterion is magnitude);
- **sensitivity**: the Prune page's "Suggest from sensitivity" (`experiments.suggest_ratios`
  over per-unit drop curves measured on the validation split, the page's images and ratios),
  whose overall share is bisected until the measured cost of the pruned model meets the budget:
  the suggestion answers "which units, for an overall share", the bisection "how much share
  for this budget";
- **searched**: `budget.search` (the Lagrangian greedy over drop-vs-cost hulls, bisected on
  the measured cost).

Each config then runs through `workflow.run_recipe` (prune, the same fine-tune,
`train.DEFAULT_FINETUNE` with `epochs` epochs, measure), its measured cost is read off the
result, and with a run store each run is recorded there (kind `finetune`, or `prune` without
fine-tune) with its metrics, per-class accuracy change against dense (`per_class`) and the
pruned model as an artifact, so the Trade-offs page can open any of them later.

Latency budgets are refused here (every bisection step would need the timing protocol, and the
four results would differ by timing noise more than by ratios); block granularity too (uniform
and global coincide there: one ratio over the blocks).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from pruning_core.budget import (
    Budget,
    baseline_for_budget,
    format_cost,
    measure_cost,
    parse_budget,
)
from pruning_core.budget import search as budget_search
from pruning_core.data import DataBundle
from pruning_core.errors import UserError, shown
from pruning_core.experiments import DEFAULT_SENSITIVITY_RATIOS, sensitivity, suggest_ratios
from pruning_core.models import LoadedModel
from pruning_core.per_class import change_records, per_class_accuracy, per_class_change
from pruning_core.plans import layer_cap
from pruning_core.progress import ProgressFn, Report
from pruning_core.prune import Preview, PruneConfig
from pruning_core.recipe import Recipe
from pruning_core.spec import InputSpec
from pruning_core.store import RunStore
from pruning_core.train import DEFAULT_FINETUNE, TrainConfig
from pruning_core.workflow import RecipeResult, run_recipe

__all__ = [
    "STRATEGIES",
    "STRATEGY_COLUMNS",
    "STRATEGY_LABELS",
    "SUGGEST_IMAGES",
    "StrategyConfig",
    "compare_strategies",
    "strategy_configs",
    "suggested_for_budget",
    "whole_elements",
]

STRATEGIES = ("uniform", "global", "sensitivity", "searched")
STRATEGY_LABELS = {
    "uniform": "uniform",
    "global": "global threshold",
    "sensitivity": "sensitivity-suggested",
    "searched": "budget-searched",
}
STRATEGY_COLUMNS = (
    "strategy", "label", "method", "granularity", "budget", "quantity", "dense_cost",
    "target_cost", "cost", "cost_share", "met", "sparsity", "dense_accuracy", "accuracy",
    "finetuned_accuracy", "recovered", "epochs", "worst_class", "worst_class_change", "run_id",
    "seconds", "note",
)  # fmt: skip
# The Prune page's suggestion: validation images per sensitivity point (ui.actions).
SUGGEST_IMAGES = 500
# Per-unit cap of every strategy: the Prune page's per-layer sliders stop at 0.95.
MAX_UNIT_RATIO = 0.95
_BISECT_STEPS = 20
_QUANTITIES = ("macs", "params", "size")


@dataclass(frozen=True)
class StrategyConfig:
    """One strategy's answer before fine-tuning.

    Attributes:
        strategy: A name of `STRATEGIES`.
        config: The pruning config that applies it (`prune_`, a recipe).
        cost: Measured cost of the pruned model (the budget's unit).
        note: How it was found, in one line.
    """

    strategy: str
    config: PruneConfig
    cost: float
    note: str


def whole_elements(
    ratios: Mapping[str, float], sizes: Mapping[str, int], target: float, max_layer_ratio: float
) -> dict[str, float]:
    """Ratios that remove whole channels or heads and, together, `target` of them (as the
    Prune page rounds a structured suggestion).

    A plan removes floor(size x ratio) elements of a unit, so continuous ratios on units of a
    few heads would fall short of the share asked (4 heads at 0.2 remove none). Each unit keeps
    its floor, and the elements still missing go to the units closest to their next one.

    Args:
        ratios: {unit: ratio} (e.g. `experiments.suggest_ratios`).
        sizes: Elements per unit.
        target: Share of all elements to remove, in [0, 1).
        max_layer_ratio: No unit goes past `plans.layer_cap` at this ratio.

    Returns:
        {unit: count / size} for every unit of `sizes`.
    """
    counts = {u: math.floor(ratios.get(u, 0.0) * n + 1e-9) for u, n in sizes.items()}
    caps = {u: layer_cap(n, max_layer_ratio) for u, n in sizes.items()}
    missing = math.floor(target * sum(sizes.values()) + 1e-9) - sum(counts.values())
    closest = sorted(sizes, key=lambda u: counts[u] - ratios.get(u, 0.0) * sizes[u])
    for u in closest:
        if missing <= 0:
            break
        if counts[u] < caps[u]:
            counts[u] += 1
            missing -= 1
    return {u: min(counts[u], caps[u]) / n for u, n in sizes.items()}


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        from pruning_core.jobs import JobCancelledError

        raise JobCancelledError("ratio strategies cancelled")


def _frozen_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).cpu().eval()
    for p in m.parameters():
        p.requires_grad_(False)
        p.grad = None
    return m


def _pruned_copy(
    base: nn.Module, preview: Preview, cfg: PruneConfig, data: DataBundle, spec: InputSpec,
    ratios: Mapping[str, float],
) -> nn.Module:  # fmt: skip
    """A physically pruned copy of `base` at per-unit `ratios` (no BatchNorm re-estimation:
    only its cost is read). Structured plans are built on the copy itself, since they hold its
    modules; the selection comes from the one scoring of the dense model."""
    m = copy.deepcopy(base)
    sel = preview.select(0.0, {u: r for u, r in ratios.items() if r > 0}, "layer")
    plan = cfg.plan(m, cfg, spec=spec, data=data) if cfg.structured else preview.plan
    plan.apply(m, sel, physical=True)
    return m


def suggested_for_budget(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    budget: Budget | str,
    config: PruneConfig,
    *,
    sens: pd.DataFrame | None = None,
    limit: int | None = SUGGEST_IMAGES,
    ratios: Sequence[float] = DEFAULT_SENSITIVITY_RATIOS,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> StrategyConfig:
    """The Prune page's sensitivity suggestion scaled to a budget: per-unit ratios from
    `experiments.suggest_ratios` (whole channels or heads for structured granularities) at the
    least overall share whose pruned model's measured cost meets `budget` (bisection on the
    share, `_BISECT_STEPS` halvings or until the ratios stop changing).

    Args:
        model: The dense model (not modified).
        data: The dataset (sensitivity on the validation split, as the page measures it).
        spec: The model's input spec.
        budget: A macs, params or size budget (`Budget` or its text).
        config: Criterion, granularity, max_layer_ratio... (ratio, scope and layer ratios are
            replaced).
        sens: Drop curves already measured (`experiments.sensitivity` for this criterion and
            granularity); None: measured here on `limit` validation images at `ratios`.
        limit: Validation images per sensitivity point (the page's 500; None: all).
        ratios: Ratios each unit's drop is measured at (the page's).
        device: Where the sensitivity is evaluated.
        progress: Called with a `progress.Report`.
        cancel: When set, stops with `jobs.JobCancelledError`.

    Returns:
        A `StrategyConfig` (per-unit ratios in `layer` scope) and its measured cost.

    Raises:
        UserError: A latency budget, a granularity without per-unit ratios, or a budget the
            measured ratios cannot reach.
    """
    b = parse_budget(budget) if isinstance(budget, str) else budget
    if b.quantity not in _QUANTITIES:
        raise UserError(f"the sensitivity suggestion meets macs, params or size, not {b.quantity}")
    report: ProgressFn = progress or (lambda _r: None)
    base = _frozen_copy(model)
    cfg = config.replace(ratio=0.0, scope="layer", layer_ratios=(), structured_mode="physical")
    if not cfg.plan.per_layer or cfg.fixed_ratio:
        raise UserError(f"{cfg.granularity} has no per-unit ratios to suggest")
    if sens is None:
        report(Report(0.0, "sensitivity of each unit"))
        sens = sensitivity(
            base, data, spec, ratios=ratios, method=cfg.method, granularity=cfg.granularity,
            limit=limit, device=device, cancel=cancel, seed=cfg.seed,
            progress=lambda r: report(Report(0.7 * r.fraction, f"sensitivity: {r.message}")),
        )  # fmt: skip
        if sens.attrs.get("cancelled"):
            _check_cancel(cancel)
    preview = Preview(copy.deepcopy(base), cfg, data, spec)
    measured = set(sens["layer"])
    sizes = {u: int(preview.layer_sizes[u]) for u in preview.layer_names if u in measured}
    if not sizes:
        raise UserError("no unit of the model has a measured sensitivity")
    cap = cfg.max_layer_ratio
    # The most the curves reach: every unit at its largest measured ratio (within the cap).
    top = {u: min(float(sens.loc[sens["layer"] == u, "ratio"].max()), cap) for u in sizes}
    reach = sum(top[u] * n for u, n in sizes.items()) / sum(sizes.values())
    dense = measure_cost(base, spec, b.quantity)
    goal = b.target(dense)

    def at(share: float) -> dict[str, float]:
        if share <= 0:
            return dict.fromkeys(sizes, 0.0)
        s = suggest_ratios(sens, sizes, share)
        s = {u: min(r, cap) for u, r in s.items()}
        return whole_elements(s, sizes, share, cap) if cfg.structured else s

    memo: dict[tuple[tuple[str, float], ...], float] = {}

    def cost(r: Mapping[str, float]) -> float:
        key = tuple(sorted((u, round(v, 9)) for u, v in r.items()))
        if key not in memo:
            _check_cancel(cancel)
            memo[key] = measure_cost(_pruned_copy(base, preview, cfg, data, spec, r), spec,
                                     b.quantity)  # fmt: skip
        return memo[key]

    lo, hi = 0.0, reach * (1 - 1e-9)
    if dense <= goal:
        hi = 0.0
    elif cost(at(hi)) > goal:
        raise UserError(
            f"the budget ({b.describe(dense)}) is out of reach of the sensitivity suggestion: at "
            f"the largest measured ratios it measures {format_cost(b.quantity, cost(at(hi)))}"
        )
    else:
        for k in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            report(Report(0.7 + 0.3 * k / _BISECT_STEPS, f"overall share {mid:.3f}"))
            if at(mid) == at(hi):
                hi = mid  # the same ratios: the same model
            elif cost(at(mid)) <= goal:
                hi = mid
            else:
                lo = mid
    chosen = at(hi)
    final = cfg.replace(layer_ratios=tuple((u, float(r)) for u, r in chosen.items() if r > 0))
    final = final.replace(structured_mode=config.structured_mode)
    return StrategyConfig(
        "sensitivity", final, cost(chosen) if hi > 0 else dense,
        f"suggest_ratios at overall share {hi:.3f} of the units' "
        f"{'elements' if cfg.structured else 'weights'} (bisected on the measured cost)",
    )  # fmt: skip


def strategy_configs(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    budget: Budget | str,
    config: PruneConfig,
    *,
    strategies: Sequence[str] = STRATEGIES,
    search_limit: int | None = SUGGEST_IMAGES,
    suggest_limit: int | None = SUGGEST_IMAGES,
    device: str = "auto",
    progress: Callable[[str, float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, StrategyConfig]:
    """Each strategy's config meeting `budget`, before any fine-tune (see the module docstring).

    Args:
        model, data, spec, budget, config: As in `compare_strategies`.
        strategies: Which of `STRATEGIES`, in order.
        search_limit: Calibration images per drop-curve point of the budget search.
        suggest_limit: Validation images per sensitivity point of the suggestion.
        device: Where accuracy is evaluated.
        progress: Called with (strategy, fraction of it done, message).
        cancel: When set, stops with `jobs.JobCancelledError`.

    Raises:
        UserError: As `compare_strategies`.
    """
    b = parse_budget(budget) if isinstance(budget, str) else budget
    say = progress or (lambda _s, _f, _m: None)
    out: dict[str, StrategyConfig] = {}
    for name in strategies:
        _check_cancel(cancel)
        say(name, 0.0, f"finding {STRATEGY_LABELS[name]} ratios")
        if name in ("uniform", "global"):
            base = baseline_for_budget(
                model, data, b, spec, config=config, scope="layer" if name == "uniform" else name,
                eval_limit=1, device=device, cancel=cancel,
            )  # fmt: skip
            out[name] = StrategyConfig(
                name, base.config, base.measured_cost,
                f"one {'ratio in every unit' if name == 'uniform' else 'global threshold'}: "
                f"{base.ratio:.4f}",
            )  # fmt: skip
        elif name == "sensitivity":
            out[name] = suggested_for_budget(
                model, data, spec, b, config, limit=suggest_limit, device=device, cancel=cancel,
                progress=lambda r: say("sensitivity", r.fraction, r.message),
            )  # fmt: skip
        elif name == "searched":
            res = budget_search(
                model, data, b, spec, config=config, limit=search_limit, eval_limit=1,
                device=device, cancel=cancel,
                progress=lambda r: say("searched", r.fraction, r.message),
            )  # fmt: skip
            out[name] = StrategyConfig(
                name, res.config, res.measured_cost,
                f"budget.search: predicted drop {100 * (res.dense_accuracy - res.predicted_accuracy):.1f}"
                " points",
            )  # fmt: skip
        else:
            raise UserError(
                f"unknown strategy '{shown(name)}' (choose from {', '.join(STRATEGIES)})"
            )
    return out


def _check(b: Budget, config: PruneConfig) -> None:
    if b.quantity not in _QUANTITIES:
        raise UserError(
            f"ratio strategies are compared at a macs, params or size budget, not {b.quantity} "
            "(timing noise would swamp the differences; `pruning-lab prune --budget latency=...` "
            "searches one)"
        )
    if config.fixed_ratio:
        raise UserError(
            f"{config.granularity} fixes the share removed: there are no ratios to choose"
        )
    if not config.plan.per_layer:
        raise UserError(
            f"{config.granularity} pruning takes one ratio over all its units, so uniform and "
            "global ratios coincide: compare strategies at unstructured, channel or head "
            "granularity"
        )


def compare_strategies(
    model: nn.Module | LoadedModel,
    data: DataBundle,
    budget: Budget | str,
    spec: InputSpec | None = None,
    *,
    granularity: str = "channel",
    method: str = "magnitude",
    epochs: int = 1,
    train_config: TrainConfig | None = None,
    strategies: Sequence[str] = STRATEGIES,
    store: RunStore | None = None,
    model_ref: str = "model",
    dataset_ref: str | None = None,
    search_limit: int | None = SUGGEST_IMAGES,
    suggest_limit: int | None = SUGGEST_IMAGES,
    max_layer_ratio: float = MAX_UNIT_RATIO,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Uniform, global, sensitivity-suggested and budget-searched ratios at one budget, each
    pruned, measured, and fine-tuned the same way (module docstring).

    Args:
        model: The dense model (never modified), or a LoadedModel (then `spec` may be None).
        data: The dataset: accuracies on its validation split.
        budget: A macs, params or size budget, or its text (`macs=0.5`, `params=50K`).
        spec: The model's input spec.
        granularity: `unstructured`, `channel` or `head`.
        method: The criterion, the same for every strategy.
        epochs: Fine-tune epochs after pruning (0: none), the same for every strategy.
        train_config: The fine-tune (default `train.DEFAULT_FINETUNE`); `epochs` and `device`
            replace its own.
        strategies: Which of `STRATEGIES`, in order.
        store: A run store: each strategy's run is recorded there (metrics, per-class change
            and the pruned model as artifact `model`); None records nothing.
        model_ref, dataset_ref: How the recipes and the store name the model and dataset.
        search_limit: Calibration images per drop-curve point of the budget search.
        suggest_limit: Validation images per sensitivity point of the suggestion.
        max_layer_ratio: No unit pruned beyond this share, in any strategy.
        device: Where accuracy is evaluated and fine-tuning runs.
        seed: Seeds pruning and fine-tuning (the same for every strategy).
        progress: Called with a `progress.Report` (fraction of the whole comparison).
        cancel: When set, stops after the current step; the rows done so far are returned
            with `df.attrs["cancelled"] = True`.

    Returns:
        One row per strategy (`STRATEGY_COLUMNS`): measured cost (absolute, and `cost_share`
        of dense), `met`, sparsity, dense accuracy, `accuracy` before fine-tune,
        `finetuned_accuracy` (NaN with 0 epochs), `recovered` (points fine-tuning added), the
        class that lost most against dense and by how many points (after fine-tune), the run's
        id in `store`, seconds. `attrs`: budget, dense_cost, target_cost, epochs, cancelled.

    Raises:
        UserError: A latency budget; N:M or block granularity; a budget a strategy cannot
            reach (naming it); anything `budget.search` or `run_recipe` refuses.
    """
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if spec is None:
            raise UserError("compare_strategies needs the model's input spec")
        loaded = LoadedModel(model, spec, None, model_ref)
    spec = loaded.spec
    data.check_spec(spec)
    b = parse_budget(budget) if isinstance(budget, str) else budget
    if epochs < 0:
        raise UserError(f"fine-tune epochs must be >= 0, got {epochs}")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise UserError(
            f"unknown strategy '{shown(bad[0] if bad else '')}' (choose from {', '.join(STRATEGIES)})"
        )
    config = PruneConfig(
        method=method, granularity=granularity, ratio=0.0, max_layer_ratio=max_layer_ratio,
        seed=seed,
    )  # fmt: skip
    _check(b, config)
    report: ProgressFn = progress or (lambda _r: None)
    base = _frozen_copy(loaded.model)
    dense_cost = measure_cost(base, spec, b.quantity)
    target = b.target(dense_cost)
    n = len(strategies)
    # Finding a config is about half of a strategy's work, its fine-tune the other half.
    find_share = 0.5 if epochs > 0 else 0.8

    def say(name: str, fraction: float, message: str) -> None:
        i = list(strategies).index(name)
        report(Report((i + find_share * fraction) / n, f"{STRATEGY_LABELS[name]}: {message}"))

    from pruning_core.jobs import JobCancelledError

    cancelled = False
    try:
        found = strategy_configs(
            base, data, spec, b, config, strategies=strategies, search_limit=search_limit,
            suggest_limit=suggest_limit, device=device, progress=say, cancel=cancel,
        )  # fmt: skip
    except JobCancelledError:
        found, cancelled = {}, True
    tc = dataclasses.replace(train_config or DEFAULT_FINETUNE, epochs=epochs, device=device)
    dense_pc = per_class_accuracy(base, data, spec) if found else None
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(strategies):
        if name not in found or (cancel is not None and cancel.is_set()):
            cancelled = cancelled or name not in found or bool(cancel and cancel.is_set())
            break
        sc = found[name]
        start = time.perf_counter()
        recipe = Recipe(
            model=model_ref, dataset=dataset_ref or data.name, prune=sc.config, finetune=tc,
            arch=None, seed=seed,
        )  # fmt: skip
        student = LoadedModel(_trainable(base), spec, loaded.arch, loaded.source, dict(loaded.meta))

        def on_fit(p: Any, i: int = i, name: str = name) -> None:
            frac = find_share + (1 - find_share) * float(p.fraction)
            report(Report((i + frac) / n, f"{STRATEGY_LABELS[name]}: fine-tune {p.message}"))

        result = run_recipe(recipe, model=student, data=data, progress=on_fit, cancel=cancel)
        cost = measure_cost(result.model, spec, b.quantity)
        assert dense_pc is not None
        change = per_class_change(dense_pc, per_class_accuracy(result.model, data, spec))
        row = _row(name, sc, result, b, dense_cost, target, cost, epochs, change, start)
        row["run_id"] = _record(store, result, row, change, b, name) if store else None
        rows.append(row)
        if result.schedule.cancelled:
            cancelled = True
            break
    df = pd.DataFrame(rows, columns=list(STRATEGY_COLUMNS))
    df.attrs.update(
        budget=b.text(), quantity=b.quantity, dense_cost=dense_cost, target_cost=target,
        epochs=epochs, method=config.method, granularity=config.granularity,
        cancelled=cancelled, budget_words=b.describe(dense_cost),
    )  # fmt: skip
    return df


def _trainable(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _row(
    name: str, sc: StrategyConfig, result: RecipeResult, b: Budget, dense_cost: float,
    target: float, cost: float, epochs: int, change: pd.DataFrame, start: float,
) -> dict[str, Any]:  # fmt: skip
    s = result.schedule
    before = float(s.pruned_accuracy) if s.pruned_accuracy is not None else math.nan
    after = (
        float(s.finetuned_accuracy) if epochs > 0 and s.finetuned_accuracy is not None else math.nan
    )
    worst = change.iloc[0] if len(change) else None
    return {
        "strategy": name,
        "label": STRATEGY_LABELS[name],
        "method": result.recipe.prune.method,
        "granularity": result.recipe.prune.granularity,
        "budget": b.text(),
        "quantity": b.quantity,
        "dense_cost": dense_cost,
        "target_cost": target,
        "cost": cost,
        "cost_share": cost / dense_cost if dense_cost else math.nan,
        "met": bool(cost <= target * (1 + 1e-9)),
        "sparsity": float(s.prune.sparsity),
        "dense_accuracy": float(result.dense.accuracy or math.nan),
        "accuracy": before,
        "finetuned_accuracy": after,
        "recovered": 100 * (after - before) if not math.isnan(after) else math.nan,
        "epochs": epochs,
        "worst_class": str(worst["class"]) if worst is not None else "",
        "worst_class_change": float(worst["change"]) if worst is not None else math.nan,
        "run_id": None,
        "seconds": time.perf_counter() - start,
        "note": sc.note,
    }


def _record(
    store: RunStore, result: RecipeResult, row: Mapping[str, Any], change: pd.DataFrame,
    b: Budget, name: str,
) -> int:  # fmt: skip
    """Record one strategy's run (metrics, per-class change, the model as artifact `model`)."""
    metrics = result.metrics()
    metrics.update(
        strategy=name, budget=b.to_dict(), measured_cost=row["cost"],
        cost_share=row["cost_share"], per_class=change_records(change),
    )  # fmt: skip
    curve = metrics.pop("curve", [])
    kind = "finetune" if result.fine_tuned else "prune"
    status = "cancelled" if result.schedule.cancelled else "done"
    label = f"{STRATEGY_LABELS[name]} at {b.text()} ({row['granularity']}, {row['method']})"
    from pruning_core.store import CurvePointError

    try:
        run_id = store.create_run(
            kind, model=result.recipe.model, dataset=result.recipe.dataset,
            config=result.recipe.to_document(), name=label, status=status, metrics=metrics,
            curve=curve,
        )  # fmt: skip
    except CurvePointError:
        run_id = store.create_run(
            kind, model=result.recipe.model, dataset=result.recipe.dataset,
            config=result.recipe.to_document(), name=label, status=status, metrics=metrics,
        )  # fmt: skip
    if result.loaded.arch is not None:
        target = store.run_dir(run_id) / "model"
        result.save(target)
        store.add_artifact(run_id, "model", target)
    return run_id
