"""Plain-language explanations of pruning's companions (text only, no widgets): low rank here;
`ui.texts` holds the pruning lessons."""

from __future__ import annotations

__all__ = ["LOWRANK_EXPLAINED"]

LOWRANK_EXPLAINED = (
    "**Low rank.** Instead of removing weights, low-rank factorisation rewrites a layer as two "
    "thinner ones through a narrow middle of r channels, keeping the r strongest patterns of "
    "its weight matrix (the largest singular values of a truncated SVD) and dropping the "
    "weakest, so it does less work and still runs on ordinary dense kernels. It only pays when "
    "r is small enough that the two thin layers hold fewer weights than the one they replace, "
    "r x (inputs + outputs) < inputs x outputs, which is why a square layer must lose more "
    "than half its rank before it gets any smaller."
)
