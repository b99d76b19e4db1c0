"""Plain-language explanations of pruning's companions (text only, no widgets): low rank here;
`ui.texts` holds the pruning lessons."""

from __future__ import annotations

__all__ = ["COMPANIONS_EXPLAINED", "LOWRANK_EXPLAINED", "MASKED_SIZE_EXPLAINED"]

LOWRANK_EXPLAINED = (
    "**Low rank.** Instead of removing weights, low-rank factorisation rewrites a layer as two "
    "thinner ones through a narrow middle of r channels, keeping the r strongest patterns of "
    "its weight matrix (the largest singular values of a truncated SVD) and dropping the "
    "weakest, so it does less work and still runs on ordinary dense kernels. It only pays when "
    "r is small enough that the two thin layers hold fewer weights than the one they replace, "
    "r x (inputs + outputs) < inputs x outputs, which is why a square layer must lose more "
    "than half its rank before it gets any smaller."
)

COMPANIONS_EXPLAINED = (
    "**One view of all of them.** Every point is a real copy of your current model, pruned, "
    "factorised, quantized or gated here and measured now: accuracy on the validation images "
    "through the runtime that runs it, the size of the file you would save, and the time one "
    "batch takes on this CPU. A point on the dashed Pareto front is one no other point beats "
    "on both counts (smaller or faster and at least as accurate), so those are the only "
    "sensible choices for that trade-off."
)

MASKED_SIZE_EXPLAINED = (
    "**Masked sizes.** Unstructured pruning leaves zeros in full-size tensors, so its size "
    "here is what a sparse format would store (the non-zero values plus one bit per weight) "
    "and its parameters are the non-zero ones; the saved file and the ONNX graph keep the "
    "zeros and are as large as dense. Dense kernels multiply the zeros too, which is why its "
    "latency matches dense."
)
