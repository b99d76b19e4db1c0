"""Range checks for every option and setting, in one place (a leaf module: standard library only).

The same checks guard the command line (as argparse types, so a bad value stops parsing before
any work), recipes and the frozen configs of the Python API (in their `__post_init__`), and the
app's widgets. A bad value is a `UserError` naming the option and the accepted range; nothing is
ever silently replaced by a default.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from pruning_core.errors import UserError, brief

__all__ = [
    "BATCH",
    "BINS",
    "NONNEGATIVE_FLOAT",
    "NONNEGATIVE_INT",
    "POSITIVE_FLOAT",
    "POSITIVE_INT",
    "RATIO",
    "SEED",
    "SEED_MAX",
    "SMALL_COUNT",
    "THREADS",
    "Range",
    "check_seed",
    "number",
]

# numpy's and torch's generators both take seeds in [0, 2**32): one range for every seed.
SEED_MAX = 2**32 - 1


def number(
    value: Any,
    what: str,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """`value` as an int or a finite float within [lo, hi] (open ends as asked).

    Args:
        value: A number or its text (`"3"`, `"1e-3"`); booleans are refused.
        what: The option's name for the message (`--batch-size`, `weight_decay`).
        integer: Require an integer (`3.0` is accepted as 3; `3.5` is refused).
        lo, hi: Bounds (None: unbounded).
        lo_open, hi_open: Exclude the bound itself.

    Returns:
        The int or float.

    Raises:
        UserError: Not a number, not finite, not an integer when one is needed, or out of range.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise UserError(f"{what} must be {kind}, got {brief(value)}")
    try:
        v = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be {kind}, got {brief(value)}") from None
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UserError(f"{what} must be a finite number, got {brief(value)}")
        if integer:
            if not v.is_integer():
                raise UserError(f"{what} must be an integer, got {brief(value)}")
            v = int(v)
    low_ok = lo is None or (v > lo if lo_open else v >= lo)
    high_ok = hi is None or (v < hi if hi_open else v <= hi)
    if not (low_ok and high_ok):
        raise UserError(f"{what} must be {_describe(lo, hi, lo_open, hi_open)}, got {brief(value)}")
    return v


def _describe(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    def fmt(x: float) -> str:
        return f"{int(x):,}".replace(",", "") if float(x).is_integer() else f"{x:g}"

    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {fmt(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {fmt(hi)}"
    return "a number"


def check_seed(value: Any, what: str = "seed") -> int:
    """A seed: an integer in [0, 2**32 - 1] (the range numpy and torch both accept)."""
    seed: int = number(value, what, integer=True, lo=0, hi=SEED_MAX)
    return seed


class Range:
    """An argparse `type=` that applies `number` to an option's text.

    Example: `p.add_argument("--batch-size", type=Range(integer=True, lo=1, label="batch size"))`.
    A bad value stops parsing with one line and exit status 2, before any command runs.
    """

    def __init__(
        self,
        *,
        integer: bool = False,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = False,
        label: str = "value",
    ) -> None:
        self.label = label
        self.kw: dict[str, Any] = {
            "integer": integer, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
        }  # fmt: skip
        # argparse names the type in its messages; say what is expected.
        self.__name__ = "integer" if integer else "number"

    def check(self, value: Any, what: str) -> Any:
        """`value` checked against this range (`number`), for settings that come from files."""
        return number(value, what, **self.kw)

    def __call__(self, text: str) -> Any:
        try:
            return number(text, self.label, **self.kw)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


SEED = Range(integer=True, lo=0, hi=SEED_MAX, label="seed")
POSITIVE_INT = Range(integer=True, lo=1)
NONNEGATIVE_INT = Range(integer=True, lo=0)
POSITIVE_FLOAT = Range(lo=0, lo_open=True)
NONNEGATIVE_FLOAT = Range(lo=0)
RATIO = Range(lo=0, hi=1, hi_open=True, label="ratio")
# Inputs built in memory at once (benchmarks, statistics): bounded so a typo cannot exhaust RAM.
BATCH = Range(integer=True, lo=1, hi=4096, label="batch size")
BINS = Range(integer=True, lo=2, hi=1000, label="bins")
SMALL_COUNT = Range(integer=True, lo=1, hi=10_000)
# torch accepts any positive count; far more threads than cores only slows it down.
THREADS = Range(integer=True, lo=1, hi=1024, label="threads")
