"""Importance criteria: how much each weight (or output channel) matters.

One small class per criterion, in the spirit of Torch-Pruning's `Importance`: each one scores
the weights of a set of layers (`weight_scores`, same shape as each weight, used by
unstructured and N:M pruning) and/or their output channels (`channel_scores`, one value per
output channel / neuron, used by structured pruning). Higher means more important: pruning
removes the lowest scores first.

Data-driven criteria read the calibration split (`data.batches("calib", ...)`) through forward
hooks: statistics of each layer's input (per input feature / channel) and of its *effective*
output (after the BatchNorm that directly follows it, when there is one, because that is what
the next ReLU sees). A layer whose module is never called on its own (the `out_proj` of
`nn.MultiheadAttention`) has no statistics and is scored by magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.errors import UserError
from pruning_core.models.spec import InputSpec

__all__ = [
    "IMPORTANCES",
    "APoZImportance",
    "ActivationImportance",
    "BNScaleImportance",
    "Importance",
    "LayerStats",
    "MagnitudeImportance",
    "RandomImportance",
    "TaylorImportance",
    "WandaImportance",
    "calibration_stats",
    "check_finite",
    "following_batchnorm",
    "get_importance",
]

CALIB_BATCH_SIZE = 128


@dataclass
class LayerStats:
    """Calibration statistics of one layer (sums; divide by the counts for means).

    Attributes:
        in_abs: Sum of |x| per input feature (Linear) or input channel (Conv2d).
        in_sq: Sum of x^2 per input feature / channel.
        in_zero: Count of exact zeros per input feature / channel.
        in_count: Values summed per input feature / channel.
        out_abs: Sum of |y| per output channel of the effective output.
        out_nonpos: Count of y <= 0 per output channel (zero after a ReLU).
        out_count: Values summed per output channel.
    """

    in_abs: torch.Tensor
    in_sq: torch.Tensor
    in_zero: torch.Tensor
    in_count: int = 0
    out_abs: torch.Tensor | None = None
    out_nonpos: torch.Tensor | None = None
    out_count: int = 0
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)


def _weight_modules(layers: Mapping[str, nn.Module]) -> None:
    for name, m in layers.items():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            raise UserError(
                f"layer '{name}' is a {type(m).__name__}; criteria score Conv2d and Linear"
            )


def following_batchnorm(model: nn.Module, spec: InputSpec | None = None) -> dict[str, str]:
    """Map each Conv2d/Linear to the BatchNorm that directly consumes its output, if any.

    With a spec, one forward pass on zeros traces which tensor each BatchNorm reads (exact);
    without one, a BatchNorm is paired with the closest preceding Conv2d/Linear of matching
    width in registration order (right for the usual conv -> bn definitions).

    Returns:
        {layer name: batchnorm name}.
    """
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not bns:
        return {}
    if spec is None:
        out: dict[str, str] = {}
        last: tuple[str, nn.Module] | None = None
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                last = (n, m)
            elif n in bns and last is not None:
                width = getattr(last[1], "out_channels", getattr(last[1], "out_features", None))
                if width == bns[n].num_features and last[0] not in out:
                    out[last[0]] = n
                last = None
        return out
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []

    def on_out(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            if isinstance(o, torch.Tensor):
                produced[id(o)] = (name, o)  # keep o alive so its id is not reused

        return hook

    def on_bn(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, i: tuple[Any, ...]) -> None:
            if i and isinstance(i[0], torch.Tensor) and id(i[0]) in produced:
                pairs.setdefault(produced[id(i[0])][0], name)

        return hook

    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(on_out(n)))
        elif n in bns:
            handles.append(m.register_forward_pre_hook(on_bn(n)))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(
                torch.zeros(1, spec.channels, spec.size, spec.size, device=p.device, dtype=p.dtype)
            )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pairs


def _in_view(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """Input as (values, features): features last for Linear, channels for Conv2d."""
    if isinstance(m, nn.Conv2d):
        return x.transpose(0, 1).reshape(x.shape[1], -1).T
    return x.reshape(-1, x.shape[-1])


def _out_view(y: torch.Tensor, conv: bool) -> torch.Tensor:
    if conv and y.dim() == 4:
        return y.transpose(0, 1).reshape(y.shape[1], -1).T
    return y.reshape(-1, y.shape[-1])


@torch.no_grad()
def calibration_stats(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    data: Any,
    spec: InputSpec,
    *,
    batches: int = 4,
    batch_size: int = CALIB_BATCH_SIZE,
) -> dict[str, LayerStats]:
    """Run the calibration split through `model` and gather per-layer activation statistics.

    Args:
        model: The model (evaluated in eval mode on its current device; mode restored).
        layers: {name: Conv2d/Linear} to observe.
        data: A DataBundle.
        spec: The model's input spec.
        batches: Calibration batches to use.
        batch_size: Examples per batch.

    Returns:
        {layer name: LayerStats}.
    """
    _weight_modules(layers)
    bn_of = following_batchnorm(model, spec)
    mods = dict(model.named_modules())
    stats: dict[str, LayerStats] = {}
    handles = []

    def on_in(name: str, m: nn.Module) -> Callable[..., None]:
        def hook(_m: nn.Module, i: tuple[Any, ...]) -> None:
            x = _in_view(i[0].detach().float(), m)
            s = stats.get(name)
            if s is None:
                z = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
                s = stats[name] = LayerStats(z.clone(), z.clone(), z.clone())
            s.in_abs += x.abs().sum(0).double()
            s.in_sq += x.square().sum(0).double()
            s.in_zero += (x == 0).sum(0).double()
            s.in_count += x.shape[0]

        return hook

    def on_out(name: str, conv: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            y = _out_view(o.detach().float(), conv)
            s = stats[name]
            if s.out_abs is None or s.out_nonpos is None:
                s.out_abs = torch.zeros(y.shape[1], dtype=torch.float64, device=y.device)
                s.out_nonpos = s.out_abs.clone()
            s.out_abs += y.abs().sum(0).double()
            s.out_nonpos += (y <= 0).sum(0).double()
            s.out_count += y.shape[0]

        return hook

    for name, m in layers.items():
        handles.append(m.register_forward_pre_hook(on_in(name, m)))
        target = mods[bn_of[name]] if name in bn_of else m
        handles.append(target.register_forward_hook(on_out(name, isinstance(m, nn.Conv2d))))
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        for xb, _ in data.batches("calib", spec, batch_size, limit=batches * batch_size):
            model(xb.to(device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise UserError(
            "the calibration split is empty: data-driven criteria need calibration images"
        )
    # Layers whose module is never called (nn.MultiheadAttention uses out_proj.weight directly)
    # have no statistics; the criteria fall back to plain magnitude for them.
    return {n: _to_cpu(s) for n, s in stats.items() if s.out_abs is not None}


def _to_cpu(s: LayerStats) -> LayerStats:
    s.in_abs, s.in_sq, s.in_zero = s.in_abs.cpu(), s.in_sq.cpu(), s.in_zero.cpu()
    if s.out_abs is not None and s.out_nonpos is not None:
        s.out_abs, s.out_nonpos = s.out_abs.cpu(), s.out_nonpos.cpu()
    return s


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


def weight_of(m: nn.Module) -> torch.Tensor:
    """The `weight` tensor of a Conv2d/Linear (typed for mypy)."""
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def check_finite(name: str, values: torch.Tensor, what: str = "weights") -> None:
    """Refuse to prune a layer whose weights (or importance scores) hold NaN or inf.

    NaN compares false with everything, so a NaN layer makes every threshold meaningless (and
    used to read as fully pruned); the policy is to refuse it by name, never to clean it.

    Args:
        name: The layer, for the message.
        values: Its weights or scores (any floating dtype and device).
        what: `weights` or `scores`.

    Raises:
        UserError: Naming the layer and counting the NaN/inf values.
    """
    if not values.dtype.is_floating_point:
        return
    bad = int((~torch.isfinite(values.detach())).sum())
    if bad:
        raise UserError(
            f"layer {name!r} holds {bad} NaN/inf {what} (of {values.numel()}); refusing to prune "
            "it (reload or retrain the model)"
        )


def _weights(m: nn.Module) -> torch.Tensor:
    return weight_of(m).detach().float().cpu()


class Importance:
    """Base class: a criterion scores weights and/or output channels (higher = keep).

    Class attributes describe the criterion for the method registry and the UI.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "N:M", "channel", "head", "block")
    # Compare weights within each output row rather than across the layer (Wanda).
    row_wise: ClassVar[bool] = False

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

    def _need_data(self, data: Any, spec: InputSpec | None) -> InputSpec:
        if data is None or spec is None:
            raise UserError(f"method '{self.name}' needs calibration data: give a dataset")
        return spec


