"""`pruning-lab sweep` and `pruning-lab sensitivity`: JSON shape, CSV output, exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pruning_core.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _registered() -> bool:
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    return "sensitivity" in sub.choices


pytestmark = pytest.mark.skipif(
    not _registered(), reason="sweep/sensitivity not registered (cli/measure.py has not landed)"
)


def test_sensitivity_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    code, stdout, err = _run(
        capsys, "sensitivity", "--model", "digits-cnn", "--dataset", "digits",
        "--ratios", "0.5,0.9", "--target-sparsity", "0.8", "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)  # exactly one JSON document
    assert doc["layers"] == ["conv1", "conv2", "fc1"]
    assert len(doc["rows"]) == 3 * 2
    assert set(doc["rows"][0]) == {"layer", "ratio", "accuracy", "drop", "params", "layer_sparsity"}
    csv = pd.read_csv(out)
    assert len(csv) == 6 and list(csv["layer"]) == [r["layer"] for r in doc["rows"]]
    sug = doc["suggestion"]
    assert set(sug["ratios"]) == {"conv1", "conv2", "fc1"}
    assert sug["target_ratio"] == pytest.approx(0.8)
    assert sug["sparsity"] == pytest.approx(sug["uniform_sparsity"], abs=1e-3)
    # The model's sparsity: 0.8 of the three pruned layers, the dense classifier counted too.
    assert 0.79 < sug["sparsity"] < 0.8
    assert sug["accuracy"] > sug["uniform_accuracy"]  # measured, on the validation split
    assert "%" in err  # progress went to stderr, not stdout
    # The former flag name is taken, and said to be a ratio, not the model's sparsity.
    assert "warning: --target-sparsity is now --target-ratio" in err


def test_sweep_json_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "home"))
    out = tmp_path / "sw.csv"
    code, stdout, err = _run(
        capsys, "sweep", "--model", "digits-mlp", "--dataset", "digits", "--methods",
        "magnitude,random", "--ratios", "0.5,0.9", "--out", str(out), "--json", "--record",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert [(r["method"], r["ratio"]) for r in doc["rows"]] == [
        ("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5), ("random", 0.9),
    ]  # fmt: skip
    assert all(r["finetuned_accuracy"] is None for r in doc["rows"])  # NaN -> null in JSON
    assert len(pd.read_csv(out)) == 4

    from pruning_core.store import RunStore

    run = RunStore().get_run(doc["run_id"])
    assert run.kind == "sweep" and run.status == "done" and run.model == "digits-mlp"
    assert Path(run.artifacts["csv"]).read_text() == out.read_text()


def test_sweep_defaults_to_the_criteria_the_granularity_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Low rank takes magnitude only: the default pair must not fail on random.
    code, stdout, err = _run(
        capsys, "sweep", "--model", "digits-mlp", "--dataset", "digits", "--granularity",
        "lowrank", "--ratios", "0.5", "--out", str(tmp_path / "lr.csv"), "--json",
    )  # fmt: skip
    assert code == 0, err
    # Named as `prune` names it ("lowrank"): low rank takes no criterion a user chose.
    doc = json.loads(stdout)
    assert [r["method"] for r in doc["rows"]] == ["lowrank"] and doc["methods"] == ["lowrank"]
    assert list(pd.read_csv(tmp_path / "lr.csv")["method"]) == ["lowrank"]


@pytest.mark.parametrize(
    "extra",
    [
        ["sweep", "--ratios", "0.5,abc"],
        ["sweep", "--ratios", "0.5,1.5"],
        ["sweep", "--methods", "nope"],
        ["sweep", "--granularity", "diagonal"],
        ["sensitivity", "--target-sparsity", "1.2"],
        ["sensitivity", "--ratios", "0.5", "--target-sparsity", "0.9"],
        ["sensitivity", "--ratios", "0.5", "--target-ratio", "0.9"],
        ["sensitivity", "--target-ratio", "0.5", "--target-sparsity", "0.5"],
        ["sensitivity", "--granularity", "2:4"],
        ["sensitivity", "--model", "no-such-model"],
        ["sweep", "--granularity", "2:4", "--ratios", "0.3"],
        ["sweep", "--criteria", "magnitude", "--methods", "random"],
        ["sensitivity", "--method", "magnitude", "--criterion", "random"],
    ],
)
def test_bad_input_exits_2(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.csv"
    argv = [extra[0], "--model", "digits-mlp", "--dataset", "digits", "--out", str(out)]
    argv += extra[1:]
    code, stdout, err = _run(capsys, *argv)
    assert code == 2
    assert stdout == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert not out.exists()  # nothing partial


def test_out_must_be_a_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys, "sweep", "--model", "digits-mlp", "--dataset", "digits", "--out", str(tmp_path)
    )
    assert code == 2 and "directory" in err


def test_real_process_exit_status(tmp_path: Path) -> None:
    env = {**os.environ, "PRUNING_LAB_HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "pruning_core", "sensitivity", "--model", "digits-cnn",
         "--dataset", "digits", "--ratios", "0.5,2", "--out", str(tmp_path / "s.csv"), "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr


def test_sweep_refuses_ratios_a_fixed_ratio_granularity_would_not_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2:4 removes 2 of every 4 weights: asked for 0.3, rows at 0.5 would answer another question.
    out = tmp_path / "nm.csv"
    base = ["sweep", "--model", "digits-mlp", "--dataset", "digits", "--granularity", "2:4",
            "--methods", "magnitude", "--out", str(out), "--json"]  # fmt: skip
    code, stdout, err = _run(capsys, *base, "--ratios", "0.3,0.5")
    assert (code, stdout) == (2, "") and not out.exists()
    assert err == (
        "error: --ratios 0.3: 2:4 granularity fixes the ratio at 0.5 (2 of every 4 weights "
        "removed); leave --ratios out or give 0.5\n"
    )
    # Its own ratio, or none (the default grid is not something the user asked for), runs.
    for extra in (["--ratios", "0.5"], []):
        code, stdout, err = _run(capsys, *base, *extra)
        assert code == 0, err
        assert [r["ratio"] for r in json.loads(stdout)["rows"]] == [0.5]


def test_two_names_of_one_option_are_refused_not_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.csv"
    code, stdout, err = _run(
        capsys, "sweep", "--model", "digits-mlp", "--dataset", "digits", "--criteria",
        "magnitude", "--methods", "random", "--ratios", "0.5", "--out", str(out),
    )  # fmt: skip
    assert (code, stdout) == (2, "") and not out.exists()
    assert err == (
        "error: pruning-lab sweep: --criteria and --methods are two names of one option: give "
        "only one\n"
    )
    # One name given twice is argparse's usual last-wins; either name alone still works.
    args = build_parser().parse_args(
        ["sweep", "--model", "m", "--dataset", "d", "--out", "o.csv", "--criteria", "random"]
    )
    assert args.methods == "random" and not hasattr(args, "_spellings_given")
