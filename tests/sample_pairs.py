"""The sample models with their home datasets, and the (model, granularity) pairs that do not
apply (no attention layers, no residual blocks): shared by the preview-truth tests."""

from __future__ import annotations

from pruning_core.models import list_models

SAMPLES = {m.name: m.default_dataset for m in list_models() if m.sample}
# Every other sample model x structured granularity must preview and apply.
REFUSED = {
    ("digits-mlp", "head"),
    ("digits-mlp", "block"),
    ("digits-cnn", "head"),
    ("digits-cnn", "block"),
    ("shapes-resnet", "head"),
}
