"""Benchmark section `bn_recalibration`: what BatchNorm recalibration after structured pruning
is worth before any fine-tune (issue 11: "BN recalibration raises the no-fine-tune accuracy of
channel 0.5 on shapes-resnet").

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -c "from benchmarks import run, \
bn_section as m; run.SECTIONS['bn_recalibration'] = m.section_bn_recalibration; \
run.main(['--only', 'bn_recalibration', '--no-merge', '--out', '/tmp/bench'])"

The sample model `shapes-resnet`, magnitude channel pruning at 0.5 (global scope, the app's and
the command line's default), physically shrunk, no fine-tune; measured on the whole validation
split twice, from one scoring of the dense model: once with `PruneConfig(recalibrate_bn=True)`
(the default: running statistics re-estimated on the calibration batches, Li et al. 2020,
"EagleEye"), once with `recalibrate_bn=False` (the dense statistics kept). One run; the
pruning is deterministic, so the two rows differ only by the statistics.
"""

from __future__ import annotations

import time

from benchmarks.run import Ctx, Section, Target

__all__ = ["BN_MODEL", "BN_RATIO", "section_bn_recalibration"]

BN_MODEL, BN_DATASET = "shapes-resnet", "shapes"
BN_RATIO = 0.5


def section_bn_recalibration(ctx: Ctx) -> Section:
    """Channel 0.5 on shapes-resnet, no fine-tune: accuracy with and without recalibration."""
    import torch

    from pruning_core.calibration import CALIB_BATCH_SIZE
    from pruning_core.data import load_dataset
    from pruning_core.evaluate import evaluate
    from pruning_core.layers import trainable_copy
    from pruning_core.models import load_model
    from pruning_core.prune import Preview, PruneConfig, prune_

    torch.set_num_threads(ctx.threads)
    sec = Section(
        "bn_recalibration",
        f"BatchNorm recalibration after channel pruning ({BN_MODEL}, magnitude, channel "
        f"{BN_RATIO}, no fine-tune): validation accuracy with and without",
    )
    loaded, data = load_model(BN_MODEL), load_dataset(BN_DATASET)
    n_val = len(data.val[1])
    dense = evaluate(loaded.model, data, loaded.spec).accuracy
    on = PruneConfig(method="magnitude", granularity="channel", ratio=BN_RATIO, seed=ctx.seed)
    scores = Preview(trainable_copy(loaded.model), on, data, loaded.spec)
    acc: dict[bool, float] = {}
    for cfg in (on, on.replace(recalibrate_bn=False)):
        model = trainable_copy(loaded.model)
        # The same selection both times: one scoring of the dense model (a structured Preview
        # is re-traced on the copy it prunes, from the same weights).
        t0 = time.perf_counter()
        res = prune_(model, cfg, data=data, spec=loaded.spec, scores=scores)
        seconds = time.perf_counter() - t0
        acc[cfg.recalibrate_bn] = evaluate(model, data, loaded.spec).accuracy
        sec.rows.append({
            "recalibrate_bn": cfg.recalibrate_bn,
            "ratio": BN_RATIO,
            "calibration_images": cfg.calib_batches * CALIB_BATCH_SIZE if cfg.recalibrate_bn
            else 0,
            "sparsity": res.sparsity,
            "params": sum(p.numel() for p in model.parameters()),
            "dense_acc": dense,
            "pruned_acc": acc[cfg.recalibrate_bn],
            "prune_seconds": seconds,
            "val_images": n_val,
        })  # fmt: skip
    gain = acc[True] - acc[False]
    sec.targets.append(
        Target(
            f"{BN_MODEL} channel {BN_RATIO}, no fine-tune: accuracy gain from BN recalibration "
            f"({acc[False]:.4f} -> {acc[True]:.4f}, dense {dense:.4f}; {n_val} val images)",
            gain,
            1 / n_val,  # raised by at least one image
            ">=",
            "acc",
            why=""
            if gain > 0
            else "recalibration did not raise the accuracy: the statistics were not the loss",
        )
    )
    sec.notes.append(
        f"One run, {n_val} validation images (one image = {1 / n_val:.4f}); the same channels "
        "removed in both rows, only the BatchNorm running statistics differ."
    )
    return sec
