"""Real sparse inference: turn a pruned model's zeros into skipped work.

A pruned model with zeros in dense tensors runs exactly as fast as the dense one: dense kernels
multiply by zero like by anything else. Speed comes only from kernels that skip zeros:

- `csr`: compressed sparse row weights multiplied with `torch.addmm` on CPU (and CUDA). Pays
  off at high unstructured sparsity (roughly above 80-90% for large layers).
- `semi24`: NVIDIA 2:4 semi-structured sparsity (`torch.sparse.to_sparse_semi_structured`),
  CUDA with compute capability >= 8.0, fp16/bf16 weights that follow the 2:4 pattern and
  shapes that the torch kernels accept; Linear layers, and 1x1 convolutions as a matmul over
  channels (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
- `auto`: measures each layer on a representative input and keeps whichever of dense and the
  available sparse kernels is faster.

`to_sparse_(model, backend)` replaces layers in place and returns a `SparseReport` saying, per
layer, what it became and why. Every conversion is checked on a probe input against the dense
layer; any failure (unsupported shape, dtype, device, kernel error) leaves the layer dense and
records the reason instead of raising.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.errors import UserError
from pruning_core.layers import set_submodule
from pruning_core.stats import is_n_m
from pruning_core.timing import sample_times

__all__ = [
    "AUTO_MARGIN",
    "DEFAULT_MIN_SPARSITY",
    "SPARSE_BACKENDS",
    "CSRConv1x1",
    "CSRLinear",
    "LayerDecision",
    "SemiStructuredConv1x1",
    "SemiStructuredLinear",
    "SparseReport",
    "conv1x1_as_matmul",
    "semi24_unsupported_reason",
    "to_sparse_",
]

# The kernels one layer can be converted to (`latency.LATENCY_BACKENDS` are whole-model setups).
SPARSE_BACKENDS = ("csr", "semi24", "auto")
DEFAULT_MIN_SPARSITY = 0.5
# auto keeps a sparse kernel only when it is clearly faster, so timing noise cannot make it slower.
AUTO_MARGIN = 0.9


class _CSRWeight(nn.Module):
    """Holds a CSR matrix as three plain buffers (so state_dict, deepcopy and .to() work)."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, w2: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # torch warns once that CSR support is beta; every conversion is checked instead.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = w2.detach().contiguous().to_sparse_csr()
        self.shape = (int(w2.shape[0]), int(w2.shape[1]))
        # int32 indices: half the index memory of torch's default int64, and what kernels prefer.
        self.register_buffer("crow_indices", csr.crow_indices().to(torch.int32))
        self.register_buffer("col_indices", csr.col_indices().to(torch.int32))
        self.register_buffer("values", csr.values().clone())
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    def matrix(self) -> torch.Tensor:
        """The CSR weight (building the view is cheap: no copy, no invariant check)."""
        return torch.sparse_csr_tensor(
            self.crow_indices, self.col_indices, self.values, self.shape, check_invariants=False
        )

    def mm(self, cols: torch.Tensor) -> torch.Tensor:
        """W @ cols (+ bias per row): (out x in, sparse) @ (in x n) -> out x n."""
        if self.bias is not None:
            return torch.addmm(self.bias.unsqueeze(1), self.matrix(), cols)
        return torch.mm(self.matrix(), cols)

    @property
    def nnz(self) -> int:
        """Stored non-zeros."""
        return int(self.values.numel())


class CSRLinear(_CSRWeight):
    """A Linear layer whose weight is stored as CSR and multiplied with `torch.addmm`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.weight, linear.bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # torch multiplies CSR @ dense only, so compute (W @ x^T)^T.
        y = self.mm(x.reshape(-1, self.in_features).t())
        return y.t().reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class CSRConv1x1(_CSRWeight):
    """A 1x1 convolution (no padding, groups 1) as a CSR matmul over all pixels."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.weight.reshape(conv.out_channels, -1), conv.bias)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride = conv.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh > 1 or sw > 1:
            x = x[:, :, ::sh, ::sw]
        n, c, h, w = x.shape
        y = self.mm(x.transpose(0, 1).reshape(c, -1))
        return y.reshape(self.out_channels, n, h, w).transpose(0, 1)