class CalibratedImportance(Importance):
    """Base of the criteria that read statistics of a few calibration batches."""

    needs_data: ClassVar[bool] = True

    def __init__(self, calib_batches: int = 4) -> None:
        self.calib_batches = calib_batches

    def _stats(
        self, model: nn.Module, layers: Mapping[str, nn.Module], data: Any, spec: InputSpec | None
    ) -> dict[str, LayerStats]:
        return calibration_stats(
            model, layers, data, self._need_data(data, spec), batches=self.calib_batches
        )


class InputWeightedImportance(CalibratedImportance):
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


class MagnitudeImportance(Importance):
    """|w|^p per weight; the filter's L1/L2 norm per channel (small weights matter least).

    Reference: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
    Networks"; filters: Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """

    name = "magnitude"
    summary = "smallest |weight| first (L1, or L2 with norm=2)"
    reference = "Han et al. 2015; Li et al. 2017 (filters)"

    def __init__(self, norm: int = 1) -> None:
        if norm not in (1, 2):
            raise UserError(f"norm must be 1 or 2, got {norm}")
        self.norm = norm

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


class RandomImportance(Importance):
    """Uniform random scores from a seeded generator: the baseline every criterion must beat.

    Reference: Liu et al. 2019, "Rethinking the Value of Network Pruning" (random baselines).
    """

    name = "random"
    summary = "random scores (seeded): the baseline"
    reference = "Liu et al. 2019 (ICLR), random pruning baseline"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

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


