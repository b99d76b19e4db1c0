"""Pruning Lab core: see, try and measure neural-network pruning, without the app.

The public API is the names below, loaded lazily: `import pruning_core` imports no submodule,
initialises no CUDA and touches no network; each name imports its module on first use.

    import pruning_core as pl

    loaded = pl.load_model("digits-cnn")            # registry name, model folder or checkpoint
    data = pl.load_dataset("digits")
    pl.prune_(loaded.model, pl.PruneConfig(method="magnitude", ratio=0.5), data=data,
              spec=loaded.spec)
    pl.evaluate(loaded.model, data, loaded.spec).accuracy

Every function that takes a model, data and an input spec takes them in that order,
`(model, data, spec, ...)`; where it also accepts a `LoadedModel` (which carries its spec), the
spec may be left out: `pl.sweep(loaded, data, methods=[...], ratios=[...])`. Every long-running
function takes one style of `progress=` callback: it is called with one object with `fraction`
(share done, in [0, 1]) and `message` (one line for people), the `ProgressReport` protocol
(`fit` sends a `train.Progress`, which also has the epoch, step and loss):

    pl.sensitivity(loaded, data, progress=lambda p: print(f"{p.fraction:.0%} {p.message}"))

Everything else lives in the submodules (`pruning_core.stats`, `pruning_core.latency`, ...),
each with its own `__all__`.

The function `evaluate` shares its name with the module `pruning_core.evaluate`:
`pruning_core.evaluate` is always the function (import the module's other names with
`from pruning_core.evaluate import ...`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from pruning_core.data import load_dataset
    from pruning_core.errors import UserError
    from pruning_core.evaluate import evaluate
    from pruning_core.experiments import sensitivity, sweep
    from pruning_core.latency import measure_latency
    from pruning_core.models import list_models, load_model
    from pruning_core.progress import ProgressReport
    from pruning_core.prune import Preview, PruneConfig, list_methods, prune_
    from pruning_core.recipe import Recipe
    from pruning_core.stats import model_summary
    from pruning_core.train import TrainConfig, fit
    from pruning_core.workflow import run_recipe

# Public name -> the module that defines it.
_API: dict[str, str] = {
    "Preview": "pruning_core.prune",
    "ProgressReport": "pruning_core.progress",
    "PruneConfig": "pruning_core.prune",
    "Recipe": "pruning_core.recipe",
    "TrainConfig": "pruning_core.train",
    "UserError": "pruning_core.errors",
    "evaluate": "pruning_core.evaluate",
    "fit": "pruning_core.train",
    "list_methods": "pruning_core.prune",
    "list_models": "pruning_core.models",
    "load_dataset": "pruning_core.data",
    "load_model": "pruning_core.models",
    "measure_latency": "pruning_core.latency",
    "model_summary": "pruning_core.stats",
    "prune_": "pruning_core.prune",
    "run_recipe": "pruning_core.workflow",
    "sensitivity": "pruning_core.experiments",
    "sweep": "pruning_core.experiments",
}

__all__ = [
    "Preview",
    "ProgressReport",
    "PruneConfig",
    "Recipe",
    "TrainConfig",
    "UserError",
    "evaluate",
    "fit",
    "list_methods",
    "list_models",
    "load_dataset",
    "load_model",
    "measure_latency",
    "model_summary",
    "prune_",
    "run_recipe",
    "sensitivity",
    "sweep",
]


def __getattr__(name: str) -> Any:
    """Import the module of a public name on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module, kept from letting a submodule shadow a public name.

    Importing a submodule sets it as an attribute of its package; the submodule
    `pruning_core.evaluate` would then hide the function `evaluate`.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
