"""The one user-facing error type and how refusals show names read from files (a leaf module)."""

from __future__ import annotations

__all__ = ["UserError", "shown"]


class UserError(Exception):
    """Bad input from the user: shown as one clear line, exit status 2 on the CLI."""


def shown(name: object) -> str:
    """A name from a file as messages show it: itself, or its repr when it holds newlines or
    other unprintable characters (a refusal must stay one line)."""
    return name if isinstance(name, str) and name.isprintable() else repr(name)
