"""The field's terms as this tool measures them: one definition each, for the CLI, the app, the
report and metrics.json alike (no torch: figures and pages import it)."""

from __future__ import annotations

__all__ = ["SPARSITY_AXIS", "SPARSITY_MEANS"]

# The one definition of "sparsity" for every granularity, in the CLI, the app, the report and
# metrics.json: a model-level share, so a ratio of channels and a ratio of weights compare by
# what they take from the model (a channel takes the next layer's inputs too).
SPARSITY_MEANS = (
    "share of the model's Linear/Conv weights, the classifier included, that are zero or "
    "removed (biases, BatchNorm and embeddings not counted)"
)
# The same in an axis title's few words.
SPARSITY_AXIS = "sparsity (share of all Linear/Conv weights zero or removed)"
