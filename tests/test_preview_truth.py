"""The preview is the truth: the Prune page's structured preview (masks on a working copy) and
the applied, physically shrunk model compute the same function, so they score the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_pairs import REFUSED, SAMPLES
from torch import nn

from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.layers import counted_weights, trainable_copy
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
    res = prune_(applied, config, data=data, spec=loaded.spec, scores=preview.engine)
    # One definition of sparsity: the preview's number is the applied model's (CLI, report).
    assert res.sparsity == pytest.approx(stats.sparsity, abs=1e-9)
    dense_params = sum(p.numel() for p in loaded.model.parameters())
    assert sum(p.numel() for p in applied.parameters()) < dense_params  # really shrunk
    assert evaluate(applied, data, loaded.spec, limit=N_IMAGES).accuracy == stats.accuracy

    # Not only the same score: the same logits, image by image.
    xb, _ = next(iter(data.batches("val", loaded.spec, N_IMAGES, limit=N_IMAGES)))
    with torch.no_grad():
        masked, shrunk = preview.model.eval()(xb), applied.eval()(xb)
    torch.testing.assert_close(masked, shrunk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
@pytest.mark.parametrize("model_ref", ["digits-cnn", "shapes-resnet"])
def test_zeros_sparsity_is_one_number_in_preview_engine_and_model(
    model_ref: str, granularity: str
) -> None:
    """Unstructured and N:M keep the classifier dense: the model's sparsity is then below the
    ratio, and the preview, `prune_` and a count of the model's zeros all say the same."""
    loaded = load_model(model_ref)
    config = PruneConfig(criterion="magnitude", granularity=granularity, ratio=0.5)
    preview = SliderPreview(loaded, config, None)
    stats = preview.update(0.5)
    applied = trainable_copy(loaded.model)
    res = prune_(applied, config, spec=loaded.spec)
    weights = [m.weight for m in applied.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    counted = zeros / sum(w.numel() for w in weights)
    assert res.sparsity == pytest.approx(counted, abs=1e-9)
    assert stats.sparsity == pytest.approx(res.sparsity, abs=1e-9)
    assert res.sparsity < 0.5  # the dense classifier counts too


def test_a_chained_run_reports_the_models_sparsity_not_only_its_last_step() -> None:
    """Unstructured, then channels: the second run's sparsity counts the zeros the first left
    in the weights it kept, with the weights it removed (`terms.SPARSITY_MEANS`)."""
    loaded = load_model("digits-cnn")
    model = trainable_copy(loaded.model)
    first = prune_(model, PruneConfig(ratio=0.5), spec=loaded.spec)
    before = counted_weights(model)
    second = prune_(model, PruneConfig(granularity="channel", ratio=0.3), spec=loaded.spec)
    mods, now = dict(model.named_modules()), counted_weights(model)
    assert sum(now.values()) < sum(before.values())  # channels really went
    zeros = sum(k - int(torch.count_nonzero(mods[n].weight)) for n, k in now.items())
    removed = sum(before.values()) - sum(now.values())
    assert second.sparsity == pytest.approx((zeros + removed) / sum(before.values()), abs=1e-9)
    assert second.sparsity > first.sparsity > 0.4


@pytest.fixture(scope="module")
def shrunk_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-cnn with half its channels removed, saved as a model folder."""
    from pruning_core.recipe import Recipe
    from pruning_core.workflow import run_recipe

    recipe = Recipe.from_settings(
        {
            "model": "digits-cnn",
            "dataset": "digits",
            "method": "magnitude",
            "granularity": "channel",
            "ratio": 0.5,
        }
    )
    out = tmp_path_factory.mktemp("shrunk") / "model"
    run_recipe(recipe).save(out)
    return out


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_a_shrunk_models_preview_counts_against_its_dense_architecture(
    granularity: str, shrunk_folder: Path
) -> None:
    # A pruned folder (or the app's upload of one) pruned again: the preview, Apply's prune_
    # restated by `sparsity_base`, and a count of zeros and removed weights against the dense
    # architecture (what `evaluate` prints) are one number; at ratio 0 it is the folder's own.
    from pruning_core.layers import measured_model_sparsity, rebased_sparsity
    from pruning_core.models import dense_weight_counts, sparsity_base

    data = load_dataset("digits")
    shrunk = load_model(str(shrunk_folder))
    dense = dense_weight_counts(shrunk)
    config = PruneConfig(criterion="magnitude", granularity=granularity, ratio=0.5)
    preview = SliderPreview(shrunk, config, data)
    at_zero = preview.update(0.0).sparsity
    assert at_zero == pytest.approx(measured_model_sparsity(shrunk.model, dense), abs=1e-9)
    assert at_zero > 0.3  # the channels the folder no longer has
    stats = preview.update(0.5)
    applied = trainable_copy(shrunk.model)
    res = prune_(applied, config, data=data, spec=shrunk.spec, scores=preview.engine)
    restated = rebased_sparsity(res.sparsity, *sparsity_base(shrunk))
    assert restated == pytest.approx(stats.sparsity, abs=1e-9)
    assert restated == pytest.approx(measured_model_sparsity(applied, dense), abs=1e-9)
    assert stats.sparsity > at_zero
    # A sweep's point at the same ratio says the same (its CSV, the Trade-offs plot).
    from pruning_core.experiments import sweep

    df = sweep(shrunk, data, methods=["magnitude"], ratios=[0.5], granularity=granularity,
               eval_limit=32)  # fmt: skip
    assert float(df["sparsity"].iloc[0]) == pytest.approx(stats.sparsity, abs=1e-9)


def test_low_rank_of_a_sparse_model_previews_what_it_applies() -> None:
    # An earlier run's zeros: low rank factorises a layer only below its non-zero weights (it
    # added weights), and the preview counts the zeros of the layers it leaves alone.
    from pruning_core.stats import count_params, model_stats

    base = load_model("digits-cnn")
    data = load_dataset("digits")
    prune_(base.model, PruneConfig(granularity="unstructured", ratio=0.6), data=data,
           spec=base.spec)  # fmt: skip
    before = count_params(base.model, nonzero=True)
    for ratio in (0.3, 0.6):
        config = PruneConfig(criterion="magnitude", granularity="lowrank", ratio=ratio)
        preview = SliderPreview(base, config, data)
        stats = preview.update(ratio)
        applied = trainable_copy(base.model)
        res = prune_(applied, config, data=data, spec=base.spec, scores=preview.engine)
        assert stats.sparsity == pytest.approx(res.sparsity, abs=1e-9)
        assert stats.macs_effective == pytest.approx(
            model_stats(applied, base.spec)["macs_effective"], rel=1e-9
        )
        assert count_params(applied, nonzero=True) <= before
        assert res.sparsity >= 0.59  # the zeros stay counted
