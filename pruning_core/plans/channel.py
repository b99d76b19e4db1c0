"""Channel pruning: conv filters and linear neurons, kept consistent through a dependency graph.

Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph: Towards Any Structural
Pruning") finds the layers coupled to each channel (the BatchNorm after a conv, the next
layer's inputs, every conv tied to a residual sum), so one *group* loses the same channels
everywhere and the model stays consistent. The criterion scores each conv/linear output
channel; a group's score is the mean over its members, fed to Torch-Pruning through a custom
`Importance` adapter.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning_core.attention import (
    attention_modules,
    head_structured_linears,
    opaque_attention_layers,
)
from pruning_core.criteria import Criterion
from pruning_core.errors import UserError, first_line
from pruning_core.layers import (
    WEIGHT_LAYERS,
    eval_mode,
    example_input,
    ignored_modules,
    module_stack,
    output_layers,
)
from pruning_core.plans.base import PlanConfig, Unit, register_granularity
from pruning_core.plans.groups import GroupPlan
from pruning_core.spec import InputSpec

__all__ = [
    "GROUPING_SECONDS",
    "MAX_GROUP_DEPS",
    "MAX_TRACED_INDICES",
    "ChannelPlan",
    "channel_shuffle_site",
    "dependency_graph",
    "untraceable_roots",
]


@dataclass
class _Touch:
    """One tensor a channel group touches: module, dimension, and index map to root channels."""

    module: str
    kind: str  # "out" (conv/linear rows, norm weights), "in" (conv/linear columns), "param"
    idxs: torch.Tensor
    root: torch.Tensor
    dim: int = 0


@register_granularity
class ChannelPlan(GroupPlan):
    """Conv filters and linear neurons, with every layer coupled to them (DepGraph)."""

    name = "channel"
    label = "Channels (filters / neurons)"
    help = "whole conv filters and linear neurons; the model shrinks physically"
    example = "channel"
    score_kind = "channels"
    rounds = True
    unit_word = "channel group"

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        from pruning_core.plans.guess import guess_spec

        self.model = model
        self.notes = []
        self.round_to = config.round_to
        spec = spec or guess_spec(model)
        self.spec = spec
        mods = dict(model.named_modules())
        ignored: list[nn.Module] = [
            mods[n] for n in ignored_modules(model, config.ignore) if n in mods
        ]
        ignored += output_layers(model)
        # Splitting qkv's rows freely would mix heads; heads are pruned by the head plan. That
        # holds for attention of any library (timm's, MaxViT's `to_qkv`), not only ours.
        ignored += [a.qkv for _, a in attention_modules(model)]
        ignored += head_structured_linears(model)
        ignored += [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
        self.dg = dependency_graph(model, spec)
        self.names = {m: n for n, m in model.named_modules()}
        # Attention the head plan does not know may use its projections' weights directly;
        # their channels stay as they are (`untraceable_roots`).
        fixed = opaque_attention_layers(model)
        if fixed or _channel_reshapes(self.dg):
            skip = set(map(id, ignored))
            roots = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
            bound = untraceable_roots(self.dg, [m for m in roots if id(m) not in skip], fixed)
            if bound:
                ignored += bound
                self.notes.append(
                    f"{len(bound)} layers skipped, e.g. {self.names.get(bound[0], '?')}: their "
                    "output channels reach attention projections used outside their modules "
                    "or chained reshapes (window partitions) that channel tracing cannot "
                    "follow; the channels inside their blocks are still pruned"
                )
        self.groups: dict[str, tuple[nn.Module, Any]] = {}
        self.touches: dict[str, list[_Touch]] = {}
        self.units = []
        start = time.perf_counter()
        for group in _bounded(
            self.dg.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHT_LAYERS),
            model,
        ):
            if time.perf_counter() - start > GROUPING_SECONDS:
                raise UserError(
                    f"channel pruning is refused for {type(model).__name__}: finding which "
                    f"channels are coupled took over {GROUPING_SECONDS:.0f} s and was stopped "
                    "(many reshapes of channels); unstructured and N:M pruning still apply"
                )
            root_dep = group[0].dep
            root = root_dep.target.module
            name = self.names.get(root)
            if name is None:
                continue
            beyond = self._beyond_axis(group)
            if beyond is not None:
                self.notes.append(
                    f"{name} skipped: its channels map onto another axis of {beyond} (token "
                    "mixing and the like), which channel pruning cannot follow"
                )
                continue
            if _grouped(group):
                self.notes.append(
                    f"{name} skipped: it is coupled to a grouped convolution (channel groups "
                    "would have to shrink together)"
                )
                continue
            outs = [
                self.names[it.dep.target.module]
                for it in group
                if self.dg.is_out_channel_pruning_fn(it.dep.handler)
                and isinstance(it.dep.target.module, WEIGHT_LAYERS)
                and it.dep.target.module in self.names
            ]
            size = self.dg.get_out_channels(root)
            if size is None or size < 2:
                continue
            self.groups[name] = (root, root_dep.handler)
            self.touches[name] = self._touches(group)
            self.units.append(Unit(name, int(size), members=tuple(o for o in outs if o != name)))
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.units.sort(key=lambda u: order[u.name])
        if not self.units:
            raise UserError("channel pruning found no prunable conv/linear channels in this model")
        self._check_weights()

    def _beyond_axis(self, group: Any) -> str | None:
        """The first layer where the group's indices exceed the dimension they would prune
        (the tracer mapped channels onto tokens: MLP-Mixer's token mixing), or None."""
        for it in group:
            target = it.dep.target.module
            if not it.idxs:
                continue
            size: int | None = None
            if isinstance(target, nn.Parameter):
                dim = getattr(it.dep.target, "pruning_dim", 0) or 0
                size = int(target.shape[dim]) if target.dim() > dim else None
            elif isinstance(target, nn.Conv2d | nn.Conv1d | nn.Linear):
                out = self.dg.is_out_channel_pruning_fn(it.dep.handler)
                size = (
                    int(target.weight.shape[0])
                    if out
                    else int(getattr(target, "in_channels", None) or target.weight.shape[1])
                )
            elif isinstance(getattr(target, "weight", None), torch.Tensor):
                size = int(target.weight.shape[0])
            if size is not None and max(it.idxs) >= size:
                return f"'{self.names.get(target, type(target).__name__)}'"
        return None

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

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        import torch_pruning as tp

        layers = {}
        for name in self.groups:
            for t in self.touches[name]:
                if t.kind != "out":
                    continue
                m = self.model.get_submodule(t.module)
                if isinstance(m, WEIGHT_LAYERS):
                    layers[t.module] = m
        channel = criterion.channel_scores(self.model, layers, data, spec)
        norm = getattr(criterion, "norm", 1)
        adapter = _GroupImportance(
            self.dg,
            self.names,
            channel,
            fallback=tp.importance.GroupMagnitudeImportance(p=norm, normalizer=None),
        )
        for u in self.units:
            root, fn = self.groups[u.name]
            group = self.dg.get_pruning_group(root, fn, list(range(u.size)))
            imp = adapter(group)
            if imp is None or len(imp) != u.size:
                imp = torch.ones(u.size)
            u.scores = imp.detach().float().cpu()
        self._check_scores()

    def layers(self) -> list[str]:
        seen: dict[str, None] = {}
        for ts in self.touches.values():
            for t in ts:
                if t.kind != "param" and isinstance(
                    self.model.get_submodule(t.module), WEIGHT_LAYERS
                ):
                    seen[t.module] = None
        return list(seen)

    def shrink(self, selection: Mapping[str, list[int]]) -> None:
        for name, idxs in selection.items():
            root, fn = self.groups[name]
            self.dg.get_pruning_group(root, fn, list(idxs)).prune()

    @torch.no_grad()
    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        sizes = {u.name: u.size for u in self.units}
        for name, idxs in selection.items():
            sel = torch.zeros(sizes[name], dtype=torch.bool)
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


class _GroupImportance:
    """A group importance in the shape of Torch-Pruning's `Importance` (called with a group): a
    group's score per root channel is the mean of the criterion's per-output-channel scores of
    the group's conv/linear members. Not a subclass, so that importing this module does not
    import Torch-Pruning (which imports timm and torchvision: seconds at every CLI start).
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


# Torch-Pruning maps a channel through a reshape into `stride` indices; a group whose channels
# would stand for more indices than this is not traced (`untraceable_roots`): VGG's
# classifier flatten is 25k, Swin's and MaxViT's chained window partitions are millions.
MAX_TRACED_INDICES = 200_000
# A last resort for graphs the count above does not catch: stop grouping and refuse.
GROUPING_SECONDS = 150.0
# Tensors one group may couple: ordinary groups hold tens (DenseNet's ~100); ReXNet's blow up.
MAX_GROUP_DEPS = 5000


def dependency_graph(model: nn.Module, spec: InputSpec) -> Any:
    """Torch-Pruning's dependency graph of `model`, traced in training mode on two zero images.

    Training mode, because some layers run only then (GoogLeNet's and Inception's auxiliary
    heads read inner feature maps): traced in eval mode, their inputs would keep channels the
    pruned layers no longer produce, and the model could never train again. Every tensor the
    model returns is traced (main and auxiliary logits). BatchNorm statistics that the traced
    pass updates are put back afterwards, and so are the model's mode and frozen parameters.

    Raises:
        UserError: The model cannot be traced (the message names the exception, or the channel
            shuffle it met).
    """
    import torch_pruning as tp

    # Checked first, not only when tracing fails: the tracer maps a shuffle's view as a
    # flatten, and a model it does not fail on would be pruned into a different function.
    shuffle = channel_shuffle_site(model, spec)
    if shuffle is not None:
        raise UserError(
            f"channel pruning cannot follow the channel shuffle in {shuffle} (channels are "
            "split into groups and interleaved between branches there, so removing one would "
            "misplace the others); unstructured and N:M pruning still apply"
        )
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    # Torch-Pruning reads the graph from autograd: frozen parameters (the app's shared models)
    # leave no graph, and every group would be missed. They trace as trainable and are frozen
    # again afterwards.
    frozen = [p for p in model.parameters() if not p.requires_grad]

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m.train()
        return sum((t.float().sum() for t in _tensors(m(x))), torch.zeros(()))

    try:
        for p in frozen:
            p.requires_grad_(True)
        with eval_mode(model), warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # tp warns about auto-detected unwrapped parameters
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input(model, spec, batch=2), forward_fn=forward
            )
    except Exception as e:  # tracing can fail in many ways on arbitrary user models
        raise UserError(
            f"could not trace the model for structured pruning: {type(e).__name__}: "
            f"{first_line(e, 160)}"
        ) from None
    finally:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and b.shape == saved[n].shape:
                    b.copy_(saved[n])
    return graph


def untraceable_roots(
    graph: Any,
    roots: Sequence[nn.Module],
    fixed: Sequence[nn.Module] = (),
    max_indices: int = MAX_TRACED_INDICES,
) -> list[nn.Module]:
    """The layers among `roots` whose channel group cannot be pruned safely or in time: it
    would touch a layer in `fixed`, or blow up through reshapes.

    `fixed` holds layers whose weights the model also uses in ways the tracer does not see
    (torchvision's Swin calls its attention's `qkv` weight through `F.linear`): a group that
    would shrink them must not be formed.

    Torch-Pruning maps a channel through a reshape by multiplying the indices it stands for
    (its flatten mapping, `stride` indices per channel), so a chain of reshapes such as Swin's
    and MaxViT's window partitions makes one group hold millions of indices and its tracing
    take many minutes (swin_t: over 5 minutes on 2 cores). The walk here follows the same
    dependency edges as Torch-Pruning's grouping, carrying only how many indices each channel
    has become; a layer whose group would exceed `max_indices` is returned. A classifier's
    flatten (VGG: 512 channels x 49) stays far below it.
    """
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    from torch_pruning.pruner import function

    # A weight used through a functional call is traced as a bare parameter node.
    frozen = {id(m) for m in fixed} | {id(p) for m in fixed for p in m.parameters()}
    bound = []
    for m in roots:
        node = graph.module2node.get(m)
        pruner = graph.get_pruner_of_module(m)
        size = pruner.get_out_channels(m) if pruner is not None else None
        if node is None or pruner is None or not size:
            continue
        fn = pruner.prune_out_channels
        if isinstance(m, nn.Conv2d) and m.groups == m.out_channels > 1:
            fn = function.prune_depthwise_conv_out_channels  # as Torch-Pruning does
        stack: list[tuple[Any, Any, int]] = [(node, fn, 1)]
        best: dict[tuple[int, Any], int] = {}
        hit = False
        while stack and not hit:
            n, f, mult = stack.pop()
            for dep in n.dependencies:
                if not dep.is_triggered_by(f):
                    continue
                k = mult
                for x in dep.index_mapping:
                    if isinstance(x, _FlattenIndexMapping):
                        k = max(1, k // x._stride) if x.reverse else k * x._stride
                if k * size > max_indices or id(dep.target.module) in frozen:
                    hit = True
                    break
                key = (id(dep.target), dep.handler)
                if best.get(key, 0) < k:
                    best[key] = k
                    stack.append((dep.target, dep.handler, k))
        if hit:
            bound.append(m)
    return bound


def _channel_reshapes(graph: Any) -> int:
    """How many reshape steps map channel indices in `graph` (Torch-Pruning's flatten mapping:
    each multiplies the indices a channel stands for, and chains of them make grouping slow)."""
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    return sum(
        isinstance(m, _FlattenIndexMapping)
        for node in graph.module2node.values()
        for dep in node.dependencies
        for m in dep.index_mapping
    )


def channel_shuffle_site(model: nn.Module, spec: InputSpec) -> str | None:
    """Where `model` shuffles channels, as "'MODULE' (OP)", or None.

    A channel shuffle (ShuffleNet, Zhang et al. 2018) views (N, C, H, W) as (N, g, C/g, H, W)
    and transposes the groups, so channel k of one branch lands between channels of another:
    no per-channel index mapping survives it (Torch-Pruning's tracer fails with a division by
    zero there). Found by watching one eval-mode forward for a 4-D to 5-D view or reshape that
    splits the channel axis, or `channel_shuffle` itself.
    """
    from torch.overrides import TorchFunctionMode

    found: list[str] = []
    stack: list[str] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            x = args[0] if args else None
            split = (
                name in ("view", "reshape", "unflatten")
                and isinstance(x, torch.Tensor)
                and isinstance(out, torch.Tensor)
                and x.dim() == 4
                and out.dim() == 5
                and out.shape[1] > 1
                and out.shape[2] > 1
                and out.shape[1] * out.shape[2] == x.shape[1]
            )
            if not found and (split or "channel_shuffle" in name):
                where = stack[-1] if stack and stack[-1] else type(model).__name__
                found.append(f"'{where}' ({name})")
            return out

    try:
        with module_stack(model) as running, eval_mode(model), torch.no_grad(), Watch():
            stack = running
            model(example_input(model, spec, batch=1))
    except Exception:  # the model's own failure is reported by the caller
        return None
    return found[0] if found else None


class _GroupTooLargeError(Exception):
    pass


_bounding = threading.local()


def _install_group_bound() -> None:
    """Count the tensors each Torch-Pruning group collects, and stop past MAX_GROUP_DEPS while
    `_bounded` runs in this thread (installed once; a no-op elsewhere)."""
    from torch_pruning.dependency import group as tp_group

    if getattr(tp_group.Group.add_dep, "_pruning_lab", False):
        return
    original = tp_group.Group.add_dep

    def add_dep(self: Any, dep: Any, idxs: Any) -> Any:
        if getattr(_bounding, "on", False):
            n = self.__dict__.get("_pl_deps", 0) + 1
            self.__dict__["_pl_deps"] = n
            if n > MAX_GROUP_DEPS:
                raise _GroupTooLargeError(getattr(dep.target, "name", "?"))
        return original(self, dep, idxs)

    add_dep._pruning_lab = True  # type: ignore[attr-defined]
    tp_group.Group.add_dep = add_dep


def _bounded(groups: Any, model: nn.Module) -> Any:
    """Torch-Pruning's groups, refused with a reason when one grows without bound (ReXNet's
    partial residual additions make one group collect tens of thousands of tensors and trace
    for many minutes; ordinary groups hold tens, DenseNet's about a hundred)."""
    _install_group_bound()
    _bounding.on = True
    try:
        yield from groups
    except _GroupTooLargeError as e:
        raise UserError(
            f"channel pruning is refused for {type(model).__name__}: one channel group grows "
            f"without bound (over {MAX_GROUP_DEPS} coupled tensors, last at {e}), so tracing "
            "it would take many minutes; unstructured and N:M pruning still apply"
        ) from None
    finally:
        _bounding.on = False


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, named tuple, tuple, list or dict)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for o in out for t in _tensors(o)]
    return []
