"""The one progress-callback style of the long-running functions.

Every `progress=` argument (`experiments.sweep`, `experiments.sensitivity`,
`tradeoffs.latency_vs_sparsity`, `train.fit`, `schedules.run_schedule`, `workflow.run_recipe`)
is called with one object that has at least:

- `fraction`: the share of the work done, in [0, 1];
- `message`: one line for people, saying what was just done.

That is the `ProgressReport` protocol. Most functions send a `Report`; the training loop sends
a `train.Progress`, which carries the epoch, step, loss... as well. So one callback serves them
all:

    def show(p: ProgressReport) -> None:
        print(f"{p.fraction:.0%} {p.message}")

    pl.sweep(loaded, data, methods=["magnitude"], ratios=[0.5, 0.9], progress=show)
    pl.fit(model, data, spec, pl.TrainConfig(epochs=1), progress=show)

This module imports nothing from the package (a leaf).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ProgressFn", "ProgressReport", "Report"]


@runtime_checkable
class ProgressReport(Protocol):
    """What a `progress=` callback receives: how far the work is, and a line about it."""

    @property
    def fraction(self) -> float:
        """Share of the work done, in [0, 1]."""
        ...

    @property
    def message(self) -> str:
        """One line for people (no newline), e.g. `magnitude ratio 0.5: accuracy 0.9712`."""
        ...


@dataclass(frozen=True)
class Report:
    """A plain progress report (satisfies `ProgressReport`).

    Attributes:
        fraction: Share of the work done, in [0, 1].
        message: One line for people.
    """

    fraction: float
    message: str


# A `progress=` callback: called with a `ProgressReport` each time some work is done.
ProgressFn = Callable[[ProgressReport], None]
