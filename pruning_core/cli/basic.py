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
    from pruning_core.quantize import int8_sparsity, is_int8_model, load_quantized

    if is_int8_model(args.model):
        # An int8 folder (from `quantize`) or its zip runs only in ONNX Runtime, on the CPU: measured
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
            {**int8_sparsity(q), **res.to_dict()},
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
