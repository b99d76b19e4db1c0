"""Granularity plans: one registered class per granularity (see `plans.base`).

Importing this package registers the built-in plans: unstructured and N:M (`plans.masks`),
channel (`plans.channel`), head (`plans.heads`), block (`plans.blocks`) and low rank
(`plans.lowrank`). A new granularity
is one `Plan` subclass with `@register_granularity`, imported once.
"""

from __future__ import annotations

# isort: off
# Registration order is the order every menu lists: masks first, then structures from the finest.
from pruning_core.plans import masks
from pruning_core.plans import channel
from pruning_core.plans import heads
from pruning_core.plans import blocks
from pruning_core.plans import lowrank

# isort: on
from pruning_core.plans.base import (
    GRANULARITIES,
    Applied,
    Plan,
    PlanConfig,
    Unit,
    Wording,
    check_ratio,
    get_plan,
    layer_cap,
    list_granularities,
    register_granularity,
)

__all__ = [
    "GRANULARITIES",
    "Applied",
    "Plan",
    "PlanConfig",
    "Unit",
    "Wording",
    "blocks",
    "channel",
    "check_ratio",
    "get_plan",
    "heads",
    "layer_cap",
    "list_granularities",
    "lowrank",
    "masks",
    "register_granularity",
]
