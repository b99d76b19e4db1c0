"""Command: quantize (int8 with ONNX Runtime's quantizer, accuracy measured through ONNX Runtime).

`pruning-lab quantize MODEL --mode static --out DIR` exports MODEL (a registry name or a model
directory, e.g. a pruned one) to ONNX, quantizes it to int8 (`pruning_core.quantize`), measures
its top-1 accuracy through ONNX Runtime on the validation split beside the float model's, and
writes DIR (`model.onnx` + `quantized.json`). DIR is refused up front, in one line, when it is a
folder that Pruning Lab did not write (`fsio.check_output_dir`).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from pruning_core.errors import UserError
from pruning_core.fsio import check_not_source, check_output_dir
from pruning_core.validate import Range

__all__ = ["cmd_quantize", "register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the quantize command."""
    p = sub.add_parser(
        "quantize",
        parents=[common],
        help="int8 quantization with ONNX Runtime (dynamic or static), accuracy measured",
        description=(
            "Export MODEL to ONNX, quantize it to int8 with onnxruntime.quantization (dynamic: "
            "no data; static: calibrated on the calibration split, QDQ, per channel), measure "
            "its accuracy through ONNX Runtime on the validation split, and write --out "
            "(model.onnx + quantized.json). pruning-lab bench --model DIR --backends "
            "onnxruntime times it."
        ),
    )
    p.add_argument("model", help="registry name or model directory (e.g. a pruned output)")
    p.add_argument(
        "--mode",
        choices=["dynamic", "static"],
        default="static",
        help="static (default): calibrated on the calibration split; dynamic: no data",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (new, empty, or ours)")
    p.add_argument(
        "--dataset", help="calibration and validation data (default: the model's own dataset)"
    )
    p.add_argument(
        "--calib-batches",
        type=Range(integer=True, lo=1, hi=1000),
        default=None,
        help="static: calibration batches of 128 images (default 4)",
    )
    p.add_argument(
        "--per-tensor", action="store_true", help="one scale per weight tensor, not per channel"
    )
    p.add_argument(
        "--activation-type",
        choices=["uint8", "int8"],
        default=None,
        help="static: activation type (uint8: ONNX Runtime's fast x86 path, the default)",
    )
    p.add_argument(
        "--val-limit",
        type=Range(integer=True, lo=1, hi=10**9),
        default=None,
        help="evaluate on the first N validation images only (default: all)",
    )
    p.set_defaults(handler=cmd_quantize)


def _dataset_ref(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    from pruning_core.data import is_offline_dataset

    if args.dataset:
        return str(args.dataset)
    # A dataset named inside the folder is followed only when it is a bundled offline set.
    named = meta.get("dataset")
    if is_offline_dataset(named):
        return str(named)
    raise UserError(
        f"{args.model} names no bundled dataset: give --dataset (calibration and accuracy)"
    )


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    """Quantize, measure, write; returns what was measured."""
    from pruning_core.cli.common import warn_mismatch
    from pruning_core.data import load_dataset
    from pruning_core.models import load_model
    from pruning_core.quantize import QuantizeConfig, int8_verdict, is_quantized_dir, quantize

    check_output_dir(args.out)  # before any model is loaded: never over someone's own folder
    check_not_source(args.model, args.out)
    if is_quantized_dir(args.model):
        raise UserError(f"{args.model} is already an int8 model; quantize its float original")
    static_only = {"--calib-batches": args.calib_batches, "--activation-type": args.activation_type}
    given = [k for k, v in static_only.items() if v is not None]
    if args.mode == "dynamic" and given:
        # Dynamic quantization measures activation ranges on each call: a calibration setting
        # would be silently ignored.
        raise UserError(f"{given[0]} applies to --mode static only (dynamic needs no calibration)")
    config = QuantizeConfig(
        mode=args.mode,
        calib_batches=args.calib_batches or QuantizeConfig.calib_batches,
        per_channel=not args.per_tensor,
        activation_type=args.activation_type or QuantizeConfig.activation_type,
        val_limit=args.val_limit,
    )
    loaded = load_model(args.model)
    meta = dict(loaded.meta or {})
    if not meta.get("dataset") and loaded.arch:
        from pruning_core.models import get_entry

        meta["dataset"] = get_entry(loaded.arch).default_dataset
    ds = _dataset_ref(args, meta)
    data = load_dataset(ds)
    data.check_spec(loaded.spec)
    # Also the folder's own dataset: a folder pruned on another dataset than its weights know.
    warn_mismatch(args.model, ds)
    extra = {
        "arch": loaded.arch,
        "arch_kwargs": meta.get("arch_kwargs") or loaded.arch_kwargs,
        # The model's own dataset (what `evaluate` and `bench` compare against), not the one it
        # was calibrated on when --dataset names another.
        "dataset": meta.get("dataset") or ds,
        "calibration_dataset": ds,
    }
    # A folder is recorded by its absolute path: the int8 folder is read from anywhere later.
    source = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    result = quantize(
        loaded.model, loaded.spec, data, args.out, config, source=source, extra_meta=extra
    )
    ok, verdict = int8_verdict({**result.to_dict(), "int8_accuracy": result.accuracy})
    if not ok:
        # Written all the same (the user may still want it), but never silently: the app says
        # the same sentence in a warning box.
        warnings.warn(f"{args.out}: {verdict}", stacklevel=1)
    return {
        "model": args.model,
        "dataset": ds,
        **result.to_dict(),
        "verdict": verdict,
        "tolerance": (
            "int8 top-1 within 2 points of float, agreement >= 0.95, max |logit diff| <= 0.25 "
            "x max |float logit|"
        ),
    }
