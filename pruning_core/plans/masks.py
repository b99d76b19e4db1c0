"""Weight-level plans: unstructured (any single weight) and N:M (N zeros in every M weights).

Both keep the model's shapes and zero weights (masks, enforced through training by
`prune.MaskEnforcer`): masked zeros make dense kernels no faster; only sparse kernels can use
them (`pruning_core.sparse`).

Scores are computed and sorted once; a new ratio is only a threshold away (the app's slider
path). Every mask removes exactly the k lowest scores of a layer (a stable argsort decides ties,
so equal weights never take more than their share) and never more than `max_layer_ratio` of any
layer. Weights already exactly zero score -inf (unless `zeros_first=False`), so they go first
(re-pruning a pruned model, iterative schedules) whatever the criterion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from pruning_core.criteria import Criterion
from pruning_core.errors import UserError
from pruning_core.layers import (
    check_finite,
    counted_weights,
    is_weight_layer,
    matches_pattern,
    measured_model_sparsity,
    resolve_ignore,
    zero_shares,
)
from pruning_core.layers import weight_of as _weight_of
from pruning_core.plans.base import Applied, Plan, PlanConfig, Unit, layer_cap, register_granularity
from pruning_core.spec import InputSpec

__all__ = ["NMPlan", "UnstructuredPlan", "apply_masks_", "mask_sparsity", "parse_nm"]

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """`"2:4"` -> (2, 4): N zeros in every group of M consecutive input weights; else None.

    Raises:
        UserError: A malformed pattern such as "4:4" or "0:4".
    """
    m = _NM.match(str(granularity))
    if m is None:
        return None
    n, mm = int(m.group(1)), int(m.group(2))
    if not (1 <= n < mm):
        raise UserError(
            f"N:M granularity needs 1 <= N < M (N zeros per group of M), got '{granularity}'"
        )
    return n, mm


def mask_sparsity(masks: Mapping[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Share of False entries overall and per layer (what the masks would remove)."""
    per: dict[str, float] = {}
    pruned = total = 0
    for n, m in masks.items():
        k = m.numel() - int(m.count_nonzero())
        per[n] = k / max(m.numel(), 1)
        pruned += k
        total += m.numel()
    return pruned / max(total, 1), per


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the weights whose mask is False (in place; exact zeros even for inf/NaN weights).

    Raises:
        UserError: A mask names a missing layer or has the wrong shape.
    """
    mods = dict(model.named_modules())
    with torch.no_grad():
        for n, mask in masks.items():
            w = getattr(mods.get(n), "weight", None)
            if not isinstance(w, torch.Tensor):
                raise UserError(f"mask for '{n}', which is not a layer with weights in this model")
            if tuple(w.shape) != tuple(mask.shape):
                raise UserError(
                    f"mask for '{n}' has shape {tuple(mask.shape)}, its weight {tuple(w.shape)}"
                )
            w.masked_fill_(~mask.to(device=w.device, dtype=torch.bool), 0.0)


@register_granularity
class UnstructuredPlan(Plan):
    """Any single weight of Conv2d/Linear layers (Han et al. 2015)."""

    name = "unstructured"
    label = "Unstructured (single weights)"
    help = "any single weight; zeros in dense tensors (no faster on dense kernels)"
    example = "unstructured"
    score_kind = "weights"

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        self.model = model
        self.notes = []
        ignored = resolve_ignore(model, config.ignore)
        self._layers: dict[str, nn.Module] = {}
        for n, m in model.named_modules():
            if not is_weight_layer(m) or any(matches_pattern(n, p) for p in ignored):
                continue
            why = self.skip_reason(m)
            if why:
                self.notes.append(f"{n} skipped: {why}")
                continue
            self._layers[n] = m
        if not self._layers:
            raise UserError("no layer to prune (every Conv2d/Linear is ignored or skipped)")
        self.units = [Unit(n, _weight_of(m).numel()) for n, m in self._layers.items()]

    def skip_reason(self, m: nn.Module) -> str | None:
        """Why this plan cannot prune a layer (None: it can)."""
        return None

    # -- scoring --------------------------------------------------------------------------------

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        weights = {n: _weight_of(m) for n, m in self._layers.items()}
        for n, w in weights.items():
            check_finite(n, w)
        raw = (
            scores
            if scores is not None
            else criterion.weight_scores(self.model, self._layers, data, spec)
        )
        self._shapes: dict[str, torch.Size] = {n: w.shape for n, w in weights.items()}
        self._rows: dict[str, torch.Tensor] = {}
        # Exact zeros per row: masked first (re-pruning keeps earlier zeros), up to the cap.
        self._row_zeros: dict[str, torch.Tensor] = {}
        for n, w in weights.items():
            if n not in raw:
                raise UserError(f"no scores given for layer '{n}'")
            s = raw[n].detach().to("cpu", torch.float32).reshape(w.shape[0], -1).clone()
            check_finite(n, s, "scores")
            zero = torch.zeros(s.shape, dtype=torch.bool)
            if zeros_first:
                zero = (w.detach().reshape(s.shape) == 0).cpu()
                s[zero] = -math.inf
            self._rows[n] = s
            self._row_zeros[n] = zero.sum(dim=1)
        for u in self.units:
            u.scores = self._rows[u.name].flatten()
        self._row_wise = criterion.row_wise
        self._sorted: dict[str, torch.Tensor] = {}
        self._order: dict[str, torch.Tensor] = {}
        self._sorted_rows: dict[str, torch.Tensor] = {}
        self._global: tuple[tuple[str, ...], torch.Tensor] | None = None
        self._sort()

    def _sort(self) -> None:
        if self._row_wise:
            # Row order (stable) rather than values: ties at a row's threshold stay exact.
            self._sorted_rows = {n: s.argsort(dim=1, stable=True) for n, s in self._rows.items()}
            return
        for n, s in self._rows.items():
            values, order = s.flatten().sort(stable=True)
            self._sorted[n] = values
            # int32 halves the memory of the order; indexing accepts it.
            self._order[n] = order.to(torch.int32) if order.numel() < 2**31 else order

    # -- selecting -----------------------------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        return {u.name: u.size for u in self.units}

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        sizes = self._sizes()
        caps = {n: layer_cap(s, max_layer_ratio) for n, s in sizes.items()}
        names = [u.name for u in self.units]
        if self._sorted_rows:
            return {n: self._row_mask(n, overrides.get(n, ratio), max_layer_ratio) for n in names}
        if scope == "layer":
            return {
                n: self._layer_mask(
                    n, min(round(overrides.get(n, ratio) * sizes[n]), caps[n]), caps
                )
                for n in names
            }
        out = {
            n: self._layer_mask(n, min(round(r * sizes[n]), caps[n]), caps)
            for n, r in overrides.items()
        }
        pool = tuple(n for n in names if n not in overrides)
        if pool:
            out.update(self._global_masks(pool, ratio, caps))
        return {n: out[n] for n in names}

    def _layer_mask(self, name: str, k: int, caps: Mapping[str, int]) -> torch.Tensor:
        """Mask removing exactly the k lowest scores of a layer (exact zeros at least), capped."""
        k = min(max(k, int(self._row_zeros[name].sum())), caps[name])
        keep = torch.ones(self._shapes[name].numel(), dtype=torch.bool)
        if k > 0:
            keep[self._order[name][:k]] = False
        return keep.reshape(self._shapes[name])

    def _row_mask(self, name: str, ratio: float, max_layer_ratio: float) -> torch.Tensor:
        order = self._sorted_rows[name]
        rows, cols = order.shape
        cap = layer_cap(cols, max_layer_ratio)
        k = min(round(ratio * cols), cap)
        # Each row drops exactly its count (its exact zeros at least), never past the cap.
        per_row = self._row_zeros[name].clamp(min=k).clamp(max=cap)
        drop = torch.arange(cols)[None, :] < per_row[:, None]
        keep = torch.ones(rows, cols, dtype=torch.bool).scatter_(1, order, ~drop)
        return keep.reshape(self._shapes[name])

    def _global_sorted(self, pool: tuple[str, ...]) -> torch.Tensor:
        if self._global is None or self._global[0] != pool:
            self._global = (pool, torch.cat([self._sorted[n] for n in pool]).sort().values)
        return self._global[1]

    def _global_masks(
        self, pool: tuple[str, ...], ratio: float, caps: Mapping[str, int]
    ) -> dict[str, torch.Tensor]:
        gs = self._global_sorted(pool)
        k = round(ratio * len(gs))
        if k <= 0:
            return {n: self._layer_mask(n, 0, caps) for n in pool}

        def counts(i: int, right: bool = True) -> dict[str, int]:
            t = gs[i]
            return {n: int(torch.searchsorted(self._sorted[n], t, right=right)) for n in pool}

        lo = k - 1
        c = counts(lo)
        if any(c[n] > caps[n] for n in pool):
            # Water-filling: capped layers stop at their cap, the rest share the remaining budget.
            lo, hi = k - 1, len(gs) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if sum(min(v, caps[n]) for n, v in counts(mid).items()) >= k:
                    hi = mid
                else:
                    lo = mid + 1
            c = counts(lo)
        take = {n: min(c[n], caps[n]) for n in pool}
        if sum(take.values()) > k:
            # Ties at the threshold: every score below it goes, and the tied ones are shared out
            # in proportion to each layer's ties, so exactly k go (largest remainder rounding).
            below = counts(lo, right=False)
            base = {n: min(below[n], caps[n]) for n in pool}
            slots = {n: take[n] - base[n] for n in pool}
            extra, total = k - sum(base.values()), sum(slots.values())
            share = {n: extra * slots[n] // total for n in pool}
            rest = extra - sum(share.values())
            by_rest = sorted(pool, key=lambda n: -((extra * slots[n]) % total))
            for n in by_rest[:rest]:
                share[n] += 1
            take = {n: base[n] + share[n] for n in pool}
        return {n: self._layer_mask(n, take[n], caps) for n in pool}

    # -- masks and applying ----------------------------------------------------------------------

    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        masks = dict(selection)
        if apply:
            apply_masks_(self.model, masks)
        return masks

    def apply(self, model: nn.Module, selection: Mapping[str, Any], *, physical: bool) -> Applied:
        masks = dict(selection)
        apply_masks_(model, masks)
        return Applied(
            masks=masks,
            layer_sparsity=zero_shares(model, masks),
            sparsity=measured_model_sparsity(model, counted_weights(model)),
        )


@register_granularity
class NMPlan(UnstructuredPlan):
    """N:M semi-structured sparsity: N zeros in every group of M consecutive input weights (2:4
    runs on NVIDIA's sparse tensor cores; Mishra et al. 2021, "Accelerating Sparse Deep Neural
    Networks")."""

    name = "N:M"
    label = "N:M semi-structured (e.g. 2:4)"
    help = "N zeros in every M consecutive input weights (2:4 runs fast on recent NVIDIA GPUs)"
    example = "N:M such as 2:4"
    fixed_ratio = True
    pattern: ClassVar[tuple[int, int]] = (2, 4)

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        nm = parse_nm(config.granularity)
        self.pattern_nm = nm if nm is not None else self.pattern
        super().__init__(model, config, spec=spec, data=data)

    @classmethod
    def parse(cls, text: str) -> str | None:
        nm = parse_nm(text)
        return f"{nm[0]}:{nm[1]}" if nm else None

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return (f"{cls.pattern[0]}:{cls.pattern[1]}",)

    @classmethod
    def effective_ratio(cls, granularity: str, ratio: float) -> float:
        nm = parse_nm(granularity)
        assert nm is not None
        return nm[0] / nm[1]

    @classmethod
    def check_config(cls, granularity: str, ratio: float, max_layer_ratio: float) -> None:
        nm = parse_nm(granularity)
        assert nm is not None
        if nm[0] / nm[1] > max_layer_ratio:
            raise UserError(
                f"N:M granularity {granularity} removes {nm[0] / nm[1]:g} of every layer, "
                f"beyond max_layer_ratio {max_layer_ratio}"
            )

    def skip_reason(self, m: nn.Module) -> str | None:
        width = _weight_of(m)[0].numel()
        if width % self.pattern_nm[1]:
            return f"its input dimension {width} is not a multiple of {self.pattern_nm[1]}"
        return None

    def _sort(self) -> None:
        n, m = self.pattern_nm
        self._nm_masks = {
            name: _nm_mask(s, n, m).reshape(self._shapes[name]) for name, s in self._rows.items()
        }

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        return dict(self._nm_masks)


def _nm_mask(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    groups = s.reshape(s.shape[0], -1, m)
    drop = groups.topk(n, dim=2, largest=False).indices
    return torch.ones_like(groups, dtype=torch.bool).scatter_(2, drop, False).reshape(s.shape)
