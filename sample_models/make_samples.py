"""Reproduce the bundled sample models with fixed seeds.

    uv run python sample_models/make_samples.py            # all four
    uv run python sample_models/make_samples.py digits-cnn # one

Each model is written to sample_models/NAME/ (model.safetensors, model.json, MODEL_CARD.md).
Training runs on the CPU in a few minutes; results repeat exactly on the same torch version
and CPU (one CPU thread by default, recorded on the card).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from pruning_core.checkpoint import save_model_dir
from pruning_core.data import load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.fsio import output_dir
from pruning_core.models import get_entry
from pruning_core.stats import count_macs, count_params
from pruning_core.train import TrainConfig, fit

HERE = Path(__file__).resolve().parent
# One thread: float reductions happen in the same order on every machine, and a single thread
# is also the fastest choice for models this small on a busy CPU.
THREADS = int(os.environ.get("PRUNING_LAB_SAMPLE_THREADS", "1"))


@dataclass(frozen=True)
class Recipe:
    """How one sample model is trained."""

    name: str
    dataset: str
    config: TrainConfig


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "digits-mlp",
            "digits",
            TrainConfig(epochs=40, lr=2e-3, batch_size=32, device="cpu", seed=0),
        ),
        Recipe(
            "digits-cnn",
            "digits",
            TrainConfig(epochs=30, lr=2e-3, batch_size=32, device="cpu", seed=0),
        ),
        Recipe(
            "shapes-resnet",
            "shapes",
            TrainConfig(
                epochs=12,
                lr=2e-3,
                optimizer="adamw",
                weight_decay=1e-4,
                batch_size=64,
                device="cpu",
                seed=0,
            ),
        ),
        Recipe(
            "shapes-vit",
            "shapes",
            # Transformers overfit 8,000 images: augmentation is what makes this one learn.
            TrainConfig(
                epochs=60,
                lr=2e-3,
                optimizer="adamw",
                weight_decay=0.05,
                batch_size=64,
                device="cpu",
                seed=0,
                augment=True,
            ),
        ),
    )
}


def make(recipe: Recipe) -> dict[str, object]:
    """Train one sample model and write its directory; returns its card."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(recipe.config.seed)
    entry = get_entry(recipe.name)
    spec = entry.spec
    data = load_dataset(recipe.dataset)
    model = entry.builder(
        num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
    )

    def log(p: object) -> None:
        acc = getattr(p, "val_accuracy", None)
        if acc is not None:
            print(f"  {recipe.name} epoch {p.epoch}/{p.epochs} val acc {acc:.4f}", flush=True)  # type: ignore[attr-defined]

    result = fit(model, data, spec, recipe.config, progress=log)
    ev = evaluate(model, data, spec)
    card = {
        "name": recipe.name,
        "description": entry.description,
        "dataset": recipe.dataset,
        "split": f"train {data.num_examples('train')} / val {data.num_examples('val')} (deterministic)",
        "accuracy": round(ev.accuracy, 4),
        "top5": round(ev.top5, 4),
        "params": count_params(model),
        "macs": count_macs(model, spec),
        "seed": recipe.config.seed,
        "train_config": recipe.config.to_dict(),
        "train_seconds": round(result.seconds, 1),
        "command": f"uv run python sample_models/make_samples.py {recipe.name}",
        "trained_on": f"{date.today().isoformat()}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} CPU thread(s)",
    }
    kw = {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.size}
    meta = {
        "arch": recipe.name,
        "arch_kwargs": kw,
        "spec": spec.to_dict(),
        "dataset": recipe.dataset,
        "card": card,
    }
    with output_dir(HERE / recipe.name) as tmp:
        save_model_dir(tmp, model, meta)
        (tmp / "MODEL_CARD.md").write_text(render_card(card))
    return card


def render_card(card: dict[str, object]) -> str:
    """The model card as Markdown."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in card.items() if k not in ("name", "description"))
    return (
        f"# {card['name']}\n\n{card['description']}.\n\n| field | value |\n| --- | --- |\n{rows}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Train the named sample models (all by default)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("names", nargs="*", default=list(RECIPES), choices=[*RECIPES, []])
    args = ap.parse_args(argv)
    for name in args.names or list(RECIPES):
        card = make(RECIPES[name])
        print(
            f"{name}: accuracy {card['accuracy']} params {card['params']} in {card['train_seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