class SemiStructuredLinear(nn.Module):
    """A Linear layer with a 2:4 semi-structured weight (CUDA, fp16/bf16)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = nn.Parameter(
            to_sparse_semi_structured(linear.weight.detach().contiguous()), requires_grad=False
        )
        self.bias = (
            nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
            if linear.bias is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(*lead, self.out_features)


def conv1x1_as_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """A 1x1 convolution (groups 1, no padding) as one matmul over channels.

    Every pixel of every image is a row: `(N, C, H, W)` -> `(N*H'*W', C)`, multiplied by the
    weight seen as a `(out, C)` matrix with `F.linear` (so a 2:4 semi-structured weight uses its
    sparse kernel), then back to `(N, out, H', W')`; a stride samples the input first, which is
    what a 1x1 kernel with that stride reads.

    Args:
        x: `(N, C, H, W)` input.
        weight: `(out, C)` matrix (dense or `torch.sparse` semi-structured).
        bias: `(out,)` or None.
        stride: The convolution's stride.

    Returns:
        `(N, out, ceil(H / sh), ceil(W / sw))`, equal to `F.conv2d` with the same weight.
    """
    sh, sw = stride
    if sh > 1 or sw > 1:
        x = x[:, :, ::sh, ::sw]
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)
    y = F.linear(rows, weight, bias)
    return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class SemiStructuredConv1x1(nn.Module):
    """A 1x1 convolution (groups 1, no padding) with a 2:4 semi-structured weight, run as a
    matmul over channels (`conv1x1_as_matmul`; CUDA, fp16/bf16). 1x1 convolutions are most of
    a bottleneck ResNet's or a MobileNet's MACs, and a matmul is what the 2:4 kernels speed up."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride = (int(conv.stride[0]), int(conv.stride[1]))
        w2 = conv.weight.detach().reshape(conv.out_channels, -1).contiguous()
        self.weight = nn.Parameter(to_sparse_semi_structured(w2), requires_grad=False)
        self.bias = (
            nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
            if conv.bias is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1_as_matmul(x, self.weight, self.bias, self.stride)


# ----------------------------------------------------------------------------- support checks


def semi24_unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why `weight` cannot use the 2:4 kernels, or None when it can.

    Checks: CUDA device, compute capability >= 8.0, fp16/bf16, 2-D shape multiples required by
    the kernel torch will pick (cuSPARSELt or CUTLASS), and the 2:4 pattern itself.
    """
    if not torch.cuda.is_available():
        return "semi24 needs a CUDA GPU; none is available"
    if weight.device.type != "cuda":
        return "semi24 needs the model on CUDA (it is on CPU)"
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return f"semi24 needs compute capability >= 8.0 (this GPU has {major}.{minor})"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"semi24 needs fp16/bf16 weights (got {str(weight.dtype).removeprefix('torch.')})"
    rows, cols = weight.shape[0], weight[0].numel()
    min_rows, min_cols = _semi24_min_shape(weight.dtype)
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return f"shape {rows}x{cols} is not a multiple of {min_rows}x{min_cols} (2:4 kernel)"
    if not is_n_m(weight):
        return "weight does not follow the 2:4 pattern (prune with granularity 2:4 first)"
    return None


def _semi24_min_shape(dtype: torch.dtype) -> tuple[int, int]:
    from torch.sparse import semi_structured as ss

    use_cutlass = ss.SparseSemiStructuredTensor._FORCE_CUTLASS or not _cusparselt_available()
    cls = (
        ss.SparseSemiStructuredTensorCUTLASS
        if use_cutlass
        else ss.SparseSemiStructuredTensorCUSPARSELT
    )
    c = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return int(c.sparse_min_rows), int(c.sparse_min_cols)


def _cusparselt_available() -> bool:
    try:
        return bool(torch.backends.cusparselt.is_available())
    except AttributeError:
        return False


def _csr_unsupported_reason(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Linear):
        return None
    if isinstance(mod, nn.Conv2d):
        if mod.kernel_size != (1, 1):
            return (
                f"only 1x1 convolutions convert (kernel {mod.kernel_size[0]}x{mod.kernel_size[1]})"
            )
        if mod.groups != 1 or mod.padding not in ((0, 0), 0) or mod.padding_mode != "zeros":
            return "only 1x1 convolutions with groups 1 and no padding convert"
        return None
    return f"{type(mod).__name__} has no sparse kernel"


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LayerDecision:
    """What happened to one layer.

    Attributes:
        layer: Module name.
        kind: Module type (and shape).
        sparsity: Share of zero weights.
        backend: What it runs as now: `csr`, `semi24` or `dense`.
        reason: Why (always set when it stayed dense).
        dense_ms: Measured dense time on the probe input (auto mode only).
        sparse_ms: Measured sparse time (auto mode only), per candidate the best.
    """

    layer: str
    kind: str
    sparsity: float
    backend: str
    reason: str = ""
    dense_ms: float = math.nan
    sparse_ms: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


@dataclass
class SparseReport:
    """The outcome of `to_sparse_`.

    Attributes:
        backend: The requested backend.
        device: Where the model lives.
        decisions: One entry per candidate layer.
    """

    backend: str
    device: str
    decisions: list[LayerDecision] = field(default_factory=list)

    @property
    def converted(self) -> list[str]:
        """Names of layers now running a sparse kernel."""
        return [d.layer for d in self.decisions if d.backend != "dense"]

    def to_frame(self) -> pd.DataFrame:
        """One row per candidate layer."""
        return pd.DataFrame(
            [asdict(d) for d in self.decisions], columns=list(LayerDecision.__dataclass_fields__)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "backend": self.backend,
            "device": self.device,
            "converted": len(self.converted),
            "candidates": len(self.decisions),
            "layers": [d.to_dict() for d in self.decisions],
        }

    def summary(self) -> str:
        """One line: how many layers converted, and the commonest reason for the others."""
        dense = [d.reason for d in self.decisions if d.backend == "dense"]
        s = f"{len(self.converted)}/{len(self.decisions)} layers sparse"
        if dense:
            common = max(set(dense), key=dense.count)
            s += f"; {len(dense)} dense (e.g. {common})"
        return s


# ----------------------------------------------------------------------------- conversion


@torch.no_grad()
def to_sparse_(
    model: nn.Module,
    backend: str = "csr",
    *,
    example: torch.Tensor | None = None,
    layers: Iterable[str] | None = None,
    conv1x1: bool = False,
    min_sparsity: float = DEFAULT_MIN_SPARSITY,
    repeats: int = 15,
    probe_batch: int = 32,
) -> SparseReport:
    """Replace Linear (and optionally 1x1 conv) layers by sparse-kernel modules, in place.

    The converted model is for inference (eval mode, no gradients through sparse weights);
    convert a copy when the dense model is still needed.

    Args:
        model: The pruned model; for `semi24` already on CUDA in fp16/bf16.
        backend: `csr`, `semi24` or `auto`.
        example: A model input; its per-layer activations are the probe inputs (checking
            correctness, and timing in auto mode). Without it, random probes of `probe_batch`
            rows are used.
        layers: Only these layer names (default: every Linear, plus 1x1 convs with `conv1x1`).
        conv1x1: Also convert 1x1 convolutions (CSR, or 2:4 as a matmul over channels).
        min_sparsity: Layers sparser than this are candidates; others stay dense (a CSR matrix
            at low sparsity is larger and slower than the dense one).
        repeats: Timed repeats per candidate in auto mode.
        probe_batch: Rows of the random probe when no example is given.

    Returns:
        A SparseReport with one decision per candidate layer.

    Raises:
        UserError: Unknown backend or layer name.
    """
    if backend not in SPARSE_BACKENDS:
        raise UserError(
            f"unknown sparse backend '{backend}' (choose from {', '.join(SPARSE_BACKENDS)})"
        )
    model.eval()
    mods = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in mods.items() if isinstance(m, nn.Linear) or (conv1x1 and _is_1x1(m))]
    else:
        names = list(layers)
        missing = [n for n in names if n not in mods]
        if missing:
            raise UserError(f"no layer named {missing[0]!r} in the model")
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    report = SparseReport(backend, str(device))
    probes = _probe_inputs(model, names, example)

    for name in names:
        mod = mods[name]
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor):
            report.decisions.append(
                LayerDecision(name, type(mod).__name__, math.nan, "dense", "no weight")
            )
            continue
        kind = f"{type(mod).__name__} {'x'.join(str(s) for s in w.shape)}"
        sparsity = 1.0 - int(torch.count_nonzero(w)) / max(w.numel(), 1)
        if sparsity < min_sparsity:
            reason = (
                f"only {sparsity:.0%} of its weights are zero, too few for a sparse kernel to pay "
                f"off (min_sparsity {min_sparsity:.0%})"
            )
            report.decisions.append(LayerDecision(name, kind, sparsity, "dense", reason))
            continue
        probe = probes.get(name)
        if probe is None:
            probe = _random_probe(mod, probe_batch, w)
        decision, new = _decide(name, kind, sparsity, mod, backend, probe, repeats)
        report.decisions.append(decision)
        if new is not None:
            set_submodule(model, name, new)
    return report


def _is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)


def _candidates(mod: nn.Module, backend: str, w: torch.Tensor) -> tuple[list[str], list[str]]:
    """(usable sparse backends, reasons for the unusable ones)."""
    wanted = ["semi24", "csr"] if backend == "auto" else [backend]
    ok, why = [], []
    for b in wanted:
        if b == "semi24":
            if isinstance(mod, nn.Linear):
                r = semi24_unsupported_reason(w)
            elif _is_1x1(mod):
                r = _csr_unsupported_reason(mod) or semi24_unsupported_reason(w)
            else:
                r = "semi24 converts Linear layers and 1x1 convolutions only"
        else:
            r = _csr_unsupported_reason(mod)
            if r is None and w.dtype in (torch.float16, torch.bfloat16) and w.device.type == "cpu":
                r = "CSR matmul on CPU needs float32 weights"
        if r is None:
            ok.append(b)
        else:
            why.append(r)
    return ok, why


def _build(mod: nn.Module, b: str) -> nn.Module:
    if b == "semi24":
        if isinstance(mod, nn.Linear):
            return SemiStructuredLinear(mod)
        assert isinstance(mod, nn.Conv2d)
        return SemiStructuredConv1x1(mod)
    if isinstance(mod, nn.Linear):
        return CSRLinear(mod)
    assert isinstance(mod, nn.Conv2d)
    return CSRConv1x1(mod)


def _decide(
    name: str,
    kind: str,
    sparsity: float,
    mod: nn.Module,
    backend: str,
    probe: torch.Tensor,
    repeats: int,
) -> tuple[LayerDecision, nn.Module | None]:
    w = mod.weight
    assert isinstance(w, torch.Tensor)
    ok, why = _candidates(mod, backend, w)
    if not ok:
        return LayerDecision(name, kind, sparsity, "dense", "; ".join(why)), None
    ref = mod(probe)
    built: dict[str, nn.Module] = {}
    for b in ok:
        try:
            new = _build(mod, b).eval()
            out = new(probe)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            why.append(
                f"{b} failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
            )
            continue
        tol = 1e-4 if w.dtype == torch.float32 else 2e-2
        err = float((out.float() - ref.float()).abs().max()) if out.shape == ref.shape else math.inf
        scale = float(ref.float().abs().max()) + 1e-6
        if not err <= tol * max(scale, 1.0):
            why.append(f"{b} output differs from dense (max error {err:.3g})")
            continue
        built[b] = new
    if not built:
        return LayerDecision(name, kind, sparsity, "dense", "; ".join(why)), None
    if backend != "auto":
        b = next(iter(built))
        return LayerDecision(name, kind, sparsity, b, f"{b} kernel"), built[b]

    times = _alternating_medians({"dense": mod, **built}, probe, repeats)
    dense_ms = times.pop("dense")
    best = min(times, key=lambda k: times[k])
    if times[best] < AUTO_MARGIN * dense_ms:
        reason = f"{best} {dense_ms / times[best]:.2f}x faster than dense"
        return LayerDecision(name, kind, sparsity, best, reason, dense_ms, times[best]), built[best]
    reason = (
        f"dense faster or within {1 - AUTO_MARGIN:.0%} "
        f"({best} {times[best]:.3g} ms vs dense {dense_ms:.3g} ms)"
    )
    return LayerDecision(name, kind, sparsity, "dense", reason, dense_ms, times[best]), None


def _alternating_medians(
    mods: dict[str, nn.Module], x: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median ms per module, timed call by call in alternating order so drift hits all alike."""
    for m in mods.values():
        sample_times(m, x, warmup=2, repeats=0)
    samples: dict[str, list[float]] = {k: [] for k in mods}
    order = list(mods)
    budget = time.perf_counter() + 2.0
    for i in range(max(repeats, 3)):
        for k in order if i % 2 == 0 else order[::-1]:
            samples[k] += sample_times(mods[k], x, warmup=0, repeats=1)
        if i >= 2 and time.perf_counter() > budget:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def _probe_inputs(
    model: nn.Module, names: list[str], example: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The input each layer sees on `example` (first call only)."""
    if example is None or not names:
        return {}
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, inp: Any) -> None:
            if name not in seen and inp and isinstance(inp[0], torch.Tensor):
                seen[name] = inp[0].detach().clone()

        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names if n in mods]
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _random_probe(mod: nn.Module, batch: int, w: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if isinstance(mod, nn.Conv2d):
        x = torch.randn(max(batch // 4, 1), mod.in_channels, 14, 14, generator=gen)
    else:
        x = torch.randn(batch, w.shape[1], generator=gen)
    return x.to(device=w.device, dtype=w.dtype)
