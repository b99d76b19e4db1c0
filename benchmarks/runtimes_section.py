"""Benchmark section `runtimes`: eager PyTorch against ONNX Runtime for the dense, shrunk and
int8 sample models, at batch 1 and 32, one thread, one run (issue 12, point 4).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -c "from benchmarks import run, \
runtimes_section as m; run.SECTIONS['runtimes'] = m.section_runtimes; \
run.main(['--only', 'runtimes', '--no-merge', '--out', '/tmp/bench'])"

Models: shapes-resnet (the sample CNN) dense, shrunk by magnitude channel pruning at 0.5
(physical, BatchNorm re-estimated on the calibration split, then one epoch of
`train.STRUCTURED_FINETUNE`), int8 (static, QDQ, calibrated on the calibration split) and the
shrunk model in int8; shapes-vit (the sample ViT) dense, shrunk by
head pruning at 0.5 (where it applies, fine-tuned alike), int8 static and shrunk + int8. Each model is timed under both runtimes
by `latency.benchmark_backends` (backends `dense`, here the model itself run eagerly, and
`onnxruntime`) with the app's protocol (`timing.PROTOCOL`: 1 thread, 5 warm-up calls, 30 timed
calls in 3 interleaved rounds, median with p10/p90). An int8 model has no eager row: it runs only
in ONNX Runtime. Accuracy of every (model, runtime) is measured on the whole validation split,
the ONNX Runtime one through an `onnxruntime.InferenceSession`.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import Ctx, Section, Target

__all__ = ["RUNTIME_BATCHES", "RUNTIME_MODELS", "int8_vs_float_note", "section_runtimes"]

RUNTIME_BATCHES = (1, 32)
# model -> (dataset, granularity that shrinks it at ratio 0.5)
RUNTIME_MODELS: dict[str, tuple[str, str]] = {
    "shapes-resnet": ("shapes", "channel"),
    "shapes-vit": ("shapes", "head"),
}


def _variants(
    name: str, ds: str, granularity: str, root: Path, quick: bool, seed: int
) -> tuple[dict[str, torch.nn.Module], list[str], Any]:
    """(label -> model, notes, spec): dense, shrunk (if it applies), int8, shrunk + int8."""
    from pruning_core.data import load_dataset
    from pruning_core.errors import UserError
    from pruning_core.models import load_model
    from pruning_core.prune import PruneConfig, prune_
    from pruning_core.quantize import QuantizeConfig, quantize
    from pruning_core.train import STRUCTURED_FINETUNE, fit

    lm, data = load_model(name), load_dataset(ds)
    out: dict[str, torch.nn.Module] = {"dense": lm.model}
    notes: list[str] = []
    shrunk = copy.deepcopy(lm.model)
    try:
        cfg = PruneConfig(method="magnitude", granularity=granularity, ratio=0.5)
        prune_(shrunk, cfg, data=data, spec=lm.spec)
        tuned = ""
        if not quick:
            # Accuracy right after removing half the channels or heads is a few tens of percent;
            # the deployable shrunk model is the fine-tuned one.
            tc = dataclasses.replace(STRUCTURED_FINETUNE, epochs=1, device="cpu", seed=seed)
            fit(shrunk, data, lm.spec, tc, teacher=lm.model)
            tuned = ", 1-epoch fine-tune"
        out[f"shrunk ({granularity} 0.5{tuned})"] = shrunk
    except UserError as e:
        notes.append(f"{name}: {granularity} pruning does not apply ({e}); no shrunk rows")
    qcfg = QuantizeConfig(mode="static", val_limit=256 if quick else None)
    for i, label in enumerate(list(out)):
        r = quantize(out[label], lm.spec, data, root / f"{name}-{i}", qcfg, source=name)
        out[("int8 static" if label == "dense" else f"{label} + int8 static")] = r.model
        notes.append(
            f"{name} {label} -> int8 static: accuracy through ONNX Runtime {r.accuracy:.4f} "
            f"against float {r.float_accuracy:.4f}, top-1 agreement {r.top1_agreement:.4f}, "
            f"max |logit diff| {r.max_abs_diff:.3g} (float logits up to {r.logit_scale:.3g}), "
            f"{r.size_bytes / 1e3:.0f} kB against {r.float_size_bytes / 1e3:.0f} kB float ONNX"
        )
    return out, notes, (lm.spec, data)


def section_runtimes(ctx: Ctx) -> Section:
    """Eager PyTorch vs ONNX Runtime latency: dense, shrunk and int8, batch 1 and 32."""
    from pruning_core.evaluate import evaluate
    from pruning_core.latency import PROTOCOL
    from pruning_core.ort import OrtModule, to_ort
    from pruning_core.quantize import INT8_ACCURACY_TOLERANCE, QuantizedModel

    sec = Section(
        "runtimes",
        "Eager PyTorch vs ONNX Runtime latency for dense, shrunk and int8 sample models "
        "(CPU, 1 thread, batch 1 and 32)",
    )
    protocol = PROTOCOL.with_(threads=1, repeats=9 if ctx.quick else None)
    cpu = torch.device("cpu")
    limit = 256 if ctx.quick else None
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        for name, (ds, granularity) in RUNTIME_MODELS.items():
            models, notes, (spec, data) = _variants(
                name, ds, granularity, Path(tmp), ctx.quick, ctx.seed
            )
            sec.notes += notes
            eager_acc: dict[str, float] = {}
            float_ort: dict[str, Any] = {}
            for label, model in models.items():
                int8 = isinstance(model, QuantizedModel)
                acc: dict[str, float | None] = {"eager": None}
                if isinstance(model, OrtModule):
                    ort_model = model
                else:
                    acc["eager"] = eager_acc[label] = evaluate(model, data, spec,
                                                               limit=limit).accuracy  # fmt: skip
                    ort_model = to_ort(model, data.tensors("val", spec, limit=8)[0], spec=spec)
                    float_ort[label] = ort_model
                source = "dense" if label == "int8 static" else label.removesuffix(" + int8 static")
                acc["onnxruntime"] = evaluate(ort_model, data, spec, device=cpu,
                                              limit=limit).accuracy  # fmt: skip
                for b in RUNTIME_BATCHES:
                    x = torch.randn(b, spec.channels, spec.size, spec.size,
                                    generator=torch.Generator().manual_seed(ctx.seed))  # fmt: skip
                    sec.rows += _timed(name, label, model, models["dense"], ort_model, x,
                                       protocol, acc,
                                       float_ort.get(source) if int8 else None)  # fmt: skip
                if int8 and acc["onnxruntime"] is not None and source in eager_acc:
                    sec.targets.append(Target(
                        f"{name} {label}: |accuracy through ONNX Runtime - float {source}| "
                        "(stated tolerance 2 points)",
                        abs(acc["onnxruntime"] - eager_acc[source]), INT8_ACCURACY_TOLERANCE,
                        "<=", "acc",
                    ))  # fmt: skip
    sec.notes.append(int8_vs_float_note(sec.rows))
    sec.notes.append(
        f"Latency: {protocol.describe(device='cpu')}; every model is timed in the same "
        "interleaved rounds as the dense model run eagerly (`benchmark_backends`; "
        "dense_eager_ms is that reference, vs_dense_eager and the speedups are against it), "
        "ONNX Runtime with intra_op_num_threads 1, sequential execution, all graph "
        "optimisations. One run on a shared 2-core machine: medians move with its load, p10 is "
        "the least disturbed call (p10_speedup: dense p10 / this p10). Speed is claimed only "
        "where the p10-p90 ranges are apart (vs_dense_eager). An int8 model is also timed "
        "against its float source in ONNX Runtime, the two in interleaved rounds of their own "
        "(float_ort_ms and int8_ort_ms, medians of those rounds; vs_float_onnxruntime): int8 is not always the faster way to "
        "run a model in ONNX Runtime (quantize and dequantize nodes around every layer cost "
        "more than small matrix products save)."
    )
    sec.notes.append(
        "Why runtimes differ: ONNX Runtime folds BatchNorm into convolutions, fuses operators and "
        "has no Python dispatch per layer, which dominates eager PyTorch at batch 1; int8 static "
        "uses uint8 x int8 kernels (VNNI on this CPU). Accuracy: top-1 on the "
        f"{'first 256' if ctx.quick else 'whole'} validation split per (model, runtime), "
        "ONNX Runtime's through an InferenceSession; int8 models have no eager PyTorch form. "
        "Shrunk models: magnitude pruning at 0.5 (global), BatchNorm re-estimated, "
        + (
            "not fine-tuned (--quick)."
            if ctx.quick
            else "then one epoch of "
            "train.STRUCTURED_FINETUNE (SGD 0.01, distillation from dense, best epoch kept)."
        )
    )
    return sec


def int8_vs_float_note(rows: list[dict[str, Any]]) -> str:
    """One sentence per model from the rows: is int8 faster than float in ONNX Runtime?"""
    said = [
        f"{r['model']} {r['variant']} at batch {r['batch']}: {r['int8_ort_ms']:.3g} ms against "
        f"{r['float_ort_ms']:.3g} ms float ({r['vs_float_onnxruntime']})"
        for r in rows
        if r.get("vs_float_onnxruntime")
    ]
    return (
        "int8 against its float source, both in ONNX Runtime: " + "; ".join(said) + ". Where "
        "int8 is not faster, the float model in ONNX Runtime is the faster deployment."
    )


def _timed(
    name: str,
    label: str,
    model: torch.nn.Module,
    dense: torch.nn.Module,
    ort_model: Any,
    x: torch.Tensor,
    protocol: Any,
    acc: dict[str, float | None],
    float_ort: Any = None,
) -> list[dict[str, Any]]:
    """The eager and ONNX Runtime rows of one model at one batch, each against the dense model
    run eagerly in the same interleaved rounds (`benchmark_backends`), so a load spike of the
    shared machine hits the reference and the model alike. An int8 model's ONNX Runtime row is
    also timed against `float_ort` (its float source in ONNX Runtime) in rounds of their own."""
    from pruning_core.latency import benchmark_backends, time_interleaved
    from pruning_core.quantize import QuantizedModel
    from pruning_core.timing import compare

    if label == "dense":
        df = benchmark_backends(model, x, backends=("dense", "onnxruntime"), protocol=protocol,
                                onnx=ort_model)  # fmt: skip
        eager_backend = "dense"
    elif isinstance(model, QuantizedModel):
        df = benchmark_backends(model, x, backends=("dense", "onnxruntime"), dense=dense,
                                protocol=protocol)  # fmt: skip
        eager_backend = ""
    else:
        df = benchmark_backends(model, x, backends=("dense", "structured", "onnxruntime"),
                                dense=dense, structured=model, protocol=protocol,
                                onnx=ort_model)  # fmt: skip
        eager_backend = "structured"
    rows = df.set_index("backend")
    ref = rows.loc["dense"]
    out = []
    for runtime, backend in (("eager", eager_backend), ("onnxruntime", "onnxruntime")):
        rec: dict[str, Any] = {"model": name, "variant": label, "runtime": runtime,
                               "batch": int(x.shape[0])}  # fmt: skip
        if not backend:
            rec.update(status="skipped", reason="int8 ONNX model: runs only in ONNX Runtime")
            out.append(rec)
            continue
        r = rows.loc[backend]
        rec.update(
            status=r["status"], median_ms=r["median_ms"], p10_ms=r["p10_ms"], p90_ms=r["p90_ms"],
            accuracy=acc[runtime], dense_eager_ms=ref["median_ms"],
            vs_dense_eager="the reference" if backend == "dense" else r["vs_dense"],
            speedup_vs_dense_eager=ref["median_ms"] / r["median_ms"],
            p10_speedup=ref["p10_ms"] / r["p10_ms"], reason=r["reason"],
        )  # fmt: skip
        if runtime == "onnxruntime" and float_ort is not None and r["status"] == "ok":
            assert isinstance(model, QuantizedModel)
            runners = {
                "float": (float_ort.with_settings(threads=protocol.threads, device="cpu"), x),
                "int8": (model.with_settings(threads=protocol.threads, device="cpu"), x),
            }
            with torch.inference_mode():
                lat = time_interleaved(runners, protocol=protocol)
            rec.update(
                float_ort_ms=lat["float"].median_ms,
                int8_ort_ms=lat["int8"].median_ms,
                vs_float_onnxruntime=compare(lat["float"], lat["int8"]).text,
            )
        out.append(rec)
    return out
