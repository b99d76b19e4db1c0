"""Low-rank factorisation: each Linear / Conv2d becomes two thinner layers (truncated SVD).

A layer's weight seen as a matrix W (out x in for a Linear, out x in*kh*kw for a convolution)
has the singular value decomposition W = U diag(S) Vh; keeping the r largest singular values
gives the closest rank-r matrix in the Frobenius and spectral norms (Eckart and Young 1936):
the error is exactly the dropped singular values, ||W - W_r||_F^2 = sum_{i >= r} S_i^2. The
rank-r matrix is two layers, `in -> r -> out`: a Linear pair (Denton et al. 2014; Xue et al.
2013) or, for a convolution, a k x k convolution to r channels followed by a 1 x 1 convolution
(Zhang et al. 2015, "Accelerating Very Deep Convolutional Networks for Classification and
Detection"; Jaderberg et al. 2014 split the kernel spatially instead, which is not done here).

The plan's elements are rank-one components (sigma_i u_i v_i^T), scored by their magnitude,
the singular value (so it takes the `magnitude` criterion: a component's Frobenius norm is its
singular value). Two granularities share it:

- `lowrank`: the ratio is the share of each layer's rank removed. In global scope one threshold
  on the *normalised* singular values (S_i / ||S||_2, so layers of any scale compare) removes
  that share of all components; in layer scope each layer loses that share of its rank.
- `lowrank-energy`: the ratio is the share of each layer's energy (sum of S_i^2) removed: each
  layer keeps the smallest rank holding at least 1 - ratio of it (a per-layer rule: the scope
  does not change it).

A layer is factorised only when that saves parameters and MACs, r * (in + out) < in * out
(in counts the kernel's positions; a layer an earlier run made sparse: below its non-zero
weights); at a ratio that would keep more rank, it stays dense
(`notes` give each layer's break-even). Mask mode (the preview) writes each weight's rank-r
approximation in place (same shapes); physical mode replaces the layer with
`layers.LowRankLinear` / `layers.LowRankConv2d` holding U sqrt(S) and sqrt(S) Vh, which computes
the same function up to rounding. Checkpoint surgery records the pairs (`surgery`, key
`lowrank`), so saved models reopen without code. A pair is a unit too (its matrix is the
product of its halves, its size its current rank): a factorised model factorises further, and
iterative schedules step down in rank. Channel pruning of a factorised model narrows the pairs'
bottlenecks like any other channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning_core.criteria import Criterion
from pruning_core.errors import UserError
from pruning_core.layers import (
    LOW_RANK_LAYERS,
    LowRankConv2d,
    LowRankLinear,
    check_finite,
    counted_weights,
    is_weight_layer,
    matches_pattern,
    measured_model_sparsity,
    resolve_ignore,
    set_submodule,
    weight_of,
)
from pruning_core.plans.base import (
    Applied,
    Plan,
    PlanConfig,
    Unit,
    Wording,
    layer_cap,
    register_granularity,
)
from pruning_core.spec import InputSpec

__all__ = [
    "MODES",
    "LowRankPlan",
    "break_even_rank",
    "factorize",
    "low_rank_factors",
    "svd_of",
    "weight_matrix",
]

# Granularity text -> what its ratio means.
MODES = {"lowrank": "rank", "lowrank-energy": "energy"}
# Above this many weights the SVD runs in float32 (float64 elsewhere: exact Eckart-Young).
_FLOAT64_LIMIT = 1 << 22


@dataclass(frozen=True)
class _Layer:
    """One factorisable layer (or an already factorised pair): its matrix shape, rank and
    break-even rank."""

    module: nn.Module
    rows: int  # out
    cols: int  # in * kh * kw
    rank: int  # min(rows, cols) for a dense layer, the bottleneck width for a pair
    break_even: int  # largest rank r with r * (rows + cols) < its non-zero weights

    @property
    def params(self) -> int:
        """Weights it holds now (zeros included)."""
        if isinstance(self.module, LOW_RANK_LAYERS):
            return self.rank * (self.rows + self.cols)
        return self.rows * self.cols


def break_even_rank(rows: int, cols: int, weights: int | None = None) -> int:
    """The largest rank r whose factorised pair is smaller than the layer:
    r * (rows + cols) < weights (0 when no rank is).

    Args:
        rows: Output size of the layer's matrix.
        cols: Input size (in * kh * kw for a convolution).
        weights: The non-zero weights the layer holds (default rows * cols, a dense layer): a
            layer an earlier run made sparse gains from factors only below its non-zeros.
    """
    held = rows * cols if weights is None else weights
    return max(0, math.ceil(held / (rows + cols)) - 1)


def svd_of(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a weight seen as (out, rest): U (out, R), S (R,), Vh (R, rest), R =
    min(out, rest), singular values descending; on the CPU, float64 for layers up to 4M
    weights (float32 beyond).

    Source: `torch.linalg.svd(full_matrices=False)` (LAPACK gesdd).
    """
    m = w.detach().reshape(w.shape[0], -1).to("cpu")
    dtype = torch.float64 if m.numel() <= _FLOAT64_LIMIT else torch.float32
    u, s, vh = torch.linalg.svd(m.to(dtype), full_matrices=False)
    return u, s, vh


