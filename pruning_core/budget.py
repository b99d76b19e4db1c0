"""Budgets: a target on one measured cost, and the per-unit ratios that meet it.

A `Budget` says what the pruned model may cost, on one quantity, measured on this machine:

- `macs`: multiply-accumulates per image. For structured granularities (channel, head, block)
  these are the shrunk model's MACs (`stats.count_macs`); for unstructured pruning they are the
  *effective* MACs of `stats.model_stats` (a layer's dense MACs times its density: what a sparse
  kernel does; dense kernels do the full work whatever the zeros);
- `params`: non-zero parameters (`stats.count_params(nonzero=True)`);
- `size`: bytes of the model's weights file (`model.safetensors`, as `prune --out` writes it);
- `latency`: ms per batch on this machine's CPU at a given batch size and thread count, timed
  with the project's protocol (`timing.PROTOCOL`, through `latency.benchmark_backends`: warm-up,
  median of timed calls, p10/p90, the dense model timed in the same interleaved run).

Relative (`macs=0.5`: half of the dense model's) or absolute (`macs=20M`, `size=2MB`,
`latency=3ms`); `parse_budget` reads the text form.

`search` finds per-unit ratios (layers, channel groups, attention layers) that meet a budget
with the least predicted accuracy loss, or for block granularity the set of residual blocks to
remove. The method, and why:

1. **Drop curves.** `experiments.sensitivity` prunes one unit at a time at a few ratios and
   measures the accuracy drop (on the calibration split by default, so the validation split the
   result is measured on chose nothing).
2. **Cost curves, measured.** Each unit is pruned alone, physically, at the same ratios, and the
   budget's quantity is measured on that model (the MACs counter, the saved file, the latency
   protocol); its saving against the dense model is the unit's cost curve. Latency uses a
   per-unit model fitted from two measured points per unit (a middle and the largest ratio,
   linear in the ratio between them and from zero), since timing every point would take minutes.
3. **Lagrangian greedy over convex hulls.** Each unit's (saving, drop) points are replaced by
   their lower convex hull; hull segments of all units are sorted by accuracy lost per unit of
   cost saved, and taking a prefix of that order is exactly the optimum of the convexified,
   additive problem for one Lagrange multiplier (the multiple-choice knapsack's LP relaxation:
   every unit ends where its marginal loss per cost matches the others'; Everett 1963,
   "Generalized Lagrange multiplier method for solving problems of optimum allocation of
   resources"; Sinha and Zoltners 1979, "The multiple-choice knapsack problem"). Chosen over a
   general solver (an integer program, or Optuna's sampling, which suits latency) because it is
   exact for its model, needs no dependency, is deterministic (ties broken by unit order),
   needs one measurement per bisection step rather than per trial, and is transparent: every
   choice is a measured point on a curve the user can see.
4. **Bisection on the multiplier against the measured cost.** Costs of units are not additive
   (pruning a layer's outputs and its consumer's outputs both shrink the consumer), so the
   prefix (one multiplier per prefix, and a fraction of the last segment group) is bisected
   until the *measured* cost of the actually pruned model meets the budget with the least
   pruning. Latency is noisy: the result is timed again with the full protocol, and when its
   median misses the target it is re-timed once if the target lies within its p10-p90 (noise),
   else the search moves on to more pruning (at most `LATENCY_TRIES` times).
   4b. **Give-back.** Channel counts are discrete, so the bisected prefix usually measures
   below the budget; for counted quantities (not latency) the slack is handed back: units are
   relieved in order of their current loss per saving, each bisected down towards its previous
   hull point while the measured cost still meets the budget. The result uses the budget it
   is given rather than a step below it.
5. **Recovery-aware choice** (counted budgets, per-unit granularities; `recovery_steps`). The
   curves predict the loss *before* fine-tuning, one unit at a time; what decides after it is
   the capacity left where it matters, which they do not measure. NetAdapt chooses among
   proposals by their accuracy after a short-term fine-tune (Yang et al. 2018, "NetAdapt:
   Platform-Aware Neural Network Adaptation for Mobile Applications"); EagleEye scores
   candidate sub-networks after re-estimating BatchNorm, which ranks them by fine-tuned
   accuracy better than their raw accuracy does (Li et al. 2020). So a few candidates that all
   meet the measured budget are built: the search's own answer, the same
   search with lower caps (`RECOVERY_CAPS`: spreading the pruning), and the uniform ratio and
   the global threshold bisected to the budget (so the choice can only do as well as the
   baselines on its own criterion). Each distinct one is pruned from the dense model and given
   the same short recovery: `recovery_steps` Adam steps (`RECOVERY_LR`, cosine decay to 0,
   batch `RECOVERY_BATCH`) on the training split *without* the calibration images, in an
   order fixed by the config's seed, then BatchNorm re-estimated. Candidates less accurate on
   the calibration split before recovery than the better baseline are set aside (the answer
   stays at least as good before fine-tuning); of the others, the most accurate on the
   calibration split after recovery is chosen (ties: the lower loss, then the search's own).
   The validation split, which reports, chooses nothing. The recoveries run on the executor;
   `BudgetResult.candidates` lists every candidate with its numbers.
6. **Blocks** are whole units: each removable block's drop (`experiments.sensitivity` at
   block granularity: removed alone, BatchNorm re-estimated) and saving are measured, and the
   subsets of up to 16 candidate blocks are searched exhaustively (an exact 0/1 knapsack on the
   additive model; a greedy by drop per saving beyond), then checked by measurement in order of
   predicted loss.

Caps: no unit gets a ratio beyond `max_layer_ratio` (the ratios tried are those at or below
it, the cap itself standing in for those above, and the plans never remove more than
`plans.layer_cap`); a block search never removes the
block the criterion ranks highest (the block plan always keeps at least one block, and that is
the one it keeps), nor more than `max_layer_ratio` of the removable blocks.

Determinism: for a seed, every step is deterministic (scores, sensitivity, stable sorts, the
recoveries' batches and steps on the CPU) for `macs`, `params` and `size`; latency budgets
depend on timings and may differ between runs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.device import resolve_device
from pruning_core.errors import UserError, brief, shown
from pruning_core.evaluate import evaluate
from pruning_core.executor import Executor
from pruning_core.experiments import lower_hull, predicted_drop, sensitivity
from pruning_core.layers import example_input
from pruning_core.models import LoadedModel
from pruning_core.plans import layer_cap
from pruning_core.progress import ProgressFn, Report
from pruning_core.prune import Preview, PruneConfig, hold_masks, prune_, settle_structured
from pruning_core.spec import InputSpec
from pruning_core.stats import count_params, model_stats
from pruning_core.timing import PROTOCOL, LatencyProtocol

__all__ = [
    "BUDGET_HELP",
    "DEFAULT_RECOVERY_STEPS",
    "DEFAULT_SEARCH_RATIOS",
    "LATENCY_TRIES",
    "QUANTITIES",
    "RECOVERY_CAPS",
    "RECOVERY_LR",
    "Baseline",
    "Budget",
    "BudgetResult",
    "LatencyCheck",
    "baseline_for_budget",
    "format_cost",
    "measure_cost",
    "parse_budget",
    "saved_bytes",
    "search",
]

QUANTITIES = ("macs", "params", "size", "latency")
BUDGET_HELP = (
    "a target on one measured cost: QUANTITY=VALUE with QUANTITY macs, params, size or latency; "
    "VALUE a share of the dense model (0.5 or 50%) or an absolute amount (macs=20M, "
    "params=50K, size=2MB, latency=3ms); latency takes ,batch=N,threads=N (default 32 and 1)"
)
# Ratios the drop and cost curves are measured at, per kind of plan (those above the config's
# max_layer_ratio are left out). Structured budgets of 0.5 typically need 0.2-0.4 per unit, so
# the structured grid is denser there; single weights go further before accuracy moves.
DEFAULT_SEARCH_RATIOS = {
    "structured": (0.15, 0.3, 0.45, 0.6, 0.75, 0.9),
    "weights": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
}
# Latency: final checks of a result that misses its target, each re-timed or pruned further.
LATENCY_TRIES = 4
# Latency: the quick timings of the search (the final check uses the whole protocol).
_QUICK_REPEATS = 12
_QUICK_SECONDS = 1.5
# Block subsets searched exhaustively up to this many candidate blocks (2**16 sums).
_EXACT_BLOCKS = 16
# Measured checks of block subsets, in order of predicted loss, before giving up.
_BLOCK_TRIES = 12
# Recovery-aware choice (module docstring, step 5): optimizer steps each candidate gets (what
# `search(recovery_steps=None)` uses unless its curves are a quick look), peak learning rate and
# batch; the lower caps whose searches are candidates besides the config's own.
DEFAULT_RECOVERY_STEPS = 100
RECOVERY_LR = 5e-4
RECOVERY_BATCH = 32
RECOVERY_CAPS = {"structured": (0.75, 0.6, 0.45), "weights": (0.9, 0.8, 0.7)}
# Curves measured on fewer calibration images per point than this are a quick look (the Prune
# page's tests): `recovery_steps=None` then skips the recovery.
RECOVERY_MIN_IMAGES = 256
# Bisection steps within the last group of hull segments (channel counts are discrete).
_FRACTION_STEPS = 7
# Give-back: bisection steps per unit when the budget's slack is handed back (step 4b).
_GIVE_BACK_STEPS = 4

_UNITS: dict[str, dict[str, float]] = {
    "macs": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
    "params": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
    "size": {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0,
             "mib": 1024.0**2, "gib": 1024.0**3},
    "latency": {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3},
}  # fmt: skip
_UNIT_WORDS = {
    "macs": "K, M or G",
    "params": "K, M or G",
    "size": "B, KB, MB, GB, KiB, MiB or GiB",
    "latency": "ms, s or us",
}
_VALUE = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z%]*)$")
_EXAMPLE = "e.g. macs=0.5, params=50K, size=2MB or latency=3ms"


# ----------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """A target on one measured quantity.

    Attributes:
        quantity: `macs`, `params`, `size` (bytes) or `latency` (ms per batch).
        value: With `relative`, the share of the dense model's cost allowed, in (0, 1];
            otherwise the amount (MACs, parameters, bytes or milliseconds), > 0.
        relative: Whether `value` is a share of the dense model.
        batch_size: Latency only: images per timed call.
        threads: Latency only: torch CPU threads while timing.

    Raises:
        UserError: An unknown quantity or a value out of range.
    """

    quantity: str
    value: float
    relative: bool = True
    batch_size: int = 32
    threads: int = 1

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise UserError(
                f"unknown budget quantity {brief(self.quantity)} (choose from "
                f"{', '.join(QUANTITIES)})"
            )
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise UserError(f"budget value must be a finite number, got {brief(v)}")
        if self.relative and not 0 < v <= 1:
            raise UserError(
                f"a relative budget is a share of the dense model in (0, 1], got {v:g} ({_EXAMPLE})"
            )
        if not self.relative and not v > 0:
            raise UserError(f"an absolute budget must be > 0, got {v:g}")
        object.__setattr__(self, "value", float(v))
        for name in ("batch_size", "threads"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4096:
                raise UserError(f"budget {name} must be an integer in [1, 4096], got {brief(n)}")

    def target(self, dense: float) -> float:
        """The cost allowed, given the dense model's cost (same unit)."""
        return self.value * dense if self.relative else self.value

    def text(self) -> str:
        """The budget as `parse_budget` reads it back (`macs=0.5`, `latency=3ms,batch=32`)."""
        if self.relative:
            value = f"{self.value:.12g}"
        elif self.quantity == "latency":
            value = f"{self.value:.12g}ms"
        elif self.quantity == "size":
            value = f"{self.value:.12g}B"
        else:
            value = _count_text(self.value)
        extra = (
            f",batch={self.batch_size},threads={self.threads}" if self.quantity == "latency" else ""
        )
        return f"{self.quantity}={value}{extra}"

    def describe(self, dense: float | None = None) -> str:
        """In words: `macs <= 13.33M (0.5 of dense 26.66M)`."""
        where = (
            f" (CPU, batch {self.batch_size}, {self.threads} thread"
            f"{'s' if self.threads != 1 else ''})"
            if self.quantity == "latency"
            else ""
        )
        if not self.relative:
            return f"{self.quantity} <= {format_cost(self.quantity, self.value)}{where}"
        if dense is None:
            return f"{self.quantity} <= {self.value:g} of dense{where}"
        return (
            f"{self.quantity} <= {format_cost(self.quantity, self.target(dense))} "
            f"({self.value:g} of dense {format_cost(self.quantity, dense)}){where}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with `text`)."""
        return {**asdict(self), "text": self.text()}


def _count_text(v: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= scale:
            return f"{v / scale:.12g}{suffix}"
    return f"{v:.12g}" if v > 1 else f"{v / 1e3:.12g}K"


def format_cost(quantity: str, value: float) -> str:
    """A cost for people: `13.33M` MACs or parameters, `342.1 KB`, `3.21 ms`."""
    if not math.isfinite(value):
        return "-"
    if quantity == "latency":
        return f"{value:.2f} ms"
    if quantity == "size":
        for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if value >= scale:
                return f"{value / scale:.2f} {suffix}"
        return f"{value:.0f} B"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def parse_budget(text: str) -> Budget:
    """Read a budget: `QUANTITY=VALUE[,batch=N][,threads=N]`.

    VALUE is a share of the dense model (`0.5`, `50%`; a bare number up to 1) or an absolute
    amount with a unit (`20M` MACs, `50K` params, `2MB`, `3ms`; a bare number above 1 is in the
    base unit: MACs, parameters, bytes, ms). `batch` and `threads` apply to latency only.

    Raises:
        UserError: One line naming what is wrong (quantity, value, unit or option).
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"give a budget as QUANTITY=VALUE ({_EXAMPLE})")
    head, *options = [p.strip() for p in text.strip().split(",")]
    if "=" not in head:
        raise UserError(f"budget {shown(text, 60)!r}: expected QUANTITY=VALUE ({_EXAMPLE})")
    quantity, raw = (s.strip() for s in head.split("=", 1))
    quantity = quantity.lower()
    if quantity not in QUANTITIES:
        raise UserError(
            f"budget {shown(text, 60)!r}: unknown quantity {shown(quantity, 30)!r} (choose from "
            f"{', '.join(QUANTITIES)})"
        )
    if not raw:
        raise UserError(f"budget {shown(text, 60)!r}: no value after '=' ({_EXAMPLE})")
    if raw.startswith("-") and _VALUE.match(raw[1:]):
        raise UserError(f"budget {shown(text, 60)!r}: the value must be > 0")
    m = _VALUE.match(raw)
    if m is None:
        raise UserError(
            f"budget {shown(text, 60)!r}: {shown(raw, 30)!r} is not a number with an optional "
            f"unit ({_EXAMPLE})"
        )
    number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number):
        raise UserError(f"budget {shown(text, 60)!r}: {shown(raw, 30)!r} is too large a number")
    if number <= 0:
        raise UserError(f"budget {shown(text, 60)!r}: the value must be > 0")
    if unit == "" and quantity in ("macs", "params") and 1 < number < 1000:
        # "macs=50" may mean 50% or 50 MACs; no network is that small, so it is a slip.
        raise UserError(
            f"budget {shown(text, 60)!r}: a share is written 0.5 or 50%, an amount with a size "
            f"({quantity}=50K, {quantity}=2M) or as a count of at least 1000"
        )
    kw: dict[str, Any] = {}
    for opt in (o for o in options if o):  # a trailing comma is no option
        key, eq, val = (s.strip() for s in opt.partition("="))
        if not eq:
            # "params=1,000": a thousands separator reads as an option.
            raise UserError(
                f"budget {shown(text, 60)!r}: {shown(opt, 20)!r} after a comma is not an option "
                "NAME=VALUE (write numbers without thousands separators: params=1000 or "
                "params=1K)"
            )
        if key.lower() in QUANTITIES:
            raise UserError(
                f"budget {shown(text, 60)!r}: a budget sets one quantity (give one of "
                f"{quantity} and {shown(key, 20)})"
            )
        if quantity != "latency":
            raise UserError(
                f"budget {shown(text, 60)!r}: {shown(key, 20)!r} applies to latency budgets only"
            )
        if key not in ("batch", "threads") or not val.isdigit():
            raise UserError(
                f"budget {shown(text, 60)!r}: latency options are batch=N and threads=N, "
                f"got {shown(opt, 30)!r}"
            )
        kw["batch_size" if key == "batch" else "threads"] = int(val)
    if unit == "%":
        if number > 100:
            raise UserError(f"budget {shown(text, 60)!r}: a share is at most 100%")
        return Budget(quantity, number / 100, relative=True, **kw)
    if unit == "":
        return Budget(quantity, number, relative=number <= 1, **kw)
    scale = _UNITS[quantity].get(unit)
    if scale is None:
        raise UserError(
            f"budget {shown(text, 60)!r}: {shown(m.group(2), 10)!r} is not a unit of {quantity} "
            f"(use {_UNIT_WORDS[quantity]}, or a share such as 0.5)"
        )
    return Budget(quantity, number * scale, relative=False, **kw)


# ----------------------------------------------------------------------------- measuring


def saved_bytes(model: nn.Module) -> int:
    """Bytes of `model.safetensors` as `prune --out` writes it for this model (serialised in
    memory: the same bytes, no file)."""
    from safetensors.torch import save

    seen: set[int] = set()
    state = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        # safetensors refuses shared storage (tied weights); the checkpoint writer clones them.
        state[k] = t.clone() if ptr in seen else t
        if ptr != -1:
            seen.add(ptr)
    return len(save(state))


def measure_cost(model: nn.Module, spec: InputSpec, quantity: str) -> float:
    """The budget quantity of `model`, measured (latency: see `search`; refused here).

    Args:
        model: The model (not modified).
        spec: Its input spec (for MACs).
        quantity: `macs` (effective MACs: dense MACs for a model without zeros), `params`
            (non-zero) or `size` (bytes of the weights file).

    Raises:
        UserError: `latency` or an unknown quantity.
    """
    if quantity == "macs":
        return float(model_stats(model, spec)["macs_effective"])
    if quantity == "params":
        return float(count_params(model, nonzero=True))
    if quantity == "size":
        return float(saved_bytes(model))
    raise UserError(f"measure_cost measures macs, params or size, not {brief(quantity)}")


@dataclass(frozen=True)
class LatencyCheck:
    """The final timing of a latency budget's result, beside the dense model's (one run).

    Attributes:
        median_ms, p10_ms, p90_ms: The pruned model, ms per batch.
        dense_median_ms, dense_p10_ms, dense_p90_ms: The dense model, timed in the same
            interleaved rounds.
        target_ms: What the budget allows in this run (a relative budget: its share of this
            run's dense median).
        protocol: The settings in words.
        tries: Final timings it took (re-timed within noise, or pruned further).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    dense_median_ms: float
    dense_p10_ms: float
    dense_p90_ms: float
    target_ms: float
    protocol: str
    tries: int = 1

    @property
    def met(self) -> bool:
        """The median meets the target."""
        return self.median_ms <= self.target_ms

    @property
    def within_noise(self) -> bool:
        """The target lies within the p10-p90 range, or above it."""
        return self.p10_ms <= self.target_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "met": self.met, "within_noise": self.within_noise}


class _Meter:
    """Measures the budget's quantity as a share of the dense model's (latency: timed side by
    side with the dense model, so drift of a shared machine cancels)."""

    def __init__(self, budget: Budget, base: nn.Module, spec: InputSpec) -> None:
        self.budget = budget
        self.base = base
        self.spec = spec
        self.latency = budget.quantity == "latency"
        if self.latency:
            self.full: LatencyProtocol = PROTOCOL.with_(
                threads=budget.threads, batch_size=budget.batch_size
            )
            self.quick = self.full.with_(repeats=_QUICK_REPEATS, max_seconds=_QUICK_SECONDS)
            self.example = example_input(base, spec, batch=budget.batch_size, random=True)
            self.dense = self._time(base, self.full)[1]["median_ms"]
        else:
            self.dense = measure_cost(base, spec, budget.quantity)

    def _time(
        self, model: nn.Module, protocol: LatencyProtocol
    ) -> tuple[dict[str, float], dict[str, float]]:
        from pruning_core.latency import benchmark_backends

        df = benchmark_backends(
            model, self.example, backends=("dense", "structured"), dense=self.base,
            structured=model, protocol=protocol,
        )  # fmt: skip
        rows = {r["backend"]: r for r in df.to_dict("records")}
        keys = ("median_ms", "p10_ms", "p90_ms")
        return (
            {k: float(rows["structured"][k]) for k in keys},
            {k: float(rows["dense"][k]) for k in keys},
        )

    def share(self, model: nn.Module) -> float:
        """Cost of `model` / dense cost (latency: quick timing, in the same rounds)."""
        if not self.latency:
            return measure_cost(model, self.spec, self.budget.quantity) / self.dense
        pruned, dense = self._time(model, self.quick)
        return pruned["median_ms"] / dense["median_ms"]

    def check(self, model: nn.Module, tries: int) -> LatencyCheck:
        """The full-protocol timing of a latency result."""
        pruned, dense = self._time(model, self.full)
        target = (
            self.budget.value * dense["median_ms"] if self.budget.relative else self.budget.value
        )
        return LatencyCheck(
            pruned["median_ms"], pruned["p10_ms"], pruned["p90_ms"], dense["median_ms"],
            dense["p10_ms"], dense["p90_ms"], target,
            self.full.describe(batch_size=self.budget.batch_size), tries,
        )  # fmt: skip


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BudgetResult:
    """What `search` found, predicted and measured.

    Attributes:
        budget: The budget.
        granularity: The granularity searched.
        method: The criterion's name.
        ratios: {unit: ratio} for per-layer granularities (every unit, zeros included); for
            block granularity {block: 1.0 removed, 0.0 kept}.
        config: The pruning config that applies the result (per-layer ratios in `layer`
            scope; for blocks the ratio and ignore list that remove exactly those blocks).
            `prune_(model, result.config, ...)` reproduces the measured model.
        dense_cost: The dense model's cost (quantity's unit).
        target_cost: What the budget allows.
        predicted_cost: The additive cost model's prediction for `ratios`.
        measured_cost: Measured on the pruned model (latency: its median).
        dense_accuracy: The dense model's validation accuracy (on `eval_limit` images).
        predicted_accuracy: Dense accuracy minus the predicted drop (sensitivity curves,
            layers independent).
        measured_accuracy: The pruned model's validation accuracy before fine-tuning.
        met: The measured cost meets the target.
        latency: For latency budgets, the final timing (p10/p90, dense beside it).
        units: One row per unit: unit, ratio, predicted drop, predicted saving, curve points.
        steps: The measured points of the bisection (position, share of dense cost).
        notes: What the user should know.
        candidates: With the recovery-aware choice (step 5), one row per distinct candidate:
            candidate (its names, ` = ` between those that select the same), ratios,
            measured_share (of the dense cost), predicted_drop, calib_accuracy (before
            recovery), recovered_accuracy and recovered_loss (calibration split, after it),
            eligible (at least as accurate before recovery as the best baseline), chosen.
        recovery_steps: Optimizer steps each candidate got (0: no recovery-aware choice).
    """

    budget: Budget
    granularity: str
    method: str
    ratios: dict[str, float]
    config: PruneConfig
    dense_cost: float
    target_cost: float
    predicted_cost: float
    measured_cost: float
    dense_accuracy: float
    predicted_accuracy: float
    measured_accuracy: float
    met: bool
    latency: LatencyCheck | None = None
    units: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    recovery_steps: int = 0

    @property
    def removed_blocks(self) -> list[str]:
        """Block granularity: the blocks removed (else empty)."""
        return [b for b, r in self.ratios.items() if r >= 1.0]

    def summary(self) -> dict[str, str]:
        """Predicted against measured, in words (what the command line prints)."""
        q = self.budget.quantity
        out = {
            "budget": f"{self.budget.describe(self.dense_cost)}: predicted "
            f"{format_cost(q, self.predicted_cost)}, measured {format_cost(q, self.measured_cost)}"
            f" ({'met' if self.met else 'NOT met'})",
            "budget accuracy": f"dense {self.dense_accuracy:.4f}; predicted "
            f"{self.predicted_accuracy:.4f}, measured {self.measured_accuracy:.4f} before "
            "fine-tune",
        }
        if self.latency is not None:
            lat = self.latency
            out["budget latency"] = (
                f"{lat.median_ms:.2f} ms (p10 {lat.p10_ms:.2f}, p90 {lat.p90_ms:.2f}) against "
                f"dense {lat.dense_median_ms:.2f} ms (p10 {lat.dense_p10_ms:.2f}, p90 "
                f"{lat.dense_p90_ms:.2f}), target {lat.target_ms:.2f} ms; {lat.protocol}"
            )
        if self.notes:
            # Which candidate won and why: the app shows these notes under its result too.
            out["budget notes"] = "; ".join(self.notes)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what `metrics.json` records under `budget`)."""
        return {
            "budget": self.budget.to_dict(),
            "granularity": self.granularity,
            "method": self.method,
            "ratios": dict(self.ratios),
            "removed_blocks": self.removed_blocks,
            "config": self.config.to_dict(),
            "dense_cost": self.dense_cost,
            "target_cost": self.target_cost,
            "predicted_cost": self.predicted_cost,
            "measured_cost": self.measured_cost,
            "dense_accuracy": self.dense_accuracy,
            "predicted_accuracy": self.predicted_accuracy,
            "measured_accuracy": self.measured_accuracy,
            "met": self.met,
            "latency": self.latency.to_dict() if self.latency else None,
            "units": [dict(u) for u in self.units],
            "steps": [dict(s) for s in self.steps],
            "notes": list(self.notes),
            "candidates": [dict(c) for c in self.candidates],
            "recovery_steps": self.recovery_steps,
        }


@dataclass(frozen=True)
class Baseline:
    """One ratio for every unit (`scope="layer"`, uniform) or one global threshold, chosen as
    the least pruning whose measured cost meets a budget: what `search` is compared with.

    Attributes:
        scope: `layer` (uniform) or `global`.
        ratio: The ratio found.
        config: The config that applies it.
        dense_cost, target_cost, measured_cost: As in `BudgetResult`.
        measured_accuracy: Validation accuracy before fine-tuning.
        met: The measured cost meets the target.
        latency: For latency budgets, the final timing.
    """

    scope: str
    ratio: float
    config: PruneConfig
    dense_cost: float
    target_cost: float
    measured_cost: float
    measured_accuracy: float
    met: bool
    latency: LatencyCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = {k: getattr(self, k) for k in ("scope", "ratio", "dense_cost", "target_cost",
                                              "measured_cost", "measured_accuracy", "met")}  # fmt: skip
        out["config"] = self.config.to_dict()
        out["latency"] = self.latency.to_dict() if self.latency else None
        return out


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class _Segment:
    """One piece of a unit's lower convex hull: from (r0, s0, d0) to (r1, s1, d1)."""

    slope: float
    unit: int
    r0: float
    r1: float
    s0: float
    s1: float


def _segments(unit: int, ratios: Sequence[float], savings: Sequence[float],
              drops: Sequence[float]) -> list[_Segment]:  # fmt: skip
    """Hull segments of one unit's points (ratio 0 included), cheapest loss per saving first.

    Savings and drops are made non-decreasing in the ratio first (a noisy timing or a lucky
    evaluation never predicts that more pruning costs more or helps).
    """
    order = np.argsort(np.asarray(ratios, dtype=float), kind="stable")
    r = np.asarray(ratios, dtype=float)[order]
    s = np.maximum.accumulate(np.maximum(np.asarray(savings, dtype=float)[order], 0.0))
    d = np.maximum.accumulate(np.maximum(np.asarray(drops, dtype=float)[order], 0.0))
    # Equal savings: only the smallest ratio (the least loss) stays a candidate.
    keep = [0] + [i for i in range(1, len(r)) if s[i] > s[i - 1] + 1e-12]
    r, s, d = r[keep], s[keep], d[keep]
    hull = lower_hull(list(s), list(d))
    return [
        _Segment(float((d[b] - d[a]) / (s[b] - s[a])), unit, float(r[a]), float(r[b]),
                 float(s[a]), float(s[b]))
        for a, b in itertools.pairwise(hull)
    ]  # fmt: skip


def _groups(segments: list[_Segment]) -> list[list[_Segment]]:
    """Segments in order of loss per saving (ties by unit order), equal slopes grouped: one
    Lagrange multiplier takes a whole group, and a group taken in part is shared evenly."""
    ordered = sorted(segments, key=lambda g: (g.slope, g.unit, g.r0))
    out: list[list[_Segment]] = []
    for seg in ordered:
        if out and math.isclose(seg.slope, out[-1][0].slope, rel_tol=1e-9, abs_tol=1e-12):
            out[-1].append(seg)
        else:
            out.append([seg])
    return out


def _at(groups: list[list[_Segment]], units: Sequence[str], position: float
        ) -> tuple[dict[str, float], float]:  # fmt: skip
    """Ratios and predicted saving (share of dense) at a position along the groups: groups
    before `floor(position)` whole, the next one by the fractional part."""
    ratios = dict.fromkeys(units, 0.0)
    saving = dict.fromkeys(units, 0.0)
    whole = min(math.floor(position), len(groups))
    frac = position - whole
    for i, group in enumerate(groups[: whole + 1]):
        t = 1.0 if i < whole else frac
        if t <= 0:
            break
        for seg in group:
            name = units[seg.unit]
            # Clamped: r0 + (r1 - r0) can exceed r1 by a rounding error, and r1 may be the cap.
            ratios[name] = min(seg.r1, seg.r0 + t * (seg.r1 - seg.r0))
            saving[name] = seg.s0 + t * (seg.s1 - seg.s0)
    return ratios, float(sum(saving.values()))


def _unpack(model: nn.Module | LoadedModel, spec: InputSpec | None) -> tuple[nn.Module, InputSpec]:
    if isinstance(model, LoadedModel):
        return model.model, spec if spec is not None else model.spec
    if not isinstance(model, nn.Module):
        raise TypeError(f"pass a LoadedModel, or an nn.Module and its spec, got {type(model)}")
    if spec is None:
        raise UserError("the budget search needs the model's input spec")
    return model, spec


def _dense_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).cpu().eval()
    for p in m.parameters():
        p.requires_grad_(False)
        p.grad = None
    return m


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        from pruning_core.jobs import JobCancelledError

        raise JobCancelledError("budget search cancelled")


