"""The command line: models, datasets, evaluate, train; bad input exits 2 with one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from pruning_core.models import create_model


def test_models_and_datasets_json(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {"digits-cnn", "lenet5", "resnet20", "shapes-vit"} <= names
    code, out, _ = cli("datasets", "--json")
    assert code == 0 and {"digits", "shapes", "mnist"} <= {d["name"] for d in json.loads(out)}


def test_evaluate_json(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("evaluate", "--model", "digits-mlp", "--dataset", "digits", "--json")
    assert code == 0
    d = json.loads(out)
    assert {"accuracy", "top5", "loss", "n"} <= d.keys()
    assert d["n"] == 359 and 0.9 < d["accuracy"] <= d["top5"] <= 1.0


def test_train_writes_a_model_dir_that_evaluates(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "mlp"
    code, out, _ = cli(
        "train",
        "--model",
        "lenet-300-100",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--quiet",
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0, out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == json.loads(out)["accuracy"] > 0.8
    code, out, _ = cli("evaluate", "--model", str(out_dir), "--dataset", "digits", "--json")
    assert code == 0 and abs(json.loads(out)["accuracy"] - metrics["accuracy"]) < 1e-9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def _assert_refused(result: tuple[int, str, str], pattern: str) -> None:
    code, out, err = result
    assert code == 2, (code, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(
        cli("evaluate", "--model", "nope", "--dataset", "digits"), "unknown model 'nope'"
    )
    _assert_refused(
        cli("evaluate", "--model", "digits-cnn", "--dataset", "nope"), "unknown dataset 'nope'"
    )
    _assert_refused(cli("evaluate", "--model", "digits-cnn"), "--dataset")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    _assert_refused(
        cli(
            "evaluate",
            "--model",
            str(tmp_path / "junk.pt"),
            "--arch",
            "digits-cnn",
            "--dataset",
            "digits",
        ),
        "corrupt",
    )
    torch.save(create_model("digits-mlp", pretrained=False).state_dict(), tmp_path / "mlp.pt")
    _assert_refused(
        cli(
            "evaluate",
            "--model",
            str(tmp_path / "mlp.pt"),
            "--arch",
            "digits-cnn",
            "--dataset",
            "digits",
        ),
        "does not fit architecture 'digits-cnn'",
    )
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("a/1.png", b"x")
        z.writestr("../../escape.txt", b"x")
    _assert_refused(
        cli("evaluate", "--model", "digits-cnn", "--dataset", str(tmp_path / "evil.zip")), "escape"
    )
    _assert_refused(
        cli("evaluate", "--model", "torchvision:resnet18", "--dataset", "digits"), "10 classes"
    )
    _assert_refused(
        cli(
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "digits",
            "--lr",
            "-1",
            "--out",
            str(tmp_path / "x"),
        ),
        "learning rate",
    )
    assert not (tmp_path / "x").exists()


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {_MARK}",))


_MARK = ""


def test_malicious_pickle_via_subprocess(tmp_path: Path) -> None:
    """The real console path: `python -m pruning_core` refuses and never runs the payload."""
    global _MARK
    _MARK = str(tmp_path / "pwned")
    with (tmp_path / "evil.pt").open("wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pruning_core",
            "evaluate",
            "--model",
            str(tmp_path / "evil.pt"),
            "--arch",
            "digits-cnn",
            "--dataset",
            "digits",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "refusing to unpickle" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_models_filter_matches_names_with_or_without_prefix(cli) -> None:  # type: ignore[no-untyped-def]
    for pattern in ("mobilenetv3_small*", "timm:mobilenetv3_small*", "*small_050"):
        code, out, _ = cli("models", "--filter", pattern, "--json")
        names = {m["name"] for m in json.loads(out)}
        assert code == 0 and "timm:mobilenetv3_small_050" in names, pattern
        assert all("mobilenetv3_small" in n or n.endswith("small_050") for n in names)


def test_an_empty_model_name_is_named_not_searched_as_a_folder(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("", "  "):
        code, _, err = cli(
            "train", "--model", name, "--dataset", "digits", "--out", str(tmp_path / "o")
        )
        assert code == 2 and "model name is empty" in err
    assert not (tmp_path / "o").exists()


def test_app_takes_host_and_port_in_both_spellings() -> None:
    from pruning_core.cli import build_parser, main
    from pruning_core.cli.basic import app_command

    def cmd(*argv: str) -> list[str]:
        return app_command(build_parser().parse_args(["app", *argv]))

    def value(c: list[str], flag: str) -> str | None:
        return c[c.index(flag) + 1] if flag in c else None

    assert value(cmd(), "--server.port") == "8501" and "--server.address" not in cmd()
    for argv in (["--server.port", "8502"], ["--port", "8502"]):
        assert value(cmd(*argv), "--server.port") == "8502"
    for argv in (["--server.address", "127.0.0.1"], ["--host", "127.0.0.1"]):
        assert value(cmd(*argv), "--server.address") == "127.0.0.1"
    assert value(cmd("--server.headless", "true"), "--server.headless") == "true"
    assert value(cmd("--server.headless", "false"), "--server.headless") == "false"
    assert main(["app", "--server.port", "0"]) == 2
    # Both names of one option: refused, not the last one taken silently.
    assert main(["app", "--port", "8502", "--server.port", "8503"]) == 2
    assert main(["app", "--host", "127.0.0.1", "--server.address", "0.0.0.0"]) == 2
    assert main(["app", "--host", "http://x y"]) == 2


def test_app_command_serves_the_app_with_warm_imports(tmp_path: Path) -> None:
    """`pruning-lab app`'s command line starts a server that answers on the port given, and its
    warm-up thread imports torch's operator registry (what the first page used to wait for)."""
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    from pruning_core.cli import build_parser
    from pruning_core.cli.basic import app_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = app_command(
        build_parser().parse_args(["app", "--port", str(port), "--host", "127.0.0.1"])
    )
    env = {**os.environ, "PRUNING_LAB_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, ok = time.time() + 120, False
        while time.time() < deadline and not ok and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    ok = r.status == 200
            except OSError:
                time.sleep(0.3)
        assert ok, "the server never answered"
        from ui.serve import warm_up

        warm_up()  # the same function the server ran: it must work in any process
    finally:
        proc.terminate()
        proc.wait(30)


def test_evaluate_measures_an_int8_folders_sparsity_on_its_graph(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The int8 graph's own weights, measured: the float model's zeros and removed channels stay
    # (int8 rounding may add a few zeros, never remove one), against the dense architecture.
    ch, q = tmp_path / "ch", tmp_path / "chq"
    code, _, err = cli("prune", "--model", "digits-cnn", "--method", "magnitude", "--granularity",
                       "channel", "--ratio", "0.5", "--out", str(ch), "--quiet")  # fmt: skip
    assert code == 0, err
    code, _, err = cli("quantize", str(ch), "--mode", "static", "--val-limit", "32", "--out",
                       str(q), "--json")  # fmt: skip
    assert code == 0, err
    docs = []
    for model in (ch, q):
        code, out, err = cli("evaluate", "--model", str(model), "--dataset", "digits", "--limit",
                             "16", "--json")  # fmt: skip
        assert code == 0, err
        docs.append(json.loads(out))
    fp, int8 = docs
    # Its zip (the Export page's int8 download) evaluates as its folder, nothing left behind.
    import shutil
    import tempfile

    zipped = shutil.make_archive(str(tmp_path / "chq"), "zip", tmp_path, "chq")
    scratch = tmp_path / "systmp"
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(scratch))
        code, out, err = cli("evaluate", "--model", zipped, "--dataset", "digits", "--limit",
                             "16", "--json")  # fmt: skip
    assert code == 0, err
    assert {k: v for k, v in json.loads(out).items() if k != "model"} == {
        k: v for k, v in int8.items() if k != "model"
    }
    assert list(scratch.iterdir()) == []
    assert fp["sparsity"] > 0.5
    assert fp["sparsity"] <= int8["sparsity"] <= fp["sparsity"] + 0.03
    assert int8["sparsity_from"] == (
        "int8 weights that dequantize to exactly 0 and removed weights, of the dense "
        "digits-cnn's 151,072 Linear/Conv weights"
    )
    # A dense model's int8 graph: only what int8 rounds to zero (dynamic: integer weights).
    code, _, err = cli("quantize", "digits-mlp", "--mode", "dynamic", "--val-limit", "32",
                       "--out", str(tmp_path / "mq"), "--json")  # fmt: skip
    assert code == 0, err
    code, out, err = cli("evaluate", "--model", str(tmp_path / "mq"), "--dataset", "digits",
                         "--limit", "16", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert 0 <= doc["sparsity"] < 0.03
    assert doc["sparsity_from"].endswith("of the dense digits-mlp's 17,024 Linear/Conv weights")
