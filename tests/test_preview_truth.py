"""The preview is the truth: the Prune page's structured preview (masks on a working copy) and
the applied, physically shrunk model compute the same function, so they score the same."""

from __future__ import annotations

import pytest
import torch
from sample_pairs import REFUSED, SAMPLES

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.layers import trainable_copy
from pruning_core.models import load_model
from pruning_core.plans import list_granularities
from pruning_core.prune import PruneConfig, prune_
from pruning_core.slider import SliderPreview

torch.set_num_threads(1)

STRUCTURED = [p.name for p in list_granularities() if p.structured]
N_IMAGES = 96


def test_every_sample_model_and_structured_granularity_is_covered() -> None:
    assert set(SAMPLES) == {"digits-mlp", "digits-cnn", "shapes-resnet", "shapes-vit"}
    assert set(STRUCTURED) == {"channel", "head", "block", "lowrank"}


@pytest.mark.parametrize("granularity", STRUCTURED)
@pytest.mark.parametrize("model_ref", sorted(SAMPLES))
def test_preview_accuracy_equals_applied_accuracy(model_ref: str, granularity: str) -> None:
    loaded = load_model(model_ref)
    dataset = SAMPLES[model_ref]
    assert dataset is not None
    data = load_dataset(dataset)
    config = PruneConfig(criterion="magnitude", granularity=granularity, ratio=0.5)
    if (model_ref, granularity) in REFUSED:
        with pytest.raises(UserError):
            SliderPreview(loaded, config, data)
        return
    preview = SliderPreview(loaded, config, data)
    stats = preview.update(0.5, n_eval=N_IMAGES)
    assert stats.n_eval == N_IMAGES
    # Low rank writes each weight's truncated SVD (no zeros); the others zero whole units.
    assert granularity.startswith("lowrank") or stats.sparsity > 0

    applied = trainable_copy(loaded.model)
    prune_(applied, config, data=data, spec=loaded.spec, scores=preview.engine)
    dense_params = sum(p.numel() for p in loaded.model.parameters())
    assert sum(p.numel() for p in applied.parameters()) < dense_params  # really shrunk
    assert evaluate(applied, data, loaded.spec, limit=N_IMAGES).accuracy == stats.accuracy

    # Not only the same score: the same logits, image by image.
    xb, _ = next(iter(data.batches("val", loaded.spec, N_IMAGES, limit=N_IMAGES)))
    with torch.no_grad():
        masked, shrunk = preview.model.eval()(xb), applied.eval()(xb)
    torch.testing.assert_close(masked, shrunk, rtol=1e-5, atol=1e-5)
