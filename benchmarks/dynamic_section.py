"""Benchmark section `dynamic`: run-time (per-input) channel gating against static channel
pruning at the same average MACs, before any fine-tune (issue 12, point 1).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -c "from benchmarks import run, \
dynamic_section as m; run.SECTIONS['dynamic'] = m.section_dynamic; \
run.main(['--only', 'dynamic', '--no-merge', '--out', '/tmp/bench'])"

Static: `prune_` with granularity `channel`, ratio 0.5 (magnitude, global), BatchNorm statistics
re-estimated on the calibration images as `prune_` does, MACs from `stats.count_macs`. Dynamic:
`pruning_core.dynamic`, the data-free `magnitude` gate on every convolution but the classifier,
its `keep` (and a few per-layer channels) searched so that the average effective MACs per image
equal the static model's (`equal_macs_config`), with and without BatchNorm statistics
re-estimated under the gates on the same calibration images. Accuracies on the whole validation
split; no timing (a gated model on dense kernels is not faster: the MACs are those a kernel
that skips gated channels would do).

After one epoch of training, every row with the same settings (`train_gates`' defaults: Adam at
`dynamic.GATE_LR` with a cosine schedule, batch 64, seed 0, the last epoch's weights, so no row
chooses on the validation split it is measured on): the `learned` gate (FBS) at the same
average MACs (its predictor's cost counted), BatchNorm re-estimated under the untrained gates,
then only its predictors trained (network frozen); the same with the network trained too (FBS
trains both); and, for fairness, the static channel-0.5 model fine-tuned.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.run import Ctx, Section, Target

__all__ = ["STATIC_RATIO", "section_dynamic"]

STATIC_RATIO = 0.5
# Epochs of the trained rows (learned gates, static fine-tune).
TRAIN_EPOCHS = 1
# The search stops within this share of the static MACs; the target allows twice that.
MACS_WITHIN = 0.01


def section_dynamic(ctx: Ctx) -> Section:
    """Static channel 0.5 vs dynamic gating at equal average MACs: accuracy, MACs, skipped."""
    from pruning_core.data import load_dataset
    from pruning_core.dynamic import (
        GATE_LR,
        DynamicConfig,
        DynamicModel,
        equal_macs_config,
        measure_dynamic,
        static_channel_baseline,
        train_gates,
    )
    from pruning_core.evaluate import evaluate
    from pruning_core.layers import trainable_copy
    from pruning_core.models import load_model
    from pruning_core.train import TrainConfig, fit

    name, ds = ("digits-cnn", "digits") if ctx.quick else ("shapes-resnet", "shapes")
    sec = Section(
        "dynamic",
        f"Dynamic gating vs static channel pruning at equal average MACs on {name} "
        "(before fine-tune)",
    )
    lm, data = load_model(name), load_dataset(ds)
    model, spec = lm.model, lm.spec
    dense_acc = evaluate(model, data, spec).accuracy
    t0 = time.perf_counter()
    static = static_channel_baseline(model, data, spec, STATIC_RATIO)
    static_s = time.perf_counter() - t0
    assert static.accuracy is not None
    sec.rows.append({
        "model": "dense", "macs": static.dense_macs, "macs_share": 1.0, "accuracy": dense_acc,
        "skipped": 0.0, "keep": 1.0, "macs_p10": static.dense_macs,
        "macs_p90": static.dense_macs, "seconds": 0.0,
    })  # fmt: skip
    sec.rows.append({
        "model": f"static channel {STATIC_RATIO} (BN re-estimated)", "macs": static.macs,
        "macs_share": static.macs / static.dense_macs, "accuracy": static.accuracy,
        "skipped": np.nan, "keep": np.nan, "macs_p10": static.macs, "macs_p90": static.macs,
        "seconds": static_s,
    })  # fmt: skip
    t0 = time.perf_counter()
    config, _ = equal_macs_config(model, spec, static.macs, DynamicConfig(gate="magnitude"))
    search_s = time.perf_counter() - t0
    reports = {}
    for recal in (False, True):
        t0 = time.perf_counter()
        dyn = DynamicModel(model, config, spec)
        if recal:
            dyn.recalibrate(data)
        r = measure_dynamic(model, data, spec, dyn)
        reports[recal] = r
        sec.rows.append({
            "model": "dynamic, magnitude gate" + (", BN re-estimated" if recal else ""),
            "macs": r.mean_macs, "macs_share": r.mean_macs / r.dense_macs,
            "accuracy": r.accuracy, "skipped": r.skipped, "keep": config.keep,
            "macs_p10": float(np.quantile(r.macs, 0.1)),
            "macs_p90": float(np.quantile(r.macs, 0.9)),
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
    sec.targets.append(
        Target(
            "dynamic average effective MACs / static channel-0.5 MACs (equal within 1%)",
            abs(reports[True].mean_macs / static.macs - 1),
            MACS_WITHIN,
            "<=",
            "x",
        )
    )
    # Trained rows: the learned gate (gates only, then with the network), static fine-tuned.
    t0 = time.perf_counter()
    lcfg, _ = equal_macs_config(model, spec, static.macs, DynamicConfig(gate="learned"))
    learned_search_s = time.perf_counter() - t0
    learned = {}
    for with_net in (False, True):
        t0 = time.perf_counter()
        dyn = DynamicModel(model, lcfg, spec)
        dyn.recalibrate(data)
        tr = train_gates(dyn, data, epochs=TRAIN_EPOCHS, train_network=with_net, seed=0)
        r = measure_dynamic(model, data, spec, dyn)
        learned[with_net] = (r, tr)
        sec.rows.append({
            "model": f"dynamic, learned gate, {TRAIN_EPOCHS} epoch "
            + ("gates + network trained" if with_net else "gates trained (network frozen)"),
            "macs": r.mean_macs, "macs_share": r.mean_macs / r.dense_macs,
            "accuracy": r.accuracy, "skipped": r.skipped, "keep": lcfg.keep,
            "macs_p10": float(np.quantile(r.macs, 0.1)),
            "macs_p90": float(np.quantile(r.macs, 0.9)),
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
    t0 = time.perf_counter()
    tuned = trainable_copy(static.model)
    ft_cfg = TrainConfig(epochs=TRAIN_EPOCHS, lr=GATE_LR, optimizer="adam", schedule="cosine",
                         batch_size=64, seed=0, keep_best=False)  # fmt: skip
    fit(tuned, data, spec, ft_cfg)
    tuned_acc = evaluate(tuned, data, spec).accuracy
    sec.rows.append({
        "model": f"static channel {STATIC_RATIO}, {TRAIN_EPOCHS} epoch fine-tune",
        "macs": static.macs, "macs_share": static.macs / static.dense_macs,
        "accuracy": tuned_acc, "skipped": np.nan, "keep": np.nan, "macs_p10": static.macs,
        "macs_p90": static.macs, "seconds": time.perf_counter() - t0,
    })  # fmt: skip
    best = max(reports.values(), key=lambda r: r.accuracy)
    per_layer = ", ".join(
        f"{row.layer} {row.kept}/{row.channels}"
        for row in reports[True].layers.itertuples()
        if row.gated
    )
    sec.notes += [
        f"dense {dense_acc:.4f}; static channel {STATIC_RATIO}: {static.accuracy:.4f} at "
        f"{static.macs / static.dense_macs:.1%} of dense MACs; dynamic at the same average MACs "
        f"({best.mean_macs / best.dense_macs:.1%}): {reports[False].accuracy:.4f} as is, "
        f"{reports[True].accuracy:.4f} with BatchNorm re-estimated under the gates; "
        f"{best.accuracy - static.accuracy:+.4f} against static (before any fine-tune).",
        f"channels computed per image (gated layers): {per_layer}; keep searched in "
        f"{search_s:.1f} s.",
        f"after {TRAIN_EPOCHS} epoch of training: learned gate (FBS) "
        f"{learned[False][0].accuracy:.4f} with only its predictors trained, "
        f"{learned[True][0].accuracy:.4f} with the network trained too, at "
        f"{learned[True][0].mean_macs / static.dense_macs:.1%} of dense MACs (predictor "
        f"included; keep searched in {learned_search_s:.1f} s); static channel {STATIC_RATIO} "
        f"fine-tuned: {tuned_acc:.4f}. The learned gate starts from the magnitude gate with "
        "BatchNorm re-estimated under it; the gates-only run leaves the network (and its "
        "BatchNorm statistics) as they were.",
        "Top-k gates compute the same number of channels for every image, so the effective MACs "
        "per image are constant (p10 = p90); which channels are computed depends on the image.",
        "Effective MACs: what a kernel that skips gated channels would do (the gated conv's "
        "skipped outputs, the inputs a gate upstream zeroed, plus the gates' own pooling and "
        "prediction). Run by PyTorch the gated model does all the dense work and more: it is "
        "not faster, and no time is claimed.",
    ]
    return sec
