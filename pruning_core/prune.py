"""One entry point for every granularity and criterion: `prune_(model, config)`.

A frozen `PruneConfig` says what to do (criterion, granularity, ratio, scope, per-layer
overrides, ignore list); `prune_` does it in place and returns a `PruneResult`. The criterion
comes from the criteria registry (`pruning_core.criteria`: a name or a criterion object) and the
granularity from the plan registry (`pruning_core.plans`): masks for unstructured and N:M (zeros
in the weights, plus a `MaskEnforcer` that keeps them zero through training), physical shrinking
(or a mask preview) for channel, head and block.

`Preview` is the slider path over any plan: importance is computed once, and the selection for
another ratio is only a threshold away.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from pruning_core.calibration import DEFAULT_CALIB_BATCHES, recalibrate_batchnorm
from pruning_core.criteria import CRITERIA, Criterion, get_criterion
from pruning_core.errors import UserError
from pruning_core.layers import (
    check_model_finite,
    counted_weights,
    is_weight_layer,
    measured_model_sparsity,
    weight_of,
    zero_shares,
)
from pruning_core.plans import Plan, check_ratio, get_plan, list_granularities
from pruning_core.plans.masks import apply_masks_, mask_sparsity, parse_nm
from pruning_core.spec import InputSpec
from pruning_core.validate import check_seed, number

__all__ = [
    "SCOPES",
    "MaskEnforcer",
    "MethodInfo",
    "Preview",
    "PruneConfig",
    "PruneResult",
    "ScoreCache",
    "StructuredPreview",
    "apply_masks_",
    "criteria_for",
    "hold_masks",
    "list_methods",
    "mask_sparsity",
    "measured_sparsity",
    "method_phrase",
    "parse_nm",
    "prunable_layers",
    "prune_",
    "settle_structured",
    "zero_masks",
]

SCOPES = ("global", "layer")
STRUCTURED_MODES = ("physical", "mask")
_OPTION_FIELDS = ("norm", "seed", "calib_batches")


@dataclass(frozen=True, init=False)
class PruneConfig:
    """What to prune and how.

    Attributes:
        criterion: A criterion registry name (see `list_methods()`) or a criterion object
            (`pruning_core.criteria`); `method=` is accepted too (older recipes and code).
        granularity: A registered granularity: `unstructured`, `N:M` such as `2:4` (N zeros in
            every M consecutive input weights), `channel`, `head` or `block`.
        ratio: Target share removed, in [0, 1). Ignored by N:M (its share is N/M).
        scope: `global` (one threshold across layers) or `layer` (the same ratio in each).
        layer_ratios: Per-layer overrides, (layer name, ratio) pairs; in global scope the global
            ratio applies to the layers without an override.
        ignore: Layer names or glob patterns kept dense; None keeps the classifier (the last
            Linear, or the last conv of a fully convolutional model) dense, () prunes every layer.
        norm: 1 or 2 for magnitude.
        max_layer_ratio: No layer is pruned beyond this share (never to zero width).
        structured_mode: `physical` (shrink) or `mask` (preview, shapes unchanged).
        round_to: Structured channel counts kept a multiple of this (None: any).
        seed: Seed of the random criterion (and of anything else random in pruning).
        calib_batches: Calibration batches (of 128 images) for data-driven criteria and the
            BatchNorm re-estimation after structured pruning.
        recalibrate_bn: Re-estimate BatchNorm statistics on the calibration batches after
            structured pruning (`settle_structured`; adaptive BN, Li et al. 2020). False keeps
            the dense model's statistics (to see what recalibration is worth).

    Raises:
        UserError: Unknown criterion or granularity, a criterion that does not support the
            granularity, or a value out of range.
    """

    criterion: str | Criterion = "magnitude"
    granularity: str = "unstructured"
    ratio: float = 0.5
    scope: str = "global"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    ignore: tuple[str, ...] | None = None
    norm: int = 1
    max_layer_ratio: float = 0.98
    structured_mode: str = "physical"
    round_to: int | None = None
    seed: int = 0
    calib_batches: int = DEFAULT_CALIB_BATCHES
    recalibrate_bn: bool = True

    def __init__(
        self,
        criterion: str | Criterion | None = None,
        granularity: str = "unstructured",
        ratio: float = 0.5,
        scope: str = "global",
        layer_ratios: Any = (),
        ignore: Sequence[str] | None = None,
        norm: int = 1,
        max_layer_ratio: float = 0.98,
        structured_mode: str = "physical",
        round_to: int | None = None,
        seed: int = 0,
        calib_batches: int = DEFAULT_CALIB_BATCHES,
        recalibrate_bn: bool = True,
        *,
        method: str | Criterion | None = None,
    ) -> None:
        if criterion is not None and method is not None and criterion != method:
            raise UserError("give the criterion once (criterion= or its old name method=)")
        values = {
            "criterion": criterion if criterion is not None else (method or "magnitude"),
            "granularity": granularity, "ratio": ratio, "scope": scope,
            "layer_ratios": layer_ratios, "ignore": ignore, "norm": norm,
            "max_layer_ratio": max_layer_ratio, "structured_mode": structured_mode,
            "round_to": round_to, "seed": seed, "calib_batches": calib_batches,
            "recalibrate_bn": recalibrate_bn,
        }  # fmt: skip
        for k, v in values.items():
            object.__setattr__(self, k, v)
        self.__post_init__()

    def __post_init__(self) -> None:
        crit = self.criterion
        if isinstance(crit, Criterion):
            # A criterion object brings its own options: they are the config's too.
            for k in _OPTION_FIELDS:
                if hasattr(crit, k):
                    object.__setattr__(self, k, getattr(crit, k))
        elif not isinstance(crit, str) or crit not in CRITERIA:
            raise UserError(f"unknown method '{crit}' (choose from {', '.join(CRITERIA)})")
        plan, canonical = get_plan(self.granularity)
        object.__setattr__(self, "granularity", canonical)
        cls = type(crit) if isinstance(crit, Criterion) else CRITERIA[crit]
        if not plan.supports(cls):
            supported = [g.example for g in list_granularities() if g.supports(cls)]
            raise UserError(
                f"method '{cls.name}' does not support {plan.name} granularity "
                f"(it supports {', '.join(supported)})"
            )
        object.__setattr__(self, "ratio", check_ratio(self.ratio))
        if self.scope not in SCOPES:
            raise UserError(f"unknown scope '{self.scope}' (choose from global, layer)")
        mlr = self.max_layer_ratio
        if not (isinstance(mlr, int | float) and not isinstance(mlr, bool)):
            raise UserError(f"max_layer_ratio must be in (0, 1), got {mlr}")
        number(mlr, "max_layer_ratio", lo=0, hi=1, lo_open=True, hi_open=True)
        lr = (
            self.layer_ratios.items()
            if isinstance(self.layer_ratios, Mapping)
            else self.layer_ratios
        )
        pairs = []
        for item in lr:
            if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str)):
                raise UserError(
                    f"layer_ratios entries must be (layer name, ratio) pairs, got {item!r}"
                )
            pairs.append((item[0], check_ratio(item[1], f"ratio of layer '{item[0]}'")))
        object.__setattr__(self, "layer_ratios", tuple(pairs))
        if not plan.fixed_ratio:
            for name, r in (("ratio", self.ratio), *self.layer_ratios):
                if r > mlr:
                    raise UserError(
                        f"{'ratio' if name == 'ratio' else f'ratio of layer {name!r}'} {r} "
                        f"exceeds max_layer_ratio {mlr}: no layer is pruned beyond it (never to "
                        "zero width)"
                    )
        plan.check_config(canonical, self.ratio, mlr)
        if self.ignore is not None:
            if isinstance(self.ignore, str) or not all(isinstance(s, str) for s in self.ignore):
                raise UserError("ignore must be a list of layer names or patterns")
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.norm not in (1, 2) or isinstance(self.norm, bool):
            raise UserError(f"norm must be 1 or 2, got {self.norm}")
        if self.structured_mode not in STRUCTURED_MODES:
            raise UserError(f"unknown structured_mode '{self.structured_mode}' (physical or mask)")
        if self.round_to is not None:
            number(self.round_to, "round_to", integer=True, lo=1)
            if not isinstance(self.round_to, int):
                raise UserError(f"round_to must be a positive integer or None, got {self.round_to}")
        if not isinstance(self.calib_batches, int) or self.calib_batches < 1:
            raise UserError(f"calib_batches must be an integer >= 1, got {self.calib_batches}")
        if not isinstance(self.recalibrate_bn, bool):
            raise UserError(f"recalibrate_bn must be true or false, got {self.recalibrate_bn!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"seed must be an integer, got {self.seed!r}")
        check_seed(self.seed)
        self.criterion_object()  # the criterion's own option checks, now

    # -- what the registries say about it -----------------------------------------------------

    @property
    def method(self) -> str:
        """The criterion's registry name (the name recipes and metrics.json use)."""
        return self.criterion.name if isinstance(self.criterion, Criterion) else self.criterion

    @property
    def plan(self) -> type[Plan]:
        """The granularity's plan class."""
        return get_plan(self.granularity)[0]

    @property
    def structured(self) -> bool:
        """True when whole structures go (channel, head, block)."""
        return self.plan.structured

    @property
    def fixed_ratio(self) -> bool:
        """True when the granularity fixes the share removed (N:M)."""
        return self.plan.fixed_ratio

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for N:M granularity, else None."""
        return parse_nm(self.granularity)

    @property
    def effective_ratio(self) -> float:
        """The share meant to be removed: N/M for N:M, else `ratio`."""
        return self.plan.effective_ratio(self.granularity, self.ratio)

    def criterion_object(self) -> Criterion:
        """The criterion, built with this config's options (or the object it was given)."""
        return get_criterion(self.criterion, **{k: getattr(self, k) for k in _OPTION_FIELDS})

    def replace(self, **changes: Any) -> PruneConfig:
        """Copy with some fields changed (validated again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if "method" in changes:
            changes["criterion"] = changes.pop("method")
        values.update(changes)
        return PruneConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the criterion by name, `method` too for older readers;
        layer_ratios as a mapping)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["criterion"] = self.method
        d["method"] = self.method
        d["layer_ratios"] = dict(self.layer_ratios)
        d["ignore"] = None if self.ignore is None else list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneConfig:
        """Inverse of `to_dict` (`method` read as the criterion; unknown keys are a UserError)."""
        if not isinstance(d, Mapping):
            raise UserError("a prune config must be a mapping")
        known = {f.name for f in fields(cls)} | {"method"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown prune config keys: {', '.join(unknown)}")
        kw = dict(d)
        if "method" in kw:
            kw.setdefault("criterion", kw["method"])
            if kw.pop("method") != kw["criterion"]:
                raise UserError("a prune config names two different criteria (method, criterion)")
        if isinstance(kw.get("layer_ratios"), Mapping):
            kw["layer_ratios"] = tuple(kw["layer_ratios"].items())
        elif kw.get("layer_ratios") is not None:
            kw["layer_ratios"] = tuple(tuple(p) for p in kw["layer_ratios"])
        if kw.get("ignore") is not None:
            kw["ignore"] = tuple(kw["ignore"])
        return cls(**kw)


@dataclass(frozen=True)
class MethodInfo:
    """A criterion as the UI and `--help` describe it."""

    name: str
    summary: str
    reference: str
    needs_data: bool
    granularities: tuple[str, ...]
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "granularities": list(self.granularities)}


def list_methods() -> list[MethodInfo]:
    """Every registered criterion, in registry order, with the granularities it supports."""
    return [
        MethodInfo(
            c.name,
            c.summary,
            c.reference,
            c.needs_data,
            tuple(g.name for g in list_granularities() if g.supports(c)),
            c.label,
        )
        for c in CRITERIA.values()
    ]


def criteria_for(granularity: str) -> list[str]:
    """The registered criteria that `granularity` takes, in registry order.

    Raises:
        UserError: An unknown granularity.
    """
    plan = get_plan(granularity)[0].name
    return [m.name for m in list_methods() if plan in m.granularities]


def method_phrase(method: str | None, granularity: str | None) -> str:
    """How a run's criterion and granularity read in one line ("magnitude channel").

    A granularity that takes one criterion only (low rank: singular values are its magnitudes)
    is named alone ("lowrank"): its criterion says nothing a user chose.

    Args:
        method: The criterion's registry name (None: not recorded).
        granularity: The granularity as given ("channel", "2:4", "lowrank", ...).
    """
    if not granularity:
        return str(method or "")
    try:
        only_one = len(criteria_for(granularity)) == 1
    except UserError:
        return f"{method} {granularity}" if method else granularity
    if only_one:
        return granularity
    return f"{method} {granularity}" if method else granularity


@dataclass
class PruneResult:
    """What a pruning call did.

    Attributes:
        masks: Layer name -> bool keep-mask shaped like its weight (unstructured, N:M, and
            structured mask mode; empty for physical shrinking).
        layer_sparsity: Measured share of zeros (or removed) per pruned layer; low rank: the
            share of its rank removed.
        sparsity: Measured sparsity of the model as pruned: zero or removed Linear/Conv
            weights over all of the model's before pruning (`terms.SPARSITY_MEANS`, the one
            definition for every granularity; below the ratio where layers are kept dense,
            above it for channels, which take the next layer's inputs too).
        removed: Structured: removed channel/head/block indices per layer.
        seconds: Wall time.
        notes: Things the user should know (layers skipped and why).
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    sparsity: float = 0.0
    removed: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (masks left out)."""
        return {
            "sparsity": self.sparsity,
            "layer_sparsity": dict(self.layer_sparsity),
            "removed": {k: list(v) for k, v in self.removed.items()},
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def prunable_layers(
    model: nn.Module, config: PruneConfig, spec: InputSpec | None = None
) -> list[str]:
    """Names of the units `config` would prune in `model` (in module order): layers for
    unstructured/N:M, channel groups, attention layers or blocks for structured plans."""
    return config.plan.prunable(model, config, spec)


class Preview:
    """Importance computed once; selections and masks for any ratio reuse it (the slider path).

    One preview over any granularity plan: it builds the plan for `model` (what can be pruned,
    and notes on what cannot), scores it with the criterion once, and then `select`s and draws
    `masks` for any ratio by thresholding only. The model is not changed until
    `masks(..., apply=True)` or `prune_`.

    Args:
        model: The model (scores come from its current weights).
        config: The criterion, granularity and options (its ratio is not used).
        data: A DataBundle for data-driven criteria (calibration split).
        spec: The model's input spec (needed with data, and by structured plans for tracing).
        scores: Given per-weight scores instead of the criterion's (weight plans only; e.g.
            the dense weights in a dynamic schedule).
        zeros_first: Weights already exactly zero go first (weight plans).

    Attributes:
        config: The config the scores were computed for.
        plan: The granularity plan.
        layer_names: Names per-layer ratios accept (layers, groups, attention layers, blocks).
        layer_sizes: Prunable elements per name.
        notes: Layers or groups the plan skips, and why.

    Raises:
        UserError: A data-driven criterion without data, nothing prunable, NaN/inf weights or
            scores (named), or a plan-specific refusal.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruneConfig,
        data: Any = None,
        spec: InputSpec | None = None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        criterion = config.criterion_object()
        check_model_finite(model)
        if scores is None and criterion.needs_data and (data is None or spec is None):
            raise UserError(f"method '{criterion.name}' needs calibration data: give a dataset")
        self.config = config
        self.plan: Plan = config.plan(model, config, spec=spec, data=data)
        self.plan.score(criterion, data, spec, scores=scores, zeros_first=zeros_first)
        self.layer_names = [u.name for u in self.plan.units]
        self.layer_sizes = {u.name: u.size for u in self.plan.units}
        self.notes = list(self.plan.notes)

    def select(
        self, ratio: float, layer_ratios: Mapping[str, float] | None = None, scope: str = "global"
    ) -> dict[str, Any]:
        """What this ratio removes, per unit (no model change).

        Raises:
            UserError: Bad ratios or scope, unknown layers, or a ratio beyond max_layer_ratio.
        """
        ratio = check_ratio(ratio)
        if scope not in SCOPES:
            raise UserError(f"unknown scope '{scope}' (choose from global, layer)")
        over = self.plan.resolve_overrides(layer_ratios or {})
        mlr = self.config.max_layer_ratio
        checked = over.items() if self.plan.structured else [("", ratio), *over.items()]
        for n, r in checked:
            if r > mlr and not self.plan.fixed_ratio:
                what = f"ratio of layer '{n}'" if n else "ratio"
                raise UserError(
                    f"{what} {r} exceeds max_layer_ratio {mlr}: no layer may be pruned to "
                    "(almost) zero width"
                )
        return self.plan.select(ratio, over, scope, mlr)

    def masks(
        self,
        ratio: float,
        layer_ratios: Mapping[str, float] | None = None,
        scope: str = "global",
        *,
        apply: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Bool keep-masks (layer -> tensor shaped like its weight) for this ratio; with
        `apply=True` the weights the selection removes are zeroed in place. To measure a
        structured selection as `prune_` leaves it, call `settle_structured` on the masked model
        first (BatchNorm statistics).

        The tensors may be shared with the preview: do not modify them.
        """
        return self.plan.masks(self.select(ratio, layer_ratios, scope), apply=apply)

    def same_scores(self, config: PruneConfig) -> bool:
        """True when `config` scores like this preview (same criterion, options, granularity)."""
        a, b = self.config, config
        return (a.method, a.granularity, a.norm, a.seed, a.calib_batches) == (
            b.method, b.granularity, b.norm, b.seed, b.calib_batches,
        )  # fmt: skip


# The two slider caches of earlier versions are this one preview now.
ScoreCache = Preview
StructuredPreview = Preview


def measured_sparsity(model: nn.Module, layers: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Measured sparsity of `model` from the exact zeros of `layers` (the pruned ones).

    Returns:
        The model's sparsity as `terms.SPARSITY_MEANS` defines it (every exact zero of its
        Linear/Conv weights over all of them), and each of `layers`' share of exact zeros.
    """
    return measured_model_sparsity(model, counted_weights(model)), zero_shares(model, layers)


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks of the exact zeros a pruned model already has, so further training keeps them.

    A model folder written by `prune` holds its masks only as zeros; training it again without
    masks lets the optimizer regrow every pruned weight (sparsity 0.90 became 0.28 in one epoch).

    Args:
        model: The model; every Conv/Linear weight with at least one exact zero gets a mask.

    Returns:
        Layer name -> bool tensor of the weight's shape (True = keep); layers without zeros are
        left out (nothing to keep at zero).
    """
    masks: dict[str, torch.Tensor] = {}
    for n, m in model.named_modules():
        if is_weight_layer(m):
            w = weight_of(m).detach()
            keep = w != 0
            if not bool(keep.all()):
                masks[n] = keep.cpu()
    return masks


class MaskEnforcer:
    """`after_step` hook for `train.fit` that keeps pruned weights exactly zero.

    After every optimizer step the masks are re-applied, so pruned weights are exactly zero
    whatever the optimizer did (SGD with momentum, Adam, AdamW with decoupled weight decay).
    With `mask_grads=True`, while attached (`with MaskEnforcer(...)` or `attach()`), gradients of
    pruned weights are zeroed too, so a fresh optimizer's state (momentum, Adam moments) never
    builds up for them. That is not needed for exact zeros and costs ~20% of a CPU step on
    resnet18, so it is off by default.
    """

    def __init__(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor], *, mask_grads: bool = False
    ) -> None:
        mods = dict(model.named_modules())
        self._params: dict[str, torch.Tensor] = {}
        for n, m in masks.items():
            w = getattr(mods.get(n), "weight", None)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(m.shape):
                raise UserError(f"mask for '{n}' does not fit the model")
            self._params[n] = w
        self._keep = {n: m.to(torch.bool) for n, m in masks.items()}
        # Multiplying by a float 0/1 mask is ~5x faster than masked_fill_ on CPU (and exact:
        # finite weights times 0 are 0; training stops on non-finite losses).
        self._on: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._mask_grads = mask_grads
        self._handles: list[Any] = []

    @property
    def layers(self) -> list[str]:
        """Names of the masked layers."""
        return list(self._keep)

    def _mask(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        m = self._on.get(key)
        if m is None:
            m = self._on[key] = self._keep[name].to(device=like.device, dtype=like.dtype)
        return m

    def attach(self) -> MaskEnforcer:
        """Start masking gradients of pruned weights (with mask_grads; idempotent)."""
        if self._mask_grads and not self._handles:
            for n, p in self._params.items():
                if p.requires_grad:
                    self._handles.append(p.register_hook(lambda g, n=n: g * self._mask(n, g)))
        return self

    def detach(self) -> None:
        """Stop masking gradients."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskEnforcer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __call__(self, model: nn.Module, step: int) -> None:
        """Re-apply the masks (the `after_step` signature)."""
        with torch.no_grad():
            for n, p in self._params.items():
                p.mul_(self._mask(n, p))


def hold_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], *, keep_zeros: bool = False
) -> MaskEnforcer | None:
    """The `after_step` hook that training after a pruning step needs, or None if none is.

    Args:
        model: The pruned model (masks already applied).
        masks: Keep-masks of this pruning step (empty after physical structured pruning).
        keep_zeros: The model came pruned already (a folder written by `prune`): hold every
            exact zero it has now, this step's and the earlier ones (`zero_masks`).

    Returns:
        A MaskEnforcer, or None when nothing is to be held.
    """
    held = zero_masks(model) if keep_zeros else dict(masks)
    return MaskEnforcer(model, held) if held else None


