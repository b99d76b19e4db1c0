"""Run-time (input-dependent) dynamic channel pruning: per image, compute only some channels.

Static channel pruning removes the same channels for every input. Dynamic pruning keeps the
network whole and decides, for each image, which output channels of each convolution to
compute: feature boosting and suppression (FBS; Gao et al. 2019, "Dynamic Channel Pruning:
Feature Boosting and Suppression", ICLR) predicts each channel's saliency from the layer's
pooled input and computes the top-k; runtime neural pruning (RNP; Lin et al. 2017, NeurIPS)
learns the decision with reinforcement learning. Here:

- `magnitude` (the default, data-free, nothing trained): before a gated conv runs, the
  previous layer's activation magnitude, pooled per input channel (`m_i = mean_hw |x_i|`), is
  pushed through the absolute filter weights: `s_j = scale_j * sum_i ||W_ji||_1 * m_i`, an
  upper bound of output channel j's mean magnitude (triangle inequality), times the following
  BatchNorm's `|gamma_j| / sqrt(var_j + eps)` where one follows. The top k channels by `s_j`
  are computed; the others output 0 (after the BatchNorm, as FBS's gate multiplies the
  channel's output). This is FBS's saliency predictor with its learned matrix replaced by the
  layer's own |W|: it costs `Cin x H x W + Cout x Cin / groups` MACs per image, counted.
- `learned` (FBS's own gate, trained with the fine-tune loop: `train_gates`): per gated conv a
  small predictor `g(x) = relu(gain * (W_g . m) + b)` from the pooled input `m` (Cin) to Cout
  saliencies, initialised from `magnitude` (W_g = the filters' |W| summed over the kernel, gain
  = the BatchNorm scale, b = 0: before training it selects exactly what `magnitude` selects),
  then trained on the task loss plus FBS's L1 on the saliencies. It costs
  `Cin x H x W + Cin x Cout` MACs per image (FBS's dense predictor), counted.
- `output` (for comparison and teaching): the gate reads the layer's own output (after its
  BatchNorm) and keeps the top k by mean |a|. The selection sees the real activations, but the
  layer must be computed in full before it is known, so the zeroed channels save MACs only in
  the NEXT layer's input.

Why the predicted gate is the default: it decides before the layer runs, so a kernel that
skips gated channels saves the gated layer's own output channels and the next layer's inputs;
on a residual network the input-side saving alone cannot reach the MACs of static 50% channel
pruning (a block's second conv feeds an addition with the shortcut, whose output stays dense).

Effective MACs count what a kernel that skips gated channels would do, per image: for each
convolution, `H_out x W_out x kh x kw x sum over groups (computed outputs x active inputs)`,
where an input channel is inactive only when a gate zeroed it upstream (found by a probe: the
producer's channels are zeroed and the consumer's input watched, so a channel that an addition
with a shortcut or another branch fills again is never counted as skipped); plus the gates'
own cost, plus every other layer's dense MACs (Linear layers are not gated). With top-k gates
the count of channels per layer is fixed, so every image costs the same MACs; what depends on
the image is which channels it uses. Only `nn.Conv2d` layers are gated, each must run once per
forward pass, and the classifier is never gated.

Speed: these are masks on dense kernels. A gated model run by PyTorch does all the dense work
and more (the gates), so it is not faster; the MACs saved are those of a kernel that skips
channels (as FBS reports), not a measured time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.calibration import DEFAULT_CALIB_BATCHES, recalibrate_batchnorm
from pruning_core.errors import UserError, shown
from pruning_core.evaluate import evaluate
from pruning_core.layers import (
    classifier_name,
    example_input,
    following_batchnorm,
    in_model_order,
    main_logits,
    matches_pattern,
    weight_of,
)
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs
from pruning_core.train import Progress, TrainConfig, TrainResult, fit
from pruning_core.validate import number

__all__ = [
    "FBS_L1",
    "GATES",
    "GATE_LR",
    "DynamicConfig",
    "DynamicModel",
    "DynamicReport",
    "Gate",
    "ImageUsage",
    "LearnedGate",
    "MagnitudeGate",
    "OutputGate",
    "StaticBaseline",
    "equal_macs_config",
    "gateable_layers",
    "get_gate",
    "image_usage",
    "measure_dynamic",
    "register_gate",
    "saliency_l1",
    "static_channel_baseline",
    "train_gates",
]

# ----------------------------------------------------------------------------- gates registry


class Gate:
    """How a gated layer ranks its output channels for one batch.

    Attributes (class level):
        name: Registry name (`DynamicConfig.gate`).
        label: Short name for menus.
        summary: One line.
        reference: Where the method comes from.
        predicts: True when the gate decides from the layer's input, before it runs (skipped
            channels save the layer's own MACs); False when it reads the layer's own output.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    predicts: ClassVar[bool] = True

    def setup(
        self, convs: Mapping[str, nn.Conv2d], scale: Mapping[str, torch.Tensor | None]
    ) -> None:
        """Prepare per-layer state for the gated layers `convs` (name -> conv), with the
        dense model's BatchNorm `scale` of each; called once by `DynamicModel`. The data-free
        gates keep none."""

    def scores(
        self, conv: nn.Conv2d, scale: torch.Tensor | None, x: torch.Tensor, layer: str = ""
    ) -> torch.Tensor:
        """Channel scores `(B, Cout)`: from the conv's input `x` `(B, Cin, H, W)` when
        `predicts`, else from the gated output `(B, Cout, H, W)`. `scale` `(Cout,)` is the
        following BatchNorm's |gamma| / sqrt(var + eps) in the dense model (None without
        one); `layer` the gated layer's name."""
        raise NotImplementedError

    def multiplier(self, scores: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """What the gated output `(B, Cout, H, W)` is multiplied by, per image and channel
        `(B, Cout)`: the top-k `mask` (1 kept, 0 skipped) for the data-free gates."""
        return mask.float()

    def overhead(self, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
        """MACs the gate itself costs per image (pooling and prediction)."""
        raise NotImplementedError


GATES: dict[str, type[Gate]] = {}


def register_gate(cls: type[Gate]) -> type[Gate]:
    """Class decorator: add a gate to `GATES` under its `name`."""
    GATES[cls.name] = cls
    return cls


def get_gate(name: str) -> Gate:
    """A gate by registry name.

    Raises:
        UserError: Unknown name.
    """
    if name not in GATES:
        raise UserError(f"unknown gate '{shown(name)}' (choose from {', '.join(GATES)})")
    return GATES[name]()


def _bn_scale(bn: nn.Module | None) -> torch.Tensor | None:
    """|gamma| / sqrt(running_var + eps) of a BatchNorm: how much it scales each channel."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        return None
    var = bn.running_var.detach().clone()
    gamma = bn.weight.detach().abs() if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


@register_gate
class MagnitudeGate(Gate):
    """Data-free predicted gate: pooled input magnitude through |W| (FBS's predictor with the
    layer's own absolute weights in place of a learned matrix; Gao et al. 2019)."""

    name = "magnitude"
    label = "Magnitude (data-free, predicted)"
    summary = "pooled |input| per channel through the filters' |W|: top-k before the layer runs"
    reference = "Gao et al. 2019 (FBS), Lin et al. 2017 (RNP)"
    predicts = True

    def scores(
        self, conv: nn.Conv2d, scale: torch.Tensor | None, x: torch.Tensor, layer: str = ""
    ) -> torch.Tensor:
        m = x.detach().abs().mean((2, 3))  # (B, Cin)
        w = conv.weight.detach().abs().sum((2, 3))  # (Cout, Cin / groups)
        g = conv.groups
        b, cin = m.shape
        cout = w.shape[0]
        # Per group: (B, g, Cin/g) x (g, Cin/g, Cout/g) -> (B, g, Cout/g)
        s = torch.einsum(
            "bgi,goi->bgo", m.view(b, g, cin // g), w.view(g, cout // g, cin // g)
        ).reshape(b, cout)
        return s * scale.to(s) if scale is not None else s

    def overhead(self, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
        return int(x[0].numel() + conv.weight[:, :, 0, 0].numel())


@register_gate
class OutputGate(Gate):
    """Gate from the layer's own output (after its BatchNorm): top-k by mean |a| over space.

    The selection sees the real activations, but the whole layer is computed first: only the
    next layer's inputs are saved.
    """

    name = "output"
    label = "Own output (computed, then gated)"
    summary = "mean |activation| of the layer's own output: top-k after the layer ran"
    reference = "Gao et al. 2019 (FBS), Lin et al. 2017 (RNP)"
    predicts = False

    def scores(
        self, conv: nn.Conv2d, scale: torch.Tensor | None, x: torch.Tensor, layer: str = ""
    ) -> torch.Tensor:
        return x.detach().abs().mean((2, 3))

    def overhead(self, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
        return int(out[0].numel())


class _Predictor(nn.Module):
    """FBS's saliency predictor of one gated conv: `relu(gain * (W . m) + b)`, `(B, Cout)`."""

    def __init__(self, weight: torch.Tensor, gain: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (Cout, Cin)
        self.gain = nn.Parameter(gain)  # (Cout,)
        self.bias = nn.Parameter(torch.zeros_like(gain))  # (Cout,)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        b, cin = m.shape
        cout = self.weight.shape[0]
        # The same contraction as MagnitudeGate's (one group): equal scores to the last bit
        # before training, so the selection is equal too, ties included.
        s = torch.einsum("bgi,goi->bgo", m.view(b, 1, cin), self.weight.view(1, cout, cin))
        return torch.relu(s.reshape(b, cout) * self.gain + self.bias)


@register_gate
class LearnedGate(Gate, nn.Module):
    """FBS's learned saliency predictor (Gao et al. 2019), one per gated conv, trained by
    `train_gates` with the fine-tune loop.

    Per gated conv, `g(x) = relu(gain * (W_g . m) + b)` with `m = mean_hw |x|` `(B, Cin)`,
    `W_g` `(Cout, Cin)`, `gain` and `b` `(Cout,)`: FBS's `relu(W m + b)` with its matrix written
    as `diag(gain) W_g`, the same functions. It starts as the `magnitude` gate (`W_g` = the
    filters' |W| summed over the kernel, block-diagonal for grouped convs; `gain` = the
    following BatchNorm's scale; `b` = 0), so an untrained learned gate selects what
    `magnitude` selects. The top k channels by `g(x)` are computed per image.

    Kept channels are kept as they are, not boosted: FBS multiplies each kept channel by its
    saliency and trains the network with it; here the network is usually frozen (only the
    gates train, `train_gates(train_network=False)`), and its layers and BatchNorms never saw
    outputs rescaled by saliencies of arbitrary size (the magnitude start gives values of
    order 1 to 100), so boosting would change the model before any training. Instead the
    multiplier is the top-k mask in value and `g(x)` in gradient (straight-through; Bengio et
    al. 2013): `mask + g - g.detach()`. The predictor then gets FBS's gradient at a multiplier
    of 1, `sum_hw dL/dy_j * y_j`, for every channel: for a kept channel the first-order loss
    change of scaling it (Molchanov et al. 2017's Taylor importance), for a skipped one that of
    adding it back; a step raises the saliency of channels whose presence lowers the loss. The
    predictor's input is detached: no gradient flows from a gate into the activations it reads.
    """

    name = "learned"
    label = "Learned (FBS predictor, trained)"
    summary = "a small predictor from the pooled input, trained with the fine-tune loop: top-k"
    reference = "Gao et al. 2019 (FBS)"
    predicts = True

    def __init__(self) -> None:
        super().__init__()
        self.predictors = nn.ModuleList()
        self.index: dict[str, int] = {}

    def setup(
        self, convs: Mapping[str, nn.Conv2d], scale: Mapping[str, torch.Tensor | None]
    ) -> None:
        for name, conv in convs.items():
            w = conv.weight.detach().abs().sum((2, 3))  # (Cout, Cin / groups)
            g, cout, cin = conv.groups, conv.out_channels, conv.in_channels
            full = torch.zeros(cout, cin, dtype=w.dtype)
            for i in range(g):  # block-diagonal: group i's outputs read group i's inputs
                rows, cols = (
                    slice(i * cout // g, (i + 1) * cout // g),
                    slice(i * cin // g, (i + 1) * cin // g),
                )
                full[rows, cols] = w[rows]
            s = scale.get(name)
            gain = s.clone().to(w.dtype) if s is not None else torch.ones(cout, dtype=w.dtype)
            self.index[name] = len(self.predictors)
            self.predictors.append(_Predictor(full, gain))

    def scores(
        self, conv: nn.Conv2d, scale: torch.Tensor | None, x: torch.Tensor, layer: str = ""
    ) -> torch.Tensor:
        # The predictor reads the activations but sends no gradient into them: the network
        # learns from the task loss alone. With that path open, shapes-resnet at keep 0.375
        # (gates and network trained one epoch) stayed at chance, 0.10; detached, 0.37.
        return self.predictors[self.index[layer]](x.detach().abs().mean((2, 3)))

    def multiplier(self, scores: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        assert scores is not None
        s = scores.float()
        return mask.float() + (s - s.detach())

    def overhead(self, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
        return int(x[0].numel() + conv.in_channels * conv.out_channels)


# ----------------------------------------------------------------------------- config


def _keep(value: Any, what: str) -> float:
    return float(number(value, what, lo=0, hi=1, lo_open=True))


@dataclass(frozen=True)
class DynamicConfig:
    """What to gate and how much to keep.

    Attributes:
        keep: Share of output channels each gated layer computes per image, in (0, 1]; a layer
            of C channels keeps k = ceil(keep x C) (at least 1). 1.0 gates nothing.
        gate: A `GATES` name: `magnitude` (data-free, predicted before the layer runs) or
            `output` (from the layer's own output).
        layers: Names or glob patterns of the Conv2d layers to gate (`layers.matches_pattern`);
            None gates every Conv2d but the classifier.
        layer_keep: Per-layer overrides, (layer name, keep) pairs.

    Raises:
        UserError: keep outside (0, 1], an unknown gate, malformed overrides.
    """

    keep: float = 0.5
    gate: str = "magnitude"
    layers: tuple[str, ...] | None = None
    layer_keep: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _keep(self.keep, "keep"))
        get_gate(self.gate)
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(s, str) for s in self.layers):
                raise UserError("layers must be a list of layer names or patterns")
            object.__setattr__(self, "layers", tuple(self.layers))
        items = self.layer_keep.items() if isinstance(self.layer_keep, Mapping) else self.layer_keep
        pairs = []
        for item in items:
            if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)):
                raise UserError(
                    f"layer_keep entries must be (layer name, keep) pairs, got {item!r}"
                )
            pairs.append((item[0], _keep(item[1], f"keep of layer '{shown(item[0])}'")))
        object.__setattr__(self, "layer_keep", tuple(pairs))

    def channels_kept(self, layer: str, channels: int) -> int:
        """k for a layer of `channels` output channels: ceil(keep x C), at least 1."""
        keep = dict(self.layer_keep).get(layer, self.keep)
        # The small tolerance keeps an exact k/C from rounding up to k + 1.
        return max(1, min(channels, math.ceil(keep * channels - 1e-9)))

    def replace(self, **changes: Any) -> DynamicConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def gateable_layers(model: nn.Module, patterns: Iterable[str] | None = None) -> list[str]:
    """The Conv2d layers a config gates: those matching `patterns` (None: every Conv2d but
    the classifier), in model order.

    Raises:
        UserError: A pattern that matches no Conv2d, or a model without Conv2d layers.
    """
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    convs = list(widths)
    if patterns is None:
        clf = classifier_name(model)
        out = [n for n in convs if n != clf and widths[n] > 1]
        if not out:
            raise UserError(
                "dynamic gating needs convolutions: this model has no Conv2d layer to gate"
            )
        return out
    pats = list(patterns)
    for p in pats:
        if not any(matches_pattern(n, p) for n in convs):
            raise UserError(f"layers entry '{shown(p)}' matches no Conv2d layer of the model")
    return [n for n in convs if any(matches_pattern(n, p) for p in pats)]


# ----------------------------------------------------------------------------- the gated model


@dataclass
class _Record:
    """What one forward pass of a DynamicModel did, per image."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (B, C) bool kept
    macs: dict[str, torch.Tensor] = field(default_factory=dict)  # conv -> (B,) effective MACs
    overhead: torch.Tensor | None = None  # (B,) gate MACs
    called: set[str] = field(default_factory=set)
    # layer -> (B, C) scores of a predicting gate (a learned gate's carry gradients)
    saliency: dict[str, torch.Tensor] = field(default_factory=dict)


class DynamicModel(nn.Module):
    """A private copy of a model with per-image top-k channel gates on its convolutions.

    Calling it returns the copy's output; `last` then holds, for that batch, which channels
    each image kept per gated layer and its effective MACs (see the module docstring for what
    is counted). The model passed in is never changed (deep-copied, parameters frozen).

    Args:
        model: The dense model (not modified).
        config: What to gate.
        spec: The model's input spec (probing which gates feed which convolutions).

    Raises:
        UserError: No Conv2d to gate, a pattern that matches none, a conv that runs more than
            once per forward pass.
    """

    def __init__(self, model: nn.Module, config: DynamicConfig, spec: InputSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.gate: Gate = get_gate(config.gate)  # a learned gate registers as a submodule
        # Whether `train()` puts the network in training mode too (`train_gates`); frozen, it
        # stays in eval mode (running BatchNorm statistics) while the gates train.
        self.train_network = False
        self.net = copy.deepcopy(model).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        names = gateable_layers(self.net, config.layers)
        mods = dict(self.net.named_modules())
        self.convs: dict[str, nn.Conv2d] = {
            n: m for n, m in mods.items() if isinstance(m, nn.Conv2d)
        }
        bn_of = following_batchnorm(self.net, spec)
        self.names = names
        self.k: dict[str, int] = {}
        self.set_keep(config)
        self.gate_point: dict[str, str] = {n: bn_of.get(n, n) for n in names}
        # The gate reads the dense model's BatchNorm scales, fixed: re-estimating the
        # statistics under the gate (`recalibrate`) then does not move the gate itself.
        self.scale: dict[str, torch.Tensor | None] = {
            n: (_bn_scale(mods[bn_of[n]]) if n in bn_of else None) for n in names
        }
        self.gate.setup({n: self.convs[n] for n in names}, self.scale)
        self.dense_total = count_macs(self.net, spec)
        self.conv_dense = self._conv_dense_macs()
        self.other_macs = self.dense_total - sum(self.conv_dense.values())
        # consumer conv -> [(producer gated layer, consumer input channel indices)]
        self.feeds: dict[str, list[tuple[str, torch.Tensor]]] = self._probe_feeds()
        self.last = _Record()
        self._handles: list[Any] = []
        self._install()

    def set_keep(self, config: DynamicConfig) -> None:
        """Take another config's keep shares (same gate and layers) without rebuilding.

        Raises:
            UserError: A config with another gate or other layers.
        """
        if (config.gate, config.layers) != (self.config.gate, self.config.layers):
            raise UserError("set_keep takes the keep shares only: build a new model for a gate")
        self.config = config
        self.k = {}
        for n in self.names:
            c = self.convs[n].out_channels
            k = config.channels_kept(n, c)
            # A layer that keeps every channel is not gated at all (no gate cost either).
            if k < c:
                self.k[n] = k

    # -- set-up ---------------------------------------------------------------------------

    @torch.no_grad()
    def _conv_dense_macs(self) -> dict[str, int]:
        macs: dict[str, int] = {}

        def hook(name: str) -> Callable[..., None]:
            def fn(m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                if name in macs:
                    raise UserError(
                        f"layer '{shown(name)}' runs more than once per forward pass: dynamic "
                        "gating needs each convolution to run once"
                    )
                w = weight_of(m)
                macs[name] = int(out.shape[2] * out.shape[3] * w[0].numel() * w.shape[0])

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self.convs.items()]
        try:
            self.net(example_input(self.net, self.spec, 1))
        finally:
            for h in handles:
                h.remove()
        return macs

    @torch.no_grad()
    def _probe_feeds(self) -> dict[str, list[tuple[str, torch.Tensor]]]:
        """Which gated channels reach which conv inputs, unchanged.

        For each gated layer, its gated output is zeroed (all channels, then the odd ones) on
        random images and every conv input watched: channels that become exactly zero (and
        were not zero before) are fed by that gate alone, in order. A channel filled again by a
        shortcut or another branch never qualifies, so no saving is counted for it.
        """
        x = example_input(self.net, self.spec, 4, random=True, seed=0)
        zero_in: dict[str, torch.Tensor] = {}
        forced: dict[str, torch.Tensor] = {}

        def pre(name: str) -> Callable[..., None]:
            def fn(_m: nn.Module, inp: tuple[Any, ...]) -> None:
                zero_in[name] = (inp[0] == 0).all(0).flatten(1).all(1)

            return fn

        def post(name: str) -> Callable[..., Any]:
            def fn(_m: nn.Module, _i: Any, out: torch.Tensor) -> Any:
                if name in forced:
                    return out * forced[name].to(out).view(1, -1, 1, 1)
                return None

            return fn

        handles = [m.register_forward_pre_hook(pre(n)) for n, m in self.convs.items()]
        mods = dict(self.net.named_modules())
        points: dict[str, list[str]] = {}
        for g, p in self.gate_point.items():
            points.setdefault(p, []).append(g)
        handles += [mods[p].register_forward_hook(post(p)) for p in points]
        feeds: dict[str, list[tuple[str, torch.Tensor]]] = {}
        try:
            self.net(x)
            base = dict(zero_in)
            for g, p in self.gate_point.items():
                c = self.convs[g].out_channels
                forced.clear()
                forced[p] = torch.zeros(c, dtype=torch.bool)
                self.net(x)
                all_off = {n: z & ~base[n] for n, z in zero_in.items()}
                odd = torch.ones(c, dtype=torch.bool)
                odd[1::2] = False
                forced[p] = odd
                self.net(x)
                for n, z in all_off.items():
                    idx = z.nonzero().flatten()
                    if n == g or len(idx) != c:
                        continue
                    if torch.equal((zero_in[n] & ~base[n]).nonzero().flatten(), idx[1::2]):
                        feeds.setdefault(n, []).append((g, idx))
        finally:
            for h in handles:
                h.remove()
        return feeds

    def _install(self) -> None:
        mods = dict(self.net.named_modules())
        for n, conv in self.convs.items():
            self._handles.append(conv.register_forward_pre_hook(self._pre(n)))
            self._handles.append(conv.register_forward_hook(self._count(n)))
        for g, p in self.gate_point.items():
            self._handles.append(mods[p].register_forward_hook(self._gate_hook(g)))

    def recalibrate(self, data: Any, batches: int = DEFAULT_CALIB_BATCHES) -> bool:
        """Re-estimate the copy's BatchNorm statistics on calibration images with the gates on,
        as `prune_` does after static structured pruning (adaptive BN, Li et al. 2020): gated
        channels change what the following BatchNorms see. No weight changes.

        Returns:
            True if the model has BatchNorm layers.

        Raises:
            UserError: The calibration split is empty.
        """
        return recalibrate_batchnorm(self, data, self.spec, batches=batches)

    def remove(self) -> None:
        """Take the gates off (the copy then runs dense)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- hooks ------------------------------------------------------------------------------

    def _pre(self, name: str) -> Callable[..., None]:
        def fn(conv: nn.Module, inp: tuple[Any, ...]) -> None:
            rec = self.last
            if name in rec.called:
                raise UserError(
                    f"layer '{shown(name)}' runs more than once per forward pass: dynamic "
                    "gating needs each convolution to run once"
                )
            rec.called.add(name)
            x = inp[0]
            if name in self.k and self.gate.predicts:
                assert isinstance(conv, nn.Conv2d)
                scores = self.gate.scores(conv, self.scale[name], x, name)
                rec.saliency[name] = scores
                rec.masks[name] = self._top_k(scores, name)
            self._inp_active[name] = self._active_inputs(name, x)

        return fn

    def _active_inputs(self, name: str, x: torch.Tensor) -> torch.Tensor:
        active = torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        for producer, idx in self.feeds.get(name, []):
            kept = self.last.masks.get(producer)
            if kept is not None:
                active[:, idx.to(x.device)] = kept
        return active

    def _top_k(self, scores: torch.Tensor, name: str) -> torch.Tensor:
        k = self.k[name]
        idx = scores.detach().topk(k, dim=1).indices
        mask = torch.zeros_like(scores, dtype=torch.bool)
        return mask.scatter_(1, idx, True)

    def _count(self, name: str) -> Callable[..., None]:
        def fn(conv: nn.Module, inp: tuple[Any, ...], out: torch.Tensor) -> None:
            assert isinstance(conv, nn.Conv2d)
            b = out.shape[0]
            g = conv.groups
            computed = (
                self.last.masks[name]
                if name in self.k and self.gate.predicts
                else torch.ones(b, conv.out_channels, dtype=torch.bool, device=out.device)
            )
            active = self._inp_active.pop(name)
            per = out.shape[2] * out.shape[3] * conv.weight.shape[2] * conv.weight.shape[3]
            pairs = computed.view(b, g, -1).sum(-1) * active.view(b, g, -1).sum(-1)
            self.last.macs[name] = (pairs.sum(-1) * per).double().cpu()
            if name in self.k:
                cost = self.gate.overhead(conv, inp[0], out)
                ov = self.last.overhead
                self.last.overhead = (ov if ov is not None else torch.zeros(b).double()) + cost

        return fn

    def _gate_hook(self, name: str) -> Callable[..., Any]:
        def fn(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
            if name not in self.k:
                return None
            if not self.gate.predicts:
                conv = self.convs[name]
                self.last.masks[name] = self._top_k(
                    self.gate.scores(conv, self.scale[name], out), name
                )
            mask = self.last.masks[name]
            factor = self.gate.multiplier(self.last.saliency.get(name), mask).to(out.dtype)
            return out * factor.view(*mask.shape, 1, 1)

        return fn

    def train(self, mode: bool = True) -> DynamicModel:
        """Training mode for the gates; the network follows only when `train_network` is set
        (a frozen network keeps its BatchNorms on their running statistics)."""
        super().train(mode)
        if not self.train_network:
            self.net.eval()
        return self

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Any:
        """The gated copy's output on `x` `(B, C, H, W)`; `last` holds what each image used."""
        self.last = _Record()
        self._inp_active: dict[str, torch.Tensor] = {}
        return self.net(x)

    def effective_macs(self) -> torch.Tensor:
        """Effective MACs per image of the last forward pass, `(B,)` float64."""
        rec = self.last
        total = sum(rec.macs.values())
        assert isinstance(total, torch.Tensor), "no forward pass yet"
        if rec.overhead is not None:
            total = total + rec.overhead
        return total + self.other_macs


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class DynamicReport:
    """What gating did over a split.

    Attributes:
        config: The gating measured.
        accuracy: Top-1 of the gated model on the split.
        n: Images measured.
        dense_macs: MACs per image of the dense model (`stats.count_macs`).
        macs: Effective MACs of each image, `(n,)` (constant for top-k gates).
        layers: One row per gated layer: `layer`, `channels`, `kept` (k), `skipped` (mean
            share of channels skipped per image), `macs_dense` and `macs_effective` (mean per
            image, that conv only, gates not included).
        usage: Layer -> share of images that used each channel, `(C,)`.
    """

    config: DynamicConfig
    accuracy: float
    n: int
    dense_macs: int
    macs: np.ndarray
    layers: pd.DataFrame
    usage: dict[str, np.ndarray]

    @property
    def mean_macs(self) -> float:
        """Average effective MACs per image."""
        return float(self.macs.mean()) if len(self.macs) else float("nan")

    @property
    def skipped(self) -> float:
        """Share of the gated layers' channels skipped, averaged over images and channels."""
        t = self.layers
        return float((t["skipped"] * t["channels"]).sum() / max(int(t["channels"].sum()), 1))


@torch.no_grad()
def measure_dynamic(
    model: nn.Module,
    data: Any,
    spec: InputSpec,
    config: DynamicConfig | DynamicModel,
    *,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 256,
) -> DynamicReport:
    """Accuracy, effective MACs per image and channel use of a gated copy over a split.

    Args:
        model: The dense model (not modified; ignored when `config` is a DynamicModel).
        data: A DataBundle.
        spec: The model's input spec.
        config: The gating, or an already built DynamicModel.
        split: `val` (default), `train` or `calib`.
        limit: Only the first `limit` images.
        batch_size: Images per forward pass.

    Raises:
        UserError: As `DynamicModel`; data that does not fit the model.
    """
    dyn = config if isinstance(config, DynamicModel) else DynamicModel(model, config, spec)
    dyn.eval()
    device = next(dyn.parameters()).device
    macs, hits, n = [], 0, 0
    used = {name: torch.zeros(dyn.convs[name].out_channels) for name in dyn.k}
    conv_macs = dict.fromkeys(dyn.convs, 0.0)
    for xb, yb in data.batches(split, spec, batch_size, limit=limit):
        logits = main_logits(dyn(xb.to(device))).float().cpu()
        hits += int((logits.argmax(1) == yb).sum())
        n += len(yb)
        macs.append(dyn.effective_macs())
        for name, m in dyn.last.masks.items():
            used[name] += m.float().sum(0).cpu()
        for name, v in dyn.last.macs.items():
            conv_macs[name] += float(v.sum())
    rows = []
    for name in in_model_order(dyn.net, dyn.convs):
        c = dyn.convs[name].out_channels
        k = dyn.k.get(name, c)
        rows.append(
            {
                "layer": name,
                "channels": c,
                "kept": k,
                "gated": name in dyn.k,
                "skipped": 1 - k / c,
                "macs_dense": dyn.conv_dense[name],
                "macs_effective": conv_macs[name] / max(n, 1),
            }
        )
    return DynamicReport(
        config=dyn.config,
        accuracy=hits / n if n else float("nan"),
        n=n,
        dense_macs=dyn.dense_total,
        macs=torch.cat(macs).numpy() if macs else np.zeros(0),
        layers=pd.DataFrame(rows),
        usage={name: (u / max(n, 1)).numpy() for name, u in used.items()},
    )


@dataclass(frozen=True)
class ImageUsage:
    """Which channels one image used.

    Attributes:
        masks: Gated layer -> `(C,)` bool, True where the channel was computed.
        macs: Effective MACs of this image.
        dense_macs: MACs of the dense model per image.
        logits: The gated model's logits `(classes,)`.
    """

    masks: dict[str, np.ndarray]
    macs: float
    dense_macs: int
    logits: np.ndarray

    def frame(self) -> pd.DataFrame:
        """One row per gated layer: `layer`, `channels`, `used`, `skipped` (share)."""
        rows = [
            {"layer": n, "channels": len(m), "used": int(m.sum()), "skipped": 1 - m.mean()}
            for n, m in self.masks.items()
        ]
        return pd.DataFrame(rows, columns=["layer", "channels", "used", "skipped"])


@torch.no_grad()
def image_usage(dyn: DynamicModel, image: torch.Tensor) -> ImageUsage:
    """Run one image `(C, H, W)` (adapted to the spec) through a gated model.

    Raises:
        UserError: Not a single image of the model's input shape.
    """
    s = dyn.spec
    if tuple(image.shape) != (s.channels, s.size, s.size):
        raise UserError(
            f"expected one image of shape ({s.channels}, {s.size}, {s.size}), "
            f"got {tuple(image.shape)}"
        )
    dyn.eval()
    device = next(dyn.parameters()).device
    logits = main_logits(dyn(image[None].to(device))).float().cpu()[0]
    masks = {n: dyn.last.masks[n][0].cpu().numpy() for n in in_model_order(dyn.net, dyn.k)}
    return ImageUsage(masks, float(dyn.effective_macs()[0]), dyn.dense_total, logits.numpy())


# ----------------------------------------------------------------------------- equal MACs


@dataclass(frozen=True)
class StaticBaseline:
    """Static channel pruning as `prune_` does it (BatchNorm re-estimated), for comparison.

    Attributes:
        model: The physically pruned copy.
        ratio: The channel ratio.
        macs: Its MACs per image (`stats.count_macs`).
        dense_macs: The dense model's.
        accuracy: Its top-1 on the split (no fine-tune), or None when not measured.
    """

    model: nn.Module
    ratio: float
    macs: int
    dense_macs: int
    accuracy: float | None


def static_channel_baseline(
    model: nn.Module,
    data: Any,
    spec: InputSpec,
    ratio: float = 0.5,
    *,
    split: str | None = "val",
    limit: int | None = None,
) -> StaticBaseline:
    """Channel pruning of a copy at `ratio` (magnitude, global; `prune_` with granularity
    `channel`), its MACs and, unless `split` is None, its accuracy before any fine-tune.

    Raises:
        UserError: The model cannot be channel-pruned.
    """
    from pruning_core.prune import PruneConfig, prune_  # heavy (dependency graph): on use

    pruned = copy.deepcopy(model)
    for p in pruned.parameters():
        p.requires_grad_(False)
    prune_(pruned, PruneConfig(granularity="channel", ratio=ratio), data=data, spec=spec)
    acc = evaluate(pruned, data, spec, split=split, limit=limit).accuracy if split else None
    return StaticBaseline(pruned, ratio, count_macs(pruned, spec), count_macs(model, spec), acc)


@torch.no_grad()
def _macs_of(dyn: DynamicModel, config: DynamicConfig, x: torch.Tensor) -> float:
    dyn.set_keep(config)
    dyn(x)
    return float(dyn.effective_macs().mean())


def equal_macs_config(
    model: nn.Module,
    spec: InputSpec,
    target_macs: float,
    config: DynamicConfig | None = None,
    *,
    tolerance: float = 0.005,
) -> tuple[DynamicConfig, float]:
    """The gating whose average effective MACs per image match `target_macs`.

    Bisects the uniform `keep` (effective MACs grow with keep in steps of one channel), then,
    while the cost is further than `tolerance` (relative) from the target, moves single
    channels between layers (`layer_keep`: one layer up or down a channel, else one up and
    another down) to bring it closer. Top-k gates cost the same on every image, so random
    images suffice.

    Args:
        model: The dense model (not modified).
        spec: Its input spec.
        target_macs: MACs per image to match (e.g. a static pruning's `stats.count_macs`).
        config: Gate and layers to use (its keep is searched); default `DynamicConfig()`.
        tolerance: Relative gap at which the search stops.

    Returns:
        (config, its effective MACs per image).

    Raises:
        UserError: A target below what gating can reach (one channel per layer) or above the
            dense MACs.
    """
    base = config or DynamicConfig()
    x = example_input(model, spec, 2, random=True, seed=0)
    lo_cfg = base.replace(keep=1e-6, layer_keep=())
    dyn = DynamicModel(model, lo_cfg, spec)  # one copy and probe; keeps are swapped in
    lo_macs = _macs_of(dyn, lo_cfg, x)
    hi_macs = _macs_of(dyn, base.replace(keep=1.0, layer_keep=()), x)
    if not lo_macs <= target_macs <= hi_macs:
        raise UserError(
            f"target of {target_macs:,.0f} MACs is outside what gating reaches "
            f"({lo_macs:,.0f} with one channel per layer to {hi_macs:,.0f} dense)"
        )
    lo, hi = 1e-6, 1.0  # macs(lo) <= target <= macs(hi)
    best = (lo_cfg, lo_macs)
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        cfg = base.replace(keep=mid, layer_keep=())
        m = _macs_of(dyn, cfg, x)
        if m <= target_macs:
            lo, best = mid, (cfg, m)
        else:
            hi = mid
    cfg, m = best
    # Local search on whole channels: one layer one channel up or down, else one up and
    # another down, whichever brings the cost closest to the target; until within tolerance
    # or no move helps (a layer's one-channel step can be a few percent of a small model).
    widths = {n: dyn.convs[n].out_channels for n in dyn.names}
    ks = {n: cfg.channels_kept(n, c) for n, c in widths.items()}

    def config_of(k: dict[str, int]) -> DynamicConfig:
        return cfg.replace(layer_keep=tuple((n, k[n] / widths[n]) for n in widths))

    def moves() -> Iterator[dict[str, int]]:
        for n in widths:
            for d in (1, -1):
                if 1 <= ks[n] + d <= widths[n]:
                    yield {**ks, n: ks[n] + d}

    def pairs() -> Iterator[dict[str, int]]:
        for a in widths:
            for b in widths:
                if a != b and ks[a] < widths[a] and ks[b] > 1:
                    yield {**ks, a: ks[a] + 1, b: ks[b] - 1}

    while abs(target_macs - m) / target_macs > tolerance:
        found = None
        for options in (moves, pairs):
            scored = [(abs(_macs_of(dyn, config_of(k), x) - target_macs), k) for k in options()]
            if scored:
                gap, k = min(scored, key=lambda o: o[0])
                if gap < abs(target_macs - m):
                    found = k
                    break
        if found is None:
            break
        ks = found
        cfg = config_of(ks)
        m = _macs_of(dyn, cfg, x)
    return cfg, m


# ----------------------------------------------------------------------------- training gates

# FBS's weight of the L1 on the saliencies (Gao et al. 2019 train with lambda = 1e-8 on
# `sum_l ||g_l(x)||_1`). With the saliencies of the magnitude start (order 1 to 100, a few
# hundred channels) the term is about 1e-5 of the task loss: it keeps FBS's objective without
# steering the selection; raise it for sparser saliencies.
FBS_L1 = 1e-8
# Adam's peak rate, the one benchmarks/dynamic_section.py measures gates trained alone, gates
# trained with the network and the static fine-tune it compares them with at. The predictors'
# entries start at the filters' |W| sums (order 0.1 to 1): a step moves them by about 0.2-2%.
GATE_LR = 2e-3


def saliency_l1(dyn: DynamicModel) -> torch.Tensor:
    """FBS's sparsity term of the last forward pass: `sum over gated layers of the batch mean
    of ||g_l(x)||_1`, a scalar with gradient to a learned gate's predictors (0 when the gate
    has no parameters).

    Raises:
        UserError: No forward pass yet.
    """
    if not dyn.last.called:
        raise UserError("saliency_l1 needs a forward pass of the gated model first")
    terms = [s.float().abs().sum(1).mean() for s in dyn.last.saliency.values() if s.requires_grad]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def _first_train(data: Any, limit: int | None) -> Any:
    """The dataset with only the first `limit` training images (None: as it is)."""
    if limit is None:
        return data
    number(limit, "train_limit", integer=True, lo=1)
    x, y = data.train
    idx = data.calib_index
    return dataclasses.replace(
        data, train=(x[:limit], y[:limit]), calib_index=idx[idx < limit], _cache={}
    )


def train_gates(
    dyn: DynamicModel,
    data: Any,
    *,
    epochs: int = 1,
    lr: float = GATE_LR,
    l1: float = FBS_L1,
    train_network: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    train_limit: int | None = None,
    val_limit: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train a learned gate's predictors in place with the fine-tune loop (`train.fit`).

    The loss is the task's cross-entropy plus `l1 x saliency_l1` (FBS's lasso on the
    saliencies); top-k is applied in the forward pass and the gradient reaches the predictors
    straight-through (`LearnedGate`). Adam with a cosine schedule; the weights of the last
    epoch are kept (no best-epoch pick: the validation split stays for measuring). The model
    the DynamicModel was built from is never touched (it holds a copy).

    Args:
        dyn: A DynamicModel built with `gate="learned"`; its keep shares are those trained for.
        data: The dataset (a DataBundle); images adapted to `dyn.spec`.
        epochs: Passes over the training split.
        lr: Peak learning rate.
        l1: Weight of the L1 on the saliencies (FBS's lambda).
        train_network: Train the network's weights too (FBS trains both); by default only the
            gates train and the network (BatchNorm statistics included) stays as it is.
        batch_size: Images per step.
        seed: Seeds shuffling; a run repeats exactly on CPU.
        device: `auto`, `cpu` or `cuda`.
        train_limit: Train on the first `train_limit` training images only (quick runs, tests).
        val_limit: Validation images measured at each epoch's end (None: all).
        progress: As `fit`'s: after each step, and with the validation accuracy per epoch.
        cancel: When set, training stops within one batch (what was learned is kept).

    Returns:
        `fit`'s TrainResult.

    Raises:
        UserError: A gate that is not `learned`; bad settings; training that diverged.
    """
    if not isinstance(dyn.gate, LearnedGate):
        raise UserError(
            f"only a learned gate trains: this model's gate is '{dyn.config.gate}' "
            "(build it with gate='learned')"
        )
    weight = float(number(l1, "L1 weight", lo=0))
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        optimizer="adam",
        schedule="cosine",
        batch_size=batch_size,
        seed=seed,
        device=device,
        val_limit=val_limit,
        keep_best=False,
    )

    def extra(_model: nn.Module) -> torch.Tensor:
        return weight * saliency_l1(dyn)

    dyn.train_network = train_network
    for p in dyn.net.parameters():
        p.requires_grad_(train_network)
    try:
        return fit(
            dyn,
            _first_train(data, train_limit),
            dyn.spec,
            config,
            extra_loss=extra if weight > 0 else None,
            progress=progress,
            cancel=cancel,
        )
    finally:
        dyn.train_network = False
        for p in dyn.net.parameters():
            p.requires_grad_(False)
        dyn.eval()