class ActivationImportance(InputWeightedImportance):
    """Weights: |w_ij| * mean|x_j|, the expected size of the weight's contribution; channels:
    mean |output activation| (after the following BatchNorm, if any).

    A pure per-input score would prune whole input columns and ignore the weights; the product
    keeps the criterion unstructured while letting input scale decide between equal weights.
    Reference: Polyak & Wolf 2015, "Channel-level acceleration of deep face representations"
    (mean activation); Molchanov et al. 2017 (ICLR) compare it as a baseline.
    """

    name = "activation"
    summary = "weight times mean |input| (weights); mean |output| (channels)"
    reference = "Polyak & Wolf 2015; Molchanov et al. 2017 (ICLR)"
    granularities = ("unstructured", "N:M", "channel", "head", "block")

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


class APoZImportance(InputWeightedImportance):
    """Channels: 1 - APoZ, the share of calibration outputs that survive the ReLU; weights:
    |w_ij| * (1 - APoZ of input j), since weights fed by mostly-zero inputs rarely act.

    Outputs are read after the following BatchNorm when there is one, and values <= 0 count as
    zeros (a ReLU is assumed to follow; with GELU/no activation APoZ says little).
    Reference: Hu et al. 2016, "Network Trimming: A Data-Driven Neuron Pruning Approach".
    """

    name = "apoz"
    summary = "share of zero activations (Average Percentage of Zeros)"
    reference = "Hu et al. 2016, Network Trimming"
    granularities = ("unstructured", "N:M", "channel")

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


