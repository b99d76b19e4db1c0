"""The recipe format: the settings that repeat a `pruning-lab prune` run exactly.

Shared by the CLI (which writes `recipe.json` and reads `--recipe`) and `export` (which builds
recipes for runs made in the app), so both agree on one format.
"""

from __future__ import annotations

RECIPE_VERSION = 1

# Run-defining settings: a recipe fills them, options given on the command line win.
RECIPE_KEYS = (
    "model", "arch", "dataset", "method", "granularity", "ratio", "scope", "ratios_file", "schedule",
    "steps", "finetune_epochs", "lr", "optimizer", "batch_size", "weight_decay", "distill",
    "regularize", "reg_strength", "device", "seed", "norm", "ignore", "max_layer_ratio",
    "structured_mode", "round_to", "calib_batches",
)  # fmt: skip
