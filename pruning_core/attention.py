"""Self-attention whose heads can be pruned (a leaf module: torch only).

`Attention` is the tiny ViT's attention; `SelfAttention` stands in for a batch-first
`nn.MultiheadAttention` when head pruning swaps it (`plans.heads`), and checkpoint surgery
(`surgery`) rebuilds that swap when a head-pruned model is loaded.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "SelfAttention",
    "as_attention",
    "attention_modules",
    "convertible_attention",
    "has_attention",
    "head_cols",
    "head_count",
    "head_rows",
    "head_structured_linears",
    "head_structured_parents",
    "opaque_attention_layers",
]


class Attention(nn.Module):
    """Multi-head self-attention whose head count and head width are plain attributes.

    Keeping `num_heads` and `head_dim` as attributes (not derived from a fixed embedding width)
    is what lets head pruning shrink `qkv` and `proj` and still run.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # `attn_mask` and `is_causal` as timm's blocks pass them to the attention this one
        # stands in for (timm.layers.attention.Attention.forward has the same signature).
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=attn_mask, is_causal=is_causal
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class SelfAttention(Attention):
    """`Attention` with the call signature of a batch-first `nn.MultiheadAttention`.

    `nn.MultiheadAttention` ties its head count to the embedding width, so a head cannot be
    removed from it. Head pruning swaps it (self-attention use only, as in torchvision's ViT
    encoder blocks) for this numerically equivalent module, whose heads can go.
    """

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        **_: object,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("SelfAttention does not return attention weights")
        return super().forward(query), None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        """The same attention, weights copied from a batch-first self-attention MHA."""
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
            raise ValueError("only batch-first MultiheadAttention with one in-projection converts")
        new = cls(mha.embed_dim, mha.num_heads)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.qkv.bias.copy_(mha.in_proj_bias)
            else:
                new.qkv.bias.zero_()
            if mha.out_proj.bias is not None:
                new.proj.bias.copy_(mha.out_proj.bias)
            else:
                new.proj.bias.zero_()
        return new.to(mha.in_proj_weight.device)


def convertible_attention(m: nn.Module) -> bool:
    """True for another library's plain multi-head self-attention that `Attention` computes
    exactly: timm's ViT/DeiT `Attention` (biased `qkv` and `proj` Linear, `num_heads`,
    `head_dim`, no query/key norm, default scale). It reshapes its output to its *input* width,
    so its heads cannot be removed in place; swapped for `Attention`, they can."""
    if isinstance(m, Attention) or not type(m).__module__.startswith("timm."):
        return False
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    h, d = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
    plain = all(
        isinstance(getattr(m, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm")
    )
    return (
        type(m).__name__ == "Attention"
        and isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and qkv.bias is not None
        and proj.bias is not None
        and isinstance(h, int)
        and isinstance(d, int)
        and qkv.in_features == proj.out_features == h * d
        and qkv.out_features == 3 * h * d
        and plain
        and abs(float(getattr(m, "scale", d**-0.5)) - d**-0.5) < 1e-9
    )


def as_attention(m: nn.Module) -> Attention:
    """`Attention` with the weights of a `convertible_attention` module (same outputs)."""
    qkv: Any = m.qkv
    heads: Any = m.num_heads
    new = Attention(int(qkv.in_features), int(heads))
    new.load_state_dict(
        {k: v for k, v in m.state_dict().items() if k.split(".")[0] in ("qkv", "proj")}
    )
    return new.to(qkv.weight.device)


def _linear_like(m: Any) -> bool:
    from pruning_core.layers import LowRankLinear

    return isinstance(m, nn.Linear | LowRankLinear)


def head_rows(m: Any) -> tuple[str, nn.Linear]:
    """The Linear whose output rows are an attention layer's heads' q, k and v, and its name
    relative to the attention: `qkv`, or `qkv.1` (the output factor) when low rank."""
    from pruning_core.layers import LowRankLinear

    if isinstance(m.qkv, LowRankLinear):
        return "qkv.1", cast(nn.Linear, m.qkv[1])
    return "qkv", m.qkv


def head_cols(m: Any) -> tuple[str, nn.Linear]:
    """The Linear whose input columns are an attention layer's heads' outputs, and its name
    relative to the attention: `proj`, or `proj.0` (the input factor) when low rank."""
    from pruning_core.layers import LowRankLinear

    if isinstance(m.proj, LowRankLinear):
        return "proj.0", cast(nn.Linear, m.proj[0])
    return "proj", m.proj


def attention_modules(model: nn.Module) -> list[tuple[str, Any]]:
    """Attention layers with `num_heads`, `head_dim` and `qkv`/`proj` that are Linear or
    low-rank Linear (`layers.LowRankLinear`: a factorised model keeps its heads)."""
    out = []
    for n, m in model.named_modules():
        qkv: Any = getattr(m, "qkv", None)
        proj: Any = getattr(m, "proj", None)
        h, d = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
        if (
            _linear_like(qkv)
            and _linear_like(proj)
            and isinstance(h, int)
            and isinstance(d, int)
            and qkv.out_features == 3 * h * d
            and proj.in_features == h * d
        ):
            out.append((n, m))
    return out


def head_count(m: nn.Module) -> int | None:
    """The head count of an attention module of any library (`num_heads`, or `n_heads` as in
    torchvision's MaxViT), else None."""
    for attr in ("num_heads", "n_heads"):
        h = getattr(m, attr, None)
        if isinstance(h, int) and not isinstance(h, bool):
            return h
    return None


def has_attention(model: nn.Module) -> bool:
    """True when the model has attention layers of some kind (with a head count)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or head_count(m) is not None for m in model.modules()
    )


def head_structured_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers inside attention modules: their output features are laid out by head
    (query/key/value projections), so channel pruning must not choose among them freely."""

    inner = head_structured_parents(model)
    return [c for m in inner for c in m.modules() if isinstance(c, nn.Linear)]


def opaque_attention_layers(model: nn.Module) -> list[nn.Module]:
    """Layers around attention that the head plan does not know (`attention_modules` does not
    match it): its Linear projections, and the norm layer registered just before it in the same
    block, which is what feeds it in pre-norm transformers (torchvision's Swin: `norm1`, then
    `attn`).

    Such attention may use its projections' weights through functional calls that a tracer
    does not see (Swin's `F.linear(x, self.qkv.weight)`), so the channels it reads and writes
    must not be pruned (`plans.channel.untraceable_roots`).
    """
    known = {id(m) for _, m in attention_modules(model)}
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    out: list[nn.Module] = []
    inner = {id(m) for m in head_structured_parents(model)}
    for parent in model.modules():
        prev = None
        for child in parent.children():
            if id(child) in inner and id(child) not in known:
                out += [c for c in child.modules() if isinstance(c, nn.Linear)]
                if isinstance(prev, norms):
                    out.append(prev)
            prev = child
    return out


def head_structured_parents(model: nn.Module) -> list[nn.Module]:
    """The innermost modules with a head count (or `nn.MultiheadAttention`)."""

    def counted(m: nn.Module) -> bool:
        return isinstance(m, nn.MultiheadAttention) or head_count(m) is not None

    # A transformer block that records its heads (torchvision's ViT EncoderBlock) holds an
    # MLP whose channels are free: only the innermost counted module is the attention.
    return [
        m for m in model.modules()
        if counted(m) and not any(counted(c) for c in m.modules() if c is not m)
    ]  # fmt: skip