class WandaImportance(InputWeightedImportance):
    """|w_ij| * ||x_j||_2 over calibration inputs, compared within each output row.

    Conv inputs use the input channel's norm at every kernel position. For channels, the
    row sums of the weight scores (how much each neuron moves its outputs).
    Reference: Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
    Models" (Wanda).
    """

    name = "wanda"
    summary = "|weight| times input activation norm, compared per output"
    reference = "Sun et al. 2023 (Wanda)"
    granularities = ("unstructured", "N:M", "channel", "head")
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


class TaylorImportance(CalibratedImportance):
    """|w * dL/dw| accumulated over calibration batches (first-order estimate of the loss change
    when the weight is removed); channels: (sum over the filter of w * dL/dw)^2, accumulated.

    Reference: Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning" (CVPR).
    """

    name = "taylor"
    summary = "weight times gradient (first-order Taylor estimate of the loss change)"
    reference = "Molchanov et al. 2019 (CVPR)"
    granularities = ("unstructured", "N:M", "channel", "head", "block")

    def _accumulate(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        data: Any,
        spec: InputSpec,
        channel: bool,
    ) -> dict[str, torch.Tensor]:
        _weight_modules(layers)
        params = list(model.parameters())
        saved = [(p.grad, p.requires_grad) for p in params]
        acc: dict[str, torch.Tensor] = {}
        was_training = model.training
        device = params[0].device
        seen = 0
        try:
            model.eval()  # BatchNorm running statistics must not move
            for p in params:
                p.grad = None
            weights = [weight_of(m) for m in layers.values()]
            for w in weights:
                w.requires_grad_(True)
            for xb, yb in data.batches(
                "calib", spec, CALIB_BATCH_SIZE, limit=self.calib_batches * CALIB_BATCH_SIZE
            ):
                with torch.enable_grad():
                    loss = F.cross_entropy(model(xb.to(device)).float(), yb.to(device))
                    grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for n, w, g in zip(layers, weights, grads, strict=True):
                    wg = w.detach().float() * (g.float() if g is not None else 0.0)
                    v = wg.flatten(1).sum(1).square() if channel else wg.abs()
                    acc[n] = acc[n] + v.cpu() if n in acc else v.cpu()
                seen += 1
        finally:
            for p, (old, rg) in zip(params, saved, strict=True):
                p.grad = old
                p.requires_grad_(rg)
            model.train(was_training)
        if not seen:
            raise UserError("the calibration split is empty: taylor needs calibration images")
        return {n: (v / seen).float() for n, v in acc.items()}

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


class BNScaleImportance(Importance):
    """|gamma| of the BatchNorm that follows each conv: channels BN scales down matter least.

    Channel granularity only; layers without a following BatchNorm get no score (left out of
    the result). Train with the `slim` regulariser first to push gammas towards zero.
    Reference: Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming" (ICCV).
    """

    name = "bn-scale"
    summary = "|BatchNorm gamma| of each channel (network slimming)"
    reference = "Liu et al. 2017 (ICCV), Network Slimming"
    granularities = ("channel", "block")

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
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.weight is not None:
                out[n] = bn.weight.detach().float().abs().cpu()
        return out


IMPORTANCES: dict[str, type[Importance]] = {
    c.name: c
    for c in (
        MagnitudeImportance,
        RandomImportance,
        ActivationImportance,
        APoZImportance,
        WandaImportance,
        TaylorImportance,
        BNScaleImportance,
    )
}


def get_importance(
    name: str, *, norm: int = 1, seed: int = 0, calib_batches: int = 4
) -> Importance:
    """Build the criterion registered as `name` with the settings it uses.

    Raises:
        UserError: Unknown name.
    """
    cls = IMPORTANCES.get(name)
    if cls is None:
        raise UserError(f"unknown method '{name}' (choose from {', '.join(IMPORTANCES)})")
    if cls is MagnitudeImportance:
        return MagnitudeImportance(norm)
    if cls is RandomImportance:
        return RandomImportance(seed)
    if cls.needs_data:
        if calib_batches < 1 or not math.isfinite(calib_batches):
            raise UserError(f"calib_batches must be >= 1, got {calib_batches}")
        return cls(calib_batches)  # type: ignore[call-arg]
    return cls()
