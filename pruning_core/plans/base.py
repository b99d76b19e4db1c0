"""The granularity registry and what every plan shares.

A *plan* is one granularity (unstructured, N:M, channel, head, block): a class registered with
`@register_granularity` that knows, for one model,

1. which units it can prune (layers, channel groups, attention layers, residual blocks) and
   what it must skip, with the reason (`notes`);
2. how to **score** their elements with a criterion (`pruning_core.criteria`), once;
3. how to **select** the lowest-scored elements for any ratio (global or per layer, per-layer
   overrides, each unit's cap) without touching the model: the slider path;
4. how to **apply** a selection: masks (zeros kept through training) or physical shrinking,
   and the keep-masks of a selection for the **preview**.

`pruning_core.prune.Preview` drives any plan through these steps; nothing outside this package
compares granularity names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from pruning_core.criteria import Criterion, score_kinds
from pruning_core.errors import UserError, brief
from pruning_core.spec import InputSpec

__all__ = [
    "GRANULARITIES",
    "Applied",
    "Plan",
    "PlanConfig",
    "Unit",
    "Wording",
    "check_ratio",
    "get_plan",
    "layer_cap",
    "list_granularities",
    "register_granularity",
]

GRANULARITIES: dict[str, type[Plan]] = {}
_P = TypeVar("_P", bound="type[Plan]")


def register_granularity(cls: _P) -> _P:
    """Class decorator: add a granularity plan to the registry under its `name`.

    Raises:
        ValueError: No name, label or help text, an unknown `score_kind`, or a name taken.
    """
    for attr in ("name", "label", "help"):
        if not getattr(cls, attr, ""):
            raise ValueError(f"granularity {cls.__name__} needs a {attr}")
    if cls.score_kind not in ("weights", "channels", "blocks"):
        raise ValueError(f"granularity {cls.__name__}: unknown score_kind {cls.score_kind!r}")
    old = GRANULARITIES.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"granularity name '{cls.name}' is taken by {old.__qualname__}")
    GRANULARITIES[cls.name] = cls
    return cls


def list_granularities() -> list[type[Plan]]:
    """Every registered plan class, in registration order."""
    return list(GRANULARITIES.values())


def get_plan(granularity: str) -> tuple[type[Plan], str]:
    """The plan class for a granularity text, and the text in its canonical form.

    Raises:
        UserError: No registered granularity reads `granularity`.
    """
    text = str(granularity).strip()
    for cls in GRANULARITIES.values():
        canonical = cls.parse(text)
        if canonical is not None:
            return cls, canonical
    choices = ", ".join(c.example for c in GRANULARITIES.values())
    raise UserError(f"unknown granularity '{granularity}' (choose from {choices})")


def check_ratio(r: Any, what: str = "ratio") -> float:
    """A ratio: a finite number in [0, 1) (the share of elements removed).

    Raises:
        UserError: Naming `what`.
    """
    try:
        v = float(r)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a number in [0, 1), got {brief(r)}") from None
    if not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise UserError(f"{what} must be in [0, 1) (share of weights removed), got {brief(r)}")
    return v


def layer_cap(size: int, max_layer_ratio: float) -> int:
    """The most elements any selection may remove from a unit of `size`: `max_layer_ratio` of
    it, and never all of it (one element always stays)."""
    return max(0, min(math.floor(size * max_layer_ratio + 1e-9), size - 1))


class PlanConfig(Protocol):
    """What a plan reads from the pruning settings (`prune.PruneConfig` provides it)."""

    @property
    def granularity(self) -> str: ...
    @property
    def ignore(self) -> tuple[str, ...] | None: ...
    @property
    def max_layer_ratio(self) -> float: ...
    @property
    def round_to(self) -> int | None: ...


@dataclass
class Unit:
    """One independently prunable set of elements (a layer's weights, a channel group, an
    attention layer's heads, the removable blocks).

    Attributes:
        name: What per-layer ratios key on.
        size: Elements in it.
        scores: One score per element (flattened), set by `Plan.score`.
        members: Other names that address this unit in per-layer ratios.
        roundable: `round_to` applies (channel groups).
    """

    name: str
    size: int
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    members: tuple[str, ...] = ()
    roundable: bool = True


@dataclass
class Applied:
    """What applying a selection did (the parts of a PruneResult a plan knows)."""

    masks: dict[str, torch.Tensor]
    layer_sparsity: dict[str, float]
    sparsity: float
    removed: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Wording:
    """What the pruning controls mean for a granularity whose ratio, scores or scope are not
    the weight-pruning ones (low rank: a share of rank, singular values). A field left None
    keeps the app's generic words for weight pruning.

    Attributes:
        criterion: The name of what scores the elements, in place of the criterion's label
            when the plan takes no choice of criterion ("Singular values").
        criterion_help: What those scores are and how they are used, one or two sentences.
        scopes: Scope (`prune.SCOPES`) -> its label for this granularity.
        scope_help: What each scope does for this granularity.
        scope_applies: False when the scope changes nothing (the control is then disabled).
        ratio: The share slider's label ("Share of rank to remove").
        ratio_help: What the share is a share of.
        zeros: False when the preview's saving is not zero weights (low rank writes each
            weight's rank-r approximation, no zeros): its counts are then those of the applied
            model, and masks and the lesson on zeros do not apply.
        preview_note: What the preview does to the weights and what Apply does, one sentence.
    """

    criterion: str | None = None
    criterion_help: str | None = None
    scopes: Mapping[str, str] | None = None
    scope_help: str | None = None
    scope_applies: bool = True
    ratio: str | None = None
    ratio_help: str | None = None
    zeros: bool = True
    preview_note: str | None = None


class Plan:
    """Base class of a granularity plan (see the module docstring for the steps).

    Class attributes describe the granularity for the registry, the command line and the app.

    Attributes:
        model: The model the plan was built for.
        units: What it prunes, in model order.
        notes: Layers or groups it cannot touch, and why (shown to the user).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    help: ClassVar[str] = ""
    # How the granularity reads in lists of choices (`2:4` for the N:M family).
    example: ClassVar[str] = ""
    # Which scores it needs from a criterion: weights, channels or blocks.
    score_kind: ClassVar[str] = "weights"
    # Whole structures go (the model can shrink physically); masks otherwise.
    structured: ClassVar[bool] = False
    # Per-layer ratios apply (block pruning takes one ratio for all blocks).
    per_layer: ClassVar[bool] = True
    # The granularity itself fixes the share removed (N:M): the ratio slider does not apply.
    fixed_ratio: ClassVar[bool] = False
    # Why `budget.search` cannot search this granularity's ratios (None: it can).
    no_budget_search: ClassVar[str | None] = None
    # What the unit names are, for the app's per-layer table ("layer", "channel group"...).
    unit_word: ClassVar[str] = "layer"

    model: nn.Module
    units: list[Unit]
    notes: list[str]

    def __init__(
        self, model: nn.Module, config: PlanConfig, *, spec: InputSpec | None, data: Any = None
    ) -> None:
        raise NotImplementedError

    # -- the registry's questions ------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> str | None:
        """The canonical granularity text when `text` names this plan, else None."""
        return cls.name if text == cls.name else None

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The concrete granularity texts a menu offers for this plan (N:M offers `2:4`)."""
        return (cls.name,)

    @classmethod
    def effective_ratio(cls, granularity: str, ratio: float) -> float:
        """The share this granularity removes for `ratio` (N:M fixes it)."""
        return ratio

    @classmethod
    def check_config(cls, granularity: str, ratio: float, max_layer_ratio: float) -> None:
        """Refuse settings this granularity cannot honour (beyond the generic ratio checks)."""

    @classmethod
    def wording(cls, granularity: str) -> Wording:
        """How the app's criterion, scope and share controls read for `granularity` (a text
        this plan parses): the generic weight-pruning words unless the plan says otherwise."""
        return Wording()

    @classmethod
    def supports(cls, criterion: Criterion | type[Criterion]) -> bool:
        """True when `criterion` computes the scores this plan needs and does not decline it."""
        return cls.score_kind in score_kinds(criterion) and cls.name not in criterion.declines

    @classmethod
    def prunable(
        cls, model: nn.Module, config: PlanConfig, spec: InputSpec | None = None
    ) -> list[str]:
        """The names per-layer ratios accept for this model (no scoring)."""
        return [u.name for u in cls(model, config, spec=spec).units]

    @classmethod
    def criterion_refusals(
        cls, criteria: Sequence[Criterion], model: nn.Module, spec: InputSpec | None = None
    ) -> dict[str, str]:
        """Why each of `criteria` that cannot score `model` at this granularity cannot
        (`Criterion.refusal`, given what this plan finds in the model, looked for once):
        {criterion name: one line}. Read-only."""
        return {
            c.name: why for c in criteria if (why := c.refusal(model, spec, cls.name)) is not None
        }

    @classmethod
    def refusal(cls, model: nn.Module, spec: InputSpec | None = None) -> str | None:
        """Why this granularity cannot prune `model` at all, when a quick look tells (no plan
        built, the model untouched): the line building the plan would raise. None: it may, and
        building the plan decides. Menus leave out what a model refuses (`ui.choices`)."""
        return None

    # -- the steps ----------------------------------------------------------------------------

    def score(
        self,
        criterion: Criterion,
        data: Any,
        spec: InputSpec | None,
        *,
        scores: Mapping[str, torch.Tensor] | None = None,
        zeros_first: bool = True,
    ) -> None:
        """Score every unit's elements once (sets `unit.scores`).

        Args:
            criterion: The criterion.
            data: A DataBundle for data-driven criteria.
            spec: The model's input spec.
            scores: Given per-layer scores instead of the criterion's (weight plans only).
            zeros_first: Weights already exactly zero go first (weight plans only).
        """
        raise NotImplementedError

    def select(
        self, ratio: float, overrides: Mapping[str, float], scope: str, max_layer_ratio: float
    ) -> dict[str, Any]:
        """What to remove for these ratios: {unit name: plan-specific selection}."""
        raise NotImplementedError

    def masks(
        self, selection: Mapping[str, Any], *, apply: bool = False
    ) -> dict[str, torch.Tensor]:
        """Keep-masks (layer -> bool tensor shaped like its weight) of a selection; with
        `apply=True` the selected weights of `self.model` are zeroed in place."""
        raise NotImplementedError

    def apply(self, model: nn.Module, selection: Mapping[str, Any], *, physical: bool) -> Applied:
        """Carry out a selection on `model`: shrink it (`physical`, structured plans) or zero
        the selected weights."""
        raise NotImplementedError

    def nothing_removed(self, ratio: float, max_layer_ratio: float, scope: str) -> str:
        """The note for a ratio above 0 whose selection removes nothing (whole units: a
        share of few units rounds down to none), so the run does not pass for pruning."""
        return (
            f"ratio {ratio:g} removes nothing: each {self.unit_word} loses whole units only "
            "(channels, heads, rank), and its share rounds down to none; a larger ratio "
            "removes some"
        )

    def work_modules(self) -> list[str]:
        """Modules whose own work (MACs outside their Linear/Conv layers, `stats.own_macs`: an
        attention's query-key and attention-value products) a selection can remove; none
        unless the plan removes such work (heads, blocks)."""
        return []

    def work_removed(self, selection: Mapping[str, Any]) -> dict[str, float]:
        """Per module of `work_modules`, the share of its own work that `selection` removes
        once applied (0 to 1). With each layer's sparsity times its MACs, this makes a masked
        preview's MAC count that of the applied model (`slider.SliderPreview.update`)."""
        return {}

    # -- shared helpers -------------------------------------------------------------------------

    def resolve_overrides(self, layer_ratios: Mapping[str, float]) -> dict[str, float]:
        """Per-layer ratios keyed by unit name (a member's name addresses its unit).

        Raises:
            UserError: A name that is not a unit of this plan, or a bad ratio.
        """
        by_name: dict[str, str] = {}
        for u in self.units:
            by_name[u.name] = u.name
            for m in u.members:
                by_name.setdefault(m, u.name)
        out: dict[str, float] = {}
        for name, r in layer_ratios.items():
            if name not in by_name:
                known = [u.name for u in self.units]
                raise UserError(
                    f"layer ratio given for '{name}', which is not a pruned {self.unit_word} "
                    f"(pruned: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})"
                )
            out[by_name[name]] = check_ratio(r, f"ratio of layer '{name}'")
        return out

    def weight_sizes(self, layers: Sequence[str] | None = None) -> dict[str, int]:
        """Weights per weight-bearing layer the plan touches (for sparsity accounting)."""
        mods = dict(self.model.named_modules())
        out = {}
        for n in self.layers() if layers is None else layers:
            w = getattr(mods.get(n), "weight", None)
            out[n] = int(w.numel()) if isinstance(w, torch.Tensor) else 0
        return out

    def layers(self) -> list[str]:
        """Weight-bearing modules this plan may touch."""
        return [u.name for u in self.units]