class _Pruner:
    """Copies of the dense model pruned to per-unit ratios (or blocks removed), physically,
    from one scoring of the dense model: the selection `prune_` would make, applied to a copy."""

    def __init__(
        self, base: nn.Module, config: PruneConfig, data: DataBundle, spec: InputSpec
    ) -> None:
        self.base, self.config, self.data, self.spec = base, config, data, spec
        self.preview = Preview(copy.deepcopy(base), config, data, spec)
        self.units = list(self.preview.layer_names)
        self.sizes = dict(self.preview.layer_sizes)

    def model(self, selection: Mapping[str, Any]) -> nn.Module:
        m = copy.deepcopy(self.base)
        plan = (
            self.config.plan(m, self.config, spec=self.spec, data=self.data)
            if self.config.structured
            else self.preview.plan
        )
        plan.apply(m, selection, physical=True)
        return m


def _accuracy(model: nn.Module, data: DataBundle, spec: InputSpec, dev: torch.device,
              limit: int | None, split: str = "val") -> float:  # fmt: skip
    model.to(dev)
    acc = evaluate(model, data, spec, split=split, device=dev, limit=limit).accuracy
    model.cpu()
    return acc


def _search_ratios(config: PruneConfig, ratios: Sequence[float] | None) -> list[float]:
    """The ratios the curves are measured at: given or the plan kind's default, those beyond
    max_layer_ratio replaced by it."""
    kind = "structured" if config.structured else "weights"
    given = DEFAULT_SEARCH_RATIOS[kind] if ratios is None else ratios
    cap = config.max_layer_ratio
    out = sorted({float(r) for r in given if 0 < float(r) <= cap})
    if any(float(r) > cap for r in given):
        out = sorted({*out, cap})  # the cap itself is the last point a unit may reach
    if not out:
        raise UserError(
            f"no search ratio in (0, {config.max_layer_ratio:g}] (max_layer_ratio): give ratios "
            "the units may be pruned to"
        )
    return out


