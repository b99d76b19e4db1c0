"""Head pruning: whole attention heads.

Heads of attention modules with `num_heads`, `head_dim` and Linear `qkv`/`proj` (the sample
ViT's `Attention`, `models.architectures.SelfAttention`): rows of `qkv`, columns of `proj`, and
`num_heads` updated. A low-rank `qkv`/`proj` (`layers.LowRankLinear`, after low-rank
factorisation) loses the rows of its output factor and the columns of its input factor: the
bottlenecks keep their rank. A head's score is the sum of the criterion's scores of its query,
key and value rows (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
torchvision ViTs' `nn.MultiheadAttention` is first swapped, exactly, for the same attention
with its own `qkv`/`proj` (`SelfAttention`), since MHA cannot shrink.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pruning_core.attention import (
    as_attention,
    attention_modules,
    convertible_attention,
    has_attention,
    head_cols,
    head_count,
    head_rows,
)
from pruning_core.criteria import Criterion
from pruning_core.errors import UserError
from pruning_core.layers import ignored_modules, set_submodule
from pruning_core.plans.base import PlanConfig, Unit, register_granularity
from pruning_core.plans.groups import GroupPlan
from pruning_core.spec import InputSpec

__all__ = ["HeadPlan"]


def _swap_multihead_attention(model: nn.Module) -> None:
    """Replace torchvision-style self-attention `nn.MultiheadAttention` by `SelfAttention`.

    The swap is exact (same weights, same outputs) and gives each head its own rows in `qkv`
    and columns in `proj`, which `nn.MultiheadAttention` cannot shrink. Only batch-first MHA with
    a fused in-projection is swapped: that is how torchvision's ViT encoder blocks use it.
    """
    from pruning_core.attention import SelfAttention

    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MultiheadAttention):
            try:
                new = SelfAttention.from_mha(mod)
            except ValueError as e:
                raise UserError(f"cannot prune heads of '{name}': {e}") from None
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _swap_convertible_attention(model: nn.Module) -> None:
    """Replace other libraries' plain attention (timm's ViT `Attention`) by `Attention`, exactly
    (same weights, same outputs), so that its heads can go (`attention.convertible_attention`)."""
    for name, mod in list(model.named_modules()):
        if name and convertible_attention(mod):
            set_submodule(model, name, as_attention(mod))


@register_granularity
class HeadPlan(GroupPlan):
    """Whole attention heads (rows of qkv, columns of proj)."""

    name = "head"
    label = "Attention heads"
    help = "whole attention heads of transformer blocks; the model shrinks physically"
    example = "head"
    score_kind = "channels"
    unit_word = "attention layer"

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        if (why := self.refusal(model, spec)) is not None:
            raise UserError(why)
        self.model = model
        self.spec = spec
        self.notes = []
        skip = set(ignored_modules(model, config.ignore))
        _swap_multihead_attention(model)
        _swap_convertible_attention(model)
        found = attention_modules(model)
        if not found:
            name, mod = next(
                (n, m) for n, m in model.named_modules()
                if isinstance(m, nn.MultiheadAttention) or head_count(m) is not None
            )  # fmt: skip
            raise UserError(
                f"head pruning cannot shrink the attention in '{name}' ({type(mod).__name__}): "
                "its heads are not the rows of one qkv Linear and the columns of one proj "
                "Linear; unstructured, N:M and channel pruning still apply"
            )
        self.attn: dict[str, Any] = {
            n: m for n, m in found if not ({n, f"{n}.qkv", f"{n}.proj"} & skip)
        }
        self.units = [
            Unit(n, int(m.num_heads), members=(f"{n}.{head_rows(m)[0]}", f"{n}.{head_cols(m)[0]}"),
                 roundable=False)
            for n, m in self.attn.items()
        ]  # fmt: skip
        if not self.units:
            raise UserError("every attention layer is in the ignore list: nothing to prune")
        self._check_weights()

    @classmethod
    def prunable(
        cls, model: nn.Module, config: PlanConfig, spec: InputSpec | None = None
    ) -> list[str]:
        skip = set(ignored_modules(model, config.ignore))
        return [n for n, _ in attention_modules(model) if not ({n, f"{n}.qkv", f"{n}.proj"} & skip)]

    @classmethod
    def refusal(cls, model: nn.Module, spec: InputSpec | None = None) -> str | None:
        if has_attention(model):
            return None
        return "head pruning needs attention layers, and this model has none (use channel or block)"

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        layers = {f"{n}.{head_rows(m)[0]}": head_rows(m)[1] for n, m in self.attn.items()}
        channel = criterion.channel_scores(self.model, layers, data, spec)
        for u in self.units:
            m = self.attn[u.name]
            s = channel[f"{u.name}.{head_rows(m)[0]}"].view(3, m.num_heads, m.head_dim)
            u.scores = s.sum(dim=(0, 2)).float()
        self._check_scores()

    def layers(self) -> list[str]:
        return [f"{n}.{f(m)[0]}" for n, m in self.attn.items() for f in (head_rows, head_cols)]

    def work_modules(self) -> list[str]:
        return list(self.attn)

    def work_removed(self, selection: Mapping[str, Any]) -> dict[str, float]:
        """Removed heads / heads, per attention layer: its query-key and attention-value
        products cost n x n x head_dim MACs per head, so they shrink with the head count.
        Head counts as planned (`Unit.size`), so the shares hold after a physical shrink too."""
        return {u.name: len(selection[u.name]) / u.size for u in self.units if u.name in selection}

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
    def shrink(self, selection: Mapping[str, list[int]]) -> None:
        for name, heads in selection.items():
            m = self.attn[name]
            keep = [k for k in range(m.num_heads) if k not in set(heads)]
            rows, cols = self._rows_cols(m, keep)
            qkv, proj = head_rows(m)[1], head_cols(m)[1]
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
    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, heads in selection.items():
            m = self.attn[name]
            rows, cols = self._rows_cols(m, heads)
            (qn, qkv), (pn, proj) = head_rows(m), head_cols(m)
            mq = torch.ones(qkv.weight.shape, dtype=torch.bool)
            mq[rows] = False
            mp = torch.ones(proj.weight.shape, dtype=torch.bool)
            mp[:, cols] = False
            out[f"{name}.{qn}"], out[f"{name}.{pn}"] = mq, mp
            if apply:
                # Zero q, k, v (and their biases) of a removed head: its output is then exactly 0,
                # as if it were gone.
                qkv.weight[rows.to(qkv.weight.device)] = 0.0
                if qkv.bias is not None:
                    qkv.bias[rows.to(qkv.bias.device)] = 0.0
                proj.weight[:, cols.to(proj.weight.device)] = 0.0
        return out
