"""The slider path of the Prune page: scores once, masks and measurements per slider move.

A `SliderPreview` owns one session's working copy of the model (`layers.trainable_copy`: the
shared model is only read). Importance is computed and sorted once by
`pruning_core.prune.Preview` over any granularity plan (structured plans in mask mode); each
slider move restores the dense weights, applies the new masks and measures the copy: non-zero
parameters, the MACs a sparse kernel (or the shrunk model) would do, per-layer sparsity and,
optionally, an accuracy estimate on a few validation images.

The histogram and mask-picture helpers (`binned`, `before_after`, `mask_grid`,
`channel_sparsity`) turn tensors into the frames the plots draw. Nothing here imports Streamlit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.evaluate import predict_logits
from pruning_core.layers import model_sparsity, rebased_sparsity, trainable_copy, weight_of
from pruning_core.models import LoadedModel, sparsity_base
from pruning_core.prune import Preview, PruneConfig, settle_structured
from pruning_core.stats import count_macs, layer_macs, own_macs, weight_layers

__all__ = [
    "ESTIMATE_FIRST",
    "HIST_BINS",
    "MASK_COLS",
    "MASK_ROWS",
    "EstimateCache",
    "LayerView",
    "PreviewStats",
    "SliderPreview",
    "before_after",
    "binned",
    "channel_sparsity",
    "mask_grid",
    "mask_is_averaged",
    "wilson_interval",
]

HIST_BINS = 60
# The first accuracy estimate uses at most this many images (fast, with a wide interval); more
# follow in doubling chunks up to the number asked for, each shown as it lands.
ESTIMATE_FIRST = 100
# On a slow model the first step is cut to about this much forward pass (seconds), from the
# throughput the preview's earlier steps measured, but never below ESTIMATE_FIRST_MIN images:
# a first number soon after the charts matters more on a slider than a narrow first interval
# (shapes-resnet, one core: 100 images ~0.12 s, the whole estimate shown 0.4 s after the
# preview; later steps refine it as before).
ESTIMATE_FIRST_SECONDS = 0.05
ESTIMATE_FIRST_MIN = 25
# A later step's forward pass runs in chunks of about this long, and `estimate_steps` asks
# `stop` between them: a slider moved again waits for one chunk, not a whole step (the step
# from 250 to 500 images of shapes-resnet is ~0.4 s on one core, and was the slider's p95).
ESTIMATE_CHUNK_SECONDS = 0.06
# Estimates kept per preview, by slider position (moving back to one costs nothing).
ESTIMATES_KEPT = 64
# The mask picture's largest grid; bigger weights are averaged into cells.
MASK_ROWS, MASK_COLS = 96, 192


@dataclass
class PreviewStats:
    """What one slider position gives (all measured on the session's masked copy).

    Attributes:
        params_nonzero: Non-zero parameters of the whole model.
        macs_effective: MACs per image that skipping the removed weights would leave: for
            structured plans the applied (shrunk) model's `stats.count_macs`, attention
            products of removed heads and blocks included; for unstructured and N:M the
            effective MACs of `stats.model_stats` (each layer's dense MACs times its density).
        layers: One row per Linear/Conv layer: layer, params, sparsity, pruned (bool).
        masks: Keep-masks per pruned layer (shared tensors: do not modify).
        sparsity: Share of weights the selection zeroes over all Linear/Conv layers (the
            classifier included; biases and BatchNorm not counted).
        accuracy: Top-1 on the first `n_eval` validation images (None when not asked).
        n_eval: Images the accuracy estimate used.
        seconds: Time to compute masks and statistics (without the accuracy estimate).
        eval_seconds: Time of the accuracy estimate.
        notes: Layers or groups the plan skips, and why.
        accuracy_interval: The estimate's 95% interval (low, high), fractions: the Wilson
            score interval of a binomial proportion on `n_eval` images; None without one.
        position: What the masks depend on (ratio, per-layer ratios, scope): estimates are
            kept per position, so going back to a slider position costs nothing.
    """

    params_nonzero: int
    macs_effective: float
    layers: pd.DataFrame
    masks: dict[str, torch.Tensor]
    sparsity: float = 0.0
    accuracy: float | None = None
    n_eval: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    accuracy_interval: tuple[float, float] | None = None
    position: tuple[Any, ...] = ()


@dataclass
class LayerView:
    """One layer at one slider position, ready to draw.

    Attributes:
        histogram: Before/after weight histograms (`before_after`).
        zeros_added: Weights this selection sets to zero (zeros already there not counted).
        mask: Its keep-mask (from the selection, or the non-zero weights when not pruned).
    """

    histogram: pd.DataFrame
    zeros_added: int
    mask: torch.Tensor


class EstimateCache:
    """Finished accuracy estimates by slider position, least recently used dropped first.

    One cache can serve every `SliderPreview` of the same dense model, dataset, criterion,
    granularity and kept-dense layers: the estimate at a position is then a pure function of
    the position, so the app shares one per selection across a server's sessions (a class
    steps the same slider through the same positions: each is evaluated once). Thread-safe:
    sessions run in threads of one process.

    Args:
        maxsize: Entries kept (>= 1).
    """

    def __init__(self, maxsize: int = ESTIMATES_KEPT) -> None:
        self.maxsize = max(1, int(maxsize))
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The entry for `key` (marked recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple[Any, ...], value: tuple[Any, ...]) -> None:
        """Keep `value` for `key`, dropping the least recently used beyond `maxsize`."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# MAC counts of dense models, shared by every preview of the same model object and structure:
# each is a forward pass under torch's FlopCounterMode (tens to hundreds of ms), and a class of
# students opening Prune on the shared sample model would count the same numbers once each.
_COUNTS: OrderedDict[tuple[Any, ...], tuple[int, dict[str, int], dict[str, int]]] = OrderedDict()
_COUNTS_LOCK = threading.Lock()
_COUNTS_KEPT = 32


def _dense_counts(
    base: LoadedModel, copy: nn.Module, work: tuple[str, ...]
) -> tuple[int, dict[str, int], dict[str, int]]:
    """(MACs per image, per-layer MACs, MACs each of `work` does outside its layers) of the
    dense `copy` of `base`, counted once per base model object, structure (every module's type
    and every parameter's shape: an in-place change that alters the work changes the key),
    input spec and `work`."""
    structure = tuple(
        (n, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
        for n, m in base.model.named_modules()
    )
    key = (id(base.model), structure, base.spec, work)
    with _COUNTS_LOCK:
        hit = _COUNTS.get(key)
        if hit is not None:
            _COUNTS.move_to_end(key)
            return hit[0], dict(hit[1]), dict(hit[2])
    got = (
        count_macs(copy, base.spec),
        layer_macs(copy, base.spec),
        own_macs(copy, base.spec, work),
    )
    with _COUNTS_LOCK:
        _COUNTS[key] = got
        while len(_COUNTS) > _COUNTS_KEPT:
            _COUNTS.popitem(last=False)
    return got[0], dict(got[1]), dict(got[2])


class SliderPreview:
    """Slider engine for one (model, dataset, criterion, granularity) in one session.

    Args:
        base: The dense model (only read: the preview works on its own trainable copy).
        config: Criterion, granularity, options (ratios come with `update`).
        data: The DataBundle (calibration for data-driven criteria, estimates).
        estimates: Where finished estimates are kept by position (None: a cache of this
            preview's own). Pass one `EstimateCache` to every preview of the same model,
            dataset, criterion, granularity and `ignore` to share them.

    Attributes:
        config: The config the scores were computed for.
        engine: The `prune.Preview` holding the scores; `prune_(..., scores=engine)` reuses them.
        unit_names: What per-layer ratios key on (layers, channel groups, attention layers...).
        unit_sizes: Prunable elements per unit.
        dense_weights: The dense weight of every Linear/Conv layer (copies).
        params_nonzero_dense: Non-zero parameters of the dense model.
        macs_dense: MACs per image of the dense model.
        build_seconds: Time the scoring took.

    Raises:
        UserError: The criterion or granularity does not fit the model (as `prune.Preview`).
    """

    def __init__(
        self,
        base: LoadedModel,
        config: PruneConfig,
        data: Any,
        estimates: EstimateCache | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.spec = base.spec
        self.data = data
        # Gradient criteria (taylor) need trainable parameters; the copy is this preview's own.
        self.model = trainable_copy(base.model, "cpu").eval()
        self._dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # BatchNorm running statistics: what recalibration changes and `_settle` puts back.
        self._bn_buffers = [
            f"{n}.{b}" if n else b
            for n, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for b, t in m.named_buffers(recurse=False)
            if t is not None
        ]
        self._layers = [(n, weight_of(m)) for n, m in weight_layers(self.model)]
        self.dense_weights = {n: w.detach().clone() for n, w in self._layers}
        # Structured plans preview in mask mode: shapes stay, so the sliders can go back.
        scored = config.replace(structured_mode="mask") if config.structured else config
        self.engine = Preview(self.model, scored, data, base.spec)
        self._restore()
        self.unit_names: list[str] = list(self.engine.layer_names)
        self.unit_sizes: dict[str, int] = dict(self.engine.layer_sizes)
        # Every parameter in one flat order: counting zeros is then a few tensor ops, not one
        # per layer (slider moves stay fast on many-layer models and busy CPUs).
        self._params = list(self.model.parameters())
        index = {id(p): i for i, p in enumerate(self._params)}
        self._layer_index = [index[id(w)] for _, w in self._layers]
        self._sizes = [p.numel() for p in self._params]
        self.params_total = sum(self._sizes)
        self._dense_nonzero = self._nonzero_per_param()
        self.params_nonzero_dense = int(self._dense_nonzero.sum())
        # Work no weight layer owns (attention's query-key and attention-value products) goes
        # with removed heads and blocks too: the applied model's count (`count_macs`) drops.
        self.macs_dense, self.layer_macs, self.own_macs = _dense_counts(
            base, self.model, tuple(self.engine.plan.work_modules())
        )
        # A shrunk model (a pruned folder or upload) states its sparsity against its dense
        # architecture, as `evaluate` and Apply do: the weights it no longer has.
        own, dense = sparsity_base(base)
        self._gone = max(dense - own, 0)
        self._estimates = estimates if estimates is not None else EstimateCache()
        # Seconds per image of this preview's last estimate step (None: none measured yet).
        self._seconds_per_image: float | None = None
        self.build_seconds = time.perf_counter() - t0

    def _restore(self) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(self._dense[k])

    def _nonzero_per_param(self) -> torch.Tensor:
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self._params])
            nz = (flat != 0).to(torch.int64).cumsum(0)
        ends = torch.tensor(self._sizes).cumsum(0) - 1
        at_end = nz[ends]
        return at_end - torch.cat([torch.zeros(1, dtype=torch.int64), at_end[:-1]])

    def masks(
        self, ratio: float, layer_ratios: Mapping[str, float] | None = None, scope: str = "global"
    ) -> dict[str, torch.Tensor]:
        """Keep-masks for these ratios, applied to the working copy (from the dense weights)."""
        if self.engine.plan.structured:
            self._restore()  # mask mode also zeroes biases and BatchNorm entries
            return self.engine.masks(ratio, layer_ratios, scope, apply=True)
        masks = self.engine.masks(ratio, layer_ratios, scope)
        weights = dict(self._layers)
        with torch.no_grad():
            for n, m in masks.items():
                torch.mul(self.dense_weights[n], m, out=weights[n])
        return masks

    def update(
        self,
        ratio: float,
        layer_ratios: Mapping[str, float] | None = None,
        scope: str = "global",
        *,
        n_eval: int | None = None,
    ) -> PreviewStats:
        """Masks and measured statistics for a slider position.

        Args:
            ratio: Global ratio (or per-layer in `layer` scope).
            layer_ratios: Per-layer overrides (keys: `unit_names`).
            scope: `global` or `layer`.
            n_eval: Also estimate accuracy on this many validation images (see `estimate`).

        Raises:
            UserError: Ratios the plan refuses (beyond max_layer_ratio, unknown layers).
        """
        t0 = time.perf_counter()
        masks = self.masks(ratio, layer_ratios, scope)
        nonzero = self._nonzero_per_param()
        # Low rank writes rank-r weights in dense shapes: no zeros to count, so the counts are
        # those of the factorised layers the same selection gives (`LowRankPlan.kept_share`).
        kept_share = getattr(self.engine.plan, "kept_share", None)
        selection = (
            self.engine.select(ratio, layer_ratios, scope) if kept_share or self.own_macs else {}
        )
        kept: dict[str, float] = kept_share(selection) if kept_share else {}
        rows = []
        macs = float(self.macs_dense)
        for name, share in self.engine.plan.work_removed(selection).items():
            macs -= self.own_macs.get(name, 0) * share
        removed_params = 0.0
        removed: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for (name, w), i in zip(self._layers, self._layer_index, strict=True):
            nz, dense_nz = int(nonzero[i]), int(self._dense_nonzero[i])
            if name in kept:
                sparsity = 1.0 - min(kept[name], 1.0)
                removed_params += w.numel() * sparsity
                cut = sparsity > 0
            else:
                sparsity = 1.0 - nz / max(w.numel(), 1)
                cut = name in masks and nz < dense_nz
            macs -= self.layer_macs.get(name, 0) * sparsity
            sizes[name] = w.numel()
            # Every zero counts, an earlier run's too (`layers.measured_model_sparsity`).
            removed[name] = sparsity
            rows.append(
                {
                    "layer": name,
                    "params": w.numel(),
                    "sparsity": sparsity,
                    "pruned": cut,
                }
            )
        layers = pd.DataFrame(rows, columns=["layer", "params", "sparsity", "pruned"])
        counted = sum(sizes.values())
        share = rebased_sparsity(model_sparsity(removed, sizes), counted, counted + self._gone)
        stats = PreviewStats(
            params_nonzero=int(nonzero.sum()) - round(removed_params),
            macs_effective=macs,
            layers=layers,
            masks=masks,
            sparsity=share,
            notes=list(self.engine.notes),
            position=(
                round(float(ratio), 6),
                tuple(sorted((k, round(float(v), 6)) for k, v in (layer_ratios or {}).items())),
                scope,
            ),
        )
        stats.seconds = time.perf_counter() - t0
        if n_eval:
            self.estimate(stats, n_eval)
        return stats

    def estimate(
        self, stats: PreviewStats, n_eval: int, *, recalibrate_bn: bool | None = None
    ) -> PreviewStats:
        """Fill `stats` with top-1 accuracy of the masked copy on the first `n_eval` validation
        images (an estimate: a subset, and before any fine-tuning); `estimate_steps` to the end.
        """
        for _ in self.estimate_steps(stats, n_eval, recalibrate_bn=recalibrate_bn):
            pass
        return stats

    @property
    def has_batchnorm(self) -> bool:
        """True when the model has BatchNorm layers with running statistics (so BatchNorm
        recalibration after structured pruning changes something)."""
        return bool(self._bn_buffers)

    def recalibrates(self, recalibrate_bn: bool | None = None) -> bool:
        """True when an estimate with this setting (None: the config's) re-estimates BatchNorm
        statistics: a structured granularity, a model with BatchNorm, and the switch on."""
        on = self.config.recalibrate_bn if recalibrate_bn is None else recalibrate_bn
        return bool(on and self.config.structured and self.has_batchnorm)

    def _settle(self, recalibrate_bn: bool) -> None:
        """BatchNorm statistics as `prune_` leaves them with this setting: the dense ones put
        back first (an earlier estimate may have re-estimated them), then re-estimated when
        on (`prune.settle_structured`)."""
        state = self.model.state_dict()
        with torch.no_grad():
            for k in self._bn_buffers:
                state[k].copy_(self._dense[k])
        settle_structured(
            self.model, self.config.replace(recalibrate_bn=recalibrate_bn), self.data, self.spec
        )

    def estimate_steps(
        self,
        stats: PreviewStats,
        n_eval: int,
        *,
        first: int | None = None,
        recalibrate_bn: bool | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[PreviewStats]:
        """The accuracy estimate, refined in steps: yields `stats` filled on the first `first`
        validation images (default `first_step_images()`), then on twice as many, ... up to
        `n_eval` (each step evaluates only the images it adds). A page shows each step as it
        lands and stops when the user moves on; the last step equals
        `evaluate(model, data, spec, limit=n_eval)`.

        Structured plans first re-estimate BatchNorm statistics as Apply does
        (`prune.settle_structured`; with `recalibrate_bn` off the dense statistics stay, as
        `prune_` leaves them with `PruneConfig(recalibrate_bn=False)`), so the estimate is the
        accuracy the applied model has on the same images. The next slider move restores the
        dense statistics. Finished estimates are kept per slider position (`stats.position`),
        `n_eval` and the recalibration setting.

        Args:
            stats: What `update` returned for the current position (filled in place).
            n_eval: Validation images of the final step (fewer when the split is smaller).
            first: Images of the first step (None: `first_step_images()`).
            recalibrate_bn: Re-estimate BatchNorm statistics first (None: the config's
                `recalibrate_bn`).
            stop: Asked between chunks of about `ESTIMATE_CHUNK_SECONDS` of forward pass; when
                it returns True the estimate ends there, `stats` left at the last yielded step
                (the user moved on: nobody waits for the rest).

        Yields:
            `stats` with `accuracy`, `n_eval`, `accuracy_interval` and `eval_seconds` set.
        """
        t1 = time.perf_counter()
        recal = self.config.recalibrate_bn if recalibrate_bn is None else bool(recalibrate_bn)
        key = (stats.position, int(n_eval), self.recalibrates(recal))
        kept = self._estimates.get(key) if stats.position else None
        if kept is not None:
            stats.accuracy, stats.n_eval, stats.accuracy_interval = kept
            stats.eval_seconds = time.perf_counter() - t1
            yield stats
            return
        self._settle(recal)
        x, y = self.data.tensors("val", self.spec, int(n_eval))
        first = self.first_step_images() if first is None else int(first)
        correct, done = 0, 0
        while done < len(y):
            end = min(len(y), max(first, 2 * done))
            at = done
            while at < end:
                if stop is not None and at > done and stop():
                    return
                chunk = end - at
                if self._seconds_per_image:
                    chunk = min(
                        chunk, max(1, int(ESTIMATE_CHUNK_SECONDS / self._seconds_per_image))
                    )
                t_step = time.perf_counter()
                logits = predict_logits(self.model, x[at : at + chunk])
                self._seconds_per_image = (time.perf_counter() - t_step) / chunk
                correct += int((logits.argmax(1) == y[at : at + chunk]).sum())
                at += chunk
            done = end
            stats.accuracy, stats.n_eval = correct / done, done
            stats.accuracy_interval = wilson_interval(correct, done)
            stats.eval_seconds = time.perf_counter() - t1
            yield stats
        if stats.position:
            self._estimates.put(key, (stats.accuracy, stats.n_eval, stats.accuracy_interval))

    def first_step_images(self) -> int:
        """Images of the estimate's first step: `ESTIMATE_FIRST`, or fewer (at least
        `ESTIMATE_FIRST_MIN`) when this preview's last step measured that many would take
        longer than `ESTIMATE_FIRST_SECONDS` of forward pass."""
        if not self._seconds_per_image:
            return ESTIMATE_FIRST
        fit = int(ESTIMATE_FIRST_SECONDS / self._seconds_per_image)
        return max(ESTIMATE_FIRST_MIN, min(ESTIMATE_FIRST, fit))

    def layer_weight(self, name: str) -> torch.Tensor:
        """The working copy's (masked) weight of a layer."""
        return weight_of(dict(self.model.named_modules())[name]).detach()

    def layer_view(self, stats: PreviewStats, name: str) -> LayerView:
        """The histogram, new zeros and mask of one layer at the position `stats` measured."""
        dense, after = self.dense_weights[name], self.layer_weight(name)
        mask = stats.masks.get(name)
        return LayerView(
            histogram=before_after(dense, after),
            zeros_added=int((after == 0).sum()) - int((dense == 0).sum()),
            mask=mask if mask is not None else after != 0,
        )


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927): where the accuracy
    on all images lies, at 95% for z = 1.96, given `correct` of `n` images. Unlike the normal
    approximation it stays inside [0, 1] near 0% and 100%.

    Returns:
        (low, high), fractions; (0, 1) for n = 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binned(
    values: torch.Tensor, lo: float, hi: float, bins: int = HIST_BINS, series: str = ""
) -> pd.DataFrame:
    """Histogram of `values` on fixed edges [lo, hi] (values outside are clamped in).

    Returns:
        Columns series, left, right, count (one row per bin).
    """
    v = values.detach().float().reshape(-1)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(v.clamp(lo, hi), bins=bins, min=lo, max=hi) if v.numel() else None
    edges = torch.linspace(lo, hi, bins + 1)
    return pd.DataFrame(
        {
            "series": series,
            "left": edges[:-1].tolist(),
            "right": edges[1:].tolist(),
            "count": [0] * bins if counts is None else counts.round().long().tolist(),
        }
    )


def before_after(
    dense: torch.Tensor, after: torch.Tensor | None, bins: int = HIST_BINS
) -> pd.DataFrame:
    """Before/after histograms on the same edges; the pruned weights (exact zeros that were not
    zero before) are left out of "after" so its shape stays readable."""
    lo, hi = float(dense.min()), float(dense.max())
    parts = [binned(dense, lo, hi, bins, "before")]
    if after is not None:
        kept = after[(after != 0) | (dense == 0)] if after.shape == dense.shape else after.flatten()
        parts.append(binned(kept, lo, hi, bins, "after (kept weights)"))
    return pd.concat(parts, ignore_index=True)


def mask_grid(
    mask: torch.Tensor, max_rows: int = MASK_ROWS, max_cols: int = MASK_COLS
) -> pd.DataFrame:
    """A weight mask as a 2-D picture: rows are output channels, columns the rest (in_ch x k x k).

    Large layers are averaged into at most `max_rows` x `max_cols` cells (each cell: the kept
    share of the weights it covers); index/columns give each cell's first row/column.
    """
    m2 = mask.detach().reshape(mask.shape[0], -1).float()
    r, c = m2.shape
    rows, cols = min(r, max_rows), min(c, max_cols)
    if (rows, cols) != (r, c):
        m2 = F.adaptive_avg_pool2d(m2[None, None], (rows, cols))[0, 0]
    return pd.DataFrame(
        m2.numpy(),
        index=[i * r // rows for i in range(rows)],
        columns=[j * c // cols for j in range(cols)],
    )


def mask_is_averaged(
    mask: torch.Tensor, max_rows: int = MASK_ROWS, max_cols: int = MASK_COLS
) -> bool:
    """True when `mask_grid` averages this mask into cells (it is larger than the grid)."""
    return mask[0].numel() > max_cols or mask.shape[0] > max_rows


def channel_sparsity(model: nn.Module, slices: int = 24) -> pd.DataFrame:
    """Share of zero weights per layer in equal slices of its output channels (for a heatmap).

    Returns:
        Columns layer, position, slice ("a-b": channels covered), sparsity.
    """
    rows = []
    for name, mod in weight_layers(model):
        weight = weight_of(mod).detach()
        w = weight.reshape(weight.shape[0], -1)
        zero = (w == 0).float().mean(1)
        n = w.shape[0]
        k = min(slices, n)
        for i in range(k):
            a, b = i * n // k, (i + 1) * n // k
            rows.append(
                {
                    "layer": name,
                    "position": i,
                    "slice": f"{a}-{b - 1}" if b - a > 1 else str(a),
                    "sparsity": float(zero[a:b].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["layer", "position", "slice", "sparsity"])