def _base_config(
    config: PruneConfig | None, granularity: str | None, method: str | None
) -> PruneConfig:
    cfg = config or PruneConfig(method=method or "magnitude", granularity=granularity or "channel")
    changes: dict[str, Any] = {}
    if config is not None and granularity is not None:
        changes["granularity"] = granularity
    if config is not None and method is not None:
        changes["criterion"] = method
    return cfg.replace(**changes) if changes else cfg


def _check_fits(cfg: PruneConfig, b: Budget) -> None:
    """Refuse budgets the granularity cannot meet by construction."""
    if cfg.plan.no_budget_search:
        raise UserError(f"{cfg.granularity}: {cfg.plan.no_budget_search}")
    if cfg.fixed_ratio:
        raise UserError(
            f"{cfg.granularity} fixes the share removed; a budget needs a granularity with "
            "ratios (unstructured, channel, head or block)"
        )
    if not cfg.structured and b.quantity in ("size", "latency"):
        why = (
            "the weights file stays as large (zeros are stored)"
            if b.quantity == "size"
            else "dense kernels do the same work (zeros make nothing faster)"
        )
        raise UserError(
            f"a {b.quantity} budget needs structured pruning (channel, head or block): with "
            f"{cfg.granularity} pruning {why}; a macs or params budget counts the zeros"
        )


