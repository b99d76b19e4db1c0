"""Plain-language text of the dynamic-pruning panel (text only, no widgets)."""

from __future__ import annotations

__all__ = [
    "DYNAMIC_EXPLAINED",
    "DYNAMIC_NO_CONVS",
    "DYNAMIC_NO_SPEEDUP",
    "LEARNED_GATE_EXPLAINED",
]

DYNAMIC_EXPLAINED = (
    "**Dynamic vs static pruning.** Static pruning removes the same channels for every image, "
    "once and for all, so the network itself gets smaller; dynamic pruning keeps the whole "
    "network and decides for each image, while it runs, which channels of each layer to "
    "compute (here: the ones a cheap gate predicts will be largest, from the previous layer's "
    "activation size). An easy image and a hard one can therefore use different channels, but "
    "the model stays its full size on disk and needs a kernel that skips channels to save time."
)

DYNAMIC_NO_SPEEDUP = (
    "Effective MACs count what a kernel that skips the gated channels would do (the gate's own "
    "cost included). Run by PyTorch on dense kernels the gated model does all the dense work "
    "and a little more, so it is not faster: no speed is claimed here."
)

DYNAMIC_NO_CONVS = (
    "Dynamic channel gating works on convolutions (it picks output channels per image), and "
    "this model has none to gate."
)

LEARNED_GATE_EXPLAINED = (
    "**Learned gate.** A learned gate gives each convolution a small predictor of its own, "
    "trained on the task, that looks at a summary of the layer's input and scores every "
    "channel for this image (feature boosting and suppression, Gao et al. 2019); it starts as "
    "the magnitude gate and training moves its scores towards the channels that lower the "
    "loss. The network itself stays as it is: only the predictors learn, so training them "
    "changes which channels each image uses, not what a channel computes."
)
