"""Command: export (a pruned model as a checkpoint, an ONNX file or an HTML report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pruning_core.data import is_offline_dataset
from pruning_core.errors import UserError
from pruning_core.fsio import check_output_dir, check_output_file
from pruning_core.timing import PROTOCOL
from pruning_core.validate import BATCH, POSITIVE_FLOAT

__all__ = ["cmd_export", "register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the export command."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a pruned model: checkpoint (.zip or directory), ONNX (checked) or HTML report",
        description=(
            "checkpoint: the model directory (safetensors + model.json, reloads without "
            "unpickling), zipped when --out ends in .zip. onnx: exported and run once through "
            "onnxruntime; written only if it matches PyTorch. report: a self-contained HTML "
            "report (plots inlined, opens offline) with measured latency."
        ),
    )
    p.add_argument(
        "--pruned", required=True, type=Path, help="a model directory (from prune) or a zip of one"
    )
    p.add_argument("--format", required=True, choices=["onnx", "checkpoint", "report"])
    p.add_argument("--out", required=True, type=Path, help="output file (.onnx, .zip, .html)")
    p.add_argument(
        "--dataset",
        help="onnx: images for the check; report: the validation split of the per-class "
        "section and the companions (default: the model's bundled dataset)",
    )
    p.add_argument(
        "--companions",
        action="store_true",
        help="report: also build and measure the companions of the dense original, as the "
        "Trade-offs page's one view (unstructured, channel or head, low rank, int8, dynamic "
        "gating; eager and ONNX Runtime): from seconds to about a minute on the sample models",
    )
    p.add_argument(
        "--sweep", type=Path, help="report: a sweep CSV to plot (from pruning-lab sweep)"
    )
    p.add_argument(
        "--batch-size",
        type=BATCH,
        default=PROTOCOL.batch_size,
        help=f"report: latency batch (default {PROTOCOL.batch_size}, the app's protocol)",
    )
    p.add_argument(
        "--atol",
        type=POSITIVE_FLOAT,
        default=None,
        help="onnx: accepted max difference from PyTorch, relative to the largest |logit| "
        "(at least 1); default 1e-3",
    )
    p.set_defaults(handler=cmd_export)


def _load(directory: Path) -> Any:
    from pruning_core.export import is_model_dir
    from pruning_core.models import load_model

    if not directory.is_dir():
        raise UserError(f"--pruned {directory}: no such directory")
    from pruning_core.quantize import is_quantized_dir

    if is_quantized_dir(directory):
        raise UserError(
            f"--pruned {directory} is an int8 model (from pruning-lab quantize): it is exported "
            "already (its model.onnx); export its float original"
        )
    if not is_model_dir(directory):
        raise UserError(
            f"--pruned {directory} is not a model directory (needs model.safetensors and model.json)"
        )
    loaded = load_model(str(directory))
    if loaded.arch is None:
        raise UserError(f"{directory} names no architecture")
    return loaded


def _check_out(out: Path, fmt: str) -> None:
    if fmt == "checkpoint" and out.suffix.lower() != ".zip":
        check_output_dir(out)  # a model folder: never over someone's own folder
        return
    want = {"onnx": (".onnx",), "report": (".html", ".htm"), "checkpoint": (".zip",)}[fmt]
    check_output_file(out, "--out", want)


def _example(loaded: Any, ref: str | None) -> torch.Tensor | None:
    if not ref:
        return None
    from pruning_core.data import load_dataset

    data = load_dataset(ref)
    data.check_spec(loaded.spec)
    x, _ = data.tensors("val", loaded.spec, limit=8)
    return x


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export the pruned model; returns what was written."""
    from pruning_core.checkpoint import is_model_zip, unzipped_model

    _check_out(args.out, args.format)
    if is_model_zip(args.pruned):
        # A checkpoint zip is read as its folder (metrics.json included), extracted safely.
        with unzipped_model(args.pruned) as folder:
            return _export(args, folder)
    return _export(args, args.pruned)


