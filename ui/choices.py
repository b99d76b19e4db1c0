"""The app's select-box choices, labels and help texts, read from the engine's registries.

Granularities come from `pruning_core.plans.list_granularities()` and criteria from
`pruning_core.prune.list_methods()`: a plan or criterion registered in the engine appears in
every select box with its own label and help, and nothing here compares names. A plan whose
controls mean something else than pruning weights by a criterion (low rank: singular values,
a share of rank) says so in its `Plan.wording`, which the labels and help texts below follow.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from pruning_core.criteria import get_criterion
from pruning_core.plans import Plan, Wording, get_plan, list_granularities
from pruning_core.prune import MethodInfo, list_methods
from pruning_core.spec import InputSpec
from ui.texts import SCOPE_HELP, SCOPE_LABELS

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
    "preview_note",
    "ratio_help",
    "ratio_label",
    "saves_zeros",
    "scope_applies",
    "scope_caption",
    "scope_help",
    "scope_label",
    "scored_by_criterion",
    "unfit_criteria",
    "unfit_granularities",
]


def granularity_choices(unfit: Collection[str] = ()) -> list[str]:
    """Every registered granularity as the app offers it, in registry order (masks first,
    then structures from the finest), less those in `unfit` (`unfit_granularities`)."""
    return [c for p in list_granularities() for c in p.choices() if c not in unfit]


def unfit_granularities(model: nn.Module, spec: InputSpec | None = None) -> dict[str, str]:
    """The granularities `model` cannot take, each with the one line saying why (the plan's
    `Plan.refusal`: heads without attention, blocks without an identity shortcut); cheap, and
    the model is not touched."""
    return {
        c: why
        for p in list_granularities()
        if (why := p.refusal(model, spec)) is not None
        for c in p.choices()
    }


def unfit_criteria(
    model: nn.Module, spec: InputSpec | None = None, granularity: str | None = None
) -> dict[str, str]:
    """The criteria `model` cannot be scored by at `granularity` (any text `plan_of` reads;
    None: at any), each with the one line saying why (the criterion's `Criterion.refusal`:
    bn-scale without BatchNorm, or for blocks a block without one); the model is not touched."""
    criteria = [get_criterion(m.name) for m in list_methods()]
    if granularity is not None:
        return plan_of(granularity).criterion_refusals(criteria, model, spec)
    return {c.name: why for c in criteria if (why := c.refusal(model, spec)) is not None}


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


def _wording(granularity: str | None) -> Wording:
    """The plan's words for its controls (all None for no granularity: the generic ones)."""
    if granularity is None:
        return Wording()
    plan, canonical = get_plan(granularity)
    return plan.wording(canonical)


def criterion_label(name: str, granularity: str | None = None) -> str:
    """The select-box text of a criterion: its registry label, or what the granularity scores
    by when it takes no choice of criterion (low rank: "Singular values")."""
    said = _wording(granularity).criterion
    if said is not None:
        return said
    info = criterion_info(name)
    return info.label or name if info is not None else name


def criterion_caption(name: str, granularity: str | None = None) -> str:
    """A criterion's idea and its reference, one line (shown under the select box); for a
    granularity that scores by something of its own, what that is."""
    words = _wording(granularity)
    if words.criterion is not None and words.criterion_help is not None:
        return f"{words.criterion}: {words.criterion_help}"
    info = criterion_info(name)
    if info is None:
        return ""
    data = " Reads calibration images." if info.needs_data else " Data-free."
    return f"{info.label}: {info.summary}.{data} Reference: {info.reference}."


def criteria_help(names: list[str] | None = None, granularity: str | None = None) -> str:
    """The criterion select box's help tooltip: one line per criterion (name: idea), or what
    the granularity scores by when it takes no choice of criterion."""
    words = _wording(granularity)
    if words.criterion is not None:
        return f"- **{words.criterion}**: {words.criterion_help or ''}"
    infos = [criterion_info(n) for n in names] if names is not None else list_methods()
    return "\n".join(f"- **{m.name}**: {m.summary}" for m in infos if m is not None)


def scored_by_criterion(granularity: str) -> bool:
    """True when the granularity ranks its elements by a chosen pruning criterion (so the
    magnitude-vs-activation lesson applies); False for one with scores of its own."""
    return _wording(granularity).criterion is None


def scope_label(granularity: str, scope: str) -> str:
    """The scope radio's text for one scope under this granularity."""
    scopes = _wording(granularity).scopes
    return (scopes or SCOPE_LABELS).get(scope, SCOPE_LABELS.get(scope, scope))


def scope_help(granularity: str) -> str:
    """What the scopes do for this granularity (tooltip and caption)."""
    return _wording(granularity).scope_help or SCOPE_HELP


def scope_applies(granularity: str) -> bool:
    """False when the scope changes nothing: a fixed pattern (N:M) or a per-layer rule
    (low rank by energy)."""
    return not plan_of(granularity).fixed_ratio and _wording(granularity).scope_applies


def scope_caption(granularity: str) -> str:
    """The line under the scope radio: what the scope does, or why it does not apply."""
    if plan_of(granularity).fixed_ratio:
        return f"{granularity} is a fixed pattern in every layer."
    return scope_help(granularity)


def ratio_label(granularity: str) -> str:
    """The share slider's label: a share of weights (generic) or what this granularity
    removes a share of (rank, energy), and whether its pattern fixes it."""
    label = _wording(granularity).ratio or "Share to remove"
    if plan_of(granularity).fixed_ratio:
        label += f" (fixed by the {granularity} pattern)"
    return label


def ratio_help(granularity: str) -> str:
    """The share slider's help text for this granularity."""
    return _wording(granularity).ratio_help or (
        "The target share of weights (or channels, heads, blocks) removed from the pruned "
        "layers. The classifier (last layer) is kept dense."
    )


def saves_zeros(granularity: str) -> bool:
    """True when the preview's saving is zero weights (pruning); False when it is not (low
    rank): its counts are then the applied model's, and masks and zeros say nothing."""
    return _wording(granularity).zeros


def preview_note(granularity: str) -> str:
    """One sentence on what the preview does to the weights and what Apply does ("" for
    unstructured pruning, whose preview is what Apply does)."""
    said = _wording(granularity).preview_note
    if said is not None:
        return said
    if plan_of(granularity).structured:
        return "Structured preview: weights are masked; Apply removes them physically."
    return ""