def _selection_key(selection: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a selection removes, hashable (equal keys: the same pruned model)."""
    out: list[tuple[str, Any]] = []
    for name, sel in sorted(selection.items()):
        if isinstance(sel, torch.Tensor):
            out.append((name, int(sel.numel() - sel.count_nonzero())))
        else:
            out.append((name, tuple(int(i) for i in sel)))
    return tuple(out)


@dataclass
class _Found:
    """A search's answer before the final check, and how to search again for less."""

    config: PruneConfig
    ratios: dict[str, float]
    target_share: float
    predicted_share: float
    predicted_drop: float
    units: list[dict[str, Any]]
    steps: list[dict[str, float]]
    notes: list[str]
    blocks: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retarget: Callable[[float], _Found | None] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)


class _Costs:
    """Measured shares of the dense cost, memoised by what the selection removes."""

    def __init__(self, pruner: _Pruner, meter: _Meter, cancel: threading.Event | None) -> None:
        self.pruner, self.meter, self.cancel = pruner, meter, cancel
        self.memo: dict[tuple[Any, ...], float] = {}

    def share(self, selection: Mapping[str, Any]) -> float:
        key = _selection_key(selection)
        if key not in self.memo:
            _check_cancel(self.cancel)
            self.memo[key] = self.meter.share(self.pruner.model(selection))
        return self.memo[key]

    def ratios(self, ratios: Mapping[str, float]) -> float:
        sel = self.pruner.preview.select(0.0, {u: r for u, r in ratios.items() if r > 0}, "layer")
        return self.share(sel)


@dataclass(frozen=True)
class _Curves:
    """Where the drop curves come from: given, or `experiments.sensitivity` with these
    settings (its points run on `executor`)."""

    given: pd.DataFrame | None
    ratios: Sequence[float] | None
    limit: int | None
    split: str
    device: str
    executor: Any

    def drops(
        self, base: nn.Module, data: DataBundle, spec: InputSpec, cfg: PruneConfig,
        units: Sequence[str], report: ProgressFn, cancel: threading.Event | None,
    ) -> pd.DataFrame:  # fmt: skip
        """Sensitivity rows covering every unit (layer, ratio, drop).

        Raises:
            UserError: Given curves that miss a unit.
        """
        sens = self.given
        if sens is None:
            grid = _search_ratios(cfg, self.ratios) if cfg.plan.per_layer else [0.5]
            report(Report(0.0, f"sensitivity of {len(units)} units"))
            sens = sensitivity(
                base, data, spec, ratios=grid, method=cfg.method, granularity=cfg.granularity,
                limit=self.limit, split=self.split, layers=list(units), device=self.device,
                cancel=cancel, seed=cfg.seed, executor=self.executor,
                progress=lambda r: report(Report(0.6 * r.fraction, f"sensitivity: {r.message}")),
            )  # fmt: skip
            if sens.attrs.get("cancelled"):
                _check_cancel(cancel)
        missing = [u for u in units if not (sens["layer"] == u).any()]
        if missing:
            raise UserError(f"no sensitivity measured for unit '{shown(missing[0])}'")
        return sens


