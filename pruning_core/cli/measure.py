"""Commands: inspect (per-layer statistics) and bench (latency per execution backend).

`sweep` and `sensitivity` live in `pruning_core.cli.experiments_cmds`.

`bench --model DIR` on a pruned output directory compares:

- dense: the unpruned original named by the directory's metrics (`model` field of
  `metrics.json` or of the recipe) when it loads with the same architecture; otherwise the same
  architecture freshly built at full width. Dense kernels do the same work whatever the weight
  values, so both give the honest dense time; the output says which one was used.
- masked: the directory's model as stored (zeros in dense tensors).
- structured: the same model when it is physically smaller than the dense one.
- csr / semi24: copies converted by `pruning_core.sparse.to_sparse_`.
- onnxruntime: the model as deployed, exported to ONNX and run by ONNX Runtime with the same
  protocol (`--backend onnxruntime`); an int8 directory from `pruning-lab quantize` (as `--model`
  or `--pruned`) is run as it is, and its eager dense reference is the float model it came from.

`--batch-sizes 1,8,32,64` times every backend at each batch size (`latency.batch_sweep`).

Its timing defaults are the app's protocol (`pruning_core.timing.PROTOCOL`: 1 thread, batch 32,
warm-up, repeats), so `bench --backends dense --batch-size 1` times what Model & data shows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pruning_core.cli.common import add_model_args, resolve
from pruning_core.errors import UserError
from pruning_core.timing import PROTOCOL, LatencyProtocol
from pruning_core.validate import BATCH, BINS, SMALL_COUNT, THREADS, Range

__all__ = [
    "bench_protocol",
    "cmd_bench",
    "cmd_inspect",
    "dense_original",
    "dense_reference",
    "records",
    "register",
]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add inspect and bench."""
    p = sub.add_parser(
        "inspect", parents=[common], help="per-layer weight (and activation) statistics"
    )
    add_model_args(p, dataset_required=False)
    p.add_argument(
        "--batches", type=SMALL_COUNT, default=2, help="calibration batches for activation stats"
    )
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--bins", type=BINS, default=60, help="histogram bins (fixed count, 2-1000)")
    p.add_argument("--histograms", action="store_true", help="include binned histograms per layer")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser(
        "bench",
        parents=[common],
        help="latency of dense, masked, shrunk, sparse and ONNX Runtime backends",
    )
    add_model_args(p, dataset=False)
    p.add_argument("--pruned", help="pruned model directory (then --model is the dense original)")
    p.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        default="dense,masked,structured,csr,semi24",
        help="comma-separated, from: dense, masked, structured, csr, semi24, onnxruntime",
    )
    p.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=None,
        help="time every backend at each of these batch sizes, e.g. 1,8,32,64 (a sweep; "
        "default: only --batch-size)",
    )
    # Every default is the app's latency protocol, so bench and the app time alike.
    p.add_argument(
        "--batch-size",
        type=BATCH,
        default=PROTOCOL.batch_size,
        help=f"images per timed call (default {PROTOCOL.batch_size}, as the app compares)",
    )
    p.add_argument(
        "--threads",
        type=THREADS,
        default=PROTOCOL.threads,
        help=f"torch CPU threads (default {PROTOCOL.threads}, as the app times)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument(
        "--repeats", type=Range(integer=True, lo=1, hi=100_000), default=PROTOCOL.repeats
    )
    p.add_argument("--warmup", type=Range(integer=True, lo=0, hi=10_000), default=PROTOCOL.warmup)
    p.add_argument(
        "--max-seconds",
        type=Range(lo=0, hi=3600, lo_open=True),
        default=PROTOCOL.max_seconds,
        help=f"time budget per backend (default {PROTOCOL.max_seconds:g})",
    )
    p.set_defaults(handler=cmd_bench)


