"""Commands: models, datasets, evaluate, train, app."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pruning_core.checkpoint import is_model_zip, save_model_dir
from pruning_core.cli.common import add_model_args, resolve, stderr_progress, warn_mismatch
from pruning_core.data import list_datasets, load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.fsio import check_output_dir, output_dir, write_json
from pruning_core.models import LoadedModel, build_for_data, list_models, load_model
from pruning_core.prune import MaskEnforcer, hold_masks, measured_sparsity
from pruning_core.recipe import SETTING_CHECKS as C
from pruning_core.train import LR_SCHEDULES, OPTIMIZERS, TrainConfig, fit
from pruning_core.validate import POSITIVE_INT, Range

__all__ = ["cmd_app", "cmd_datasets", "cmd_evaluate", "cmd_models", "cmd_train", "register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands."""
    p = sub.add_parser("models", parents=[common], help="list available models")
    p.add_argument(
        "--filter",
        help="list every torchvision and timm architecture whose name matches (substring or "
        "glob such as '*vit*'); without it, a few suggested ones",
    )
    p.set_defaults(handler=cmd_models)
    p = sub.add_parser("datasets", parents=[common], help="list available datasets")
    p.set_defaults(handler=cmd_datasets)

    p = sub.add_parser(
        "evaluate", parents=[common], help="accuracy, top-5, loss of a model on a dataset"
    )
    add_model_args(p)
    p.add_argument("--split", default="val", choices=["val", "train", "calib"])
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N examples")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("train", parents=[common], help="train a dense baseline")
    p.add_argument(
        "--model", required=True, help="architecture name, or a model directory to continue"
    )
    p.add_argument("--dataset", required=True)
    d = TrainConfig()
    p.add_argument("--epochs", type=C["finetune_epochs"], default=d.epochs)
    p.add_argument("--lr", type=C["lr"], default=d.lr)
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--schedule", default=d.schedule, choices=LR_SCHEDULES)
    p.add_argument("--batch-size", type=C["batch_size"], default=d.batch_size)
    p.add_argument("--weight-decay", type=C["weight_decay"], default=d.weight_decay)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=C["seed"], default=0)
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="torchvision:/timm: architectures: start from the library's ImageNet weights "
        "(downloaded once; needs network)",
    )
    p.add_argument(
        "--augment", action="store_true", help="random shifts and horizontal flips while training"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--out", required=True, type=Path, help="output directory (model + metrics.json)"
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("app", parents=[common], help="launch the Streamlit app")
    # Streamlit's own spellings are accepted too, since its documentation uses them.
    p.add_argument(
        "--port",
        "--server.port",
        dest="port",
        type=Range(integer=True, lo=1, hi=65535),
        default=8501,
        help="port to listen on (default 8501)",
    )
    p.add_argument(
        "--host",
        "--server.address",
        dest="host",
        type=_host,
        default=None,
        help="address to listen on, e.g. 127.0.0.1 for this machine only "
        "(default: Streamlit's, every interface)",
    )
    p.add_argument(
        "--open", action="store_true", help="open a browser tab (default: print the URL)"
    )
    p.add_argument(
        "--server.headless",
        dest="headless",
        choices=["true", "false"],
        help="Streamlit's spelling: false opens a browser tab (as --open), true does not",
    )
    p.set_defaults(handler=cmd_app)


def cmd_models(args: argparse.Namespace) -> Any:
    entries = list_models(filter=args.filter)
    if args.filter and not entries:
        raise UserError(f"no model matches {args.filter!r}")
    return [e.to_dict() for e in entries]


def cmd_datasets(args: argparse.Namespace) -> Any:
    return [e.to_dict() for e in list_datasets()] + [
        {"name": "idx:DIR", "description": "MNIST-format IDX files in DIR", "offline": True},
        {
            "name": "folder:DIR",
            "description": "ImageFolder layout (or a .zip of one)",
            "offline": True,
        },
    ]


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from pruning_core.device import resolve_device
    from pruning_core.quantize import is_quantized_dir, load_quantized

    if is_quantized_dir(args.model):
        # An int8 folder (from `quantize`) runs only in ONNX Runtime, on the CPU: measured
        # through the runtime that runs it, as `quantize` measured it.
        import torch

        q = load_quantized(args.model)
        int8_data = load_dataset(args.dataset)
        int8_data.check_spec(q.spec)
        warn_mismatch(args.model, args.dataset)
        res = evaluate(q, int8_data, q.spec, split=args.split, device=torch.device("cpu"),
                       limit=args.limit)  # fmt: skip
        return _evaluated(
            args,
            {**_int8_sparsity(q), **res.to_dict()},
            runtime=f"ONNX Runtime (int8 {q.mode}, CPU)",
        )
    loaded, data = resolve(args)
    assert data is not None
    device = resolve_device(args.device)
    res = evaluate(
        loaded.model.to(device),
        data,
        loaded.spec,
        split=args.split,
        device=device,
        limit=args.limit,
    )
    return _evaluated(args, {**_sparsity(loaded), **res.to_dict()})


def _sparsity(loaded: LoadedModel) -> dict[str, Any]:
    """The model's sparsity (`terms.SPARSITY_MEANS`): its exact zeros and the weights it no
    longer has, against the dense architecture it was built from (`dense_weight_counts`)."""
    from pruning_core.layers import measured_model_sparsity
    from pruning_core.models import dense_weight_counts

    dense = dense_weight_counts(loaded)
    sparsity = measured_model_sparsity(loaded.model, dense)
    arch = f"dense {loaded.arch}" if loaded.arch else "model"
    return {
        "sparsity": round(sparsity, 6),
        "sparsity_from": f"exact zeros and removed weights of the {arch}'s "
        f"{sum(dense.values()):,} Linear/Conv weights",
    }


# ONNX operators whose second input is a layer's weight (a Linear's or a convolution's).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger")
# Operators that move a constant's elements without changing them: its zeros are the source's.
_MOVES = ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _int8_sparsity(q: Any) -> dict[str, Any]:
    """The sparsity of an int8 model (`terms.SPARSITY_MEANS`), measured on its graph's weights.

    An int8 folder holds an ONNX graph, not PyTorch layers: each Conv/Gemm/MatMul weight is an
    int8 tensor (behind a DequantizeLinear, or the integer input of ConvInteger/MatMulInteger)
    or a float one. A weight is zero when it dequantizes to exactly 0 (its value equals its
    zero point), so int8 rounding can add zeros to the float model's; weights a shrunk model
    no longer has count against the dense architecture `quantized.json` names.

    Args:
        q: A `quantize.QuantizedModel`.

    Returns:
        `sparsity` and `sparsity_from`; `sparsity` None, and `sparsity_from` saying why, when a
        weight is computed in the graph in a way this count does not read.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(q.onnx_bytes).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    made = {o: n for n in graph.node for o in n.output}

    def axis_of(node: Any, default: int) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "axis"), default)

    def along(v: Any, ndim: int, axis: int) -> Any:
        """A per-axis scale or zero point shaped to broadcast over a tensor of `ndim` dims."""
        v = np.asarray(v)
        if v.size == 1:
            return v.reshape(())
        shape = [1] * ndim
        shape[axis % ndim] = -1
        return v.reshape(shape)

    def zeros_of(name: str) -> tuple[int, int] | None:
        """(exact zeros, elements) of a constant weight, or None when it is not one."""
        if name in consts:
            w = consts[name]
            return int(w.size - np.count_nonzero(w)), int(w.size)
        node = made.get(name)
        if node is None:
            return None
        if node.op_type in _MOVES and node.input[0]:
            return zeros_of(node.input[0])
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            x = consts[node.input[0]].astype(np.float64)
            scale = consts.get(node.input[1])
            if scale is None:
                return None
            zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
            axis = axis_of(node, 1)
            y = (x - along(zp, x.ndim, axis)) * along(scale, x.ndim, axis)
            return int(y.size - np.count_nonzero(y)), int(y.size)
        return None

    zeros = counted = 0
    seen: set[str] = set()
    for n in graph.node:
        if n.op_type not in _WEIGHT_OPS or len(n.input) < 2 or n.input[1] in seen:
            continue
        w = n.input[1]
        got = zeros_of(w)
        if got is None:
            if n.op_type in ("MatMul", "MatMulInteger") and w not in consts and w in made:
                # Two activations multiplied (attention's q k^T): no weight. A weight computed
                # by another operator would land here too, so such a graph is checked below.
                continue
            return {"sparsity": None,
                    "sparsity_from": f"not measured: the int8 graph's {n.op_type} weight {w} is "
                    "computed in the graph, not stored, so its zeros cannot be read"}  # fmt: skip
        seen.add(w)
        if n.op_type in ("ConvInteger", "MatMulInteger") and len(n.input) > 3 and n.input[3]:
            # The integer weight's zero point: a weight equal to it is 0.
            q8 = consts.get(w)
            zp = consts.get(n.input[3])
            if q8 is None or zp is None:
                return {"sparsity": None,
                        "sparsity_from": f"not measured: the zero point of {w} is not stored"}  # fmt: skip
            axis = 0 if n.op_type == "ConvInteger" else -1
            same = q8.astype(np.int64) == along(zp, q8.ndim, axis).astype(np.int64)
            got = (int(np.count_nonzero(same)), int(q8.size))
        zeros += got[0]
        counted += got[1]
    dense, arch = counted, None
    meta = getattr(q, "meta", {}) or {}
    if isinstance(meta.get("arch"), str) and isinstance(meta.get("arch_kwargs"), dict):
        from pruning_core.layers import counted_weights
        from pruning_core.models import get_entry
        from pruning_core.models import validate as V

        try:
            built = V.build_skeleton(get_entry(meta["arch"]).builder, meta["arch_kwargs"])
            dense, arch = sum(counted_weights(built).values()), meta["arch"]
        except Exception:  # an architecture that no longer builds: the graph's own count
            dense = counted
    if not dense:
        return {"sparsity": None, "sparsity_from": "not measured: no Linear/Conv weights"}
    removed = max(dense - counted, 0)
    of = f"dense {arch}'s" if arch and dense >= counted else "int8 graph's"
    return {
        "sparsity": round(min(1.0, (zeros + removed) / max(dense, counted)), 6),
        "sparsity_from": "int8 weights that dequantize to exactly 0"
        + (" and removed weights" if removed else "")
        + f", of the {of} {max(dense, counted):,} Linear/Conv weights",
    }


def _evaluated(args: argparse.Namespace, res: dict[str, Any], **more: str) -> dict[str, Any]:
    """What `evaluate` prints: the confusion matrix only in --json (as text it is n x n lines)."""
    if not getattr(args, "json", False):
        res = {k: v for k, v in res.items() if k != "confusion"}
    return {"model": args.model, "dataset": args.dataset, "split": args.split, **more, **res}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        device=args.device,
        seed=args.seed,
        augment=args.augment,
    )
    check_output_dir(args.out)
    data = load_dataset(args.dataset)
    kept: dict[str, Any] = {}
    enforcer: MaskEnforcer | None = None
    if Path(args.model).is_dir() or is_model_zip(args.model):
        if args.pretrained:
            raise UserError(
                "--pretrained starts an architecture afresh; a model folder has its own weights"
            )
        loaded = load_model(args.model)
        arch, spec, model = loaded.arch, loaded.spec, loaded.model
        if arch is None:
            raise UserError("cannot continue training a model without a known architecture")
        # A pruned folder stays what it is: its shapes (surgery) and its zeros, which the
        # optimizer would otherwise regrow.
        kept = {k: loaded.meta[k] for k in ("surgery", "pruned") if k in loaded.meta}
        if "pruned" in kept:
            enforcer = hold_masks(model, {}, keep_zeros=True)
    else:
        arch = args.model
        built = build_for_data(
            arch, data.num_classes, data.channels, data.size, seed=args.seed,
            pretrained=args.pretrained,
        )  # fmt: skip
        spec, model = built.spec, built.model
    data.check_spec(spec)
    start = time.perf_counter()
    result = fit(
        model,
        data,
        spec,
        config,
        after_step=enforcer,
        progress=stderr_progress("train", args.quiet),
    )
    final = evaluate(model, data, spec)
    metrics = {
        "model": arch,
        "dataset": args.dataset,
        **final.to_dict(full=False),
        "epochs": args.epochs,
        "history": result.history,
        "seconds": time.perf_counter() - start,
        "config": config.to_dict(),
    }
    if enforcer is not None:
        sparsity, _ = measured_sparsity(model, enforcer.layers)
        kept["pruned"] = {**kept["pruned"], "sparsity": sparsity}
        metrics["sparsity_kept"] = sparsity
    kw = {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.size}
    meta = {
        "arch": arch,
        "arch_kwargs": kw,
        "spec": spec.to_dict(),
        "dataset": args.dataset,
        **kept,
        "metrics": metrics,
    }
    with output_dir(args.out) as tmp:
        save_model_dir(tmp, model, meta)
        write_json(tmp / "metrics.json", metrics)
    return {**metrics, "out": str(args.out)}


def _host(text: str) -> str:
    """A listening address: a host name or IP, without spaces or a scheme."""
    host = text.strip()
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address to listen on (e.g. 127.0.0.1, 0.0.0.0 or a host name)"
        )
    return host


def app_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line `pruning-lab app` executes: through `ui/serve.py`,
    which warms the heavy imports while the server starts, so the first page is quick."""
    root = Path(__file__).resolve().parents[2]
    app, serve = root / "app.py", root / "ui" / "serve.py"
    if not app.exists() or not serve.exists():
        raise UserError(f"app.py not found at {app} (run from a source checkout)")
    cmd = [
        sys.executable,
        str(serve),
        "run",
        str(app),
        "--server.port",
        str(args.port),
        *(["--server.address", args.host] if args.host else []),
        "--browser.gatherUsageStats",
        "false",
        # A served app is not being edited: Streamlit's defaults for a developer cost every
        # rerun (a full gc.collect(2), and resolving the path of every module in sys.modules,
        # torch's thousands, to watch them), about a third of the server's CPU per slider move
        # under load (py-spy, benchmarks/results.md's load test).
        "--runner.postScriptGC",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    # Headless unless asked: it skips Streamlit's first-run e-mail prompt and works over SSH.
    opens = args.open or getattr(args, "headless", None) == "false"
    return [*cmd, "--server.headless", "false" if opens else "true"]


def cmd_app(args: argparse.Namespace) -> None:
    cmd = app_command(args)
    if os.name == "posix":
        os.execv(sys.executable, cmd)  # replaces this process: Ctrl-C goes straight to Streamlit
    raise SystemExit(subprocess.run(cmd, check=False).returncode)
