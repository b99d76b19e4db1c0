"""Criteria: how much each weight, output channel or residual block matters (higher = keep).

A registry in the style of timm's `@register_model` and Torch-Pruning's importance objects: each
criterion is one frozen dataclass beside its `@register_criterion`, carrying its own options
(its dataclass fields, such as magnitude's `norm`), a `label`, a one-line idea (`summary`) and
the paper it comes from (`reference`). Variants are options of one class, not copies. A
criterion scores

- weights (`weight_scores`: same shape as each weight; unstructured and N:M plans),
- output channels (`channel_scores`: one value per conv filter / linear neuron; channel and
  head plans), and/or
- residual blocks (`block_scores`: one value per block; the block plan).

A granularity plan (`pruning_core.plans`) asks for the kind of score it needs; a criterion that
does not implement it does not support that granularity, and `declines` lists granularities a
criterion can score but should not (APoZ assumes a ReLU after each output).

Data-driven criteria read the calibration split (`data.batches("calib", ...)`) through forward
hooks: statistics of each layer's input (per input feature / channel) and of its *effective*
output (after the BatchNorm that directly follows it, when there is one, because that is what
the next ReLU sees). A layer whose module is never called on its own (the `out_proj` of
`nn.MultiheadAttention`) has no statistics and is scored by magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.calibration import (
    DEFAULT_CALIB_BATCHES,
    LayerStats,
    calibration_batches,
    calibration_stats,
)
from pruning_core.errors import UserError
from pruning_core.layers import (
    WEIGHT_LAYERS,
    check_finite,
    eval_mode,
    following_batchnorm,
    main_logits,
    weight_of,
)
from pruning_core.spec import InputSpec
from pruning_core.validate import number

__all__ = [
    "CRITERIA",
    "FPGM",
    "LAMP",
    "SNIP",
    "APoZ",
    "Activation",
    "BNScale",
    "Criterion",
    "Magnitude",
    "Random",
    "Taylor",
    "Wanda",
    "check_finite",
    "get_criterion",
    "register_criterion",
    "score_kinds",
]


def _weight_modules(layers: Mapping[str, nn.Module]) -> None:
    for name, m in layers.items():
        if not isinstance(m, WEIGHT_LAYERS):
            raise UserError(
                f"layer '{name}' is a {type(m).__name__}; criteria score Conv2d and Linear"
            )


def _out_mean(s: LayerStats, total: torch.Tensor | None) -> torch.Tensor:
    assert total is not None
    return (total / max(s.out_count, 1)).float()


def _per_input(stat: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """Broadcast a per-input-feature/channel statistic to the weight's shape.

    Conv weights (O, C/groups, kh, kw) take their input channel's value at every kernel
    position (padding borders are ignored: a close, cheap approximation).
    """
    w = weight_of(m)
    stat = stat.to(torch.float32)
    if isinstance(m, nn.Conv2d):
        g = m.groups
        o, cg = w.shape[0], w.shape[1]
        per = stat.view(g, 1, cg).expand(g, o // g, cg).reshape(o, cg)
        return per[:, :, None, None].expand_as(w)
    return stat.view(1, -1).expand_as(w)


def _weights(m: nn.Module) -> torch.Tensor:
    return weight_of(m).detach().float().cpu()


# --------------------------------------------------------------------------------------------
# the registry

CRITERIA: dict[str, type[Criterion]] = {}
_C = TypeVar("_C", bound="type[Criterion]")


def register_criterion(cls: _C) -> _C:
    """Class decorator: add a criterion to the registry under its `name`.

    The class must say what it is (`name`, `label`, `summary`, `reference`) and implement at
    least one of `weight_scores`, `channel_scores`, `block_scores`; it appears at once in
    `list_methods()`, the command line's choices, recipes and the app's select boxes.

    Raises:
        ValueError: A missing description, no scoring method, or a name already taken by
            another class.
    """
    for attr in ("name", "label", "summary", "reference"):
        if not getattr(cls, attr, ""):
            raise ValueError(f"criterion {cls.__name__} needs a {attr}")
    if not score_kinds(cls):
        raise ValueError(f"criterion {cls.__name__} implements no *_scores method")
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"criterion {cls.__name__} must be a frozen dataclass")
    old = CRITERIA.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"criterion name '{cls.name}' is taken by {old.__qualname__}")
    CRITERIA[cls.name] = cls
    return cls


def score_kinds(cls: type[Criterion] | Criterion) -> tuple[str, ...]:
    """Which scores a criterion computes: among `weights`, `channels`, `blocks`."""
    klass = cls if isinstance(cls, type) else type(cls)
    return tuple(
        kind
        for kind, method in (
            ("weights", "weight_scores"),
            ("channels", "channel_scores"),
            ("blocks", "block_scores"),
        )
        if getattr(klass, method) is not getattr(Criterion, method)
    )


def get_criterion(name: str | Criterion, **options: Any) -> Criterion:
    """The criterion registered as `name`, built with the options it takes.

    Args:
        name: A registry name, or a criterion object (returned as it is).
        **options: Settings offered to it (`norm`, `seed`, `calib_batches`, ...); each criterion
            takes those that are its own fields and ignores the others, so one set of pruning
            settings can build any criterion.

    Raises:
        UserError: Unknown name, or an option value out of range.
    """
    if isinstance(name, Criterion):
        return name
    cls = CRITERIA.get(name)
    if cls is None:
        raise UserError(f"unknown criterion '{name}' (choose from {', '.join(CRITERIA)})")
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in own and v is not None})


@dataclass(frozen=True)
class Criterion:
    """Base class: a criterion scores weights, output channels and/or blocks (higher = keep).

    Subclasses are frozen dataclasses (their fields are their options) registered with
    `@register_criterion`, and override the `*_scores` methods they support.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    # Compare weights within each output row rather than across the layer (Wanda).
    row_wise: ClassVar[bool] = False
    # Granularities whose elements this criterion could score but should not.
    declines: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        """The criterion's settings (dataclass fields; `metadata["help"]` says what each does)."""
        return list(dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., option: value, ...}` (JSON-ready)."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def refusal(
        self,
        model: nn.Module,
        spec: InputSpec | None = None,
        granularity: str | None = None,
        blocks: Sequence[str] | None = None,
    ) -> str | None:
        """Why this criterion cannot score `model` (at `granularity`, a plan name such as
        "channel" or "block"; None: at any), in one line, or None (it can).

        Read-only, and cheap enough to call once per model and granularity: menus call it to
        offer only the criteria that fit (as `Plan.refusal` does for granularities); scoring
        still raises `UserError` itself. Call it through `Plan.criterion_refusals`, which gives
        what the plan found (`blocks`: the removable blocks, for block pruning).
        """
        return None

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        """One score per weight: {layer name: float32 CPU tensor shaped like its weight}."""
        raise UserError(f"criterion '{self.name}' does not score individual weights")

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        """One score per output channel (Conv2d filter, Linear neuron): {name: (out,) tensor}."""
        raise UserError(f"criterion '{self.name}' does not score channels")

    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        """One score per residual block (module paths in `blocks`): a float32 (len(blocks),)."""
        raise UserError(f"criterion '{self.name}' does not score residual blocks")

    def _need_data(self, data: Any, spec: InputSpec | None) -> InputSpec:
        if data is None or spec is None:
            raise UserError(f"criterion '{self.name}' needs calibration data: give a dataset")
        return spec


def _calib_field() -> Any:
    return field(
        default=DEFAULT_CALIB_BATCHES, metadata={"help": "calibration batches of 128 images"}
    )


@dataclass(frozen=True)
class Calibrated(Criterion):
    """Base of the criteria that read statistics of a few calibration batches."""

    needs_data: ClassVar[bool] = True
    calib_batches: int = _calib_field()

    def __post_init__(self) -> None:
        number(self.calib_batches, "calib_batches", integer=True, lo=1, hi=10_000)

    def _stats(
        self, model: nn.Module, layers: Mapping[str, nn.Module], data: Any, spec: InputSpec | None
    ) -> dict[str, LayerStats]:
        return calibration_stats(
            model, layers, data, self._need_data(data, spec), batches=self.calib_batches
        )


@dataclass(frozen=True)
class InputWeighted(Calibrated):
    """Per weight: |w_ij| times a statistic of its input feature j (`input_factor`)."""

    def input_factor(self, s: LayerStats) -> torch.Tensor:
        """One factor per input feature of the layer, from its calibration statistics."""
        raise NotImplementedError

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        st = self._stats(model, layers, data, spec)
        # Layers never called on their own (no statistics) fall back to magnitude.
        return {
            n: _weights(m).abs() * _per_input(self.input_factor(st[n]), m)
            if n in st
            else _weights(m).abs()
            for n, m in layers.items()
        }


@contextmanager
def _weight_grads_on(model: nn.Module, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Let `weights` take gradients for a scoring pass, in eval mode (BatchNorm running
    statistics must not move), then put back every parameter's `requires_grad` and `.grad`
    (the app's model copies are frozen, and scoring must leave a model as it found it)."""
    params = list(model.parameters())
    saved = [(p.grad, p.requires_grad) for p in params]
    try:
        with eval_mode(model):
            for w in weights:
                w.requires_grad_(True)
            yield
    finally:
        for p, (old, rg) in zip(params, saved, strict=True):
            p.grad = old
            p.requires_grad_(rg)


def _loss_grads(
    model: nn.Module,
    weights: Sequence[torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    total: int | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """d(cross-entropy of one batch)/d(each weight) (None for a weight the loss does not reach);
    the batch's mean loss, or its summed loss over `total` images when given. Call inside
    `_weight_grads_on`."""
    device = next(model.parameters()).device
    with torch.enable_grad():
        out = main_logits(model(xb.to(device))).float()
        if total is None:
            loss = F.cross_entropy(out, yb.to(device))
        else:
            loss = F.cross_entropy(out, yb.to(device), reduction="sum") / total
        return torch.autograd.grad(loss, list(weights), allow_unused=True)


def _block_modules(model: nn.Module, blocks: Sequence[str]) -> list[nn.Module]:
    mods = dict(model.named_modules())
    return [mods[b] for b in blocks]


@register_criterion
@dataclass(frozen=True)
class Magnitude(Criterion):
    """|w|^p per weight; the filter's L1/L2 norm per channel; the mean |w|^p of a block's layers
    per block (small weights matter least).

    Reference: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
    Networks"; filters: Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """

    name = "magnitude"
    label = "Magnitude (L1/L2)"
    summary = "smallest |weight| first (L1, or L2 with norm=2)"
    reference = "Han et al. 2015; Li et al. 2017 (filters)"
    norm: int = field(default=1, metadata={"help": "1 (L1) or 2 (L2)"})

    def __post_init__(self) -> None:
        if self.norm not in (1, 2):
            raise UserError(f"norm must be 1 or 2, got {self.norm}")

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return {n: _weights(m).abs().pow(self.norm) for n, m in layers.items()}

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return {n: _weights(m).flatten(1).norm(p=self.norm, dim=1) for n, m in layers.items()}

    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        out = []
        for block in _block_modules(model, blocks):
            ws = [
                _weights(m).abs().pow(self.norm).flatten()
                for m in block.modules()
                if isinstance(m, WEIGHT_LAYERS)
            ]
            out.append(float(torch.cat(ws).mean()) if ws else 0.0)
        return torch.tensor(out, dtype=torch.float32)


@register_criterion
@dataclass(frozen=True)
class Random(Criterion):
    """Uniform random scores from a seeded generator: the baseline every criterion must beat.

    Reference: Liu et al. 2019, "Rethinking the Value of Network Pruning" (random baselines).
    """

    name = "random"
    label = "Random (baseline)"
    summary = "random scores (seeded): the baseline"
    reference = "Liu et al. 2019 (ICLR), random pruning baseline"
    seed: int = field(default=0, metadata={"help": "seed of the random scores"})

    def _rand(self, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return {n: torch.rand(s, generator=g) for n, s in shapes.items()}

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return self._rand({n: weight_of(m).shape for n, m in layers.items()})

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return self._rand({n: weight_of(m).shape[:1] for n, m in layers.items()})

    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        return torch.rand(len(blocks), generator=torch.Generator().manual_seed(self.seed))


@register_criterion
@dataclass(frozen=True)
class Activation(InputWeighted):
    """Weights: |w_ij| * mean|x_j|, the expected size of the weight's contribution; channels:
    mean |output activation| (after the following BatchNorm, if any); blocks: the relative size
    of the residual branch's output, ||f(x) - x|| / ||x||.

    A pure per-input score would prune whole input columns and ignore the weights; the product
    keeps the criterion unstructured while letting input scale decide between equal weights.
    Reference: Polyak & Wolf 2015, "Channel-level acceleration of deep face representations"
    (mean activation); Molchanov et al. 2017 (ICLR) compare it as a baseline.
    """

    name = "activation"
    label = "Activation (mean |output|)"
    summary = "weight times mean |input| (weights); mean |output| (channels)"
    reference = "Polyak & Wolf 2015; Molchanov et al. 2017 (ICLR)"

    def input_factor(self, s: LayerStats) -> torch.Tensor:
        return s.in_abs / s.in_count

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        st = self._stats(model, layers, data, spec)
        return {
            n: _out_mean(st[n], st[n].out_abs) if n in st else _weights(m).flatten(1).abs().mean(1)
            for n, m in layers.items()
        }

    @torch.no_grad()
    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        batches = calibration_batches(
            data, self._need_data(data, spec), self.calib_batches, what="block criteria"
        )
        acc = torch.zeros(len(blocks), dtype=torch.float64)
        handles = []
        for i, block in enumerate(_block_modules(model, blocks)):

            def hook(_m: nn.Module, inp: tuple[Any, ...], o: Any, i: int = i) -> None:
                x = inp[0].float()
                acc[i] += float((o.float() - x).norm() / x.norm().clamp_min(1e-12))

            handles.append(block.register_forward_hook(hook))
        device = next(model.parameters()).device
        try:
            with eval_mode(model):
                for xb, _ in batches:
                    model(xb.to(device))
        finally:
            for h in handles:
                h.remove()
        return (acc / len(batches)).float()


@register_criterion
@dataclass(frozen=True)
class APoZ(InputWeighted):
    """Channels: 1 - APoZ, the share of calibration outputs that survive the ReLU; weights:
    |w_ij| * (1 - APoZ of input j), since weights fed by mostly-zero inputs rarely act.

    Outputs are read after the following BatchNorm when there is one, and values <= 0 count as
    zeros (a ReLU is assumed to follow; with GELU/no activation APoZ says little, so attention
    heads are declined).
    Reference: Hu et al. 2016, "Network Trimming: A Data-Driven Neuron Pruning Approach".
    """

    name = "apoz"
    label = "APoZ (zero activations)"
    summary = "share of zero activations (Average Percentage of Zeros)"
    reference = "Hu et al. 2016, Network Trimming"
    declines = ("head",)

    def input_factor(self, s: LayerStats) -> torch.Tensor:
        return 1.0 - s.in_zero / s.in_count

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        st = self._stats(model, layers, data, spec)
        return {
            n: 1.0 - _out_mean(st[n], st[n].out_nonpos)
            if n in st
            else torch.ones(weight_of(m).shape[0])
            for n, m in layers.items()
        }


@register_criterion
@dataclass(frozen=True)
class Wanda(InputWeighted):
    """|w_ij| * ||x_j||_2 over calibration inputs, compared within each output row.

    Conv inputs use the input channel's norm at every kernel position. For channels, the
    row sums of the weight scores (how much each neuron moves its outputs).
    Reference: Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
    Models" (Wanda).
    """

    name = "wanda"
    label = "Wanda (|w| x input norm)"
    summary = "|weight| times input activation norm, compared per output"
    reference = "Sun et al. 2023 (Wanda)"
    row_wise = True

    def input_factor(self, s: LayerStats) -> torch.Tensor:
        return s.in_sq.sqrt()

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        return {
            n: s.flatten(1).sum(1) for n, s in self.weight_scores(model, layers, data, spec).items()
        }


@register_criterion
@dataclass(frozen=True)
class Taylor(Calibrated):
    """|w * dL/dw| accumulated over calibration batches (first-order estimate of the loss change
    when the weight is removed); channels: (sum over the filter of w * dL/dw)^2, accumulated;
    blocks: the loss increase on calibration data when the block is bypassed.

    Reference: Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning" (CVPR).
    """

    name = "taylor"
    label = "Taylor (weight x gradient)"
    summary = "weight times gradient (first-order Taylor estimate of the loss change)"
    reference = "Molchanov et al. 2019 (CVPR)"

    def _accumulate(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any,
        spec: InputSpec,
        channel: bool,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        batches = calibration_batches(data, spec, self.calib_batches, what="taylor")
        weights = [weight_of(m) for m in layers.values()]
        acc: dict[str, torch.Tensor] = {}
        with _weight_grads_on(model, weights):
            for xb, yb in batches:
                grads = _loss_grads(model, weights, xb, yb)
                for n, w, g in zip(layers, weights, grads, strict=True):
                    wg = w.detach().float() * (g.float() if g is not None else 0.0)
                    v = wg.flatten(1).sum(1).square() if channel else wg.abs()
                    acc[n] = acc[n] + v.cpu() if n in acc else v.cpu()
        return {n: (v / len(batches)).float() for n, v in acc.items()}

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        return self._accumulate(model, layers, data, self._need_data(data, spec), channel=False)

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        return self._accumulate(model, layers, data, self._need_data(data, spec), channel=True)

    @torch.no_grad()
    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        batches = calibration_batches(
            data, self._need_data(data, spec), self.calib_batches, what="block criteria"
        )
        device = next(model.parameters()).device

        def loss() -> float:
            total = sum(
                float(F.cross_entropy(main_logits(model(xb.to(device))).float(), yb.to(device)))
                for xb, yb in batches
            )
            return total / len(batches)

        out = []
        with eval_mode(model):
            base = loss()
            for block in _block_modules(model, blocks):
                h = block.register_forward_hook(lambda _m, inp, _o: inp[0])
                try:
                    out.append(loss() - base)
                finally:
                    h.remove()
        return torch.tensor(out, dtype=torch.float32)


_NO_BN = "bn-scale needs BatchNorm layers after the layers it prunes; this model has none"


def _no_block_bn(block: str) -> str:
    return f"bn-scale block pruning needs BatchNorm in every block; '{block}' has none"


def _has_gamma(m: Any) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    """A BatchNorm layer with a learned scale (gamma) to read."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None


@register_criterion
@dataclass(frozen=True)
class BNScale(Criterion):
    """|gamma| of the BatchNorm that follows each conv: channels BN scales down matter least;
    blocks: the mean |gamma| of the BatchNorm that closes the residual branch.

    Layers without a following BatchNorm get no score (left out of the result). Train with the
    `slim` regulariser first to push gammas towards zero.
    Reference: Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming" (ICCV).
    """

    name = "bn-scale"
    label = "BN scale (network slimming)"
    summary = "|BatchNorm gamma| of each channel (network slimming)"
    reference = "Liu et al. 2017 (ICCV), Network Slimming"

    # Attention projections are not followed by BatchNorm: there is no gamma per head.
    declines = ("head",)

    def refusal(
        self,
        model: nn.Module,
        spec: InputSpec | None = None,
        granularity: str | None = None,
        blocks: Sequence[str] | None = None,
    ) -> str | None:
        """No BatchNorm with a learned scale at all; for blocks, a block without one."""
        if not any(_has_gamma(m) for m in model.modules()):
            return _NO_BN
        if granularity == "block" and blocks:
            mods = dict(model.named_modules())
            bare = [b for b in blocks if not any(_has_gamma(m) for m in mods[b].modules())]
            if bare:
                return _no_block_bn(bare[0])
        return None

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        bn_of = following_batchnorm(model, spec)
        mods = dict(model.named_modules())
        out = {}
        for n in layers:
            bn = mods.get(bn_of.get(n, ""))
            if _has_gamma(bn):
                out[n] = bn.weight.detach().float().abs().cpu()
        if not out:
            raise UserError(_NO_BN)
        return out

    def block_scores(
        self,
        model: nn.Module,
        blocks: Sequence[str],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> torch.Tensor:
        out = []
        for name, block in zip(blocks, _block_modules(model, blocks), strict=True):
            bns = [m for m in block.modules() if _has_gamma(m)]
            if not bns:
                raise UserError(_no_block_bn(name))
            out.append(float(bns[-1].weight.detach().abs().mean()))
        return torch.tensor(out, dtype=torch.float32)


def _lamp(sq: torch.Tensor) -> torch.Tensor:
    """LAMP scores of squared magnitudes: each value over the sum of the values >= it.

    Ties get one score (the sum includes every equal value), so equal weights are not ranked
    by an arbitrary sort order. An all-zero tensor scores 0 everywhere.

    Args:
        sq: Squared magnitudes, any shape (float32).

    Returns:
        Float32 scores shaped like `sq`, in [0, 1]; the largest value scores 1 when unique.
    """
    flat = sq.flatten().float()
    asc = flat.sort().values
    # Suffix sums in float64: the denominators of the small values add up the whole layer.
    suffix = torch.cat(
        [asc.double().flip(0).cumsum(0).flip(0), asc.new_zeros(1, dtype=torch.float64)]
    )
    below = torch.searchsorted(asc, flat, out_int32=flat.numel() < 2**31)
    denom = suffix[below]
    score = torch.where(denom > 0, flat.double() / denom.clamp_min(1e-300), 0.0)
    return score.float().reshape(sq.shape)


@register_criterion
@dataclass(frozen=True)
class LAMP(Criterion):
    """Layer-adaptive magnitude: w_u^2 / sum_{v >= u} w_v^2 per weight, with the layer's
    weights sorted by magnitude (the sum runs over the weights at least as large as u).

    Within a layer the order is magnitude's; across layers the scores are comparable (the
    largest weight of every layer scores 1, and a layer's scores depend on its weights'
    distribution, not their scale), so a global threshold gives each layer its own sparsity
    and never empties a layer because its weights are small. Channels: the same formula over
    the filters' squared L2 norms (one value per output channel), so a global channel
    threshold is layer-adaptive too. Attention heads are declined: a head is many rows of a
    shared qkv layer, and a sum of row scores is not the LAMP score of the head.

    Reference: Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning"
    (ICLR).
    """

    name = "lamp"
    label = "LAMP (layer-adaptive magnitude)"
    summary = "w^2 over the sum of the layer's larger w^2: magnitude made comparable across layers"
    reference = "Lee et al. 2021 (ICLR), LAMP"
    declines = ("head",)

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return {n: _lamp(_weights(m).square()) for n, m in layers.items()}

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        return {n: _lamp(_weights(m).flatten(1).square().sum(1)) for n, m in layers.items()}


@register_criterion
@dataclass(frozen=True)
class FPGM(Criterion):
    """Per output channel: the sum of Euclidean distances from its filter to the other filters
    of its layer; filters near the layer's geometric median score lowest and go first.

    The idea: a filter close to the geometric median is well represented by the others, so
    removing it loses little, whatever its norm (the paper's case against norm criteria:
    small norms need not mean redundant filters). Filters are the flattened rows of the
    weight (Conv2d: C/groups*kh*kw values; Linear: in_features). Heads score the sum over the head's rows of the shared qkv layer.
    Distances are not normalised across layers: the paper prunes each layer by the same
    ratio (the `layer` scope); with a global threshold, layers with large or many filters are
    spared.

    Reference: He et al. 2019, "Filter Pruning via Geometric Median for Deep Convolutional
    Neural Networks Acceleration" (CVPR).
    """

    name = "fpgm"
    label = "FPGM (geometric median)"
    summary = "filters near their layer's geometric median first (sum of distances to the others)"
    reference = "He et al. 2019 (CVPR), FPGM"

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        out = {}
        for n, m in layers.items():
            f = _weights(m).flatten(1).double()
            # float64: cdist's matmul form loses the small distances of near-equal filters
            d = torch.cdist(f, f)
            d.fill_diagonal_(0.0)
            out[n] = d.sum(1).float()
        return out


@register_criterion
@dataclass(frozen=True)
class SNIP(Calibrated):
    """Connection sensitivity |w * dL/dw|, with dL/dw the gradient of the mean cross-entropy
    over the calibration images, normalised to sum to 1 over the scored layers; channels: the
    sum over the filter (heads: over the head's qkv rows).

    |w * dL/dw| is |dL/dc| for a mask c = 1 on each connection: how much the loss moves when
    the connection is scaled. Unlike Taylor, which averages |w * g| per batch, the gradient is
    taken once over all calibration images, as SNIP does on its single batch.
    Reference: Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity" (ICLR).
    """

    name = "snip"
    label = "SNIP (connection sensitivity)"
    summary = "|weight x loss gradient| over the calibration images (connection sensitivity)"
    reference = "Lee et al. 2019 (ICLR), SNIP"

    def _saliency(
        self, model: nn.Module, layers: Mapping[str, nn.Module], data: Any, spec: InputSpec
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        batches = calibration_batches(data, spec, self.calib_batches, what="snip")
        total = sum(len(yb) for _, yb in batches)
        weights = [weight_of(m) for m in layers.values()]
        grads: list[torch.Tensor] = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        with _weight_grads_on(model, weights):
            for xb, yb in batches:
                for acc, g in zip(
                    grads, _loss_grads(model, weights, xb, yb, total=total), strict=True
                ):
                    if g is not None:
                        acc += g.float()
        sal = {
            n: (w.detach().float() * g).abs().cpu()
            for n, w, g in zip(layers, weights, grads, strict=True)
        }
        norm = float(sum(float(s.double().sum()) for s in sal.values()))
        return {n: s / norm for n, s in sal.items()} if norm > 0 else sal

    def weight_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        return self._saliency(model, layers, data, self._need_data(data, spec))

    def channel_scores(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any = None,
        spec: InputSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        scores = self._saliency(model, layers, data, self._need_data(data, spec))
        return {n: s.flatten(1).sum(1) for n, s in scores.items()}
