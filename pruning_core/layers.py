"""Layer-type helpers shared by every part of the engine (a leaf: torch, `errors` and `spec`).

- which modules carry prunable weights (`is_weight_layer`, `weight_of`), the classifier that
  stays dense by default (`output_layers`, `classifier_name`), and the ignore-pattern rules
  (`matches_pattern`, `resolve_ignore`);
- one zero-input forward pass (`example_input`, `zero_forward`) for tracing, MAC counting and
  shape checks, always in eval mode without gradients and restoring the model's mode;
- `following_batchnorm`: which BatchNorm reads each layer's output;
- `set_submodule`: replace the module at a dotted path (surgery, sparse kernels, classifiers);
- `LowRankLinear` / `LowRankConv2d`: a layer factorised through a rank-r bottleneck (the
  low-rank plan, `plans.lowrank`), and `low_rank_like` to rebuild one from checkpoint surgery;
- `trainable_copy`: the one way to take a private copy of a shared model that can be trained or
  scored with gradients (the app keeps its cached models frozen and shared);
- `check_finite`: the NaN/inf policy (refuse the layer by name; docs/RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.spec import InputSpec

__all__ = [
    "COUNTED_LAYERS",
    "LOW_RANK_LAYERS",
    "WEIGHT_LAYERS",
    "LowRankConv2d",
    "LowRankLinear",
    "batchnorm_frozen",
    "check_finite",
    "check_model_finite",
    "classifier_name",
    "counted_weights",
    "eval_mode",
    "example_input",
    "following_batchnorm",
    "ignored_modules",
    "in_model_order",
    "is_weight_layer",
    "low_rank_like",
    "main_logits",
    "matches_pattern",
    "measured_model_sparsity",
    "model_sparsity",
    "module_stack",
    "output_layers",
    "rebased_sparsity",
    "resolve_ignore",
    "set_submodule",
    "trainable_copy",
    "weight_of",
    "zero_forward",
    "zero_shares",
]

# The layers whose weights criteria score and masks prune.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
# The layers whose weights a model's sparsity, parameter and MAC tables count.
COUNTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def counted_weights(model: nn.Module) -> dict[str, int]:
    """Elements of each Linear/Conv weight (`COUNTED_LAYERS`), by layer name: the denominator of
    `terms.SPARSITY_MEANS`. Take it before shrinking a model, so the share is of the model pruned."""
    out: dict[str, int] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, COUNTED_LAYERS) and isinstance(w, torch.Tensor):
            out[n] = int(w.numel())
    return out


def model_sparsity(removed: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Sparsity as `terms.SPARSITY_MEANS` defines it.

    Args:
        removed: Layer name -> share of its weight that is zero or removed (0-1); names not in
            `sizes` (BatchNorm, a factorised pair's parent) are not counted.
        sizes: `counted_weights` of the model as it was before pruning.

    Returns:
        Removed weights over all of `sizes` (0 for a model without Linear/Conv layers).
    """
    total = sum(sizes.values())
    gone = sum(removed.get(n, 0.0) * k for n, k in sizes.items())
    return gone / total if total else 0.0


def zero_shares(model: nn.Module, names: Iterable[str]) -> dict[str, float]:
    """Each named layer's share of exactly-zero weights (0-1), by name.

    Raises:
        KeyError: A name that is not a module of `model`.
    """
    mods = dict(model.named_modules())
    out: dict[str, float] = {}
    for n in names:
        w = weight_of(mods[n]).detach()
        out[n] = (w.numel() - int(torch.count_nonzero(w))) / max(w.numel(), 1)
    return out


def measured_model_sparsity(model: nn.Module, before: Mapping[str, int]) -> float:
    """Sparsity of `model` as it is now (`terms.SPARSITY_MEANS`), counted from its weights: every
    exact zero of its Linear/Conv weights plus the weights it no longer has, over `before`.

    Zeros an earlier run left count too, so a chained run (unstructured, then channels) reports
    what the model is, not only its last step.

    Args:
        model: The pruned model (shrunk or masked).
        before: `counted_weights` of the model before this pruning.

    Returns:
        A share in [0, 1] (0 for a model without Linear/Conv layers).
    """
    total = sum(before.values())
    if not total:
        return 0.0
    mods = dict(model.named_modules())
    now = counted_weights(model)
    zeros = sum(k - int(torch.count_nonzero(mods[n].weight.detach())) for n, k in now.items())
    return min(1.0, (zeros + max(total - sum(now.values()), 0)) / total)


