"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import torch
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.evaluate import evaluate
from pruning_core.spec import InputSpec


class _Fixed(nn.Module):
    """Returns pre-set logits row by row (ignores its input's content)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.i = 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.i : self.i + len(x)]
        self.i += len(x)
        return out


def test_metrics_match_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 40, 6
    y = torch.arange(n) % k
    logits = torch.randn(n, k, generator=g)
    logits[:25, :] -= 5
    logits[torch.arange(25), y[:25]] += 20  # first 25 are right
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    bundle = DataBundle("toy", (x, y), (x, y), tuple(str(i) for i in range(k)), torch.arange(4))
    spec = InputSpec(1, 4, (0.0,), (1.0,), k)
    res = evaluate(_Fixed(logits), bundle, spec, batch_size=7)
    pred = logits.argmax(1)
    assert res.n == n
    assert res.accuracy == (pred == y).sum().item() / n
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).sum().item() / n
    assert abs(res.top5 - top5) < 1e-9
    assert abs(res.loss - torch.nn.functional.cross_entropy(logits, y).item()) < 1e-5
    conf = torch.zeros(k, k, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        conf[t, p] += 1
    assert res.confusion == conf.tolist()
    assert abs(res.per_class[0] - conf[0, 0].item() / conf[0].sum().item()) < 1e-6
