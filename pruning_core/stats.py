"""Model statistics: parameters, sparsity, FLOPs/MACs, size in bytes, histograms, activations.

Everything the UI shows about a model's insides comes from here as small tables and binned
histograms (a fixed bin count), never as raw tensors. Sizes are computed for the formats a
pruned layer could be stored in:

- dense fp32: 4 bytes per weight;
- CSR: the non-zero values (4 bytes each), one column index per value and one row pointer per
  row plus one (`INDEX_BYTES` each; int32 indices, as most sparse kernels use), over the weight
  seen as a matrix (output channels x everything else);
- bitmask: the non-zero values plus one bit per weight;
- 2:4 compressed: half the values plus 2 bits of position metadata per kept value, only for
  layers whose every group of 4 consecutive input weights holds at most 2 non-zeros.

Biases are stored densely in every format. "Effective" MACs are what a sparse kernel would do:
the dense MACs of a layer times its density (non-zero share of the weight).

NaN/inf values (an in-memory model can hold them; loading refuses them) never reach a statistic
or a histogram: each table counts them per layer in a `nonfinite` column, means, norms and
histograms use the finite values only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning_core.layers import COUNTED_LAYERS, LOW_RANK_LAYERS, weight_of, zero_forward
from pruning_core.spec import InputSpec

__all__ = [
    "ACT_SAMPLE",
    "DEFAULT_BINS",
    "INDEX_BYTES",
    "VALUE_BYTES",
    "ActivationStats",
    "Histogram",
    "activation_stats",
    "count_macs",
    "count_params",
    "format_sizes",
    "histograms_frame",
    "is_n_m",
    "layer_macs",
    "layer_table",
    "low_rank_table",
    "model_stats",
    "model_summary",
    "own_macs",
    "size_bytes",
    "weight_histograms",
    "weight_layers",
]

INDEX_BYTES = 4
VALUE_BYTES = 4
DEFAULT_BINS = 60
# Activation histograms are binned from a random sample of at most this many values per layer.
ACT_SAMPLE = 1 << 16

_WEIGHT_TYPES = COUNTED_LAYERS


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters (only the non-zero ones with `nonzero=True`)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p).item()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, spec: InputSpec, batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image (dense: zeros count as work).

    Uses `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per MAC.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        zero_forward(model, spec, batch=batch_size)
    return int(counter.get_total_flops() // 2 // batch_size)


def size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers stored densely in their dtypes."""
    tensors = list(model.parameters()) + list(model.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def model_summary(model: nn.Module, spec: InputSpec) -> dict[str, int]:
    """Parameters (all and non-zero), MACs and dense size: the numbers every page shows."""
    return {
        "params": count_params(model),
        "params_nonzero": count_params(model, nonzero=True),
        "macs": count_macs(model, spec),
        "size_bytes": size_bytes(model),
    }


# ----------------------------------------------------------------------------- per-layer table


LOW_RANK_COLUMNS = (
    "layer", "type", "rank", "full_rank", "rank_share", "params", "params_dense", "params_share",
)  # fmt: skip


def low_rank_table(model: nn.Module) -> pd.DataFrame:
    """One row per factorised layer (`layers.LowRankLinear` / `LowRankConv2d`): the rank it
    keeps against the full rank of the dense layer it stands for, and its weights against
    that layer's. A factorised layer holds no zeros (its saving is the narrow middle, not
    sparsity), so this, not a count of zeros, is what low rank did to it.

    A pair of widths in -> r -> out (in counting a convolution's kernel positions, in x kh x
    kw) stands for an out x in weight: full rank min(out, in), r x (in + out) weights instead
    of out x in (Denton et al. 2014; Zhang et al. 2015 for the k x k + 1 x 1 split).

    Returns:
        Columns `layer` (the pair's module name), `type` (Linear or Conv2d), `rank` (r),
        `full_rank`, `rank_share` (r / full rank), `params` (weights of the pair, biases not
        counted), `params_dense` (out x in), `params_share` (params / params_dense), in model
        order; no rows for a model without factorised layers.
    """
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, LOW_RANK_LAYERS):
            continue
        head, tail = mod.get_submodule("0"), mod.get_submodule("1")
        first, second = weight_of(head).detach(), weight_of(tail).detach()
        rank, cols, rows_out = int(first.shape[0]), int(first[0].numel()), int(second.shape[0])
        full = min(rows_out, cols)
        params = int(first.numel() + second.numel())
        dense = rows_out * cols
        rows.append(
            {"layer": name, "type": type(head).__name__, "rank": rank, "full_rank": full,
             "rank_share": rank / max(full, 1), "params": params, "params_dense": dense,
             "params_share": params / max(dense, 1)}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(LOW_RANK_COLUMNS))


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv layer: the layers pruning acts on."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]