def rebased_sparsity(sparsity: float, counted: int, dense: int) -> float:
    """A sparsity counted against `counted` weights, restated against `dense` ones.

    A run that starts from an already shrunk model counts its sparsity against the weights that
    model still has; `terms.SPARSITY_MEANS` (and `evaluate`) count against the dense
    architecture. The non-zero weights are the same either way: (1 - sparsity) * counted.

    Args:
        sparsity: Share in [0, 1] of `counted` weights zero or removed.
        counted: Linear/Conv weights the share was taken of (the shrunk model's).
        dense: Linear/Conv weights of the dense architecture (`models.dense_weight_counts`).

    Returns:
        The share of `dense` weights zero or removed, in [0, 1] (`sparsity` when a count is 0).
    """
    if counted <= 0 or dense <= 0:
        return sparsity
    return min(1.0, max(0.0, 1.0 - (1.0 - sparsity) * counted / dense))


def is_weight_layer(m: nn.Module) -> bool:
    """True for the layers pruning works on (`WEIGHT_LAYERS` with a weight tensor)."""
    return isinstance(m, WEIGHT_LAYERS) and isinstance(getattr(m, "weight", None), torch.Tensor)


def weight_of(m: nn.Module) -> torch.Tensor:
    """The `weight` tensor of a Conv2d/Linear (typed for mypy)."""
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier: the last Linear, or the last conv of a fully convolutional model."""
    linears: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1:]
    convs: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def classifier_name(model: nn.Module) -> str | None:
    """The module name of `output_layers(model)`, kept dense unless the user says otherwise."""
    names = {m: n for n, m in model.named_modules()}
    out = output_layers(model)
    return names[out[0]] if out else None


def matches_pattern(name: str, pattern: str) -> bool:
    """A layer name matches a pattern: equal, inside it (`layer1` covers `layer1.0.conv1`), or
    an `fnmatch` glob (`*.downsample.*`)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def resolve_ignore(model: nn.Module, patterns: Iterable[str] | None) -> list[str]:
    """The patterns a pruning run keeps dense: the classifier when `patterns` is None.

    Raises:
        UserError: A pattern that matches no module of the model (a typo would otherwise
            silently prune what the user meant to keep).
    """
    if patterns is None:
        c = classifier_name(model)
        return [c] if c is not None else []
    names = [n for n, _ in model.named_modules()]
    out = list(patterns)
    for pat in out:
        if not any(matches_pattern(n, pat) for n in names):
            raise UserError(f"ignore entry '{pat}' matches no layer of the model")
    return out