def settle_structured(
    model: nn.Module, config: PruneConfig, data: Any = None, spec: InputSpec | None = None
) -> bool:
    """What follows the removal of whole structures, in both modes: BatchNorm statistics are
    re-estimated on `config.calib_batches` calibration batches
    (`calibration.recalibrate_batchnorm`), unless `config.recalibrate_bn` is off.

    `prune_` and the Prune page's accuracy estimate (`slider.SliderPreview.estimate`) both call
    this, so the masked preview and the shrunk model measure the same function: masked elements
    have zero weights, biases and BatchNorm scale and shift, so they stay exactly zero whatever
    the new statistics, and the kept channels get the statistics the shrunk model gets.

    Args:
        model: The pruned model (masked or shrunk), changed in place (BatchNorm buffers only).
        config: The pruning settings; nothing happens for unstructured and N:M granularities,
            nor with `recalibrate_bn=False` (the dense statistics stay).
        data: A DataBundle; without it (or without `spec`) nothing happens.
        spec: The model's input spec.

    Returns:
        True when BatchNorm statistics were re-estimated.

    Raises:
        UserError: The calibration split is empty.
    """
    if not config.structured or not config.recalibrate_bn or data is None or spec is None:
        return False
    # No autograd graph: the working copies have trainable parameters.
    with torch.no_grad():
        return recalibrate_batchnorm(model, data, spec, batches=config.calib_batches)


