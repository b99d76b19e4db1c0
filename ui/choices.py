"""The app's select-box choices, labels and help texts, read from the engine's registries.

Granularities come from `pruning_core.plans.list_granularities()` and criteria from
`pruning_core.prune.list_methods()`: a plan or criterion registered in the engine appears in
every select box with its own label and help, and nothing here compares names.
"""

from __future__ import annotations

from pruning_core.plans import Plan, get_plan, list_granularities
from pruning_core.prune import MethodInfo, list_methods

__all__ = [
    "criteria_help",
    "criterion_caption",
    "criterion_choices",
    "criterion_info",
    "criterion_label",
    "granularities_help",
    "granularity_choices",
    "granularity_label",
    "plan_of",
]


def granularity_choices() -> list[str]:
    """Every registered granularity as the app offers it, in registry order (masks first,
    then structures from the finest)."""
    return [c for p in list_granularities() for c in p.choices()]


def plan_of(granularity: str) -> type[Plan]:
    """The plan class of a granularity text (`2:4` -> the N:M plan).

    Raises:
        UserError: No registered granularity reads it.
    """
    return get_plan(granularity)[0]


def granularity_label(granularity: str) -> str:
    """The select-box text of a granularity: the plan's label, with the concrete pattern for
    a family (`2:4 (N:M semi-structured)`)."""
    plan, canonical = get_plan(granularity)
    if canonical == plan.name:
        return plan.label
    return f"{canonical} ({plan.label.partition(' (')[0]})"


def granularities_help(choices: list[str] | None = None) -> str:
    """One line per granularity (label: help) for a select box's help tooltip."""
    lines = []
    for g in choices if choices is not None else granularity_choices():
        lines.append(f"- **{granularity_label(g)}**: {plan_of(g).help}")
    return "\n".join(lines)


def criterion_info(name: str) -> MethodInfo | None:
    """The registry's description of a criterion, or None for an unknown name."""
    return next((m for m in list_methods() if m.name == name), None)


def criterion_choices(granularity: str | None = None) -> list[str]:
    """Registered criteria, in registry order; with a granularity, those that support it."""
    if granularity is None:
        return [m.name for m in list_methods()]
    plan = plan_of(granularity)
    return [m.name for m in list_methods() if plan.name in m.granularities]


def criterion_label(name: str) -> str:
    """The select-box text of a criterion: its registry label."""
    info = criterion_info(name)
    return info.label or name if info is not None else name


def criterion_caption(name: str) -> str:
    """A criterion's idea and its reference, one line (shown under the select box)."""
    info = criterion_info(name)
    if info is None:
        return ""
    data = " Reads calibration images." if info.needs_data else " Data-free."
    return f"{info.label}: {info.summary}.{data} Reference: {info.reference}."


def criteria_help(names: list[str] | None = None) -> str:
    """One line per criterion (name: idea) for a select box's help tooltip."""
    infos = [criterion_info(n) for n in names] if names is not None else list_methods()
    return "\n".join(f"- **{m.name}**: {m.summary}" for m in infos if m is not None)
