"""The input contract of a model: what tensors it expects and what it predicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        """Inverse of `to_dict`."""
        return cls(
            channels=int(d["channels"]),
            size=int(d["size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            num_classes=int(d["num_classes"]),
            class_names=tuple(str(v) for v in d.get("class_names", ())),
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