def low_rank_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the rank-`rank` approximation, sqrt(S) split between them so both
    have the same scale (fine-tuning then updates them alike): (U_r sqrt(S_r)) of shape
    (out, rank), and (sqrt(S_r) Vh_r) of shape (rank, rest)."""
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def weight_matrix(m: nn.Module) -> torch.Tensor:
    """The (out, in * kh * kw) matrix a Linear, a Conv2d or a low-rank pair applies (for a
    pair, the product of its two factors), detached."""
    if isinstance(m, LowRankLinear | LowRankConv2d):
        right, left = weight_of(m.part(0)).detach(), weight_of(m.part(1)).detach()
        return left.reshape(left.shape[0], -1) @ right.reshape(right.shape[0], -1)
    w = weight_of(m).detach()
    return w.reshape(w.shape[0], -1)


def _svd(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`svd_of` the layer's matrix, cut to a pair's rank (its other singular values are 0)."""
    u, s, vh = svd_of(weight_matrix(m))
    if isinstance(m, LowRankLinear | LowRankConv2d):
        r = min(m.rank, s.numel())
        return u[:, :r], s[:r], vh[:r]
    return u, s, vh


def factorize(layer: nn.Module, rank: int) -> nn.Module:
    """The low-rank pair (`LowRankLinear` / `LowRankConv2d`) equal to the rank-`rank`
    truncated SVD of a Linear or ungrouped Conv2d (its bias on the second layer).

    Raises:
        UserError: Another kind of layer, or a rank outside [1, min(out, rest)].
    """
    w = weight_of(layer)
    u, s, vh = svd_of(w)
    if not 1 <= rank <= s.numel():
        raise UserError(f"rank {rank} is outside [1, {s.numel()}] for a {tuple(w.shape)} weight")
    return _pair(layer, *low_rank_factors(u, s, vh, rank))


def _pair(layer: nn.Module, left: torch.Tensor, right: torch.Tensor) -> nn.Module:
    """A low-rank module standing in for `layer` (a Linear, Conv2d or low-rank pair), holding
    the factors (out, r) and (r, rest)."""
    # A pair's geometry (kernel, stride, input) is its first half's; width and bias its second's.
    head, tail = (
        (layer.part(0), layer.part(1))
        if isinstance(layer, LowRankLinear | LowRankConv2d)
        else (layer, layer)
    )
    w = weight_of(head)
    bias = getattr(tail, "bias", None)
    rank = left.shape[1]
    kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    pair: nn.Module
    if isinstance(head, nn.Conv2d) and isinstance(tail, nn.Conv2d):
        pair = LowRankConv2d(
            head.in_channels, tail.out_channels, rank, head.kernel_size, head.stride,
            head.padding, head.dilation, bias is not None, head.padding_mode, **kw,
        )  # fmt: skip
    else:
        assert isinstance(head, nn.Linear) and isinstance(tail, nn.Linear)
        pair = LowRankLinear(head.in_features, tail.out_features, rank, bias is not None, **kw)
    assert isinstance(pair, LowRankLinear | LowRankConv2d)
    first, second = pair.part(0), pair.part(1)
    with torch.no_grad():
        first.weight.copy_(right.reshape(first.weight.shape))
        second.weight.copy_(left.reshape(second.weight.shape))
        if isinstance(bias, torch.Tensor) and second.bias is not None:
            second.bias.copy_(bias.detach())
    pair.train(layer.training)
    return pair


