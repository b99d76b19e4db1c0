"""The `pruning-lab` command line (also `python -m pruning_core`).

Every command accepts `--json` and then prints exactly one JSON document on stdout. Bad input
exits with status 2 and one line on stderr, without a traceback and without partial output.
Commands live in small modules, each with a `register(subparsers, common)` function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pruning_core.errors import UserError, first_line, shown
from pruning_core.fsio import to_jsonable

__all__ = ["Handler", "build_parser", "main", "run"]

# Modules holding commands, in the order `--help` lists them.
_COMMAND_MODULES = ("basic", "prune", "measure", "experiments_cmds", "export", "quantize")


# Where `_OneSpelling` notes which spelling of an option was given (removed after parsing).
_SPELLINGS = "_spellings_given"


class _OneSpelling(argparse.Action):
    """Store an option that has several spellings (`--methods`/`--criteria`), refusing a
    second spelling: argparse would keep whichever came last and drop the other silently."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: dict[str, str] = namespace.__dict__.setdefault(_SPELLINGS, {})
        first = given.setdefault(self.dest, str(option_string))
        if first != option_string:
            parser.error(f"{first} and {option_string} are two names of one option: give only one")
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and status 2, and refuses an option given
    under two of its names."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """As argparse's; an option with several long names stores through `_OneSpelling`."""
        names = [a for a in args if isinstance(a, str) and a.startswith("--")]
        if len(names) > 1 and kwargs.get("action", "store") == "store":
            kwargs["action"] = _OneSpelling
        return super().add_argument(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        ns.__dict__.pop(_SPELLINGS, None)  # bookkeeping, not an option
        return ns, rest


Handler = Callable[[argparse.Namespace], dict[str, Any]]


def build_parser() -> argparse.ArgumentParser:
    """The full parser (used by `main` and by the docs test)."""
    import importlib

    parser = _Parser(prog="pruning-lab", description="See, try and measure neural-network pruning.")
    common = _Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print exactly one JSON document on stdout"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for mod in _COMMAND_MODULES:
        importlib.import_module(f"pruning_core.cli.{mod}").register(sub, common)
    return parser


def _human(payload: Any, indent: str = "") -> str:
    if isinstance(payload, list):
        return "\n".join(_human(v, indent) if not isinstance(v, dict) else _row(v) for v in payload)
    if isinstance(payload, dict):
        lines = []
        for k, v in payload.items():
            if isinstance(v, dict | list) and v and len(json.dumps(v)) > 80:
                lines.append(f"{indent}{k}:")
                lines.append(_human(v, indent + "  "))
            else:
                lines.append(f"{indent}{k}: {_fmt(v)}")
        return "\n".join(lines)
    return f"{indent}{_fmt(payload)}"


def _row(d: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_fmt(v)}" for k, v in d.items() if not isinstance(v, dict | list))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(to_jsonable(v))
    return str(v)


def _preflight(args: argparse.Namespace) -> None:
    """Checks every command shares, made before its handler loads or trains anything."""
    device = getattr(args, "device", None)
    if isinstance(device, str):
        from pruning_core.device import resolve_device

        resolve_device(device)
    if getattr(args, "record", False):
        from pruning_core.store import RunStore

        RunStore()  # opens (or creates) the store: an unwritable or corrupt home fails here


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done; 2: bad input (one line on stderr, nothing written); 1: an internal error (a bug);
    130: interrupted. Python warnings raised while a command runs are shown once each after it
    succeeds, so a refusal is always exactly one line.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    handler: Handler = args.handler
    debug = bool(os.environ.get("PRUNING_LAB_DEBUG"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            _preflight(args)
            payload = handler(args)
            text = None
            if payload is not None:
                doc = to_jsonable(payload)
                text = json.dumps(doc, indent=2) if getattr(args, "json", False) else _human(doc)
        except UserError as e:
            sys.stderr.write(f"error: {first_line(e, 500, 'bad input')}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            return 130
        except OSError as e:
            # The file system said no (a name too long, a missing or unreadable path, a full
            # disk): a fact about the paths given or the machine, not a bug of the tool.
            where = f" {shown(e.filename)}" if e.filename else ""
            sys.stderr.write(f"error: cannot use{where}: {e.strerror or first_line(e, 500, '')}\n")
            return 2
        except Exception as e:
            if debug:
                raise
            sys.stderr.write(
                f"internal error: {type(e).__name__}: {first_line(e, 500, '')} "
                "(set PRUNING_LAB_DEBUG=1 for a traceback)\n"
            )
            return 1
    # The tool's own warnings (UserWarning) are sentences for the user; a library's keep their
    # category, which says where they come from.
    said = (str(w.message) if w.category is UserWarning else f"{w.category.__name__}: {w.message}"
            for w in caught)  # fmt: skip
    for message in dict.fromkeys(said):
        if debug or not getattr(args, "quiet", False):
            sys.stderr.write(f"warning: {message.splitlines()[0]}\n")
    if text is not None:
        sys.stdout.write(text + "\n")
    return 0


def run() -> NoReturn:
    """Console-script entry point."""
    raise SystemExit(main())
