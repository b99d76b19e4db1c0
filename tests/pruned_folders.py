"""A channel-pruned model folder for tests that read one back (export, zips, uploads)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pruning_core.export import save_checkpoint
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, PruneResult, prune_


def channel_pruned_digits_cnn(
    out: Path,
    *,
    meta: Callable[[PruneResult], Mapping[str, Any]] = lambda res: {},
    metrics: Callable[[PruneResult], Mapping[str, Any]] = lambda res: {},
) -> Path:
    """digits-cnn with half its channels removed by magnitude (physically shrunk, no training),
    saved at `out` as `prune --out` writes it: model.json (dataset digits, plus `meta(res)`) and
    metrics.json (model and dataset, plus `metrics(res)`), `res` the pruning's result."""
    base = load_model("digits-cnn")
    m = copy.deepcopy(base.model)
    res = prune_(
        m, PruneConfig(method="magnitude", granularity="channel", ratio=0.5), spec=base.spec
    )
    return save_checkpoint(
        out, m, arch="digits-cnn", arch_kwargs=base.arch_kwargs, spec=base.spec,
        extra_meta={"dataset": "digits", **meta(res)},
        files={"metrics.json": {"model": "digits-cnn", "dataset": "digits", **metrics(res)}},
    )  # fmt: skip