def _write_rank(
    module: nn.Module, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> None:
    """Make `module` compute its rank-`rank` truncation in place, shapes unchanged (mask mode):
    a dense layer's weight becomes U_r S_r Vh_r; a pair's factors keep their width, the columns
    and rows past `rank` zero."""
    left, right = low_rank_factors(u, s, vh, rank)
    with torch.no_grad():
        if isinstance(module, LowRankLinear | LowRankConv2d):
            first, second = weight_of(module.part(0)), weight_of(module.part(1))
            a = right.new_zeros(first.shape[0], right.shape[1])
            a[:rank] = right
            b = left.new_zeros(left.shape[0], second.shape[1])
            b[:, :rank] = left
            first.copy_(a.reshape(first.shape).to(first.dtype))
            second.copy_(b.reshape(second.shape).to(second.dtype))
        else:
            w = weight_of(module)
            w.copy_((left @ right).reshape(w.shape).to(w.dtype))


def _skip_reason(name: str, m: nn.Module, parents: Mapping[str, nn.Module]) -> str | None:
    """Why a Linear/Conv2d cannot be factorised here (None: it can)."""
    parent = parents.get(name)
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its out_proj weight directly"
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        return f"grouped convolution (groups={m.groups}) does not split into k x k + 1 x 1"
    return None


@register_granularity
class LowRankPlan(Plan):
    """Truncated-SVD factorisation of Linear and Conv2d layers (see the module docstring)."""

    name = "lowrank"
    label = "Low rank (truncated SVD)"
    help = (
        "each Linear/Conv2d becomes two thinner layers through a rank-r bottleneck (truncated "
        "SVD); lowrank: the ratio removes that share of each layer's rank; lowrank-energy: "
        "that share of its energy (squared singular values)"
    )
    example = "lowrank (or lowrank-energy)"
    score_kind = "weights"
    structured = True
    unit_word = "layer"
    # The search prunes from sensitivity curves through `prune_` without this plan's
    # factorisation state: choose the rank ratio on the slider (its preview shows the cost).
    no_budget_search = (
        "a budget search covers pruning (unstructured, channel, head or block), not low-rank "
        "factorisation: set the rank ratio (--ratio, or the Prune page's slider, whose preview "
        "shows the MACs and parameters it leaves)"
    )

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        self.model = model
        self.mode = MODES[config.granularity]
        self.notes = []
        ignored = resolve_ignore(model, config.ignore)
        parents: dict[str, nn.Module] = {}
        for n, m in model.named_modules():
            for c, _ in m.named_children():
                parents[f"{n}.{c}" if n else c] = m
        self._layers: dict[str, _Layer] = {}
        for n, m in model.named_modules():
            if isinstance(parents.get(n), LOW_RANK_LAYERS):
                continue  # one half of a pair: the pair is the unit
            pair = isinstance(m, LowRankLinear | LowRankConv2d)
            if not (pair or is_weight_layer(m)):
                continue
            names = [n, *(f"{n}.{c}" for c, _ in m.named_children())]
            if any(matches_pattern(x, p) for x in names for p in ignored):
                continue
            why = None if pair else _skip_reason(n, m, parents)
            # A pair factorises again (a lower rank, an iterative schedule's next step).
            head, tail = (
                (m.part(0), m.part(1)) if isinstance(m, LowRankLinear | LowRankConv2d) else (m, m)
            )
            rows, cols = int(weight_of(tail).shape[0]), int(weight_of(head)[0].numel())
            rank = min(rows, cols, int(getattr(m, "rank", rows))) if pair else min(rows, cols)
            # A pair's factors are dense; a layer's own zeros (an earlier run) raise the bar.
            held = None if pair else int(torch.count_nonzero(weight_of(m)))
            b = break_even_rank(rows, cols, held) if rows and cols else 0
            if why is None and (rank < 2 or b < 1):
                why = (
                    f"already at rank {rank}"
                    if pair
                    else f"a {rows} x {cols} weight gets no smaller at any rank"
                )
            if why:
                self.notes.append(f"{n} skipped: {why}")
                continue
            self._layers[n] = _Layer(m, rows, cols, rank, b)
        if not self._layers:
            raise UserError("no layer to factorise (every Conv2d/Linear is ignored or skipped)")
        self.units = [Unit(n, lay.rank) for n, lay in self._layers.items()]
        share = {
            n: 1.0 - min(lay.break_even, lay.rank) / lay.rank for n, lay in self._layers.items()
        }
        lo, hi = min(share, key=share.__getitem__), max(share, key=share.__getitem__)
        if lo == hi:
            least = f"{share[lo]:.0%} of the rank ({lo})"
        elif f"{share[lo]:.0%}" == f"{share[hi]:.0%}":
            least = f"{share[lo]:.0%} of the rank in every layer"
        else:
            least = f"{share[lo]:.0%} of the rank ({lo}) to {share[hi]:.0%} ({hi})"
        self.notes.append(
            "a layer is factorised only below its break-even rank (r x (in + out) < its "
            "non-zero weights, in x out when dense); "
            f"above it, it stays dense: that takes removing at least {least}"
        )

    # -- the registry's questions ------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> str | None:
        return text if text in MODES else None

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(MODES)

    @classmethod
    def wording(cls, granularity: str) -> Wording:
        """The controls in low-rank terms: scores are singular values (the only criterion it
        takes, `magnitude`, is a component's singular value); `lowrank`'s scopes are one
        threshold on normalised singular values or the same share of each layer's rank;
        `lowrank-energy` is a per-layer rule on energy, so its scope does not apply."""
        energy = MODES.get(granularity) == "energy"
        preview = (
            "Low-rank preview: each factorised layer's weight is replaced by its rank-r "
            "approximation, in the same shape and with no zeros; Apply splits it into the two "
            "thinner layers."
        )
        criterion_help = (
            "Each layer's weight matrix is split by its SVD into rank-one components; a "
            "component's size is its singular value, and the smallest go first (the closest "
            "lower-rank matrix, Eckart and Young 1936). Data-free; no other criterion applies."
        )
        dense_note = (
            "A layer is factorised only when the kept rank makes it smaller "
            "(r x (in + out) < in x out); short of that it stays dense."
        )
        if energy:
            return Wording(
                criterion="Singular values (energy kept)",
                criterion_help=criterion_help,
                scopes={"global": "one threshold (not used)", "layer": "per layer (always)"},
                scope_help=(
                    "Each layer keeps the smallest rank that holds at least 1 minus the share "
                    "of its energy (the sum of its squared singular values): a rule per layer, "
                    "so the scope changes nothing."
                ),
                scope_applies=False,
                ratio="Share of energy to remove",
                zeros=False,
                preview_note=preview,
                ratio_help=(
                    "The share of each layer's energy (sum of squared singular values) "
                    "dropped; the rank kept is the smallest that holds the rest. The classifier "
                    "(last layer) is kept dense. " + dense_note
                ),
            )
        return Wording(
            criterion="Singular values",
            criterion_help=criterion_help,
            scopes={
                "global": "global threshold on normalised singular values",
                "layer": "same share of rank per layer",
            },
            scope_help=(
                "Global: one threshold across layers on each layer's singular values divided "
                "by their norm (S_i / ||S||), so a layer whose singular values fall off fast "
                "loses more of its rank, and the share is of all layers' rank together. Per "
                "layer: every layer loses that share of its rank. Per-layer ratios set below "
                "win in both cases."
            ),
            ratio="Share of rank to remove",
            zeros=False,
            preview_note=preview,
            ratio_help=(
                "The share of the rank (singular values) removed from the factorised layers. "
                "The classifier (last layer) is kept dense. " + dense_note
            ),
        )

    @classmethod
    def supports(cls, criterion: Criterion | type[Criterion]) -> bool:
        # A rank-one component's magnitude (Frobenius norm) is its singular value: no other
        # criterion scores components.
        return criterion.name == "magnitude"

    # -- scoring ---------------------------------------------------------------------------------

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        if scores is not None:
            raise UserError("low rank scores components by their singular values, not given scores")
        self._svd: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for u in self.units:
            module = self._layers[u.name].module
            for _, p in module.named_parameters():
                check_finite(u.name, p)
            self._svd[u.name] = _svd(module)
            s = self._svd[u.name][1]
            norm = float(s.norm())
            u.scores = (s / norm if norm > 0 else torch.zeros_like(s)).float()

    # -- selecting -----------------------------------------------------------------------------

    def _energy_removed(self, name: str, ratio: float) -> int:
        """Components removed so that at most `ratio` of the layer's energy goes."""
        s2 = self._svd[name][1].double() ** 2
        total = float(s2.sum())
        if total <= 0:
            return s2.numel()
        # tail[i]: share of energy in components i.. (tail[R] = 0).
        tail = torch.cat([s2.flip(0).cumsum(0).flip(0), s2.new_zeros(1)]) / total
        keep = int(torch.nonzero(tail <= ratio + 1e-12)[0])
        return s2.numel() - keep

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        caps = {u.name: layer_cap(u.size, max_layer_ratio) for u in self.units}
        take: dict[str, int] = {}
        pool: list[Unit] = []
        for u in self.units:
            r = overrides.get(u.name, ratio)
            if self.mode == "energy":
                take[u.name] = self._energy_removed(u.name, r)
            elif scope == "layer" or u.name in overrides:
                take[u.name] = math.floor(r * u.size + 1e-9)
            else:
                pool.append(u)
        if pool:
            take.update(self._global_take(pool, ratio, caps))
        out: dict[str, Any] = {}
        for u in self.units:
            k = min(take[u.name], caps[u.name])
            if u.size - k > self._layers[u.name].break_even:
                k = 0  # no smaller when factorised: the layer stays dense
            out[u.name] = list(range(u.size - k, u.size))
        return out

    def _global_take(
        self, pool: list[Unit], ratio: float, caps: Mapping[str, int]
    ) -> dict[str, int]:
        """Per unit, how many of its smallest normalised singular values one global threshold
        removes so that `ratio` of the pool's components go (each unit within its cap)."""
        k = math.floor(ratio * sum(u.size for u in pool) + 1e-9)
        # Only each unit's removable tail competes (its cap); within a unit the scores
        # descend, so the smallest ones taken are always a tail.
        tails = [u.scores[u.size - caps[u.name] :] for u in pool]
        owner = torch.cat([torch.full((len(t),), i) for i, t in enumerate(tails)])
        order = torch.cat(tails).argsort(stable=True)[:k]
        counts = torch.bincount(owner[order], minlength=len(pool))
        return {u.name: int(c) for u, c in zip(pool, counts, strict=True)}

    def kept_share(self, selection: Mapping[str, Any]) -> dict[str, float]:
        """Per factorised layer, the share of its weights, and of its MACs, that a selection
        leaves: rank * (out + in) / (out * in). (The preview holds rank-r weights in dense
        shapes, so counting its non-zero weights says nothing; this is what the factorised
        model will count.) A layer left as it is is not listed: its own zeros (an earlier run's)
        count, as in the factorised model."""
        out: dict[str, float] = {}
        for u in self.units:
            k = len(selection.get(u.name, ()))
            if k:
                lay = self._layers[u.name]
                out[u.name] = (u.size - k) * (lay.rows + lay.cols) / lay.params
        return out

    # -- masks and applying ----------------------------------------------------------------------

    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        """No weight becomes zero: with `apply=True` each selected weight of `self.model` becomes
        its rank-r approximation (the preview). Returns no masks."""
        if apply:
            for name, removed in selection.items():
                if removed:
                    self._approximate(self._layers[name].module, name, len(removed))
        return {}

    def _approximate(self, module: nn.Module, name: str, k: int) -> None:
        _write_rank(module, *self._svd[name], self._layers[name].rank - k)

    def apply(self, model: nn.Module, selection: Mapping[str, Any], *, physical: bool) -> Applied:
        mods = dict(model.named_modules())
        own = model is self.model
        per: dict[str, float] = {}
        removed: dict[str, list[int]] = {}
        before = after = 0
        counted = counted_weights(model)
        for u in self.units:
            k = len(selection.get(u.name, ()))
            lay = self._layers[u.name]
            dense = lay.params
            before += dense
            per[u.name] = k / u.size
            if not k:
                after += dense
                continue
            removed[u.name] = list(selection[u.name])
            module = mods.get(u.name)
            if module is None or not (
                is_weight_layer(module) or isinstance(module, LOW_RANK_LAYERS)
            ):
                raise UserError(
                    f"layer '{u.name}' is not a Linear/Conv2d of the model to factorise"
                )
            rank = u.size - k
            after += rank * (lay.rows + lay.cols)
            svd = self._svd[u.name] if own else _svd(module)
            if physical:
                set_submodule(model, u.name, _pair(module, *low_rank_factors(*svd, rank)))
            else:
                _write_rank(module, *svd, rank)
        # One definition of sparsity (`terms.SPARSITY_MEANS`): factorised, the model's zeros and
        # the weights it no longer has, so an earlier run's zeros count too; approximated in
        # place, the weights the factors would save. Per layer, the share of its rank removed.
        if physical:
            sparsity = measured_model_sparsity(model, counted)
        else:
            # The rank-r weights hold no zeros: the layers left alone keep theirs.
            mods = dict(model.named_modules())
            zeros = sum(
                k - int(torch.count_nonzero(weight_of(mods[n])))
                for n, k in counted.items()
                if n not in removed
            )
            sparsity = (zeros + before - after) / max(sum(counted.values()), 1)
        return Applied(masks={}, layer_sparsity=per, sparsity=sparsity, removed=removed)
