"""The zoo's acceptance run: GoogLeNet, Inception v3, Swin-T, MaxViT-T and MnasNet each pruned
by channel, fine-tuned one epoch on `digits` with the default settings, saved, and reopened in a
fresh process with equal outputs (and evaluated through the CLI).

    uv run python -m benchmarks.zoo_acceptance [--out DIR] [--only ARCH ...] [--batch-size N]
    uv run python -m benchmarks.zoo_acceptance --merge A.json B.json --out docs

Prints one JSON line per architecture (input size, sparsity, MACs, accuracy before and after
fine-tuning, reopen difference, seconds) and writes them to DIR/zoo_acceptance.json and a table
to DIR/zoo_acceptance.md. `--merge` joins the results of runs made in separate processes (on a
2-core machine MaxViT and Inception v3 run side by side, one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARCHS = [
    "torchvision:googlenet", "torchvision:inception_v3", "torchvision:swin_t",
    "torchvision:maxvit_t", "torchvision:mnasnet0_5",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent


def one(arch: str, work: Path, batch_size: int = 64) -> dict[str, Any]:
    """Prune (channel 0.3), fine-tune one epoch on digits, save, reopen in a fresh process."""
    import torch

    from pruning_core import Recipe, run_recipe
    from pruning_core.data import load_dataset
    from pruning_core.layers import main_logits
    from pruning_core.models import build_for_data

    start = time.perf_counter()
    data = load_dataset("digits")
    loaded = build_for_data(arch, data.num_classes, data.channels, data.size)
    settings = {"model": arch, "dataset": "digits", "method": "magnitude",
                "granularity": "channel", "ratio": 0.3, "finetune_epochs": 1,
                "batch_size": batch_size}  # fmt: skip
    result = run_recipe(Recipe.from_settings(settings), model=loaded, data=data)
    metrics = result.save(work / "model")
    x = torch.randn(2, loaded.spec.channels, loaded.spec.size, loaded.spec.size)
    with torch.no_grad():
        torch.save({"x": x, "y": main_logits(result.model.eval()(x))}, work / "reference.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.zoo", "--reopen", str(work), "--dataset", "digits"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    reopened = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "arch": arch,
        "input_size": loaded.spec.size,
        "batch_size": batch_size,
        "sparsity": metrics.get("sparsity"),
        "macs_after_over_before": (metrics["macs_after"] / metrics["macs_before"])
        if metrics.get("macs_before")
        else None,
        "pruned_accuracy": result.schedule.pruned_accuracy,
        "finetuned_accuracy": result.schedule.finetuned_accuracy,
        "notes": result.schedule.prune.notes,
        **reopened,
        "seconds": round(time.perf_counter() - start, 1),
    }


def write_report(rows: list[dict[str, Any]], out: Path) -> None:
    """`zoo_acceptance.json` and `zoo_acceptance.md` (one row per architecture) into `out`."""
    import datetime as dt
    import platform

    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_acceptance.json").write_text(json.dumps(rows, indent=1, default=str))
    lines = [
        "# Zoo acceptance: channel pruning, one fine-tune epoch on digits, reopen",
        "",
        f"`python -m benchmarks.zoo_acceptance`, {dt.date.today().isoformat()}, "
        f"{platform.machine()} with {os.cpu_count()} CPU cores (no GPU), one torch thread per "
        "architecture. Each: built untrained for `digits` (10 classes, 8x8 gray images upsampled "
        "to the input size), channel pruning 0.3 (magnitude), one fine-tune epoch with the "
        "default settings, saved, reopened in a fresh process (largest |difference| of the "
        "outputs on 2 random images), evaluated through the CLI.",
        "",
        "The architectures start untrained (weights need a network this machine lacks), so one "
        "epoch on digits' 1,437 training images (23 steps at batch 64, 90 at 16) tests the path "
        "(training-mode forward and backward, auxiliary heads, saving, reopening), not what "
        "the architecture can learn; accuracies near 0.10 are chance. Seconds are wall time "
        "with one torch thread on a machine shared with other jobs.",
        "",
        "| architecture | input px | batch | MACs after/before | accuracy pruned | "
        "accuracy fine-tuned | reopen max diff | status | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        macs = r.get("macs_after_over_before")
        lines.append(
            f"| `{r['arch']}` | {r.get('input_size')} | {r.get('batch_size')} | "
            f"{macs:.2f} | {r.get('pruned_accuracy', 0):.3f} | "
            f"{r.get('finetuned_accuracy', 0):.3f} | {r.get('reopen_diff', '')} | "
            f"{r.get('status')} | {r.get('seconds')} |"
            if macs is not None
            else f"| `{r['arch']}` | | | | | | | {r.get('status')} | {r.get('seconds')} |"
        )
    (out / "zoo_acceptance.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo_acceptance")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--only", nargs="+", default=ARCHS)
    p.add_argument(
        "--batch-size", type=int, default=64,
        help="fine-tuning batch (MaxViT at 224 px needs 19 GB at 64: use 16 on small machines)",
    )  # fmt: skip
    p.add_argument("--merge", type=Path, nargs="+", help="join earlier zoo_acceptance.json files")
    a = p.parse_args()
    if a.merge:
        merged = [row for f in a.merge for row in json.loads(f.read_text())]
        order = {arch: i for i, arch in enumerate(ARCHS)}
        merged.sort(key=lambda r: order.get(r["arch"], len(order)))
        write_report(merged, a.out)
        return 0 if all(r.get("status") == "ok" for r in merged) else 1
    rows = []
    for arch in a.only:
        with tempfile.TemporaryDirectory(prefix="pruning-lab-accept-") as t:
            row = one(arch, Path(t), a.batch_size)
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    write_report(rows, a.out)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
