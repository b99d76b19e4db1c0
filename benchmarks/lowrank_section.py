"""Benchmark section `lowrank`: truncated-SVD factorisation (`plans.lowrank`) of the sample CNN
(shapes-resnet) and ViT (shapes-vit) at rank ratios 0.25, 0.5 and 0.75 (issue 12, point 2).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -c "from benchmarks import run, \
lowrank_section as m; run.SECTIONS['lowrank'] = m.section_lowrank; \
run.main(['--only', 'lowrank', '--no-merge', '--out', '/tmp/bench'])"

Each row is the dense model or `prune_(granularity="lowrank", ratio=r)` in physical mode (the
classifier kept dense, global scope, BatchNorm re-estimated on the calibration split as the app
does): parameters, MACs per image (FlopCounterMode), validation accuracy before any fine-tune,
and eager PyTorch latency (`latency.measure_latency`, its default protocol: 1 thread, warm-up,
repeats, p10/p90) at batch 1 and 32. One run.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.run import Ctx, Section

__all__ = ["LOWRANK_MODELS", "LOWRANK_RATIOS", "section_lowrank"]

LOWRANK_MODELS = {"shapes-resnet": "shapes", "shapes-vit": "shapes"}
LOWRANK_RATIOS = (0.25, 0.5, 0.75)
BATCHES = (1, 32)


def section_lowrank(ctx: Ctx) -> Section:
    """Low-rank factorisation of the sample CNN and ViT: params, MACs, accuracy, latency."""
    from pruning_core.data import load_dataset
    from pruning_core.evaluate import evaluate
    from pruning_core.latency import measure_latency
    from pruning_core.layers import LOW_RANK_LAYERS
    from pruning_core.models import load_model
    from pruning_core.prune import PruneConfig, prune_
    from pruning_core.stats import count_macs, count_params

    sec = Section(
        "lowrank",
        "Low-rank factorisation (truncated SVD) of shapes-resnet and shapes-vit: params, MACs, "
        "accuracy before fine-tune, eager latency",
    )
    limit = 500 if ctx.quick else None
    for ref, dataset in LOWRANK_MODELS.items():
        lm = load_model(ref)
        data = load_dataset(dataset)
        spec = lm.spec
        dense_params, dense_macs = count_params(lm.model), count_macs(lm.model, spec)
        for ratio in (0.0, *LOWRANK_RATIOS):
            model = copy.deepcopy(lm.model)
            factorised = 0
            if ratio:
                cfg = PruneConfig(criterion="magnitude", granularity="lowrank", ratio=ratio)
                prune_(model, cfg, data=data, spec=spec)
                factorised = sum(isinstance(m, LOW_RANK_LAYERS) for m in model.modules())
            model.eval()
            params, macs = count_params(model), count_macs(model, spec)
            acc = evaluate(model, data, spec, limit=limit).accuracy
            row = {
                "model": ref,
                "rank_ratio": ratio,
                "layers_factorised": factorised,
                "params": params,
                "params_share": params / dense_params,
                "macs": macs,
                "macs_share": macs / dense_macs,
                "accuracy": acc,
            }
            for b in BATCHES:
                x = torch.randn(b, spec.channels, spec.size, spec.size)
                lat = measure_latency(model, x, repeats=5 if ctx.quick else None)
                row[f"b{b}_ms"] = lat.median_ms
                row[f"b{b}_p10_ms"] = lat.p10_ms
                row[f"b{b}_p90_ms"] = lat.p90_ms
            sec.rows.append(row)
    sec.notes.append(
        "rank_ratio: share of each factorisable layer's rank removed under one global threshold "
        "on normalised singular values (S_i / ||S||); a layer whose kept rank would not make it "
        "smaller (r (in + out) >= in x out) stays dense, so at 0.25 few layers change. Accuracy "
        "on the validation split (2000 images) before any fine-tune, BatchNorm re-estimated on "
        "the calibration split. Latency: eager PyTorch, latency.measure_latency's default "
        "protocol (1 thread), median with p10/p90, one run on a shared machine."
    )
    return sec
