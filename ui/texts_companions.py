"""Plain-language explanations of pruning's companions (text only, no widgets): low rank here;
`ui.texts` holds the pruning lessons."""

from __future__ import annotations

__all__ = [
    "COMPANIONS_EXPLAINED",
    "LEARNED_GATE_ONE_VIEW",
    "LOWRANK_EXPLAINED",
    "MASKED_SIZE_EXPLAINED",
]

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

LEARNED_GATE_ONE_VIEW = (
    "**Two gates, one budget.** Both gated points compute, per image, as many channels as make "
    "the average MACs equal the channel-pruned model's: the magnitude gate picks them from the "
    "size of the layer's input with nothing trained, while the learned gate (feature boosting "
    "and suppression, Gao et al. 2019) has a small predictor per layer that is trained, with "
    "the network, for the same fine-tune epochs as the pruned models, so it appears only when "
    "fine-tune epochs is 1 or more. It is trained here for this budget; gates trained on the "
    "Inspect page are not reused, as they are trained at that panel's keep share with the "
    "network frozen."
)
