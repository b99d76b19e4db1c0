"""Self-attention whose heads can be pruned (a leaf module: torch only).

`Attention` is the tiny ViT's attention; `SelfAttention` stands in for a batch-first
`nn.MultiheadAttention` when head pruning swaps it (`plans.heads`), and checkpoint surgery
(`surgery`) rebuilds that swap when a head-pruned model is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "SelfAttention", "attention_modules", "has_attention"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
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


def attention_modules(model: nn.Module) -> list[tuple[str, Any]]:
    """Attention layers with `num_heads`, `head_dim` and Linear `qkv`/`proj`."""
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


def has_attention(model: nn.Module) -> bool:
    """True when the model has attention layers of some kind (with a `num_heads`)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or isinstance(getattr(m, "num_heads", None), int)
        for m in model.modules()
    )
