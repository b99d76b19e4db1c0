"""Every option of every command is checked up front: a bad value exits 2 with one line naming it,
before any model or dataset is loaded (docs/RELIABILITY.md, kind 8)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruning_core.cli import build_parser
from pruning_core.errors import UserError
from pruning_core.validate import Range, check_seed, number

# The least each command needs to get past argparse's required options.
REQUIRED = {
    "evaluate": ["--model", "digits-mlp", "--dataset", "digits"],
    "train": ["--model", "digits-mlp", "--dataset", "digits", "--out", "OUT"],
    "prune": [
        "--model", "digits-mlp", "--dataset", "digits", "--method", "magnitude",
        "--granularity", "unstructured", "--ratio", "0.5", "--out", "OUT",
    ],
    "inspect": ["--model", "digits-mlp"],
    "bench": ["--model", "digits-mlp"],
    "sweep": ["--model", "digits-mlp", "--dataset", "digits", "--out", "OUT.csv"],
    "sensitivity": ["--model", "digits-mlp", "--dataset", "digits", "--out", "OUT.csv"],
    "export": ["--pruned", "P", "--format", "onnx", "--out", "OUT.onnx"],
    "quantize": ["digits-mlp", "--out", "OUT"],
    "app": [],
}  # fmt: skip


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numeric_options() -> Iterator[tuple[str, str, Range]]:
    for command, p in _commands().items():
        for action in p._actions:
            if isinstance(action.type, Range):
                yield command, action.option_strings[-1], action.type


NUMERIC = list(_numeric_options())


def test_every_numeric_option_has_a_range() -> None:
    """A new option typed plainly `int` or `float` would take -1 or nan: it must use a Range."""
    plain = [
        f"{command} {action.option_strings[-1]}"
        for command, p in _commands().items()
        for action in p._actions
        if action.type in (int, float)
    ]
    assert plain == []
    assert {c for c, _, _ in NUMERIC} >= {"train", "prune", "bench", "sweep", "sensitivity"}


def _bad_values(r: Range) -> list[str]:
    kw = r.kw
    bad = ["abc", "", "nan", "inf", "-inf", "1e999", "0x10"]
    if kw["lo"] is not None:
        bad.append(str(kw["lo"] - (0 if kw["lo_open"] else 1)))
        bad.append(str(kw["lo"] - 1e6))
    if kw["hi"] is not None:
        bad.append(str(kw["hi"] + (0 if kw["hi_open"] else 1)))
    if kw["integer"]:
        bad.append("2.5")
    return bad


@pytest.mark.parametrize(("command", "option", "range_"), NUMERIC, ids=lambda v: str(v))
def test_out_of_range_values_exit_2_before_any_work(
    command: str, option: str, range_: Range, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr("pruning_core.cli.common.load_model", boom)
    monkeypatch.setattr("pruning_core.cli.common.load_dataset", boom)
    monkeypatch.setattr("pruning_core.cli.basic.load_dataset", boom)
    base = [a.replace("OUT", str(tmp_path / "out")) for a in REQUIRED[command]]
    for value in _bad_values(range_):
        code, out, err = cli(command, *base, f"{option}={value}")
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (option, value, err)
        assert option in lines[0] and "Traceback" not in err, lines[0]
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
    ),
    lo=st.one_of(st.none(), st.integers(-5, 5)),
    span=st.integers(0, 10),
    integer=st.booleans(),
    open_ends=st.tuples(st.booleans(), st.booleans()),
)
def test_number_either_returns_a_value_in_range_or_refuses_in_one_line(
    value: object, lo: int | None, span: int, integer: bool, open_ends: tuple[bool, bool]
) -> None:
    hi = None if lo is None else lo + span
    try:
        v = number(value, "--opt", integer=integer, lo=lo, hi=hi,
                   lo_open=open_ends[0], hi_open=open_ends[1])  # fmt: skip
    except UserError as e:
        text = str(e)
        assert text.startswith("--opt must be") and "\n" not in text
        return
    assert not isinstance(value, bool) and value is not None
    assert math.isfinite(v)
    if integer:
        assert isinstance(v, int)
    if lo is not None and hi is not None:
        assert (lo < v if open_ends[0] else lo <= v) and (v < hi if open_ends[1] else v <= hi)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_seed_range_is_what_numpy_and_torch_accept(seed: int) -> None:
    import numpy as np
    import torch

    try:
        s = check_seed(seed)
    except UserError:
        assert seed < 0 or seed > 2**32 - 1
        return
    np.random.default_rng(s)
    torch.Generator().manual_seed(s)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:99", "tpu", "cuda", "mps"])
def test_unavailable_or_unknown_devices_exit_2_up_front(device: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for command in ("evaluate", "prune", "train", "sweep"):
        base = [a.replace("OUT", str(tmp_path / "out")) for a in REQUIRED[command]]
        code, _, err = cli(command, *base, "--device", device)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "device" in err, err
    assert list(tmp_path.iterdir()) == []


def test_recipe_device_is_checked_before_loading(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    recipe = tmp_path / "r.json"
    settings = {"model": "digits-mlp", "dataset": "digits", "method": "magnitude",
                "granularity": "unstructured", "ratio": 0.5, "device": "cuda:77"}  # fmt: skip
    recipe.write_text(json.dumps({"version": 1, "settings": settings}))
    code, _, err = cli("prune", "--recipe", str(recipe), "--out", str(tmp_path / "o"))
    assert code == 2 and "cuda" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("home", ["/proc/pruning-lab-home", "FILE"])
def test_record_with_an_unwritable_home_exits_2_up_front(
    home: str, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    if home == "FILE":
        (tmp_path / "file").write_text("x")
        home = str(tmp_path / "file" / "home")
    monkeypatch.setenv("PRUNING_LAB_HOME", home)
    out = tmp_path / "s.csv"
    code, _, err = cli("sweep", *REQUIRED["sweep"][:-2], "--out", str(out), "--record")
    assert code == 2 and "PRUNING_LAB_HOME" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        ("sweep", "results.txt", ".csv"),
        ("sweep", "/proc/x/results.csv", "cannot be written"),
        ("sensitivity", "DIR", "directory"),
        ("export", "model.onnx.txt", ".onnx"),
        ("export", "/proc/x/m.onnx", "cannot be written"),
    ],
)
def test_file_outputs_are_checked_up_front(
    command: str, out: str, message: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = (
        str(tmp_path) if out == "DIR" else (out if out.startswith("/") else str(tmp_path / out))
    )
    args = [a for a in REQUIRED[command] if not a.startswith("OUT")]
    args = args[: args.index("--out")] if "--out" in args else args
    code, _, err = cli(command, *args, "--out", target)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_sweep_methods_are_checked_before_loading(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = [a.replace("OUT", str(tmp_path / "out")) for a in REQUIRED["sweep"]]
    code, _, err = cli("sweep", *base, "--methods", "magnitude,telepathy")
    assert code == 2 and "telepathy" in err
    code, _, err = cli("sweep", *base, "--methods", " , ")
    assert code == 2 and "--methods" in err
