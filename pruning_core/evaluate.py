"""Accuracy (top-1, top-5), loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.layers import main_logits
from pruning_core.spec import InputSpec

__all__ = ["EvalResult", "evaluate", "predict_logits"]


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` measured.

    Attributes:
        accuracy: Top-1 accuracy, a fraction in [0, 1].
        top5: Top-5 accuracy (top-k with k = min(5, classes)).
        loss: Mean cross-entropy.
        n: Examples evaluated.
        per_class: Accuracy of each class (NaN-free: classes absent from the split get 0).
        confusion: confusion[true][predicted] counts.
    """

    accuracy: float
    top5: float
    loss: float
    n: int
    per_class: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    def to_dict(self, full: bool = True) -> dict[str, Any]:
        """JSON-ready dict; `full=False` leaves out the per-class detail."""
        d = asdict(self)
        if not full:
            d.pop("per_class")
            d.pop("confusion")
        return d


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Logits of `model` on `x` (eval mode, batched, returned on CPU)."""
    device = device or next(model.parameters()).device
    model.eval()
    outs = [
        main_logits(model(x[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    *,
    split: str = "val",
    device: torch.device | None = None,
    batch_size: int = 512,
    limit: int | None = None,
) -> EvalResult:
    """Evaluate a classifier on one split of a dataset.

    Args:
        model: The classifier (its mode is restored afterwards).
        data: The dataset.
        spec: The model's input spec (images are adapted to it).
        split: `val` (default), `train` or `calib`.
        device: Where to run (default: where the model's parameters are).
        batch_size: Examples per forward pass.
        limit: Evaluate only the first `limit` examples (a quick estimate).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = data.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64)
    loss_sum, top5_hits, n = 0.0, 0, 0
    top_k = min(5, spec.num_classes)
    for xb, yb in data.batches(split, spec, batch_size, limit=limit):
        logits = main_logits(model(xb.to(device))).float().cpu()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        pred = logits.argmax(1)
        conf += torch.bincount(yb * k + pred.clamp(max=k - 1), minlength=k * k).view(k, k)
        top5_hits += int((logits.topk(top_k, 1).indices == yb[:, None]).any(1).sum())
        n += len(yb)
    model.train(was_training)
    if n == 0:
        return EvalResult(0.0, 0.0, float("nan"), 0, [0.0] * k, conf.tolist())
    support = conf.sum(1).clamp(min=1)
    return EvalResult(
        accuracy=conf.diag().sum().item() / n,
        top5=top5_hits / n,
        loss=loss_sum / n,
        n=n,
        per_class=(conf.diag() / support).tolist(),
        confusion=conf.tolist(),
    )