def _weight(mod: nn.Module) -> torch.Tensor:
    w = mod.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def is_n_m(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of `m` consecutive input weights holds at most `n` non-zeros.

    Groups run along the input dimension of the weight seen as a matrix (output x rest), the
    layout NVIDIA's 2:4 sparse tensor cores need.
    """
    w2 = weight.detach().reshape(weight.shape[0], -1)
    if w2.shape[1] % m:
        return False
    groups = (w2.reshape(w2.shape[0], -1, m) != 0).sum(-1)
    return bool((groups <= n).all().item())


def format_sizes(weight: torch.Tensor, bias_numel: int = 0) -> dict[str, float]:
    """Bytes of one weight (+ dense bias) stored as dense fp32, CSR, bitmask and 2:4.

    Returns:
        {"size_dense", "size_csr", "size_bitmask", "size_24"}; `size_24` is NaN when the
        weight is not 2:4 sparse.
    """
    numel = weight.numel()
    rows = weight.shape[0] if weight.dim() else 1
    nnz = int(torch.count_nonzero(weight).item())
    bias = bias_numel * VALUE_BYTES
    semi = is_n_m(weight) if weight.dim() >= 2 else False
    return {
        "size_dense": float(numel * VALUE_BYTES + bias),
        "size_csr": float(nnz * (VALUE_BYTES + INDEX_BYTES) + (rows + 1) * INDEX_BYTES + bias),
        "size_bitmask": float(nnz * VALUE_BYTES + math.ceil(numel / 8) + bias),
        # half the values kept, 2 bits of metadata each: numel/2 * 2 bits = numel/8 bytes
        "size_24": float(numel // 2 * VALUE_BYTES + math.ceil(numel / 8) + bias)
        if semi
        else math.nan,
    }


@torch.no_grad()
def layer_macs(model: nn.Module, spec: InputSpec) -> dict[str, int]:
    """Dense MACs per image of each Linear/Conv layer, from one forward pass with hooks.

    A layer called several times (shared weights) accumulates its calls.
    """
    layers = dict(weight_layers(model))
    macs: dict[str, int] = {}

    def hook(name: str, mod: nn.Module) -> Any:
        def fn(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            per_out = _weight(mod)[
                0
            ].numel()  # inputs feeding one output value (in/groups x kernel)
            macs[name] = macs.get(name, 0) + int(out.numel() // out.shape[0]) * int(per_out)

        return fn

    handles = [m.register_forward_hook(hook(n, m)) for n, m in layers.items()]
    zero_forward(model, spec, handles)
    return macs


@torch.no_grad()
def own_macs(model: nn.Module, spec: InputSpec, names: Iterable[str]) -> dict[str, int]:
    """MACs per image that each named module does outside its Linear/Conv layers, counted by
    `count_macs`'s counter: an attention module's query-key and attention-value products
    (`F.scaled_dot_product_attention`, or the matmuls of a hand-written one), which no weight
    layer owns, so a layer's sparsity cannot say when they go.

    One forward pass at batch 1 (as `count_macs`); a module's MACs are the counter's total at
    its exit less that at its entry (every call of a module called several times adds up),
    less the MACs of the Linear/Conv layers inside it measured the same way.

    Args:
        model: The model (not modified).
        spec: Its input spec.
        names: Qualified module names (`model.named_modules()`); unknown names are skipped.

    Returns:
        {name: MACs} for the known names (0 for a module that runs no such operation).
    """
    mods = dict(model.named_modules())
    wanted = [n for n in dict.fromkeys(names) if n in mods]
    if not wanted:
        return {}
    layers = [n for n, _ in weight_layers(model)]
    counter = FlopCounterMode(display=False)
    totals: dict[str, int] = {}
    started: dict[str, list[int]] = {}

    def pre(name: str) -> Any:
        def fn(_m: nn.Module, _inp: Any) -> None:
            started.setdefault(name, []).append(counter.get_total_flops())

        return fn

    def post(name: str) -> Any:
        def fn(_m: nn.Module, _inp: Any, _out: Any) -> None:
            begin = started[name].pop()
            totals[name] = totals.get(name, 0) + counter.get_total_flops() - begin

        return fn

    handles = []
    for n in dict.fromkeys([*wanted, *layers]):
        handles += [
            mods[n].register_forward_pre_hook(pre(n)),
            mods[n].register_forward_hook(post(n)),
        ]
    with counter:
        zero_forward(model, spec, handles)
    out = {}
    for n in wanted:
        inner = sum(totals.get(q, 0) for q in layers if not n or q == n or q.startswith(n + "."))
        # FlopCounterMode counts 2 FLOPs per MAC, as in `count_macs`.
        out[n] = max(0, totals.get(n, 0) - inner) // 2
    return out


@torch.no_grad()
def layer_table(
    model: nn.Module, spec: InputSpec | None = None, data: Any = None, *, macs: bool = True
) -> pd.DataFrame:
    """One row per Linear/Conv layer: shape, counts, sparsity, MACs, sizes, weight statistics.

    Args:
        model: Any module (not modified).
        spec: Its input spec; needed for MACs (left NaN without it or with `macs=False`).
        data: Unused; accepted so callers can pass the same arguments as `activation_stats`.
        macs: Count MACs (one forward pass at batch 1).

    Returns:
        Columns: layer, type, shape, params, nonzero, sparsity, density, macs, macs_effective,
        size_dense, size_csr, size_bitmask, size_24, is_24, w_mean, w_std, w_abs_mean,
        channels, ch_l1_min, ch_l1_median, ch_l1_max, zero_channels, nonfinite. Weight
        statistics and channel norms use the finite weights only (NaN when none is);
        `nonfinite` counts the NaN/inf weights.
    """
    del data
    per_layer_macs = layer_macs(model, spec) if (spec is not None and macs) else {}
    rows = []
    for name, mod in weight_layers(model):
        w = _weight(mod)
        bias = getattr(mod, "bias", None)
        wf = w.float()
        numel = w.numel()
        nnz = int(torch.count_nonzero(w).item())
        finite = torch.isfinite(wf)
        nonfinite = numel - int(finite.sum())
        if nonfinite:
            wf = wf.masked_fill(~finite, 0.0)  # a NaN/inf weight adds nothing to a channel norm
        ch_l1 = wf.abs().reshape(w.shape[0], -1).sum(1)
        sizes = format_sizes(w, bias.numel() if isinstance(bias, torch.Tensor) else 0)
        fv = wf[finite]
        std, mean = (
            torch.std_mean(fv)
            if fv.numel() > 1
            else (torch.tensor(0.0 if fv.numel() else math.nan), fv.mean())
        )
        m = per_layer_macs.get(name)
        density = nnz / numel if numel else 0.0
        rows.append(
            {
                "layer": name,
                "type": type(mod).__name__,
                "shape": "x".join(str(s) for s in w.shape),
                "params": numel,
                "nonzero": nnz,
                "sparsity": 1.0 - density,
                "density": density,
                "macs": float(m) if m is not None else math.nan,
                "macs_effective": float(m) * density if m is not None else math.nan,
                **sizes,
                "is_24": not math.isnan(sizes["size_24"]),
                "w_mean": float(mean),
                "w_std": float(std),
                "w_abs_mean": float(fv.abs().mean()) if fv.numel() else math.nan,
                "channels": int(w.shape[0]),
                "ch_l1_min": float(ch_l1.min()),
                "ch_l1_median": float(ch_l1.median()),
                "ch_l1_max": float(ch_l1.max()),
                "zero_channels": int((ch_l1 == 0).sum()),
                "nonfinite": nonfinite,
            }
        )
    return pd.DataFrame(rows, columns=_TABLE_COLUMNS)


_TABLE_COLUMNS = [
    "layer", "type", "shape", "params", "nonzero", "sparsity", "density", "macs", "macs_effective",
    "size_dense", "size_csr", "size_bitmask", "size_24", "is_24", "w_mean", "w_std", "w_abs_mean",
    "channels", "ch_l1_min", "ch_l1_median", "ch_l1_max", "zero_channels", "nonfinite",
]  # fmt: skip


def model_stats(
    model: nn.Module, spec: InputSpec, table: pd.DataFrame | None = None
) -> dict[str, float]:
    """Model-level totals: params, sparsity, dense and effective MACs, sizes per format.

    Layers outside the table (BatchNorm, embeddings, ...) count densely everywhere; a layer that
    is not 2:4 sparse counts densely in `size_24`. MACs outside Linear/Conv layers (attention
    matmuls, pooling) come from `count_macs` and are not reduced by sparsity.

    Args:
        model: The model.
        spec: Its input spec.
        table: `layer_table(model, spec)` if already computed.
    """
    t = table if table is not None else layer_table(model, spec)
    total_params = count_params(model)
    total_macs = count_macs(model, spec)
    rest_bytes = size_bytes(model) - float(t["size_dense"].sum()) if len(t) else size_bytes(model)
    layer_macs_sum = float(t["macs"].fillna(0).sum())
    eff = total_macs - layer_macs_sum + float(t["macs_effective"].fillna(0).sum())
    s24 = t["size_24"].where(t["is_24"], t["size_dense"]) if len(t) else pd.Series(dtype=float)
    nnz = count_params(model, nonzero=True)
    pruned_numel = int(t["params"].sum()) if len(t) else 0
    pruned_nnz = int(t["nonzero"].sum()) if len(t) else 0
    return {
        "params": total_params,
        "params_nonzero": nnz,
        "sparsity": 1.0 - pruned_nnz / pruned_numel if pruned_numel else 0.0,
        "sparsity_all": 1.0 - nnz / total_params if total_params else 0.0,
        "macs": total_macs,
        "macs_effective": eff,
        "size_dense": float(size_bytes(model)),
        "size_csr": rest_bytes + float(t["size_csr"].sum()),
        "size_bitmask": rest_bytes + float(t["size_bitmask"].sum()),
        "size_24": rest_bytes + float(s24.sum()),
        "layers_24": int(t["is_24"].sum()) if len(t) else 0,
    }


# ----------------------------------------------------------------------------- histograms

Histogram = tuple[list[float], list[int]]


def _histogram(
    values: torch.Tensor, bins: int, lo: float | None = None, hi: float | None = None
) -> Histogram:
    # float64: a range near float32's limits (weights of +-3e38) overflows in float32 arithmetic.
    v = values.detach().double().reshape(-1)
    # Only finite values are binned: a single inf would stretch the bins to infinity.
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return [0.0] * (bins + 1), [0] * bins
    a = float(v.min()) if lo is None else lo
    b = float(v.max()) if hi is None else hi
    if not b > a:  # constant tensor: a unit-wide window around it
        a, b = a - 0.5, b + 0.5
    edges = torch.linspace(a, b, bins + 1, dtype=torch.float64)
    # Each value's bin from its offset in the window; values outside it count in the end bins.
    idx = ((v.clamp(a, b) - a) / (b - a) * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


@torch.no_grad()
def weight_histograms(
    model: nn.Module,
    layers: Iterable[str] | None = None,
    bins: int = DEFAULT_BINS,
    *,
    drop_zeros: bool = False,
) -> dict[str, Histogram]:
    """Binned weight histograms of Linear/Conv layers.

    Args:
        model: The model.
        layers: Layer names to bin (default: all weight layers).
        bins: Fixed bin count (the UI never receives raw tensors).
        drop_zeros: Leave exact zeros out (a pruned layer is otherwise one spike at 0).

    Returns:
        {layer: (edges of length bins+1, counts of length bins)}; counts sum to the number of
        finite weights binned (NaN/inf weights are left out; `layer_table` counts them).
    """
    mods = dict(weight_layers(model))
    names = list(mods) if layers is None else list(layers)
    out: dict[str, Histogram] = {}
    for name in names:
        if name not in mods:
            raise KeyError(f"no Linear/Conv layer named {name!r}")
        w = _weight(mods[name])
        out[name] = _histogram(w[w != 0] if drop_zeros else w, bins)
    return out


def histograms_frame(hists: dict[str, Histogram]) -> pd.DataFrame:
    """Tidy form of histograms: one row per (layer, bin) with left, right, count."""
    rows = [
        {"layer": name, "bin": i, "left": edges[i], "right": edges[i + 1], "count": c}
        for name, (edges, counts) in hists.items()
        for i, c in enumerate(counts)
    ]
    return pd.DataFrame(rows, columns=["layer", "bin", "left", "right", "count"])


# ----------------------------------------------------------------------------- activations


@dataclass
class ActivationStats:
    """Activation statistics from a calibration batch.

    The activation of a layer is its output, or the output of the BatchNorm that directly
    follows it (what a ReLU would see). APoZ (Hu et al. 2016) is the share of activations that
    are zero after a ReLU, i.e. <= 0 here.

    Attributes:
        table: One row per Linear/Conv layer: layer, channels, n (finite values seen), mean,
            std, abs_mean, apoz, dead_channels (channels with APoZ 1), after_bn, nonfinite
            (NaN/inf activations, left out of the sums and histograms; APoZ counts them as
            zeros).
        channels: Per layer a DataFrame with one row per output channel: channel, mean_abs,
            apoz, norm (mean over examples of the L2 norm of the channel's output).
        histograms: Per layer (edges, counts) of a random sample of at most `ACT_SAMPLE` values.
        batches: Calibration batches used.
    """

    table: pd.DataFrame
    channels: dict[str, pd.DataFrame] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    batches: int = 0


class _Acc:
    """Running per-channel sums for one layer."""

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.abs_sum: torch.Tensor | None = None
        self.nonpos: torch.Tensor | None = None
        self.norm_sum: torch.Tensor | None = None
        self.per_channel = 0  # values per channel seen
        self.examples = 0
        self.sample: list[torch.Tensor] = []
        self.after_bn = False
        self.linear = False
        self.pending: torch.Tensor | None = None
        self.nonfinite = 0

    def add(self, a: torch.Tensor, gen: torch.Generator) -> None:
        a = a.detach().float()
        bad = ~torch.isfinite(a)
        nbad = int(bad.sum())
        if nbad:
            self.nonfinite += nbad
            self.n -= nbad
            a = a.masked_fill(bad, 0.0)
        # Channels: dim 1 for conv maps (N, C, ...), the last dim for linear (N, ..., F).
        if a.dim() >= 3 and not self.linear:
            c = a.shape[1]
            per = a.transpose(0, 1).reshape(c, -1)
            norms = a.reshape(a.shape[0], c, -1).pow(2).sum(-1).sqrt().sum(0)
        else:
            c = a.shape[-1]
            per = a.reshape(-1, c).t()
            norms = a.reshape(a.shape[0], -1, c).pow(2).sum(1).sqrt().sum(0)
        abs_sum = per.abs().sum(1).cpu()
        nonpos = (per <= 0).sum(1).cpu().double()
        if self.abs_sum is None:
            self.abs_sum, self.nonpos, self.norm_sum = abs_sum, nonpos, norms.cpu()
        else:
            assert self.nonpos is not None and self.norm_sum is not None
            self.abs_sum += abs_sum
            self.nonpos += nonpos
            self.norm_sum += norms.cpu()
        self.per_channel += per.shape[1]
        self.examples += a.shape[0]
        self.n += a.numel()
        self.total += float(a.sum())
        self.total_sq += float(a.pow(2).sum())
        flat = a.reshape(-1)
        if nbad:
            flat = flat[~bad.reshape(-1)]
        if flat.numel() > ACT_SAMPLE:
            idx = torch.randint(0, flat.numel(), (ACT_SAMPLE,), generator=gen, device="cpu")
            flat = flat[idx.to(flat.device)]
        self.sample.append(flat.cpu())


@torch.no_grad()
def activation_stats(
    model: nn.Module,
    data: Any,
    spec: InputSpec,
    batches: int = 2,
    bins: int = DEFAULT_BINS,
    *,
    batch_size: int = 64,
    split: str = "calib",
    layers: Iterable[str] | None = None,
    seed: int = 0,
) -> ActivationStats:
    """Activation histograms and per-channel statistics from forward hooks.

    Args:
        model: The model (not modified; evaluated in eval mode on its own device).
        data: A `DataBundle`, or a tensor of inputs already adapted to `spec`.
        spec: The model's input spec.
        batches: Calibration batches to run.
        bins: Fixed histogram bin count.
        batch_size: Images per batch.
        split: Dataset split to draw from (`calib` by default).
        layers: Restrict to these Linear/Conv layer names.
        seed: Seed of the histogram sampling.
    """
    mods = dict(weight_layers(model))
    wanted = set(mods) if layers is None else set(layers)
    accs: dict[str, _Acc] = {}
    last_out: dict[int, str] = {}  # id(output tensor) -> layer, to find a BatchNorm right after it
    gen = torch.Generator().manual_seed(seed)

    def layer_hook(name: str, linear: bool) -> Any:
        def fn(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            last_out.clear()
            last_out[id(out)] = name
            acc = accs.setdefault(name, _Acc())
            acc.linear = linear
            acc.pending = out

        return fn

    def bn_hook(_m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        name = last_out.get(id(inp[0])) if inp else None
        if name is not None:
            acc = accs[name]
            acc.pending = out
            acc.after_bn = True

    handles = []
    for n, m in mods.items():
        if n in wanted:
            handles.append(m.register_forward_hook(layer_hook(n, isinstance(m, nn.Linear))))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(bn_hook))

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    used = 0
    try:
        for xb in _input_batches(data, spec, batch_size, batches, split):
            model(xb.to(device))
            # Flush after the whole forward so a BatchNorm output can replace its conv's output.
            for acc in accs.values():
                if acc.pending is not None:
                    acc.add(acc.pending, gen)
                acc.pending = None
            used += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    rows, channels, hists = [], {}, {}
    for name in mods:
        found = accs.get(name)
        if found is None or found.abs_sum is None:
            continue
        acc = found
        abs_sum, nonpos, norm_sum = found.abs_sum, acc.nonpos, acc.norm_sum
        assert nonpos is not None and norm_sum is not None
        apoz = (nonpos / max(acc.per_channel, 1)).float()
        mean = acc.total / max(acc.n, 1)
        var = max(acc.total_sq / max(acc.n, 1) - mean * mean, 0.0)
        rows.append(
            {
                "layer": name,
                "channels": int(abs_sum.numel()),
                "n": acc.n,
                "mean": mean,
                "std": math.sqrt(var),
                "abs_mean": float(abs_sum.sum()) / max(acc.n, 1),
                "apoz": float(apoz.mean()),
                "dead_channels": int((apoz >= 1.0).sum()),
                "after_bn": acc.after_bn,
                "nonfinite": acc.nonfinite,
            }
        )
        channels[name] = pd.DataFrame(
            {
                "channel": range(abs_sum.numel()),
                "mean_abs": (abs_sum / max(acc.per_channel, 1)).tolist(),
                "apoz": apoz.tolist(),
                "norm": (norm_sum / max(acc.examples, 1)).tolist(),
            }
        )
        hists[name] = _histogram(torch.cat(acc.sample), bins)
    cols = [
        "layer",
        "channels",
        "n",
        "mean",
        "std",
        "abs_mean",
        "apoz",
        "dead_channels",
        "after_bn",
        "nonfinite",
    ]
    return ActivationStats(pd.DataFrame(rows, columns=cols), channels, hists, used)


def _input_batches(
    data: Any, spec: InputSpec, batch_size: int, batches: int, split: str
) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for i in range(batches):
            chunk = data[i * batch_size : (i + 1) * batch_size]
            if len(chunk) == 0:
                return
            yield chunk
        return
    for i, (xb, _y) in enumerate(data.batches(split, spec, batch_size)):
        if i >= batches:
            return
        yield xb