def _search_layers(
    base: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    cfg: PruneConfig,
    meter: _Meter,
    target_share: float,
    curves: _Curves,
    report: ProgressFn,
    cancel: threading.Event | None,
    recovery: _Recovery | None = None,
) -> _Found:
    """Hull greedy + bisection for per-layer granularities (module docstring, steps 1-4); with
    `recovery`, the recovery-aware choice among candidates that meet the budget (step 5)."""
    pruner = _Pruner(base, cfg, data, spec)
    units = pruner.units
    costs = _Costs(pruner, meter, cancel)
    notes: list[str] = []
    sens = curves.drops(base, data, spec, cfg, units, report, cancel)
    per_unit: dict[str, list[float]] = {}
    for u in units:
        rs = sorted({float(r) for r in sens.loc[sens["layer"] == u, "ratio"]})
        per_unit[u] = [r for r in rs if 0 < r <= cfg.max_layer_ratio]
    # Measured saving (share of dense cost) of each unit pruned alone.
    savings: dict[str, list[float]] = {}
    for k, u in enumerate(units):
        rs = per_unit[u]
        if not rs:
            savings[u] = []
            continue
        report(Report(0.6 + 0.2 * k / len(units), f"cost of {u}"))
        if meter.latency:
            # Two measured points per unit, linear between them and from zero.
            at = sorted({rs[len(rs) // 2], rs[-1]})
            pts = {r: 1.0 - costs.ratios({u: r}) for r in at}
            xs, ys = [0.0, *at], [0.0, *(pts[r] for r in at)]
            savings[u] = [float(np.interp(r, xs, ys)) for r in rs]
        else:
            savings[u] = [1.0 - costs.ratios({u: r}) for r in rs]
    drops: dict[str, list[float]] = {}
    table: list[dict[str, Any]] = []
    for u in units:
        rs = per_unit[u]
        drops[u] = [predicted_drop(sens, {u: r}) for r in rs]
        table.append({
            "unit": u, "size": pruner.sizes.get(u, 0),
            "points": [{"ratio": r, "saving": s * meter.dense, "drop": d}
                       for r, s, d in zip(rs, savings[u], drops[u], strict=True)],
        })  # fmt: skip

    def predicted_saving(chosen: Mapping[str, float]) -> float:
        return float(sum(
            np.interp(chosen[u], [0.0, *per_unit[u]], [0.0, *savings[u]]) if per_unit[u] else 0.0
            for u in units
        ))  # fmt: skip

    def found_for(chosen: dict[str, float], goal: float, saving: float,
                  steps: list[dict[str, float]]) -> _Found:  # fmt: skip
        rows = [
            {**row, "ratio": chosen[row["unit"]],
             "predicted_drop": predicted_drop(sens, {row["unit"]: chosen[row["unit"]]})}
            for row in table
        ]  # fmt: skip
        return _Found(
            cfg.replace(layer_ratios=tuple(chosen.items())), dict(chosen), goal, 1.0 - saving,
            predicted_drop(sens, chosen), rows, steps, notes,
        )  # fmt: skip

    def solver(cap: float, at: float = 0.85) -> Callable[[float, float], _Found | None]:
        """The search (steps 3-4b) with no unit past `cap` (at most the config's cap): a
        function of the goal (share of dense cost) and where a search again starts."""
        segs: list[_Segment] = []
        for k, u in enumerate(units):
            keep = [i for i, r in enumerate(per_unit[u]) if r <= cap + 1e-12]
            segs += _segments(
                k, [0.0, *(per_unit[u][i] for i in keep)],
                [0.0, *(savings[u][i] for i in keep)], [0.0, *(drops[u][i] for i in keep)],
            )  # fmt: skip
        groups = _groups(segs)
        steps: list[dict[str, float]] = []

        def measure(position: float) -> float:
            share = costs.ratios(_at(groups, units, position)[0])
            steps.append({"position": round(position, 6), "share": share})
            return share

        def measure_ratios(ratios: dict[str, float]) -> float:
            share = costs.ratios(ratios)
            steps.append({"position": -1.0, "share": share})
            return share

        def bisect(goal: float, lo: float) -> float | None:
            """The least position at or above `lo` whose measured share meets `goal`."""
            hi = float(len(groups))
            if measure(hi) > goal:
                return None
            lo_i, hi_i = math.floor(lo), len(groups)
            while hi_i - lo_i > 1:
                mid = (lo_i + hi_i) // 2
                if measure(mid) <= goal:
                    hi_i = mid
                else:
                    lo_i = mid
            # A search again (a latency miss) never goes back below where the last one ended.
            f_lo = max(0.0, lo - lo_i)
            if f_lo == 0.0 and measure(lo_i) <= goal:
                return float(lo_i)
            f_hi = 1.0
            for _ in range(_FRACTION_STEPS):
                f = (f_lo + f_hi) / 2
                if measure(lo_i + f) <= goal:
                    f_hi = f
                else:
                    f_lo = f
            return lo_i + f_hi

        def slope_at(k: int, r: float) -> float:
            """Loss per saving of the hull segment unit `k`'s ratio `r` lies on (0 at 0)."""
            return max((g.slope for g in segs if g.unit == k and g.r0 < r <= g.r1 + 1e-12),
                       default=0.0)  # fmt: skip

        def give_back(chosen: dict[str, float], goal: float) -> dict[str, float]:
            """Hand the budget's slack back (step 4b): channel counts are discrete, so the
            bisected position usually lands below the goal; units are relieved in order of
            their current loss per saving (the costliest pruning first), each by bisection down
            to its previous hull point, while the measured cost still meets the goal."""
            order = sorted(
                (k for k, u in enumerate(units) if chosen[u] > 0),
                key=lambda k: (-slope_at(k, chosen[units[k]]), k),
            )
            for k in order:
                u, r = units[k], chosen[units[k]]
                floor = max((g.r0 for g in segs if g.unit == k and g.r0 < r - 1e-12), default=0.0)
                lo, hi = floor, r
                if measure_ratios({**chosen, u: lo}) <= goal:
                    chosen[u] = lo
                    continue
                for _ in range(_GIVE_BACK_STEPS):
                    mid = (lo + hi) / 2
                    if measure_ratios({**chosen, u: mid}) <= goal:
                        hi = mid
                    else:
                        lo = mid
                chosen[u] = hi
            return chosen

        def found_at(goal: float, lo: float) -> _Found | None:
            report(Report(at, f"bisection for {goal:.3f} of the dense cost"))
            position = 0.0 if goal >= 1.0 else bisect(goal, lo)
            if position is None:
                return None
            chosen, saving = _at(groups, units, position)
            if position > 0 and not meter.latency:
                # Latency is timed, not counted: its slack is within the noise of one timing.
                chosen = give_back(chosen, goal)
                saving = predicted_saving(chosen)
            out = found_for(chosen, goal, saving, steps)
            out.retarget = lambda g: found_at(g, position)
            return out

        return found_at

    first = solver(cfg.max_layer_ratio)(target_share, 0.0)
    if first is None:
        top = max((max(v) for v in per_unit.values() if v), default=0)
        most = {u: (per_unit[u][-1] if per_unit[u] else 0.0) for u in units}
        reach = costs.ratios(most) * meter.dense
        raise UserError(
            f"the budget ({meter.budget.describe(meter.dense)}) is out of reach: every unit at "
            f"the largest ratio tried ({top:g}, max_layer_ratio {cfg.max_layer_ratio:g}) "
            f"measures {format_cost(meter.budget.quantity, reach)}; relax the budget or try "
            "larger ratios"
        )
    if recovery is None or target_share >= 1.0:
        return first
    # Step 5: candidates that meet the budget, each given the same short recovery.
    cands: list[tuple[str, _Found]] = [("searched", first)]
    for cap in _recovery_caps(cfg):
        found = solver(cap, 0.86)(target_share, 0.0)
        if found is not None:
            cands.append((f"searched, cap {cap:g}", found))
    for scope in ("layer", "global"):
        report(Report(0.87, f"candidate: {_SCOPE_WORDS[scope]}"))
        ratios = _one_ratio(pruner, costs, scope, target_share)
        if ratios is not None:
            steps = [{"position": -1.0, "share": costs.ratios(ratios)}]
            cands.append((_SCOPE_WORDS[scope], found_for(ratios, target_share,
                                                         predicted_saving(ratios), steps)))  # fmt: skip
    return _choose(base, data, spec, pruner, costs, cands, recovery, report, cancel)


def _block_config(cfg: PruneConfig, blocks: Sequence[str], removed: Sequence[int], top: int
                  ) -> PruneConfig:  # fmt: skip
    """The block config that removes exactly `removed`: the other candidates are ignored but
    the top-ranked block, which the lowest-first selection keeps, so the ratio |S|/(|S|+1)
    removes S."""
    if not removed:
        return cfg.replace(ratio=0.0)
    keep = [b for i, b in enumerate(blocks) if i not in removed and i != top]
    ignore = (*(cfg.ignore or ()), *keep)
    return cfg.replace(ratio=len(removed) / (len(removed) + 1), ignore=ignore)


def _search_blocks(
    base: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    cfg: PruneConfig,
    meter: _Meter,
    target_share: float,
    curves: _Curves,
    report: ProgressFn,
    cancel: threading.Event | None,
) -> _Found:
    """Which residual blocks to remove (module docstring, step 6)."""
    pruner = _Pruner(base, cfg, data, spec)
    plan: Any = pruner.preview.plan
    blocks: list[str] = list(plan.blocks)
    order = torch.argsort(plan.units[0].scores, stable=True).tolist()
    top = int(order[-1])
    cap = layer_cap(len(blocks), cfg.max_layer_ratio)
    # The ratio |S|/(|S|+1) that removes S must itself be within max_layer_ratio.
    while cap > 0 and cap / (cap + 1) > cfg.max_layer_ratio + 1e-12:
        cap -= 1
    costs = _Costs(pruner, meter, cancel)
    candidates = [i for i in range(len(blocks)) if i != top]
    sens = curves.drops(base, data, spec, cfg, [blocks[i] for i in candidates], report, cancel)
    saving: dict[int, float] = {}
    drop: dict[int, float] = {}
    for k, i in enumerate(candidates):
        report(Report(0.6 + 0.2 * k / max(len(candidates), 1), f"cost of {blocks[i]}"))
        saving[i] = max(0.0, 1.0 - costs.share({"blocks": [i]}))
        drop[i] = max(0.0, float(sens.loc[sens["layer"] == blocks[i], "drop"].mean()))
    units: list[dict[str, Any]] = [
        {"unit": blocks[i], "size": 1, "points": [{"ratio": 1.0, "saving": saving[i] * meter.dense,
                                                   "drop": drop[i]}]}
        for i in candidates
    ]  # fmt: skip
    units.append({"unit": blocks[top], "size": 1, "points": [], "note": "kept (ranked highest)"})
    notes = [f"{blocks[top]} is kept: the criterion ranks it highest, and block pruning always "
             "keeps at least one block"]  # fmt: skip

    def ranked(goal: float) -> list[tuple[int, ...]]:
        """Subsets predicted to meet `goal`, least predicted loss first."""
        if len(candidates) <= _EXACT_BLOCKS:
            subsets: Any = (
                s for k in range(cap + 1) for s in itertools.combinations(candidates, k)
            )
        else:  # greedy prefixes by loss per saving
            by = sorted(candidates, key=lambda i: (drop[i] / max(saving[i], 1e-12), i))
            subsets = (tuple(sorted(by[:k])) for k in range(cap + 1))
        fits = [s for s in subsets if 1.0 - sum(saving[i] for i in s) <= goal + 1e-12]
        return sorted(fits, key=lambda s: (sum(drop[i] for i in s), -sum(saving[i] for i in s),
                                           len(s), s))  # fmt: skip

    steps: list[dict[str, float]] = []

    def found_for(goal: float, skip: int = 0) -> _Found | None:
        for s in ranked(goal)[skip : skip + _BLOCK_TRIES]:
            share = costs.share({"blocks": list(s)}) if s else 1.0
            steps.append({"position": float(len(steps)), "share": share})
            if share <= goal:
                chosen = {b: (1.0 if i in s else 0.0) for i, b in enumerate(blocks)}
                rows = [
                    {**u, "ratio": chosen[str(u["unit"])],
                     "predicted_drop": drop.get(blocks.index(str(u["unit"])), 0.0)
                     * chosen[str(u["unit"])]}
                    for u in units
                ]  # fmt: skip
                out = _Found(
                    _block_config(cfg, blocks, s, top), chosen, goal,
                    1.0 - sum(saving[i] for i in s), sum(drop[i] for i in s), rows, steps, notes,
                    blocks=tuple(blocks), removed=tuple(blocks[i] for i in s),
                )  # fmt: skip
                out.retarget = lambda g: found_for(g)
                return out
        return None

    report(Report(0.85, "choosing blocks"))
    first = found_for(target_share)
    if first is None:
        most = sorted(candidates, key=lambda i: -saving[i])[:cap]
        reach = costs.share({"blocks": most}) if most else 1.0
        raise UserError(
            f"the budget ({meter.budget.describe(meter.dense)}) is out of reach with block "
            f"pruning: removing the {len(most)} most costly of {len(blocks)} removable blocks "
            f"measures {format_cost(meter.budget.quantity, reach * meter.dense)}; relax the "
            "budget or use channel pruning"
        )
    return first


def _apply(base: nn.Module, data: DataBundle, spec: InputSpec, found: _Found) -> nn.Module:
    """The found config through `prune_` on a copy of the dense model (what a recipe runs)."""
    m = copy.deepcopy(base)
    prune_(m, found.config, data=data, spec=spec)
    if found.blocks:
        gone = tuple(b for b in found.blocks if isinstance(m.get_submodule(b), nn.Identity))
        if gone != found.removed:
            raise RuntimeError(
                f"block config removed {list(gone)}, the search chose {list(found.removed)}"
            )
    return m


def _final(
    base: nn.Module, data: DataBundle, spec: InputSpec, found: _Found, meter: _Meter,
    cancel: threading.Event | None,
) -> tuple[_Found, nn.Module, LatencyCheck | None, list[str]]:  # fmt: skip
    """Apply the answer; for latency, time it with the whole protocol and, when it misses,
    re-time it (target within p10-p90) or search again for less (module docstring, step 4)."""
    pruned = _apply(base, data, spec, found)
    if not meter.latency:
        return found, pruned, None, []
    notes: list[str] = []
    retimed = False
    for tries in range(1, LATENCY_TRIES + 1):
        _check_cancel(cancel)
        check = meter.check(pruned, tries)
        if check.met:
            return found, pruned, check, notes
        miss = (
            f"timed {check.median_ms:.2f} ms (p10 {check.p10_ms:.2f}, p90 {check.p90_ms:.2f}) "
            f"against the target {check.target_ms:.2f} ms"
        )
        if tries == LATENCY_TRIES:
            notes.append(f"{miss}: not met after {tries} timings")
            return found, pruned, check, notes
        if check.within_noise and not retimed:
            retimed = True
            notes.append(f"{miss}, within its p10-p90: timed again")
            continue
        retimed = False
        goal = found.target_share * check.target_ms / check.median_ms
        nxt = found.retarget(goal) if found.retarget is not None else None
        if nxt is None:
            notes.append(f"{miss}: no further pruning within the caps meets it")
            return found, pruned, check, notes
        notes.append(f"{miss}: searched again for {goal:.3f} of the dense latency")
        found = nxt
        pruned = _apply(base, data, spec, found)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- recovery-aware choice

_SCOPE_WORDS = {"layer": "uniform", "global": "global threshold"}


@dataclass(frozen=True)
class _Recovery:
    """How the candidates of step 5 are recovered and where (picklable but `executor`)."""

    steps: int
    lr: float
    batch_size: int
    seed: int
    device: str
    executor: Any


def _recovery_caps(cfg: PruneConfig) -> list[float]:
    """The lower caps whose searches are candidates (those below the config's own)."""
    kind = "structured" if cfg.structured else "weights"
    return [c for c in RECOVERY_CAPS[kind] if c < cfg.max_layer_ratio - 1e-9]


def _one_ratio(pruner: _Pruner, costs: _Costs, scope: str, goal: float) -> dict[str, float] | None:
    """The least uniform (`layer`) ratio or global threshold whose measured cost meets `goal`
    (as `baseline_for_budget` bisects it), written as per-unit ratios that select exactly the
    same elements; None when no ratio up to the cap meets it."""
    cap = pruner.config.max_layer_ratio

    def share(r: float) -> float:
        return costs.share(pruner.preview.select(r, {}, scope))

    if share(cap) > goal:
        return None
    lo, hi = 0.0, cap
    for _ in range(24):  # until the selection stops changing (channel counts are discrete)
        mid = (lo + hi) / 2
        if share(mid) <= goal:
            hi = mid
        else:
            lo = mid
    sel = pruner.preview.select(hi, {}, scope)
    if scope == "layer":
        ratios = dict.fromkeys(pruner.units, hi)
    else:
        # The global threshold removes a count per unit, the lowest-scored within it, which is
        # what that unit's own ratio count/size removes (plans floor size x ratio + 1e-9).
        ratios = {u: _removed(sel.get(u)) / max(pruner.sizes.get(u, 1), 1) for u in pruner.units}
    again = pruner.preview.select(0.0, {u: r for u, r in ratios.items() if r > 0}, "layer")
    return ratios if _selection_key(again) == _selection_key(sel) else None


def _removed(sel: Any) -> int:
    """Elements a unit's selection removes (a keep-mask, or removed indices)."""
    if sel is None:
        return 0
    if isinstance(sel, torch.Tensor):
        return int(sel.numel() - sel.count_nonzero())
    return len(sel)


@dataclass(frozen=True)
class _RecoveryJob:
    """What every candidate's recovery shares (sent once per executor map)."""

    key: str
    model: nn.Module
    spec: InputSpec
    data: Any
    steps: int
    lr: float
    batch_size: int
    seed: int
    device: str


# Cancel events of running searches by job key: a task in this process stops within a step;
# remote tasks see none and stop between tasks (the executor cancels the pending ones).
_RECOVERY_CANCELS: dict[str, threading.Event] = {}


def _recover_candidate(job: _RecoveryJob, config: PruneConfig) -> tuple[float, float, float]:
    """Prune a copy of the dense model as `config` says, train it `job.steps` steps, and
    measure it on the calibration split: (accuracy before, accuracy after, loss after).

    The steps are Adam with a cosine decay from `job.lr` to 0 on batches of the training split
    without its calibration images (which choose), in an order fixed by `job.seed`; pruned
    weights are held at zero (unstructured); BatchNorm statistics are re-estimated afterwards
    as after pruning (`prune.settle_structured`)."""
    from pruning_core.data import adapt
    from pruning_core.experiments import _DataRef
    from pruning_core.layers import batchnorm_frozen, main_logits, trainable_copy

    data = job.data.load() if isinstance(job.data, _DataRef) else job.data
    cancel = _RECOVERY_CANCELS.get(job.key)
    dev = resolve_device(job.device)
    model = trainable_copy(job.model)
    res = prune_(model, config, data=data, spec=job.spec)
    before = _accuracy(model, data, job.spec, dev, None, "calib")
    pool = torch.ones(data.num_examples("train"), dtype=torch.bool)
    pool[data.calib_index] = False
    order = torch.nonzero(pool).flatten()
    gen = torch.Generator().manual_seed(job.seed)
    torch.manual_seed(job.seed)
    model.to(dev)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=job.lr)
    hold = hold_masks(model, res.masks)
    shuffled, at = order[torch.randperm(len(order), generator=gen)], 0
    model.train()
    for step in range(job.steps):
        _check_cancel(cancel)
        if at >= len(shuffled):
            shuffled, at = order[torch.randperm(len(order), generator=gen)], 0
        idx, at = shuffled[at : at + job.batch_size], at + job.batch_size
        xb, yb = adapt(data.train[0][idx], job.spec).to(dev), data.train[1][idx].to(dev)
        for group in opt.param_groups:
            group["lr"] = job.lr * 0.5 * (1 + math.cos(math.pi * step / job.steps))
        with batchnorm_frozen(model, len(yb) < 2):
            loss = torch.nn.functional.cross_entropy(main_logits(model(xb)).float(), yb)
        if not torch.isfinite(loss):
            return before, 0.0, math.inf  # diverged: the candidate is not chosen for it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hold is not None:
            hold(model, step + 1)
    model.eval()
    settle_structured(model, config, data, job.spec)
    ev = evaluate(model, data, job.spec, split="calib", device=dev)
    model.cpu()
    return before, ev.accuracy, ev.loss


def _choose(
    base: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    pruner: _Pruner,
    costs: _Costs,
    candidates: list[tuple[str, _Found]],
    recovery: _Recovery,
    report: ProgressFn,
    cancel: threading.Event | None,
) -> _Found:
    """Step 5: each distinct candidate gets the same short recovery; among those at least as
    accurate before it as the best baseline (uniform, global threshold), the most accurate on
    the calibration split after it is chosen (ties: the lower loss, then the earlier one)."""
    from pruning_core.executor import get_executor
    from pruning_core.experiments import _data_for_workers

    unique: list[tuple[list[str], _Found]] = []
    keys: dict[tuple[Any, ...], int] = {}
    for name, found in candidates:
        sel = pruner.preview.select(0.0, {u: r for u, r in found.ratios.items() if r > 0}, "layer")
        key = _selection_key(sel)
        if key in keys:
            unique[keys[key]][0].append(name)
        else:
            keys[key] = len(unique)
            unique.append(([name], found))
    owned = not isinstance(recovery.executor, Executor)
    runner = recovery.executor if not owned else get_executor(recovery.executor or "inprocess")
    job = _RecoveryJob(
        uuid.uuid4().hex, base, spec, data, recovery.steps, recovery.lr, recovery.batch_size,
        recovery.seed, recovery.device,
    )  # fmt: skip
    done = [0]

    def on_done(i: int, out: tuple[float, float, float]) -> None:
        done[0] += 1
        report(Report(0.88 + 0.07 * done[0] / len(unique),
                      f"recovery of {unique[i][0][0]}: calibration accuracy {out[0]:.4f} -> "
                      f"{out[1]:.4f}"))  # fmt: skip

    report(Report(0.88, f"recovery of {len(unique)} candidates, {recovery.steps} steps each"))
    try:
        if runner.local:
            if cancel is not None:
                _RECOVERY_CANCELS[job.key] = cancel
        else:
            job = dataclasses.replace(job, data=_data_for_workers(data))
        tasks = [found.config for _, found in unique]
        results = runner.map(_recover_candidate, tasks, shared=job, on_done=on_done,
                             cancel=cancel)  # fmt: skip
    finally:
        _RECOVERY_CANCELS.pop(job.key, None)
        if owned:
            runner.close()
    _check_cancel(cancel)
    if len(results) < len(unique):
        raise RuntimeError("the executor returned fewer recoveries than candidates")
    floor = max(
        (results[i][0] for i, (names, _) in enumerate(unique)
         if any(n in _SCOPE_WORDS.values() for n in names)),
        default=0.0,
    )  # fmt: skip
    eligible = [i for i in range(len(unique)) if results[i][0] >= floor - 1e-12]
    best = max(eligible, key=lambda i: (results[i][1], -results[i][2], -i))
    rows: list[dict[str, Any]] = []
    for i, (names, found) in enumerate(unique):
        before, after, loss = results[i]
        rows.append({
            "candidate": " = ".join(names), "ratios": dict(found.ratios),
            "measured_share": costs.ratios(found.ratios),
            "predicted_drop": found.predicted_drop, "calib_accuracy": before,
            "recovered_accuracy": after, "recovered_loss": loss, "eligible": i in eligible,
            "chosen": i == best,
        })  # fmt: skip
    names, chosen = unique[best]
    words = "; ".join(
        # Names hold commas ("searched, cap 0.9"): quoted, and the same selection found by
        # several names said once.
        f'"{ns[0]}"' + (" (= " + ", ".join(f'"{n}"' for n in ns[1:]) + ")" if len(ns) > 1 else "")
        + f" {r['calib_accuracy']:.4f} -> {r['recovered_accuracy']:.4f}"
        + ("" if r["eligible"] else " (below the baselines before recovery)")
        for r, (ns, _) in zip(rows, unique, strict=True)
    )  # fmt: skip
    note = (
        f"chosen after a short recovery ({recovery.steps} steps, Adam {recovery.lr:g} with "
        f"cosine decay, batch {recovery.batch_size}, BatchNorm re-estimated) of "
        f"{len(unique)} candidates meeting the budget, by calibration accuracy: {words}; "
        f'chosen: "{names[0]}"'
    )
    return dataclasses.replace(chosen, notes=[*chosen.notes, note], candidates=rows,
                               retarget=None)  # fmt: skip


def search(
    model: nn.Module | LoadedModel,
    data: DataBundle,
    budget: Budget | str,
    spec: InputSpec | None = None,
    *,
    config: PruneConfig | None = None,
    granularity: str | None = None,
    method: str | None = None,
    ratios: Sequence[float] | None = None,
    sensitivity: pd.DataFrame | None = None,
    limit: int | None = None,
    split: str = "calib",
    eval_limit: int | None = None,
    device: str = "auto",
    executor: Executor | str | None = None,
    recovery_steps: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> BudgetResult:
    """Per-unit ratios (or blocks to remove) meeting `budget` with the least predicted accuracy
    loss, verified by measuring the pruned model (the method: the module docstring).

    Args:
        model: The dense model (never modified), or a LoadedModel (then `spec` may be None).
        data: The dataset: curves on `split`, the result's accuracy on the validation split.
        budget: A `Budget` or its text (`macs=0.5`).
        spec: The model's input spec (default: the LoadedModel's).
        config: Criterion, granularity, max_layer_ratio, ignore, round_to, seed... (its ratio,
            scope and layer ratios are replaced). Default: magnitude, channel.
        granularity: Overrides the config's granularity (unstructured, channel, head, block).
        method: Overrides the config's criterion.
        ratios: Ratios the curves are measured at (default `DEFAULT_SEARCH_RATIOS`); those above
            max_layer_ratio are left out. Not used for blocks (each is removed or kept).
        sensitivity: Drop curves already measured (`experiments.sensitivity` for this model,
            criterion and granularity, covering every unit; blocks: one row per block) instead
            of measuring them.
        limit: Images of `split` per curve point (None: all).
        split: `calib` (default) or `val`: where the drop curves are measured.
        eval_limit: Validation images for the dense and the result's accuracy (None: all).
        device: Where accuracy is measured (costs are measured on the CPU).
        executor: Where the sensitivity points and the candidates' recoveries run
            (`pruning_core.executor`: `inprocess`, the default, `ray`, or an Executor); the
            search itself runs here.
        recovery_steps: The recovery-aware choice (module docstring, step 5): optimizer steps
            of the short recovery each candidate gets (0: off, the search's own answer). None
            (default): `DEFAULT_RECOVERY_STEPS` unless the curves are a quick look (`limit`
            below `RECOVERY_MIN_IMAGES`); off for latency budgets and blocks either way.
        progress: Called with a `progress.Report` as the search goes.
        cancel: When set, the search stops with `jobs.JobCancelledError`.

    Returns:
        A `BudgetResult`: ratios, the config that applies them, predicted and measured cost
        and accuracy (before fine-tuning), and for latency the final timing with p10/p90.

    Raises:
        UserError: A bad budget; N:M granularity (its share is fixed) or low rank (no search
            over ranks); a size or latency budget with unstructured pruning (zeros make neither
            the file nor dense kernels smaller); a budget the ratios tried cannot reach (naming
            the least reachable cost).
    """
    net, spec = _unpack(model, spec)
    data.check_spec(spec)
    b = parse_budget(budget) if isinstance(budget, str) else budget
    given = _base_config(config, granularity, method)
    _check_fits(given, b)
    # Costs are those of the shrunk model; a mask-mode config gets the same selection.
    cfg = given.replace(structured_mode="physical")
    report: ProgressFn = progress or (lambda _r: None)
    dev = resolve_device(device)
    base = _dense_copy(net)
    meter = _Meter(b, base, spec)
    dense_acc = _accuracy(copy.deepcopy(base), data, spec, dev, eval_limit)
    target_share = b.target(meter.dense) / meter.dense
    curves = _Curves(sensitivity, ratios, limit, split, device, executor)
    steps = _recovery_steps(recovery_steps, limit, b, cfg, data)
    recovery = (
        _Recovery(steps, RECOVERY_LR, RECOVERY_BATCH, cfg.seed, device, executor) if steps else None
    )
    if cfg.plan.per_layer:
        found = _search_layers(
            base, data, spec, cfg.replace(ratio=0.0, scope="layer", layer_ratios=()), meter,
            target_share, curves, report, cancel, recovery,
        )  # fmt: skip
    else:
        found = _search_blocks(
            base, data, spec, cfg.replace(ratio=0.0, scope="global", layer_ratios=()), meter,
            target_share, curves, report, cancel,
        )  # fmt: skip
    report(Report(0.95, "measuring the result"))
    found, pruned, check, more = _final(base, data, spec, found, meter, cancel)
    if check is not None:
        measured, target, met = check.median_ms, check.target_ms, check.met
    else:
        measured = measure_cost(pruned, spec, b.quantity)
        target = b.target(meter.dense)
        met = measured <= target * (1 + 1e-9)
    acc = _accuracy(pruned, data, spec, dev, eval_limit)
    report(Report(1.0, f"budget search done: measured accuracy {acc:.4f}"))
    # The units' drops are summed as if independent, and the sum can pass the dense accuracy;
    # an accuracy is never negative.
    predicted_acc = max(0.0, dense_acc - found.predicted_drop)
    notes = found.notes + more
    if acc < predicted_acc - 0.05:
        notes.append(
            f"measured accuracy {100 * (predicted_acc - acc):.1f} points below the prediction: "
            "units pruned together lose more than the sum of their separate drops (the "
            "prediction's independence assumption); fine-tuning recovers much of it"
        )
    if b.quantity != "latency" and meter.dense <= target * (1 + 1e-9):
        notes.append(
            f"the dense model already meets this budget ({format_cost(b.quantity, meter.dense)} "
            f"<= {format_cost(b.quantity, target)}): nothing needed pruning"
        )
    chance = 1.0 / max(data.num_classes, 1)
    if acc <= 1.5 * chance:
        # Nothing recovers from here cheaply; a latency budget has no uniform or global
        # candidate to fall back on, and a disturbed dense timing makes its target too tight.
        notes.append(
            f"the result is at chance accuracy ({acc:.1%}; chance {chance:.0%}): this budget "
            "is too tight for this granularity"
            + (", or the dense timing was disturbed (re-run on a quiet machine)"
               if b.quantity == "latency" else "")
            + "; loosen it or prune another way"
        )  # fmt: skip
    if found.predicted_share < 0:
        notes.append(
            "the additive prediction of the cost went below zero (it adds savings that overlap): "
            "shown as 0; the measured cost decides"
        )
    if given.structured_mode != cfg.structured_mode:
        notes.append("costs are the shrunk model's; the config applies them in mask mode")
    dense_cost = meter.dense
    if check is not None:
        # The verdict compares with the dense model timed in the same rounds as the result:
        # every line states that dense and its target, not the search's first timing.
        dense_cost = check.dense_median_ms
        if not math.isclose(dense_cost, meter.dense, rel_tol=0.05):
            notes.append(
                f"dense timed {meter.dense:.2f} ms when the search started and {dense_cost:.2f} "
                "ms beside the result: the target is a share of the latter"
            )
    return BudgetResult(
        budget=b,
        granularity=cfg.granularity,
        method=cfg.method,
        ratios=found.ratios,
        config=found.config.replace(structured_mode=given.structured_mode),
        dense_cost=dense_cost,
        target_cost=target,
        predicted_cost=max(0.0, found.predicted_share) * dense_cost,
        measured_cost=measured,
        dense_accuracy=dense_acc,
        predicted_accuracy=predicted_acc,
        measured_accuracy=acc,
        met=met,
        latency=check,
        units=found.units,
        steps=found.steps,
        notes=notes,
        candidates=found.candidates,
        recovery_steps=steps if found.candidates else 0,
    )


def _recovery_steps(
    given: int | None, limit: int | None, b: Budget, cfg: PruneConfig, data: DataBundle
) -> int:
    """The recovery steps the search uses (0: none), as `search` documents them.

    Raises:
        UserError: A negative or non-integer count.
    """
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
        raise UserError(f"recovery_steps must be a whole number >= 0, got {brief(given)}")
    if b.quantity == "latency" or not cfg.plan.per_layer:
        return 0
    # The candidates train on the training split without its calibration images (which choose).
    if data.num_examples("train") <= len(data.calib_index):
        return 0
    if given is None:
        quick = limit is not None and limit < RECOVERY_MIN_IMAGES
        return 0 if quick else DEFAULT_RECOVERY_STEPS
    return given


def baseline_for_budget(
    model: nn.Module | LoadedModel,
    data: DataBundle,
    budget: Budget | str,
    spec: InputSpec | None = None,
    *,
    config: PruneConfig | None = None,
    granularity: str | None = None,
    method: str | None = None,
    scope: str = "layer",
    eval_limit: int | None = None,
    device: str = "auto",
    cancel: threading.Event | None = None,
) -> Baseline:
    """The least uniform (`scope="layer"`) or global ratio whose measured cost meets `budget`:
    what a searched result is compared with (bisection on the ratio, costs measured as in
    `search`).

    Args:
        model, data, budget, spec, config, granularity, method, eval_limit, device, cancel:
            As in `search`.
        scope: `layer` (the same ratio in every unit) or `global` (one threshold over all).

    Returns:
        A `Baseline` (ratio, config, measured cost and accuracy before fine-tuning).

    Raises:
        UserError: As `search`; a budget no ratio up to max_layer_ratio meets.
    """
    net, spec = _unpack(model, spec)
    data.check_spec(spec)
    b = parse_budget(budget) if isinstance(budget, str) else budget
    if scope not in ("layer", "global"):
        raise UserError(f"unknown scope '{shown(scope)}' (choose from layer, global)")
    given = _base_config(config, granularity, method)
    _check_fits(given, b)
    cfg = given.replace(layer_ratios=(), scope=scope, structured_mode="physical")
    dev = resolve_device(device)
    base = _dense_copy(net)
    meter = _Meter(b, base, spec)
    pruner = _Pruner(base, cfg, data, spec)
    costs = _Costs(pruner, meter, cancel)
    goal = b.target(meter.dense) / meter.dense

    def share(r: float) -> float:
        return costs.share(pruner.preview.select(r, {}, scope))

    lo, hi = 0.0, cfg.max_layer_ratio
    if goal < 1.0:
        if share(hi) > goal:
            raise UserError(
                f"the budget ({b.describe(meter.dense)}) is out of reach with one {scope} ratio "
                f"up to max_layer_ratio {hi:g}"
            )
        # Until the selection stops changing (channel counts are discrete) or 24 halvings.
        for _ in range(24 if not meter.latency else 10):
            mid = (lo + hi) / 2
            if share(mid) <= goal:
                hi = mid
            else:
                lo = mid
    else:
        hi = 0.0
    final = cfg.replace(ratio=hi)
    pruned = copy.deepcopy(base)
    prune_(pruned, final, data=data, spec=spec)
    check = meter.check(pruned, 1) if meter.latency else None
    if check is not None:
        measured, target, met = check.median_ms, check.target_ms, check.met
    else:
        measured = measure_cost(pruned, spec, b.quantity)
        target = b.target(meter.dense)
        met = measured <= target * (1 + 1e-9)
    acc = _accuracy(pruned, data, spec, dev, eval_limit)
    final = final.replace(structured_mode=given.structured_mode)
    return Baseline(scope, hi, final, meter.dense, target, measured, acc, met, check)
