"""The plain-language explanations shown beside the controls (text only, no widgets).

What a criterion or a granularity is comes from the engine's registries (`ui.choices`); this
module holds the lessons around them: why zeros alone give no speedup, what a schedule or a
regulariser does, why fine-tuning follows pruning.
"""

from __future__ import annotations

from pruning_core.regularize import NO_REGULARIZER

CRITERIA_EXPLAINED = (
    "**Magnitude vs activation criteria.** A *magnitude* criterion looks only at the weights: "
    "small ones are assumed unimportant, no data needed. *Activation* (data-driven) criteria "
    "run a few calibration batches through the network and score what each weight or channel "
    "actually does to the signal (its input size, how often it is zero, its gradient). They cost "
    "a forward (and for Taylor and SNIP a backward) pass, and can keep accuracy better when weight sizes "
    "mislead, e.g. after BatchNorm rescales a channel."
)

SCOPE_LABELS: dict[str, str] = {"global": "global threshold", "layer": "same ratio per layer"}

SCOPE_HELP = (
    "Global: one threshold across all layers, so layers with many unimportant weights lose "
    "more. Per layer: every layer loses the same share. Per-layer ratios set below win in "
    "both cases."
)

ZEROS_NO_SPEEDUP = (
    "**Why masked zeros give no speedup on dense hardware.** A dense matrix multiply does the "
    "same work whether a weight is 0.37 or 0.0: the zeros are still loaded and multiplied. "
    "Unstructured sparsity pays off only with sparse kernels (worth it at roughly 90%+ "
    "sparsity), special hardware (2:4 on recent GPUs), or compressed storage. Structured "
    "pruning (channels, heads, blocks) removes whole rows and columns, so the remaining tensors "
    "are smaller and any hardware runs them faster. The 'effective MACs' here count what a "
    "kernel that skips zeros would do."
)

SCHEDULE_LABELS: dict[str, str] = {
    "oneshot": "one-shot",
    "linear": "linear (iterative)",
    "agp": "AGP (gradual)",
    "dynamic": "dynamic (masks move)",
}

SCHEDULE_HELP: dict[str, str] = {
    "oneshot": "Prune to the target at once, then fine-tune: prune-train-retrain's simplest form.",
    "linear": (
        "Iterative: several prune -> fine-tune cycles, sparsity rising in equal steps; the "
        "network adapts a little at a time."
    ),
    "agp": (
        "Automated gradual pruning (Zhu & Gupta 2017): iterative, big steps first while the "
        "network has redundancy to spare, small steps at the end."
    ),
    "dynamic": (
        "Dynamic: prune once, then recompute the masks from the current weights every few "
        "steps during fine-tuning; pruned weights keep learning and can come back "
        "(Dynamic Network Surgery). Magnitude criterion, unstructured or 2:4 only."
    ),
}

PRUNE_TRAIN_RETRAIN = (
    "**Prune, then retrain.** Removing weights hurts accuracy; a short fine-tune lets the "
    "remaining weights take over their job (Han et al. 2015). The masks are re-applied after "
    "every optimizer step, so pruned weights stay exactly zero and the sparsity holds. "
    "*Iterative* schedules (linear, AGP) alternate small pruning steps with fine-tuning; "
    "*dynamic* pruning lets the mask itself change while training."
)

REG_LABELS: dict[str, str] = {
    NO_REGULARIZER: "none",
    "l1": "L1 on weights",
    "slim": "BN slimming",
    "group-lasso": "group lasso",
}

REG_HELP: dict[str, str] = {
    NO_REGULARIZER: "No sparsity regularisation.",
    "l1": "L1 on the weights pushes small weights to exactly zero: helps magnitude pruning.",
    "slim": (
        "L1 on BatchNorm scales (network slimming): channels the network can do without get "
        "gamma near zero, then channel pruning with bn-scale removes them cheaply."
    ),
    "group-lasso": (
        "Group lasso: the L2 norm of each whole filter, summed; zeroes whole filters, which "
        "suits channel pruning."
    ),
}

REGULARISATION_EXPLAINED = (
    "**Regularisation.** With a sparsity penalty, the network is first *trained* to need fewer "
    "weights (for the chosen number of epochs), then pruned and fine-tuned: pruning then "
    "removes weights that are already near zero, so it costs less accuracy."
)