def _export(args: argparse.Namespace, source: Path) -> dict[str, Any]:
    from pruning_core import export

    loaded = _load(source)
    metrics = export.read_pruned_dir(source)
    out: Path = args.out
    if args.format == "checkpoint":
        files = {k: v for k, v in (("metrics.json", metrics),) if v}
        recipe = metrics.get("recipe") or loaded.meta.get("recipe")
        if recipe:
            files["recipe.json"] = recipe
        kw = {
            "arch": loaded.arch,
            "arch_kwargs": loaded.meta.get("arch_kwargs") or loaded.arch_kwargs,
            "spec": loaded.spec,
            "extra_meta": {k: v for k, v in loaded.meta.items() if k not in ("surgery",)},
            "files": files,
        }
        if out.suffix.lower() == ".zip":
            export.write_bytes(out, export.checkpoint_zip(loaded.model, folder=out.stem, **kw))
        else:
            export.save_checkpoint(out, loaded.model, **kw)
        return {
            "format": "checkpoint",
            "out": str(out),
            "files": sorted(["model.safetensors", "model.json", *files]),
        }
    if args.format == "onnx":
        ds = _dataset_ref(args, loaded, metrics)
        check = export.export_onnx(
            loaded.model,
            loaded.spec,
            out,
            example=_example(loaded, ds),
            **({"atol": args.atol} if args.atol is not None else {}),
        )
        return {"format": "onnx", "out": str(out), **check.to_dict()}
    return _report(args, loaded, metrics)


def _dataset_ref(args: argparse.Namespace, loaded: Any, metrics: dict[str, Any]) -> str | None:
    # A dataset named inside the folder is only followed when it is a bundled registry set: a
    # file must not make the tool walk other folders or download anything.
    named = metrics.get("dataset") or loaded.meta.get("dataset")
    return args.dataset or (named if is_offline_dataset(named) else None)


def _against_dense(
    args: argparse.Namespace, loaded: Any, metrics: dict[str, Any]
) -> tuple[Any, Any, list[str]]:
    """The per-class change against the dense original and the companions of it (when asked),
    with a sentence for each section that cannot be made and why."""
    from pruning_core.cli.common import stderr_progress, warn_mismatch
    from pruning_core.cli.measure import dense_original
    from pruning_core.data import load_dataset
    from pruning_core.per_class import per_class_accuracy, per_class_change

    notes: list[str] = []
    original = dense_original(loaded)
    ref = _dataset_ref(args, loaded, metrics)
    if original is None or ref is None:
        why = (
            "the trained unpruned original is not loadable (a per-class change against an "
            "untrained network would mean nothing)"
            if original is None
            else "no dataset (give --dataset)"
        )
        notes.append(f"No per-class section{' or companions' * args.companions}: {why}.")
        return None, None, notes
    data = load_dataset(ref)
    data.check_spec(loaded.spec)
    warn_mismatch(str(args.pruned), ref)
    per_class = per_class_change(
        per_class_accuracy(original.model, data, original.spec),
        per_class_accuracy(loaded.model, data, loaded.spec),
    )
    companions = None
    if args.companions:
        from pruning_core.companions import compare_companions

        companions = compare_companions(
            original, data, progress=stderr_progress("companions", getattr(args, "quiet", False))
        )
    return per_class, companions, notes


def _report(args: argparse.Namespace, loaded: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    from pruning_core import export
    from pruning_core.cli.measure import dense_reference
    from pruning_core.latency import benchmark_backends
    from pruning_core.layers import example_input

    sweep = None
    if args.sweep is not None:
        if not args.sweep.is_file():
            raise UserError(f"--sweep {args.sweep}: no such file")
        try:
            sweep = pd.read_csv(args.sweep)
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"--sweep {args.sweep.name}: not a readable CSV ({e})") from None
        missing = {"method", "sparsity", "accuracy"} - set(sweep.columns)
        if missing:
            raise UserError(
                f"--sweep {args.sweep.name} lacks columns {sorted(missing)} (use pruning-lab sweep's CSV)"
            )
    if not metrics:
        metrics = {
            "model": str(args.pruned),
            "dataset": loaded.meta.get("dataset"),
            **(loaded.meta.get("pruned") or {}),
        }
    dense, how = dense_reference(loaded)
    spec = loaded.spec
    x = example_input(loaded.model, spec, args.batch_size, random=True)
    lat = benchmark_backends(
        loaded.model, x, backends=["dense", "masked", "structured", "csr"], dense=dense
    )
    note = f"{lat.attrs['protocol']}; dense = {how}"
    card = export.model_card(str(metrics.get("model") or ""))
    per_class, companions, notes = _against_dense(args, loaded, metrics)
    page = export.pruning_report(
        metrics,
        title=f"Pruning report: {metrics.get('model')}",
        sweep=sweep,
        latency=lat,
        latency_note=note,
        model_card=card,
        notes=notes,
        **({"per_class": per_class} if per_class is not None else {}),
        companions=companions,
    )
    export.write_bytes(args.out, page.encode("utf-8"))
    return {
        "format": "report",
        "out": str(args.out),
        "bytes": len(page.encode()),
        "self_contained": export.is_self_contained(page),
        "sections": {
            "per_class": per_class is not None or bool(metrics.get("per_class")),
            "companions": companions is not None,
        },
        **({"notes": notes} if notes else {}),
    }
