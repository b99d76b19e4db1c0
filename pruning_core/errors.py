"""The one user-facing error type and how refusals show names read from files (a leaf module)."""

from __future__ import annotations

__all__ = ["UserError", "brief", "first_line", "shown"]

# Longest text of a value or name a refusal quotes: a message stays one readable line whatever
# a file holds.
_LIMIT = 120


class UserError(Exception):
    """Bad input from the user: shown as one clear line, exit status 2 on the CLI."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(name: object, limit: int = _LIMIT) -> str:
    """A name from a file as messages show it: itself, or its repr when it holds newlines or
    other unprintable characters, clipped (a refusal must stay one short line)."""
    text = name if isinstance(name, str) and name.isprintable() else repr(name)
    return _clip(text, limit)


def first_line(e: BaseException, limit: int = 200, default: str | None = None) -> str:
    """The first line of an exception's message, clipped (for one-line refusals and job
    errors); `default` (or the exception's type name) when the message is empty. A hostile
    `__str__` cannot break the caller."""
    try:
        lines = str(e).strip().splitlines()
    except Exception:  # an exception whose message itself fails
        lines = []
    if not lines:
        return type(e).__name__ if default is None else default
    return _clip(lines[0], limit)


def brief(value: object, limit: int = 60) -> str:
    """A value from a file or an option as messages quote it: its repr, clipped.

    Containers are summarised without walking them, so a huge or self-referencing value costs
    nothing to quote.
    """
    if isinstance(value, dict | list | tuple | set):
        return f"a {type(value).__name__} of {len(value)} entries"
    return _clip(repr(value), limit)