def _batch_sizes(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated batch sizes, each 1-4096."""
    sizes = []
    for part in [t.strip() for t in text.split(",") if t.strip()]:
        try:
            sizes.append(int(BATCH(part)))
        except (argparse.ArgumentTypeError, UserError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"batch size {part!r}: {e}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one batch size, e.g. 1,8,32,64")
    return tuple(dict.fromkeys(sizes))


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts (native Python types, NaN as None)."""
    out = []
    for row in df.to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for k, v in row.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from pruning_core import stats
    from pruning_core.device import resolve_device

    loaded, data = resolve(args)
    model = loaded.model.to(resolve_device(args.device)).eval()
    table = stats.layer_table(model, loaded.spec)
    out: dict[str, Any] = {
        "model": args.model,
        "arch": loaded.arch,
        "input": loaded.spec.to_dict(),
        "summary": stats.model_stats(model, loaded.spec, table),
        "layers": records(table),
        "activations": None,
    }
    if args.histograms:
        out["weight_histograms"] = {
            k: {"edges": e, "counts": c}
            for k, (e, c) in stats.weight_histograms(model, bins=args.bins).items()
        }
    if data is not None:
        act = stats.activation_stats(
            model,
            data,
            loaded.spec,
            batches=args.batches,
            bins=args.bins,
            batch_size=args.batch_size,
        )
        out["dataset"] = args.dataset
        out["activations"] = records(act.table)
        if args.histograms:
            out["activation_histograms"] = {
                k: {"edges": e, "counts": c} for k, (e, c) in act.histograms.items()
            }
    return out


def _parse_backends(text: str) -> list[str]:
    from pruning_core.latency import check_backends

    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise UserError("--backends is empty")
    return check_backends(names)


def dense_reference(loaded: Any) -> tuple[nn.Module | None, str]:
    """The unpruned counterpart of a loaded (possibly pruned) model and how it was found.

    Returns:
        (model or None, description). None when the model has no known architecture.
    """
    from pruning_core.models import get_entry

    meta = loaded.meta or {}
    if loaded.arch is None:
        return None, "no architecture known: dense = the model itself"
    original = dense_original(loaded)
    if original is not None:
        return original.model, f"the unpruned original '{_origin(loaded)}'"
    if not meta:
        return None, "a registry model: dense = the model itself"
    kwargs = meta.get("arch_kwargs") or loaded.arch_kwargs
    torch.manual_seed(0)
    fresh = get_entry(loaded.arch).builder(**kwargs).eval()
    return (
        fresh,
        f"'{loaded.arch}' built fresh at full width (original not loadable; same dense work)",
    )


def dense_original(loaded: Any) -> Any:
    """The trained, unpruned model a pruned directory came from, when it can be loaded.

    Returns:
        Its `LoadedModel` (the name its metrics or recipe give, of the same architecture and
        with no surgery), or None: no origin named, not loadable, or not the same network.
    """
    from pruning_core.models import load_model

    origin = _origin(loaded)
    if not origin or origin == loaded.source or loaded.arch is None:
        return None
    try:
        cand = load_model(origin)
    except (UserError, OSError, RuntimeError):
        return None
    if cand.arch != loaded.arch or cand.meta.get("surgery", {}).get("attrs"):
        return None
    return cand


def _origin(loaded: Any) -> str | None:
    """The model the pruned directory came from, as its metrics or recipe name it."""
    meta = loaded.meta or {}
    cands: list[Any] = []
    src = Path(loaded.source)
    if src.is_dir() and (src / "metrics.json").exists():
        try:
            m = json.loads((src / "metrics.json").read_text())
            cands += [m.get("model"), (m.get("recipe") or {}).get("model")]
        except (OSError, ValueError, AttributeError):
            pass
    metrics = meta.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    recipe = meta.get("recipe")
    recipe = recipe if isinstance(recipe, dict) else {}
    cands += [metrics.get("model"), recipe.get("model"), meta.get("model")]
    for c in cands:
        if isinstance(c, str) and c:
            return c
    return None


def bench_protocol(args: argparse.Namespace) -> LatencyProtocol:
    """The latency protocol `bench`'s options ask for: `PROTOCOL` itself with the defaults.

    The batch is the example's (`--batch-size`), as in `benchmark_backends`.
    """
    return PROTOCOL.with_(
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
    )


def _int8_dense(q: Any) -> tuple[nn.Module | None, str]:
    """The float model an int8 directory came from (its `source`), when it still loads."""
    from pruning_core.models import load_model

    src = q.meta.get("source")
    arch = q.meta.get("arch")
    if isinstance(src, str) and src:
        # A relative folder name was relative to where `quantize` ran, which is unknown now:
        # only a registry name or an absolute path names the same model from anywhere.
        if not Path(src).is_absolute() and (os.sep in src or Path(src).exists()):
            return None, (
                f"the float original '{src}' was named relative to another folder: no eager "
                "dense reference (quantize again to record its full path)"
            )
        try:
            cand = load_model(src)
            if cand.spec == q.spec and (not arch or cand.arch == arch):
                return cand.model, f"the float model it was quantized from, '{src}'"
        except (UserError, OSError, RuntimeError):
            pass
    return None, "the float original is not loadable: no eager dense reference"


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from pruning_core.device import resolve_device
    from pruning_core.latency import batch_sweep, benchmark_backends
    from pruning_core.layers import example_input
    from pruning_core.models import load_model
    from pruning_core.quantize import is_int8_model, load_quantized

    backends = _parse_backends(args.backends)
    device = resolve_device(args.device)
    pruned: nn.Module
    if args.pruned:
        dense_loaded, _ = resolve(args)
        if is_int8_model(args.pruned):
            q = load_quantized(args.pruned, threads=args.threads)
            pruned, spec, arch = q, q.spec, q.meta.get("arch")
        else:
            pruned_loaded = load_model(args.pruned)
            pruned, spec, arch = pruned_loaded.model, pruned_loaded.spec, pruned_loaded.arch
        # Both kinds of --pruned folder are checked alike before anything runs: a model of
        # another network (or input) would fail inside the timing with an internal error.
        if dense_loaded.arch and isinstance(arch, str) and arch and dense_loaded.arch != arch:
            raise UserError(f"--pruned is a '{arch}' model but --model is '{dense_loaded.arch}'")
        if dense_loaded.arch and not (isinstance(arch, str) and arch):
            raise UserError(
                f"--pruned {args.pruned} names no architecture, so it cannot be checked to be a "
                f"'{dense_loaded.arch}' model: time it alone (bench --model {args.pruned})"
            )
        if (spec.channels, spec.size) != (dense_loaded.spec.channels, dense_loaded.spec.size):
            raise UserError(
                f"--pruned takes {spec.channels}x{spec.size}x{spec.size} images but --model "
                f"'{args.model}' takes {dense_loaded.spec.channels}x{dense_loaded.spec.size}x"
                f"{dense_loaded.spec.size}: give the model it was pruned from"
            )
        dense: nn.Module | None = dense_loaded.model
        dense_note = f"--model '{args.model}'"
    elif is_int8_model(args.model):
        q = load_quantized(args.model, threads=args.threads)
        pruned, spec = q, q.spec
        dense, dense_note = _int8_dense(q)
    else:
        pruned_loaded, _ = resolve(args)
        pruned, spec = pruned_loaded.model, pruned_loaded.spec
        dense, dense_note = dense_reference(pruned_loaded)

    def example(b: int) -> torch.Tensor:
        return example_input(pruned, spec, b, random=True).to(device)

    protocol = bench_protocol(args)
    result: dict[str, Any] = {
        "model": args.pruned or args.model,
        "dense_reference": dense_note,
        "device": str(device),
        "threads": protocol.threads if device.type == "cpu" else torch.get_num_threads(),
    }
    if args.batch_sizes:
        table = batch_sweep(pruned, example, batch_sizes=args.batch_sizes, backends=backends,
                            dense=dense, protocol=protocol)  # fmt: skip
        result.update(batch_sizes=list(args.batch_sizes), protocol=table.attrs["protocol"])
        result["sweep"] = records(table.drop(columns=["detail"]))
        return result
    table = benchmark_backends(
        pruned, example(args.batch_size), backends=backends, dense=dense, protocol=protocol
    )
    rows = records(table)
    result.update(batch_size=args.batch_size, protocol=table.attrs["protocol"], backends=rows)
    for r in rows:
        result[f"{r['backend']}_median_ms"] = r["median_ms"]
    return result
