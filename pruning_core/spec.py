"""The input contract of a model: what tensors it expects and what it predicts (a leaf module).

`InputSpec.parse` is the strict reader for specs that come from files (model.json): every field
is type- and range-checked and a bad one is a `UserError` naming it. The bounds below are shared
with the architecture arguments (`arch_kwargs`) that the same numbers feed:

- `MAX_CHANNELS` (16): image channels; datasets have 1 or 3, multispectral inputs a few more.
- `MAX_SIZE` (4096): square side in pixels, the largest image side a folder dataset accepts
  (`data.archive`, 4096 x 4096 pixels); ImageNet models use 224-512.
- `MAX_CLASSES` (100000): output logits; ImageNet-21k has 21841.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pruning_core.errors import UserError, brief, shown
from pruning_core.validate import number

__all__ = [
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_SIZE",
    "SPEC_FIELDS",
    "SPEC_INT_FIELDS",
    "InputSpec",
    "check_int",
]

MAX_CHANNELS = 16
MAX_SIZE = 4096
MAX_CLASSES = 100_000
# Bounds of a normalisation (mean, std) of pixels in [0, 1].
MAX_NORM = 1000.0
MIN_STD = 1e-6
# The spec fields and the bounds of the integer ones (lo, hi).
SPEC_INT_FIELDS: dict[str, tuple[int, int]] = {
    "channels": (1, MAX_CHANNELS),
    "size": (1, MAX_SIZE),
    "num_classes": (1, MAX_CLASSES),
}
SPEC_FIELDS = ("channels", "size", "mean", "std", "num_classes", "class_names")


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; JSON-style strictness (no strings, booleans or 3.5).

    Args:
        value: The value read from a file or given by a caller.
        what: The field's name for the message (`model.json: spec.channels`).
        lo, hi: Inclusive bounds.

    Returns:
        The integer.

    Raises:
        UserError: Not an integer (a float with an integer value such as 3.0 is accepted), or
            out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{what} must be an integer, got {value!r}")
    checked: int = number(value, what, integer=True, lo=lo, hi=hi)
    return checked


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input and what it predicts.

    Attributes:
        channels: Image channels (1 for grayscale, 3 for RGB).
        size: Square side in pixels.
        mean: Per-channel normalisation mean (applied after scaling to [0, 1]).
        std: Per-channel normalisation std.
        num_classes: Number of output logits.
        class_names: Optional human names of the classes.
    """

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        d = asdict(self)
        d["mean"], d["std"], d["class_names"] = (
            list(self.mean),
            list(self.std),
            list(self.class_names),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Inverse of `to_dict` (lenient: numbers are converted; see `parse` for files).

        Raises:
            UserError: A missing field or one that does not convert.
        """
        try:
            return cls(
                channels=int(d["channels"]),
                size=int(d["size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                num_classes=int(d["num_classes"]),
                class_names=tuple(str(v) for v in d.get("class_names", ())),
            )
        except KeyError as e:
            raise UserError(f"input spec lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"input spec has a malformed field: {e}") from None

    @classmethod
    def parse(cls, d: Any, where: str = "spec") -> InputSpec:
        """A spec read from a file, every field checked (the strict form of `from_dict`).

        Args:
            d: The decoded JSON object.
            where: Prefix naming the object in messages (`model.json: spec`).

        Returns:
            The spec.

        Raises:
            UserError: Not an object, an unknown or missing field, an integer out of its bounds
                (see the module docstring), mean/std not a list of `channels` finite numbers,
                a std <= 0, or class_names not `num_classes` strings (or empty).
        """
        if not isinstance(d, Mapping):
            raise UserError(f"{where} must be an object, got {type(d).__name__}")
        unknown = [k for k in d if k not in SPEC_FIELDS]
        if unknown:
            raise UserError(
                f"{where}.{shown(unknown[0])} is not a spec field (known: {', '.join(SPEC_FIELDS)})"
            )
        for k in ("channels", "size", "mean", "std", "num_classes"):
            if k not in d:
                raise UserError(f"{where} lacks '{k}'")
        ints = {
            k: check_int(d[k], f"{where}.{k}", lo, hi) for k, (lo, hi) in SPEC_INT_FIELDS.items()
        }
        c = ints["channels"]
        vecs: dict[str, tuple[float, ...]] = {}
        for k in ("mean", "std"):
            v = d[k]
            if not isinstance(v, list | tuple) or len(v) != c:
                raise UserError(
                    f"{where}.{k} must be a list of {c} numbers (one per channel), got {brief(v)}"
                )
            # Pixels are normalised from [0, 1]: means far outside it, or a std so small that
            # inputs overflow (a denormal), describe no real normalisation.
            lo, hi = (MIN_STD, MAX_NORM) if k == "std" else (-MAX_NORM, MAX_NORM)
            vecs[k] = tuple(
                float(number(x, f"{where}.{k}[{i}]", lo=lo, hi=hi)) for i, x in enumerate(v)
            )
        names = d.get("class_names", [])
        if names is None:
            names = []
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{where}.class_names must be a list of strings")
        if names and len(names) != ints["num_classes"]:
            raise UserError(
                f"{where}.class_names has {len(names)} names for {ints['num_classes']} classes"
            )
        return cls(
            channels=c,
            size=ints["size"],
            mean=vecs["mean"],
            std=vecs["std"],
            num_classes=ints["num_classes"],
            class_names=tuple(names),
        )

    def with_(self, **changes: Any) -> InputSpec:
        """Copy with some fields changed (mean/std follow a channel change)."""
        d = self.to_dict()
        d.update(changes)
        if "channels" in changes and "mean" not in changes:
            m = sum(self.mean) / len(self.mean)
            s = sum(self.std) / len(self.std)
            d["mean"], d["std"] = [m] * d["channels"], [s] * d["channels"]
        if "num_classes" in changes and "class_names" not in changes:
            d["class_names"] = []
        return InputSpec.from_dict(d)
