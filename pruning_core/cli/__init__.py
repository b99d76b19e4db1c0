"""The `pruning-lab` command line (also `python -m pruning_core`).

Every command accepts `--json` and then prints exactly one JSON document on stdout. Bad input
exits with status 2 and one line on stderr, without a traceback and without partial output.
Commands live in small modules, each with a `register(subparsers, common)` function.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pruning_core.errors import UserError

# Modules holding commands, in the order `--help` lists them.
_COMMAND_MODULES = ("basic", "prune", "measure", "experiments_cmds", "export")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


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


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if hasattr(o, "to_dict"):
        return _jsonable(o.to_dict())
    return o


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
        return json.dumps(_jsonable(v))
    return str(v)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    handler: Handler = args.handler
    try:
        payload = handler(args)
    except UserError as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else 'bad input'}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:
        if os.environ.get("PRUNING_LAB_DEBUG"):
            raise
        sys.stderr.write(
            f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(set PRUNING_LAB_DEBUG=1 for a traceback)\n"
        )
        return 1
    if payload is None:
        return 0
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(_jsonable(payload), indent=2) + "\n")
    else:
        sys.stdout.write(_human(_jsonable(payload)) + "\n")
    return 0


def run() -> NoReturn:
    """Console-script entry point."""
    raise SystemExit(main())