def ignored_modules(model: nn.Module, patterns: Iterable[str] | None) -> list[str]:
    """Module names covered by the ignore patterns (the classifier when `patterns` is None).

    Raises:
        UserError: As `resolve_ignore`.
    """
    pats = resolve_ignore(model, patterns)
    return [n for n, _ in model.named_modules() if n and any(matches_pattern(n, p) for p in pats)]


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` at the dotted module path `path` of `model` (its parent must exist)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the model's own mode afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def in_model_order(model: nn.Module, by_layer: Mapping[str, Any]) -> dict[str, Any]:
    """`by_layer` with its keys in the order the model defines its modules.

    Per-layer tables and charts read in the order data flows (conv1, layer1..., fc), not in
    the order a dependency graph or a dict happened to produce them. Names the model does not
    have keep their relative order, after the others.

    Args:
        model: The model whose `named_modules()` order is used.
        by_layer: Module name -> value.
    """
    rank = {n: i for i, (n, _) in enumerate(model.named_modules())}
    names = sorted(by_layer, key=lambda n: rank.get(n, len(rank)))
    return {n: by_layer[n] for n in names}


def example_input(
    model: nn.Module, spec: InputSpec, batch: int = 1, *, random: bool = False, seed: int = 0
) -> torch.Tensor:
    """A `(batch, C, H, W)` input on the model's device and floating dtype (zeros, or seeded
    normal noise with `random=True`)."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
    shape = (batch, spec.channels, spec.size, spec.size)
    if random:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    return torch.zeros(shape, device=device, dtype=dtype)


@contextlib.contextmanager
def module_stack(model: nn.Module) -> Iterator[list[str]]:
    """While inside, the list holds the names of the modules whose forward is running,
    innermost last (the root is ""): where an operation or a failure happened.

    Hooks on every module, removed on exit; they return nothing, so outputs are unchanged.
    """
    stack: list[str] = []

    def enter(name: str) -> Any:
        return lambda _m, _i: stack.append(name)

    def leave(_m: nn.Module, _i: Any, _o: Any) -> None:
        stack.pop()  # a hook that returned the name would replace the module's output

    handles = []
    for n, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(enter(n)))
        handles.append(m.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def zero_forward(
    model: nn.Module, spec: InputSpec, hooks: Iterable[Any] = (), *, batch: int = 1
) -> Any:
    """One forward pass of a zero image (eval mode, no gradients, the model's mode restored).

    Args:
        model: The model.
        spec: Its input spec.
        hooks: Handles to remove afterwards (what `register_forward_hook` returned), so the
            caller's tracing hooks never outlive the pass.
        batch: Images in the zero batch.

    Returns:
        The model's output.
    """
    try:
        with eval_mode(model):
            return model(example_input(model, spec, batch))
    finally:
        for h in hooks:
            h.remove()


def following_batchnorm(model: nn.Module, spec: InputSpec | None = None) -> dict[str, str]:
    """Map each Conv2d/Linear to the BatchNorm that directly consumes its output, if any.

    With a spec, one zero-input forward pass traces which tensor each BatchNorm reads (exact);
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
            if isinstance(m, WEIGHT_LAYERS):
                last = (n, m)
            elif n in bns and last is not None:
                width = getattr(last[1], "out_channels", getattr(last[1], "out_features", None))
                if width == bns[n].num_features and last[0] not in out:
                    out[last[0]] = n
                last = None
        return out
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}

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

    handles = []
    for n, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            handles.append(m.register_forward_hook(on_out(n)))
        elif n in bns:
            handles.append(m.register_forward_pre_hook(on_bn(n)))
    zero_forward(model, spec, handles)
    return pairs


@contextmanager
def batchnorm_frozen(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """BatchNorm layers in eval mode (running statistics, no update) inside the block.

    A training batch of one image cannot give BatchNorm a batch statistic (one value per
    channel on a 1x1 map), so such a step uses the running statistics instead: training never
    fails on a last batch of one, whatever the dataset size and batch size.
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    if not frozen or not bns:
        yield
        return
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


def trainable_copy(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A private deep copy on `device` whose parameters all require gradients.

    Cached models are shared between sessions with frozen parameters; anything that trains,
    scores with gradients (Taylor) or changes weights works on such a copy.
    """
    m = copy.deepcopy(model).to(device)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def main_logits(output: Any) -> torch.Tensor:
    """The class logits of a model's output, whatever its training-mode form.

    Models return more than logits in training mode: torchvision's GoogLeNet and Inception v3 a
    named tuple with auxiliary logits (`.logits` is the main one), timm's distilled ViTs a tuple
    (class token first), others a dict (`logits` or `out`). Training, distillation, evaluation
    and the criteria all use the main logits; auxiliary heads only add to their own losses.

    Raises:
        UserError: No tensor of logits can be found in the output.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        output = list(output.values())
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UserError(f"the model returns a {type(output).__name__}: no class logits in it")


def check_model_finite(model: nn.Module) -> None:
    """Refuse a model any of whose floating parameters or buffers hold NaN or inf.

    The policy (docs/RELIABILITY.md) is the same for every granularity: a non-finite model is
    refused by name before anything is scored or pruned, whether or not the granularity would
    touch that tensor (a NaN anywhere makes every accuracy and every score meaningless).

    Raises:
        UserError: Naming the first such tensor and counting its NaN/inf values.
    """
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.dtype.is_floating_point and not bool(torch.isfinite(t.detach()).all()):
            layer, _, leaf = name.rpartition(".")
            check_finite(layer or name, t, "weights" if leaf == "weight" else f"values in {leaf}")


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


# -------------------------------------------------------------------------- low-rank modules


class LowRankLinear(nn.Sequential):
    """A Linear layer factorised through a rank-`rank` bottleneck: `in -> rank -> out`.

    Child `0` is `nn.Linear(in_features, rank, bias=False)` (the right factor, sqrt(S) Vh of a
    truncated SVD), child `1` is `nn.Linear(rank, out_features, bias)` (the left factor U
    sqrt(S), with the original bias). Weights (rank x in) and (out x rank): rank * (in + out)
    parameters and MACs per token instead of in * out (Denton et al. 2014, "Exploiting Linear
    Structure Within Convolutional Networks for Efficient Evaluation"; Xue et al. 2013).

    The widths are read from the children (properties), so checkpoint surgery records them once
    (`surgery.surgery_of`, key `lowrank`) and structured pruning of the children stays valid.

    Args:
        in_features: Input width.
        out_features: Output width.
        rank: Bottleneck width (>= 1).
        bias: Whether the second layer has a bias.
        device: Where the (uninitialised) weights are made.
        dtype: Their dtype.

    Raises:
        UserError: A width or rank below 1.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if min(in_features, out_features, rank) < 1:
            raise UserError(
                f"a low-rank Linear needs widths and rank >= 1, got {in_features} -> {rank} -> "
                f"{out_features}"
            )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Linear(in_features, rank, bias=False, **kw),
            nn.Linear(rank, out_features, bias=bias, **kw),
        )

    def part(self, i: int) -> nn.Linear:
        """Child `i` (0: in -> rank, 1: rank -> out), typed."""
        m = self[i]
        assert isinstance(m, nn.Linear)
        return m

    @property
    def in_features(self) -> int:
        """Input width (of child `0`)."""
        return self.part(0).in_features

    @property
    def out_features(self) -> int:
        """Output width (of child `1`)."""
        return self.part(1).out_features

    @property
    def rank(self) -> int:
        """Bottleneck width."""
        return self.part(0).out_features


class LowRankConv2d(nn.Sequential):
    """A Conv2d split into a k x k convolution to `rank` channels and a 1 x 1 convolution to the
    output channels (Zhang et al. 2015, "Accelerating Very Deep Convolutional Networks for
    Classification and Detection", from the SVD of the weight seen as (out, in * kh * kw), as
    in Denton et al. 2014).

    Child `0` is `nn.Conv2d(in, rank, kernel, stride, padding, dilation, bias=False,
    padding_mode)`, child `1` is `nn.Conv2d(rank, out, 1, bias)`. Parameters and MACs per
    output pixel: rank * (in * kh * kw + out) instead of out * in * kh * kw. Only ungrouped
    convolutions split this way.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        rank: Channels between the two convolutions (>= 1).
        kernel_size, stride, padding, dilation, padding_mode: Those of the original conv.
        bias: Whether the 1 x 1 convolution has a bias.
        device: Where the (uninitialised) weights are made.
        dtype: Their dtype.

    Raises:
        UserError: A width or rank below 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        padding_mode: Any = "zeros",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if min(in_channels, out_channels, rank) < 1:
            raise UserError(
                f"a low-rank Conv2d needs widths and rank >= 1, got {in_channels} -> {rank} -> "
                f"{out_channels}"
            )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(
                in_channels, rank, kernel_size, stride, padding, dilation,
                bias=False, padding_mode=padding_mode, **kw,
            ),
            nn.Conv2d(rank, out_channels, 1, bias=bias, **kw),
        )  # fmt: skip

    def part(self, i: int) -> nn.Conv2d:
        """Child `i` (0: the k x k conv to rank channels, 1: the 1 x 1 conv), typed."""
        m = self[i]
        assert isinstance(m, nn.Conv2d)
        return m

    @property
    def in_channels(self) -> int:
        """Input channels (of child `0`)."""
        return self.part(0).in_channels

    @property
    def out_channels(self) -> int:
        """Output channels (of child `1`)."""
        return self.part(1).out_channels

    @property
    def rank(self) -> int:
        """Channels between the two convolutions."""
        return self.part(0).out_channels


# The factorised modules (surgery, the low-rank plan and MAC counting look for them).
LOW_RANK_LAYERS: tuple[type[nn.Module], ...] = (LowRankLinear, LowRankConv2d)


def low_rank_like(m: nn.Module, in_width: int, rank: int, out_width: int) -> nn.Module:
    """An uninitialised low-rank module standing in for the Linear or ungrouped Conv2d `m`
    (same kernel, stride, padding, bias presence, device and dtype), with the given widths.

    Raises:
        UserError: `m` is neither a Linear nor an ungrouped Conv2d, or a width below 1.
    """
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise UserError(f"a {type(m).__name__} has no weight to factorise")
    kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    bias = getattr(m, "bias", None) is not None
    if isinstance(m, nn.Linear):
        return LowRankLinear(in_width, out_width, rank, bias, **kw)
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return LowRankConv2d(
            in_width, out_width, rank, m.kernel_size, m.stride, m.padding, m.dilation,
            bias, m.padding_mode, **kw,
        )  # fmt: skip
    raise UserError(
        f"only Linear and ungrouped Conv2d layers factorise, not a {type(m).__name__}"
        + (f" with groups={m.groups}" if isinstance(m, nn.Conv2d) else "")
    )