def prune_(
    model: nn.Module,
    config: PruneConfig,
    *,
    data: Any = None,
    spec: InputSpec | None = None,
    scores: Preview | None = None,
) -> PruneResult:
    """Prune `model` in place as `config` says: the one entry point for every granularity.

    Args:
        model: The model (changed in place).
        config: What to do (the criterion by name or as an object).
        data: A DataBundle, needed by data-driven criteria (calibration split). For structured
            plans, BatchNorm statistics are then re-estimated on `config.calib_batches`
            calibration batches after pruning (`calibration.recalibrate_batchnorm`), so the
            pruned accuracy is not a BN-mismatch artefact (unless `config.recalibrate_bn` is
            off).
        spec: The model's input spec (needed with data, and by structured pruning for tracing).
        scores: A Preview built for the same criterion and granularity (skips re-scoring; for
            structured plans only when it was built on this very model).

    Returns:
        A PruneResult with masks (or removed indices), measured sparsity and notes.

    Raises:
        UserError: Invalid config for this model, missing data, impossible ratios.
        ValueError: `scores` built for another criterion, granularity or options.
    """
    start = time.perf_counter()
    if scores is not None and not scores.same_scores(config):
        raise ValueError("the Preview was built for another method, granularity, norm or seed")
    preview = scores
    if preview is not None and preview.plan.structured and preview.plan.model is not model:
        preview = None  # a structured plan changes the model it traced: trace this one
    if preview is None:
        preview = Preview(model, config, data, spec)
    else:
        check_model_finite(model)  # the preview scored another copy: this one must be finite too
    selection = preview.select(config.ratio, dict(config.layer_ratios), config.scope)
    done = preview.plan.apply(model, selection, physical=config.structured_mode == "physical")
    settle_structured(model, config, data, spec)
    notes = list(preview.notes)
    plan = preview.plan
    if plan.structured and config.ratio > 0 and not any(selection.values()):
        notes.append(plan.nothing_removed(config.ratio, config.max_layer_ratio, config.scope))
    return PruneResult(
        masks=done.masks,
        layer_sparsity=done.layer_sparsity,
        sparsity=done.sparsity,
        removed=done.removed,
        seconds=time.perf_counter() - start,
        notes=notes,
    )
