"""Structured pruning: remove whole channels, attention heads or residual blocks.

Unlike unstructured masks, structured pruning makes the model physically smaller, so it runs
faster on ordinary dense hardware. Three granularities:

- `channel`: conv filters and linear neurons. Torch-Pruning's dependency graph (Fang et al.
  2023, "DepGraph: Towards Any Structural Pruning") finds the layers coupled to each channel
  (the BatchNorm after a conv, the next layer's inputs, every conv tied to a residual sum), so
  one *group* loses the same channels everywhere and the model stays consistent. The criterion
  (`pruning_core.importance`) scores each conv/linear output channel; a group's score is the
  mean over its members, fed to Torch-Pruning through a custom `Importance` adapter.
- `head`: whole attention heads of the sample ViT's `Attention` (rows of `qkv`, columns of
  `proj`, `num_heads` updated). A head's score is the sum of the criterion's scores of its
  query, key and value rows (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
  torchvision ViTs' `nn.MultiheadAttention` is first swapped, exactly, for the same attention
  with its own `qkv`/`proj` (`models.architectures.SelfAttention`), since MHA cannot shrink.
- `block`: residual blocks whose input and output shapes match are replaced by `nn.Identity`
  (layer pruning; Veit et al. 2016 showed residual networks survive losing single blocks).

Both modes share one selection: `physical` shrinks the tensors, `mask` (the UI's preview)
zeroes exactly the weights physical mode would remove, outputs included: a masked channel's
consumers see zeros where the shrunk model has no input at all, so both compute the same
function (up to rounding; LayerNorm statistics over a masked width are the one exception).

Ratios: `scope="layer"` removes the same share from every group (attention layer for heads);
`scope="global"` ranks all elements together after dividing each group's scores by their mean
(Torch-Pruning's default normaliser, which makes groups comparable). Per-layer overrides use
their own ratio. `max_layer_ratio` caps every group and at least one element always stays;
`round_to` makes the kept channel counts multiples of it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_pruning.pruner.importance import Importance as TPImportance

from pruning_core.errors import UserError
from pruning_core.importance import check_finite
from pruning_core.models.spec import InputSpec

if TYPE_CHECKING:
    import torch_pruning as tp

    from pruning_core.prune import PruneConfig, PruneResult

__all__ = [
    "BLOCK_METHODS",
    "FINETUNE_DEFAULTS",
    "STRUCTURED_GRANULARITIES",
    "StructuredPreview",
    "prune_structured_",
    "recalibrate_batchnorm",
    "removable_blocks",
    "structured_layers",
]

STRUCTURED_GRANULARITIES = ("channel", "head", "block")
_CHOICES = ", ".join(STRUCTURED_GRANULARITIES)

# Fine-tune settings for structurally pruned models. Measured on a shapes-resnet (dense 0.928),
# channel ratio 0.5 (MACs x0.23), 2 epochs, batch 64: SGD lr 0.01 -> 0.907, SGD 0.02 -> 0.901,
# SGD 0.005 -> 0.884, Adam 1e-3 -> 0.888. A shrunk network has to re-learn how its surviving
# filters combine; SGD with momentum at 0.01 and a cosine decay does that best in two epochs.
# Distillation from the dense model is on by default: a physically shrunk network loses most of
# its accuracy at once, and the dense teacher's soft targets recover it much faster (measured on
# shapes-resnet, channel 0.5, 2 epochs: 0.9315 without, 0.948 with; dense 0.9705).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.01,
    "weight_decay": 5e-4,
    "distill_weight": 0.5,
}

# Block criteria: how a residual block's importance is measured.
BLOCK_METHODS = {
    "magnitude": "mean |weight| of the block's conv/linear layers (data-free)",
    "random": "seeded random order",
    "bn-scale": "mean |gamma| of the BatchNorm that closes the residual branch",
    "activation": "relative residual-branch output ||f(x) - x|| / ||x|| on calibration data",
    "taylor": "loss increase on calibration data when the block is bypassed",
}

_ROOT_TYPES = (nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------------------------
# public API


def structured_layers(
    model: nn.Module, granularity: str, spec: InputSpec | None = None
) -> list[str]:
    """The names structured pruning of `granularity` works on (what per-layer ratios key on).

    Args:
        model: The model.
        granularity: `channel` (one name per coupled channel group: its first conv/linear),
            `head` (attention modules) or `block` (removable residual blocks).
        spec: Input spec for tracing (`channel`, `block`); inferred from the first layer if absent.

    Returns:
        Module names in model order.
    """
    if granularity == "channel":
        spec = spec or _guess_spec(model)
        return [u.name for u in _ChannelPlan(model, spec, ignore=_default_ignore(model)).units]
    if granularity == "head":
        return [n for n, _ in _attention_modules(model)]
    if granularity == "block":
        spec = spec or _guess_spec(model)
        return removable_blocks(model, spec)
    raise UserError(f"'{granularity}' is not a structured granularity (choose from {_CHOICES})")


def prune_structured_(
    model: nn.Module,
    config: PruneConfig,
    *,
    spec: InputSpec | None,
    data: Any = None,
) -> PruneResult:
    """Prune whole channels, heads or blocks of `model` in place.

    Args:
        model: The model (its device is kept).
        config: The pruning config; uses method, granularity, ratio, scope, layer_ratios, ignore,
            norm, max_layer_ratio, structured_mode, round_to, seed, calib_batches.
        spec: The model's input spec (example inputs for tracing); guessed when None.
        data: A DataBundle, needed by data-driven criteria. When given, BatchNorm statistics
            are re-estimated on `config.calib_batches` calibration batches after pruning
            (`recalibrate_batchnorm`), so the pruned accuracy is not a BN-mismatch artefact.

    Returns:
        A PruneResult: `removed` lists removed channel/head indices per group (block: child
        indices per parent container); `masks` are filled in mask mode (keep-masks of every
        touched weight); `layer_sparsity`/`sparsity` are the removed share of the weights of the
        layers the granularity touches.

    Raises:
        UserError: Unsupported method for the granularity, no attention layers / removable
            blocks, unknown layer names, or a per-layer ratio above `max_layer_ratio`.
    """
    from pruning_core.prune import PruneResult

    t0 = time.perf_counter()
    spec = spec or _guess_spec(model)
    preview = StructuredPreview(model, config, spec=spec, data=data)
    removed = preview.select(config.ratio, dict(config.layer_ratios), config.scope)
    before = preview.plan.weight_sizes()
    masks: dict[str, torch.Tensor] = {}
    if config.structured_mode == "mask":
        masks = preview.plan.masks(removed, apply=True)
        layer_sparsity = {n: float(1 - m.float().mean()) for n, m in masks.items() if n in before}
    else:
        preview.plan.shrink(removed)
        after = preview.plan.weight_sizes(after=True)
        layer_sparsity = {n: 1.0 - after.get(n, 0) / before[n] for n in before}
    if data is not None:
        recalibrate_batchnorm(model, data, spec, batches=config.calib_batches)
    # Sparsity over every layer the granularity can touch (not only the changed ones), so a
    # small ratio reads as a small number.
    total = sum(before.values())
    gone = sum(layer_sparsity.get(n, 0.0) * before[n] for n in before)
    layer_sparsity = {n: v for n, v in layer_sparsity.items() if v > 0}
    return PruneResult(
        masks=masks,
        layer_sparsity=layer_sparsity,
        sparsity=gone / total if total else 0.0,
        removed=preview.plan.removed_report(removed),
        seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Any, spec: InputSpec, *, batches: int = 4
) -> bool:
    """Re-estimate BatchNorm running statistics on calibration images (no weight changes).

    Removing channels changes what every following BatchNorm sees, so its stored statistics
    no longer fit and accuracy collapses before any fine-tuning; a few forward passes fix the
    statistics (adaptive BN, Li et al. 2020, "EagleEye: Fast Sub-net Evaluation for Efficient
    Neural Network Pruning"). Masked channels have zero BN scale and shift, so mask mode and
    physical mode still compute the same function afterwards.

    Returns:
        True if the model has BatchNorm layers and statistics were updated.
    """
    from pruning_core.importance import CALIB_BATCH_SIZE

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns = [m for m in bns if m.track_running_stats and m.running_mean is not None]
    if not bns:
        return False
    momenta = [m.momentum for m in bns]
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all calibration batches
        model.eval()
        for m in bns:
            m.train()
        for xb, _ in data.batches(
            "calib", spec, CALIB_BATCH_SIZE, limit=batches * CALIB_BATCH_SIZE
        ):
            model(xb.to(device))
            seen += 1
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    if not seen:
        raise UserError("the calibration split is empty: cannot re-estimate BatchNorm statistics")
    return True


class StructuredPreview:
    """Importance computed once; new selections and masks for any ratio reuse it (the slider path).

    Args:
        model: The model (scores come from its current weights; it is not changed until
            `masks(..., apply=True)` or `prune_structured_`).
        config: Supplies method, granularity, ignore, norm, seed, calib_batches,
            max_layer_ratio and round_to; ratios come with each call.
        spec: The model's input spec.
        data: A DataBundle for data-driven criteria.

    Every selection removes exactly its count per unit (a stable argsort decides ties) and never
    more than `max_layer_ratio` of a unit, always keeping one element. Layers whose weights or
    scores hold NaN/inf are refused by name.

    Raises:
        UserError: No prunable units, an unsupported method, or NaN/inf weights or scores.

    Attributes:
        layer_names: Names per-layer ratios accept (one per group / attention layer / "blocks").
        layer_sizes: Prunable elements per name (channels, heads, blocks).
    """

    def __init__(
        self, model: nn.Module, config: PruneConfig, *, spec: InputSpec, data: Any = None
    ) -> None:
        self.config = config
        g = config.granularity
        ignore = _resolve_ignore(model, config)
        self.plan: _Plan
        if g == "channel":
            self.plan = _ChannelPlan(model, spec, ignore=ignore)
            if not self.plan.units:
                raise UserError(
                    "channel pruning found no prunable conv/linear channels in this model"
                )
        elif g == "head":
            self.plan = _HeadPlan(model, ignore=ignore)
        elif g == "block":
            self.plan = _BlockPlan(model, spec, ignore=ignore)
        else:
            raise UserError(f"'{g}' is not a structured granularity (choose from {_CHOICES})")
        # NaN compares false with everything: a NaN layer would be ranked arbitrarily, so it is
        # refused by name before scoring (and any NaN a criterion produces, after).
        mods = dict(model.named_modules())
        for n in self.plan.layers():
            w = getattr(mods.get(n), "weight", None)
            if isinstance(w, torch.Tensor):
                check_finite(n, w)
        self.plan.score(config, spec, data)
        for u in self.plan.units:
            check_finite(u.name, u.scores, "scores")
        self.layer_names = [u.name for u in self.plan.units]
        self.layer_sizes = {u.name: u.size for u in self.plan.units}

    def select(
        self, ratio: float, layer_ratios: Mapping[str, float] | None = None, scope: str = "global"
    ) -> dict[str, list[int]]:
        """Indices to remove per unit name for this ratio (no model change)."""
        overrides = self.plan.resolve_overrides(layer_ratios or {})
        return _select(
            self.plan.units,
            ratio,
            scope,
            overrides,
            max_layer_ratio=self.config.max_layer_ratio,
            round_to=self.config.round_to if self.config.granularity == "channel" else None,
        )

    def masks(
        self,
        ratio: float,
        layer_ratios: Mapping[str, float] | None = None,
        scope: str = "global",
        *,
        apply: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Keep-masks (layer name -> bool tensor shaped like its weight) for this ratio.

        With `apply=True` the weights that physical pruning would remove are zeroed in place.
        """
        return self.plan.masks(self.select(ratio, layer_ratios, scope), apply=apply)


# --------------------------------------------------------------------------------------------
# selection shared by all granularities


@dataclass
class _Unit:
    """One independently prunable set of elements (a channel group, an attention layer, blocks)."""

    name: str
    size: int
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    members: tuple[str, ...] = ()  # other names that address this unit in per-layer ratios
    roundable: bool = True


def _select(
    units: Sequence[_Unit],
    ratio: float,
    scope: str,
    overrides: Mapping[str, float],
    *,
    max_layer_ratio: float,
    round_to: int | None,
) -> dict[str, list[int]]:
    for name, r in overrides.items():
        if not 0.0 <= r < 1.0 or math.isnan(r):
            raise UserError(f"ratio for layer '{name}' must be in [0, 1), got {r}")
        if r > max_layer_ratio:
            raise UserError(
                f"ratio {r} for layer '{name}' exceeds max_layer_ratio {max_layer_ratio}: "
                "no layer may be pruned to (almost) zero width"
            )
    counts: dict[str, int] = {}
    free = [u for u in units if u.name not in overrides]
    for u in units:
        if u.name in overrides:
            counts[u.name] = _cap(
                u.size, math.floor(u.size * overrides[u.name] + 1e-9), max_layer_ratio
            )
    if scope == "layer":
        for u in free:
            counts[u.name] = _cap(u.size, math.floor(u.size * ratio + 1e-9), max_layer_ratio)
    else:
        counts.update(_global_counts(free, ratio, max_layer_ratio))
    out: dict[str, list[int]] = {}
    for u in units:
        n = counts.get(u.name, 0)
        if round_to and u.roundable:
            n = _round_removed(u.size, n, round_to, max_layer_ratio)
        if n > 0:
            out[u.name] = sorted(torch.argsort(u.scores, stable=True)[:n].tolist())
    return out


def _cap(size: int, n: int, max_layer_ratio: float) -> int:
    """Never remove more than max_layer_ratio of a unit, and always keep one element."""
    return max(0, min(n, math.floor(size * max_layer_ratio + 1e-9), size - 1))


def _global_counts(units: Sequence[_Unit], ratio: float, max_layer_ratio: float) -> dict[str, int]:
    total = sum(u.size for u in units)
    target = math.floor(total * ratio + 1e-9)
    if not units or target <= 0:
        return {}
    norm = [u.scores.double() / u.scores.double().mean().clamp_min(1e-12) for u in units]
    flat = torch.cat(norm)
    owner = [i for i, u in enumerate(units) for _ in range(u.size)]
    caps = [_cap(u.size, u.size, max_layer_ratio) for u in units]
    counts = [0] * len(units)
    taken = 0
    # Walk from the least important element up; capped units pass their turn to the next.
    for i in torch.argsort(flat, stable=True).tolist():
        k = owner[i]
        if counts[k] < caps[k]:
            counts[k] += 1
            taken += 1
            if taken == target:
                break
    return {u.name: c for u, c in zip(units, counts, strict=True)}


def _round_removed(size: int, n: int, round_to: int, max_layer_ratio: float) -> int:
    """Adjust `n` so the kept count is a multiple of round_to (nearest; at least round_to)."""
    if size <= round_to:
        return 0
    keep = size - n
    keep = max(round_to, math.floor(keep / round_to + 0.5) * round_to)
    while size - keep > _cap(size, size, max_layer_ratio):
        keep += round_to
    return max(0, size - min(keep, size))


# --------------------------------------------------------------------------------------------
# plans: what a granularity can remove and how


class _Plan:
    units: list[_Unit]
    model: nn.Module

    def score(self, config: PruneConfig, spec: InputSpec, data: Any) -> None:
        raise NotImplementedError

    def shrink(self, removed: Mapping[str, list[int]]) -> None:
        raise NotImplementedError

    def masks(self, removed: Mapping[str, list[int]], *, apply: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def layers(self) -> list[str]:
        """Weight-bearing modules this plan may touch (for sparsity accounting)."""
        raise NotImplementedError

    def resolve_overrides(self, layer_ratios: Mapping[str, float]) -> dict[str, float]:
        by_name: dict[str, str] = {}
        for u in self.units:
            by_name[u.name] = u.name
            for m in u.members:
                by_name.setdefault(m, u.name)
        out: dict[str, float] = {}
        for name, r in layer_ratios.items():
            if name not in by_name:
                known = ", ".join(u.name for u in self.units[:8])
                raise UserError(
                    f"no prunable layer '{name}' for this granularity (known: {known}, ...)"
                )
            out[by_name[name]] = float(r)
        return out

    def removed_report(self, removed: Mapping[str, list[int]]) -> dict[str, list[int]]:
        return {k: list(v) for k, v in removed.items()}

    def weight_sizes(self, after: bool = False) -> dict[str, int]:
        mods = dict(self.model.named_modules())
        out = {}
        for n in self.layers():
            m = mods.get(n)
            w = getattr(m, "weight", None)
            out[n] = int(w.numel()) if isinstance(w, torch.Tensor) else 0
        return out


def _criterion(config: PruneConfig, granularity: str) -> Any:
    from pruning_core.importance import get_importance

    crit = get_importance(
        config.method, norm=config.norm, seed=config.seed, calib_batches=config.calib_batches
    )
    if granularity not in crit.granularities:
        raise UserError(
            f"method '{config.method}' does not support {granularity} pruning "
            f"(it supports {', '.join(crit.granularities)})"
        )
    return crit


# ---- channels ----------------------------------------------------------------------------


@dataclass
class _Touch:
    """One tensor a channel group touches: module, dimension, and index map to root channels."""

    module: str
    kind: str  # "out" (conv/linear rows, norm weights), "in" (conv/linear columns), "param"
    idxs: torch.Tensor
    root: torch.Tensor
    dim: int = 0


class _ChannelPlan(_Plan):
    def __init__(self, model: nn.Module, spec: InputSpec, *, ignore: Iterable[str]) -> None:

        self.model = model
        mods = dict(model.named_modules())
        ignored: list[nn.Module] = [mods[n] for n in ignore if n in mods]
        ignored += _output_layers(model)
        # Splitting qkv's rows freely would mix heads; heads are pruned by `head` granularity.
        ignored += [a.qkv for _, a in _attention_modules(model)]
        ignored += [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
        self.dg = _dependency_graph(model, spec)
        self.names = {m: n for n, m in model.named_modules()}
        self.groups: dict[str, tuple[nn.Module, Any]] = {}
        self.touches: dict[str, list[_Touch]] = {}
        self.units = []
        for group in self.dg.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
            root_dep = group[0].dep
            root = root_dep.target.module
            name = self.names.get(root)
            if name is None or _grouped(group):
                continue
            outs = [
                self.names[it.dep.target.module]
                for it in group
                if self.dg.is_out_channel_pruning_fn(it.dep.handler)
                and isinstance(it.dep.target.module, _ROOT_TYPES)
                and it.dep.target.module in self.names
            ]
            size = self.dg.get_out_channels(root)
            if size is None or size < 2:
                continue
            self.groups[name] = (root, root_dep.handler)
            self.touches[name] = self._touches(group)
            self.units.append(_Unit(name, int(size), members=tuple(o for o in outs if o != name)))
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.units.sort(key=lambda u: order[u.name])

    def _touches(self, group: Any) -> list[_Touch]:
        import torch_pruning as tp

        out = []
        for it in group:
            dep, idxs = it.dep, it.idxs
            root = it.root_idxs
            if not idxs or root is None or any(r is None for r in root):
                continue
            target = dep.target.module
            t_idx = torch.as_tensor(list(idxs), dtype=torch.long)
            r_idx = torch.as_tensor(list(root), dtype=torch.long)
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                name = self.dg._param_to_name.get(target)
                if name is not None:
                    out.append(_Touch(name, "param", t_idx, r_idx, dim=dep.target.pruning_dim))
                continue
            name = self.names.get(target)
            if name is None:
                continue
            if isinstance(target, nn.Conv2d | nn.Linear | nn.Conv1d):
                depthwise = (
                    isinstance(target, nn.Conv2d) and target.groups == target.in_channels > 1
                )
                kind = "out" if is_out or depthwise else "in"
                out.append(_Touch(name, kind, t_idx, r_idx))
            elif isinstance(target, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
                out.append(_Touch(name, "out", t_idx, r_idx))
        return out

    def score(self, config: PruneConfig, spec: InputSpec, data: Any) -> None:
        import torch_pruning as tp

        crit = _criterion(config, "channel")
        layers = {}
        for name in self.groups:
            for t in self.touches[name]:
                if t.kind != "out":
                    continue
                m = self.model.get_submodule(t.module)
                if isinstance(m, _ROOT_TYPES):
                    layers[t.module] = m
        scores = crit.channel_scores(self.model, layers, data, spec)
        if config.method == "bn-scale" and not scores:
            raise UserError(
                "bn-scale needs BatchNorm layers after the convolutions; this model has none"
            )
        adapter = _GroupImportance(
            self.dg,
            self.names,
            scores,
            fallback=tp.importance.GroupMagnitudeImportance(p=config.norm, normalizer=None),
        )
        for u in self.units:
            root, fn = self.groups[u.name]
            group = self.dg.get_pruning_group(root, fn, list(range(u.size)))
            imp = adapter(group)
            if imp is None or len(imp) != u.size:
                imp = torch.ones(u.size)
            u.scores = imp.detach().float().cpu()

    def layers(self) -> list[str]:
        seen: dict[str, None] = {}
        for ts in self.touches.values():
            for t in ts:
                if t.kind != "param" and isinstance(
                    self.model.get_submodule(t.module), _ROOT_TYPES
                ):
                    seen[t.module] = None
        return list(seen)

    def shrink(self, removed: Mapping[str, list[int]]) -> None:
        for name, idxs in removed.items():
            root, fn = self.groups[name]
            self.dg.get_pruning_group(root, fn, list(idxs)).prune()

    @torch.no_grad()
    def masks(self, removed: Mapping[str, list[int]], *, apply: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, idxs in removed.items():
            sel = torch.zeros(next(u.size for u in self.units if u.name == name), dtype=torch.bool)
            sel[idxs] = True
            for t in self.touches[name]:
                hit = t.idxs[sel[t.root]]
                if not len(hit):
                    continue
                if t.kind == "param":
                    if apply:
                        p = self.model.get_parameter(t.module)
                        p.index_fill_(t.dim % p.dim(), hit.to(p.device), 0.0)
                    continue
                m = self.model.get_submodule(t.module)
                w = getattr(m, "weight", None)
                if not isinstance(w, torch.Tensor):
                    continue
                mask = out.get(t.module)
                if mask is None:
                    mask = out[t.module] = torch.ones(w.shape, dtype=torch.bool)
                dim = 0 if t.kind == "out" else 1
                mask.index_fill_(dim, hit, False)
                if apply:
                    w.index_fill_(dim, hit.to(w.device), 0.0)
                    b = getattr(m, "bias", None)
                    if t.kind == "out" and isinstance(b, torch.Tensor):
                        b.index_fill_(0, hit.to(b.device), 0.0)
        return out


class _GroupImportance(TPImportance):
    """Torch-Pruning importance adapter: a group's score per root channel is the mean of the
    criterion's per-output-channel scores of the group's conv/linear members.
    """

    def __init__(
        self,
        dg: Any,
        names: Mapping[nn.Module, str],
        scores: Mapping[str, torch.Tensor],
        fallback: Any,
    ) -> None:
        self.dg = dg
        self.names = names
        self.scores = scores
        self.fallback = fallback

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        acc: torch.Tensor | None = None
        n = 0
        size = len(group[0].idxs)
        for it in group:
            if not self.dg.is_out_channel_pruning_fn(it.dep.handler):
                continue  # a consumer's input columns: the criterion scores outputs
            name = self.names.get(it.dep.target.module)
            s = self.scores.get(name) if name is not None else None
            root = it.root_idxs
            if s is None or root is None or any(r is None for r in root):
                continue
            if acc is None:
                acc = torch.zeros(size, dtype=torch.float64)
            acc.scatter_add_(0, torch.as_tensor(list(root)), s.double()[list(it.idxs)])
            n += 1
        if acc is None:
            # Groups the criterion does not cover (e.g. bn-scale on a linear layer) fall back
            # to the filters' magnitude so they can still be ranked.
            return self.fallback(group)
        return (acc / n).float()


def _grouped(group: Any) -> bool:
    """Groups with grouped (non-depthwise) convs need channel-group bookkeeping; left out."""
    for it in group:
        m = it.dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels:
            return True
    return False


def _dependency_graph(model: nn.Module, spec: InputSpec) -> tp.DependencyGraph:
    import torch_pruning as tp

    p = next(model.parameters())
    example = torch.zeros(1, spec.channels, spec.size, spec.size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tp warns about auto-detected unwrapped parameters
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as e:  # tracing can fail in many ways on arbitrary user models
        raise UserError(
            f"could not trace the model for structured pruning: {type(e).__name__}: {e}"
        ) from None
    finally:
        model.train(was_training)


# ---- heads -------------------------------------------------------------------------------


def _attention_modules(model: nn.Module) -> list[tuple[str, Any]]:
    """Attention layers with `num_heads`, `head_dim` and Linear `qkv`/`proj` (the sample ViT)."""
    out = []
    for n, m in model.named_modules():
        qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
        h, d = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
        if (
            isinstance(qkv, nn.Linear)
            and isinstance(proj, nn.Linear)
            and isinstance(h, int)
            and isinstance(d, int)
            and qkv.out_features == 3 * h * d
            and proj.in_features == h * d
        ):
            out.append((n, m))
    return out


def _swap_multihead_attention(model: nn.Module) -> None:
    """Replace torchvision-style self-attention `nn.MultiheadAttention` by `SelfAttention`.

    The swap is exact (same weights, same outputs) and gives each head its own rows in `qkv`
    and columns in `proj`, which `nn.MultiheadAttention` cannot shrink. Only batch-first MHA with
    a fused in-projection is swapped: that is how torchvision's ViT encoder blocks use it.
    """
    from pruning_core.models.architectures import SelfAttention

    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MultiheadAttention):
            try:
                new = SelfAttention.from_mha(mod)
            except ValueError as e:
                raise UserError(f"cannot prune heads of '{name}': {e}") from None
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)


class _HeadPlan(_Plan):
    def __init__(self, model: nn.Module, *, ignore: Iterable[str]) -> None:
        self.model = model
        skip = set(ignore)
        _swap_multihead_attention(model)
        found = _attention_modules(model)
        if not found:
            raise UserError(f"head pruning needs attention layers; {type(model).__name__} has none")
        self.attn: dict[str, Any] = {
            n: m for n, m in found if not ({n, f"{n}.qkv", f"{n}.proj"} & skip)
        }
        self.units = [
            _Unit(n, int(m.num_heads), members=(f"{n}.qkv", f"{n}.proj"), roundable=False)
            for n, m in self.attn.items()
        ]
        if not self.units:
            raise UserError("every attention layer is in the ignore list: nothing to prune")

    def score(self, config: PruneConfig, spec: InputSpec, data: Any) -> None:
        crit = _criterion(config, "head")
        layers = {f"{n}.qkv": m.qkv for n, m in self.attn.items()}
        scores = crit.channel_scores(self.model, layers, data, spec)
        for u in self.units:
            m = self.attn[u.name]
            s = scores[f"{u.name}.qkv"].view(3, m.num_heads, m.head_dim)
            u.scores = s.sum(dim=(0, 2)).float()

    def layers(self) -> list[str]:
        return [f"{n}.{p}" for n in self.attn for p in ("qkv", "proj")]

    def _rows_cols(self, m: Any, heads: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        h, d = m.num_heads, m.head_dim
        cols = (
            torch.cat([torch.arange(k * d, (k + 1) * d) for k in heads])
            if heads
            else torch.empty(0, dtype=torch.long)
        )
        rows = torch.cat([cols + part * h * d for part in range(3)]) if heads else cols
        return rows, cols

    @torch.no_grad()
    def shrink(self, removed: Mapping[str, list[int]]) -> None:
        for name, heads in removed.items():
            m = self.attn[name]
            keep = [k for k in range(m.num_heads) if k not in set(heads)]
            rows, cols = self._rows_cols(m, keep)
            qkv, proj = m.qkv, m.proj
            qkv.weight = nn.Parameter(
                qkv.weight[rows.to(qkv.weight.device)].clone(), qkv.weight.requires_grad
            )
            if qkv.bias is not None:
                qkv.bias = nn.Parameter(
                    qkv.bias[rows.to(qkv.bias.device)].clone(), qkv.bias.requires_grad
                )
            qkv.out_features = len(rows)
            proj.weight = nn.Parameter(
                proj.weight[:, cols.to(proj.weight.device)].clone(), proj.weight.requires_grad
            )
            proj.in_features = len(cols)
            m.num_heads = len(keep)

    @torch.no_grad()
    def masks(self, removed: Mapping[str, list[int]], *, apply: bool) -> dict[str, torch.Tensor]:
        out = {}
        for name, heads in removed.items():
            m = self.attn[name]
            rows, cols = self._rows_cols(m, heads)
            mq = torch.ones(m.qkv.weight.shape, dtype=torch.bool)
            mq[rows] = False
            mp = torch.ones(m.proj.weight.shape, dtype=torch.bool)
            mp[:, cols] = False
            out[f"{name}.qkv"], out[f"{name}.proj"] = mq, mp
            if apply:
                # Zero q, k, v (and their biases) of a removed head: its output is then exactly 0,
                # as if it were gone.
                m.qkv.weight[rows.to(m.qkv.weight.device)] = 0.0
                if m.qkv.bias is not None:
                    m.qkv.bias[rows.to(m.qkv.bias.device)] = 0.0
                m.proj.weight[:, cols.to(m.proj.weight.device)] = 0.0
        return out


# ---- blocks ------------------------------------------------------------------------------


def _is_residual_block(m: nn.Module) -> bool:
    """Blocks that add their input back unchanged (identity shortcut)."""
    from pruning_core.models import architectures as A

    if isinstance(m, A.BasicBlock):
        return isinstance(m.shortcut, nn.Identity)
    if isinstance(m, A.TransformerBlock):
        return True
    cls = type(m).__name__
    mod = type(m).__module__
    if mod.startswith("torchvision.models"):
        if cls in ("BasicBlock", "Bottleneck"):
            return getattr(m, "downsample", None) is None
        if cls in ("EncoderBlock", "CNBlock", "SwinTransformerBlock", "SwinTransformerBlockV2"):
            return True
        if cls in ("InvertedResidual", "MBConv", "FusedMBConv"):
            return bool(getattr(m, "use_res_connect", False))
    return False


def removable_blocks(model: nn.Module, spec: InputSpec) -> list[str]:
    """Residual blocks with an identity shortcut whose output shape equals their input shape.

    Such a block computes x + f(x) (possibly followed by a ReLU of a non-negative x), so
    replacing it by `nn.Identity` keeps every shape and drops only f.
    """
    cands = [(n, m) for n, m in model.named_modules() if n and _is_residual_block(m)]
    if not cands:
        return []
    same: dict[str, bool] = {}
    handles = []
    for n, m in cands:

        def hook(_m: nn.Module, i: tuple[Any, ...], o: Any, n: str = n) -> None:
            same[n] = (
                bool(i) and isinstance(o, torch.Tensor) and tuple(i[0].shape) == tuple(o.shape)
            )

        handles.append(m.register_forward_hook(hook))
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(
                torch.zeros(1, spec.channels, spec.size, spec.size, device=p.device, dtype=p.dtype)
            )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = [n for n, _ in cands if same.get(n)]
    # A block nested in another removable block is removed with it.
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


class _BlockPlan(_Plan):
    NAME = "blocks"

    def __init__(self, model: nn.Module, spec: InputSpec, *, ignore: Iterable[str]) -> None:
        self.model = model
        skip = set(ignore)
        self.blocks = [
            b
            for b in removable_blocks(model, spec)
            if not any(s == b or s.startswith(b + ".") for s in skip)
        ]
        if not self.blocks:
            raise UserError(
                "block pruning needs residual blocks with an identity shortcut; "
                f"{type(model).__name__} has none"
            )
        self.units = [
            _Unit(self.NAME, len(self.blocks), members=tuple(self.blocks), roundable=False)
        ]
        mods = dict(model.named_modules())
        # Fixed at planning time: removed blocks' layers vanish from the model when shrunk.
        self._layers = [
            f"{b}.{n}" if n else b
            for b in self.blocks
            for n, m in mods[b].named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        ]

    def resolve_overrides(self, layer_ratios: Mapping[str, float]) -> dict[str, float]:
        if layer_ratios:
            raise UserError(
                "block pruning takes one ratio (the share of removable blocks); "
                "per-layer ratios do not apply"
            )
        return {}

    def score(self, config: PruneConfig, spec: InputSpec, data: Any) -> None:
        method = config.method
        if method not in BLOCK_METHODS:
            raise UserError(
                f"method '{method}' does not support block pruning "
                f"(choose from {', '.join(BLOCK_METHODS)})"
            )
        mods = dict(self.model.named_modules())
        if method == "random":
            s = torch.rand(len(self.blocks), generator=torch.Generator().manual_seed(config.seed))
        elif method == "magnitude":
            s = torch.tensor([_mean_abs(mods[b], config.norm) for b in self.blocks])
        elif method == "bn-scale":
            s = torch.tensor([_closing_bn_scale(mods[b], b) for b in self.blocks])
        else:
            if data is None:
                raise UserError(
                    f"method '{method}' needs calibration data for block pruning: give a dataset"
                )
            s = _block_data_scores(
                self.model, self.blocks, method, data, spec, config.calib_batches
            )
        self.units[0].scores = s.float()

    def layers(self) -> list[str]:
        return self._layers

    def shrink(self, removed: Mapping[str, list[int]]) -> None:
        for i in removed.get(self.NAME, []):
            path = self.blocks[i]
            parent, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, nn.Identity())

    @torch.no_grad()
    def masks(self, removed: Mapping[str, list[int]], *, apply: bool) -> dict[str, torch.Tensor]:
        out = {}
        for i in removed.get(self.NAME, []):
            path = self.blocks[i]
            block = self.model.get_submodule(path)
            for n, m in block.named_modules():
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and isinstance(m, nn.Conv2d | nn.Linear):
                    out[f"{path}.{n}" if n else path] = torch.zeros(w.shape, dtype=torch.bool)
            if apply:
                # With every parameter zero (norm scales and shifts included) the residual
                # branch outputs 0, so the block passes its input through like nn.Identity.
                for p in block.parameters():
                    p.zero_()
        return out

    def removed_report(self, removed: Mapping[str, list[int]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i in removed.get(self.NAME, []):
            parent, _, leaf = self.blocks[i].rpartition(".")
            if leaf.isdigit():
                out.setdefault(parent, []).append(int(leaf))
            else:
                out.setdefault(self.blocks[i], []).append(0)
        return out


def _mean_abs(block: nn.Module, norm: int) -> float:
    ws = [
        m.weight.detach().float().abs().pow(norm).flatten()
        for m in block.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    return float(torch.cat(ws).mean()) if ws else 0.0


def _closing_bn_scale(block: nn.Module, name: str) -> float:
    bns = [
        m
        for m in block.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    if not bns:
        raise UserError(f"bn-scale block pruning needs BatchNorm in every block; '{name}' has none")
    return float(bns[-1].weight.detach().abs().mean())


@torch.no_grad()
def _block_data_scores(
    model: nn.Module, blocks: Sequence[str], method: str, data: Any, spec: InputSpec, batches: int
) -> torch.Tensor:
    from pruning_core.importance import CALIB_BATCH_SIZE

    mods = dict(model.named_modules())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batch_list = list(
        data.batches("calib", spec, CALIB_BATCH_SIZE, limit=batches * CALIB_BATCH_SIZE)
    )
    if not batch_list:
        raise UserError(
            "the calibration split is empty: data-driven block criteria need calibration images"
        )
    try:
        if method == "activation":
            acc = torch.zeros(len(blocks), dtype=torch.float64)
            handles = []
            for i, b in enumerate(blocks):

                def hook(_m: nn.Module, inp: tuple[Any, ...], o: Any, i: int = i) -> None:
                    x = inp[0].float()
                    acc[i] += float((o.float() - x).norm() / x.norm().clamp_min(1e-12))

                handles.append(mods[b].register_forward_hook(hook))
            try:
                for xb, _ in batch_list:
                    model(xb.to(device))
            finally:
                for h in handles:
                    h.remove()
            return (acc / len(batch_list)).float()
        if method == "taylor":

            def loss() -> float:
                return float(
                    sum(
                        F.cross_entropy(model(xb.to(device)).float(), yb.to(device))
                        for xb, yb in batch_list
                    )
                ) / len(batch_list)

            base = loss()
            out = []
            for b in blocks:
                h = mods[b].register_forward_hook(lambda _m, inp, _o: inp[0])
                try:
                    out.append(loss() - base)
                finally:
                    h.remove()
            return torch.tensor(out)
    finally:
        model.train(was_training)
    raise UserError(
        f"method '{method}' does not support block pruning (choose from {', '.join(BLOCK_METHODS)})"
    )


# --------------------------------------------------------------------------------------------
# helpers


def _output_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier: the last Linear, or the last conv of a fully convolutional model."""
    last_lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if last_lin:
        return [last_lin[-1]]
    convs: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def _default_ignore(model: nn.Module) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m in _output_layers(model)]


def _resolve_ignore(model: nn.Module, config: PruneConfig) -> list[str]:
    """Module names the config's ignore patterns cover (prune.py owns the pattern rules)."""
    from pruning_core.prune import ignored_patterns, matches_pattern

    patterns = ignored_patterns(model, config)
    return [
        n for n, _ in model.named_modules() if n and any(matches_pattern(n, p) for p in patterns)
    ]


def _guess_spec(model: nn.Module) -> InputSpec:
    """An input spec that the model accepts, for callers that have none (tracing only)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    sizes: tuple[int, ...]
    if isinstance(first, nn.Conv2d):
        sizes, channels = (32, 28, 8, 224, 64, 96, 128), first.in_channels
    elif isinstance(first, nn.Linear):
        channels = 1
        side = math.isqrt(first.in_features)
        sizes = (side,) if side * side == first.in_features else ()
    else:
        sizes, channels = (), 1
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        for s in sizes:
            try:
                with torch.no_grad():
                    model(torch.zeros(1, channels, s, s, device=p.device, dtype=p.dtype))
            except Exception:  # a wrong guess fails in model-specific ways; try the next size
                continue
            return InputSpec(channels, s, (0.0,) * channels, (1.0,) * channels, 1)
    finally:
        model.train(was_training)
    raise UserError("cannot infer the input shape of this model: pass its input spec")
