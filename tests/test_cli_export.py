"""`pruning-lab export`: each format, and bad input exits 2 with one line and nothing written."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest
from pruned_folders import channel_pruned_digits_cnn

from pruning_core.checkpoint import save_model_dir
from pruning_core.fsio import write_json
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prune_


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A channel-pruned digits-cnn directory as `pruning-lab prune` writes it (no training)."""
    return channel_pruned_digits_cnn(
        tmp_path_factory.mktemp("pruned") / "p",
        metrics=lambda res: {
            "method": "magnitude", "granularity": "channel", "sparsity": res.sparsity,
            "dense_accuracy": 0.98, "pruned_accuracy": 0.5, "finetuned_accuracy": None,
            "layer_sparsity": res.layer_sparsity,
        },
    )  # fmt: skip


def test_onnx(cli, pruned_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.onnx"
    code, stdout, err = cli("export", "--pruned", str(pruned_dir), "--format", "onnx",
                            "--out", str(out), "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["max_abs_diff"] <= 1e-4 and doc["input"] == "validation images"
    assert out.stat().st_size == doc["bytes"]


def test_checkpoint_zip_and_dir(cli, pruned_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    z = tmp_path / "ck.zip"
    code, _, err = cli("export", "--pruned", str(pruned_dir), "--format", "checkpoint",
                       "--out", str(z))  # fmt: skip
    assert code == 0, err
    with zipfile.ZipFile(z) as zf:
        assert "ck/model.safetensors" in zf.namelist() and "ck/metrics.json" in zf.namelist()
        zf.extractall(tmp_path / "x")
    d = tmp_path / "dir"
    code, _, err = cli("export", "--pruned", str(pruned_dir), "--format", "checkpoint",
                       "--out", str(d))  # fmt: skip
    assert code == 0, err
    a = load_model(str(pruned_dir)).model.state_dict()
    for where in (tmp_path / "x" / "ck", d):
        b = load_model(str(where)).model.state_dict()
        assert all((a[k] == b[k]).all() for k in a)


def test_report(cli, pruned_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.html"
    code, stdout, err = cli("export", "--pruned", str(pruned_dir), "--format", "report",
                            "--out", str(out), "--batch-size", "4", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["self_contained"] is True
    page = out.read_text()
    assert '<script src="http' not in page
    assert page.count('class="plotly-graph-div"') >= 2  # accuracy vs sparsity, latency
    assert "Latency" in page and "Model card" in page


def test_report_has_per_class_and_companions_against_the_dense_original(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path
) -> None:
    # As the app's report: which classes pay (against the trained original, on its dataset)
    # and, when asked, the companions of the original measured in both runtimes.
    base = load_model("digits-mlp")
    m = copy.deepcopy(base.model)
    prune_(m, PruneConfig(method="magnitude", granularity="unstructured", ratio=0.9),
           spec=base.spec)  # fmt: skip
    d = tmp_path / "p"
    meta = {"arch": "digits-mlp", "arch_kwargs": base.arch_kwargs,
            "spec": base.spec.to_dict(), "dataset": "digits"}  # fmt: skip
    save_model_dir(d, m, meta)
    write_json(d / "metrics.json", {"model": "digits-mlp", "dataset": "digits"})
    out = tmp_path / "r.html"
    code, stdout, err = cli("export", "--pruned", str(d), "--format", "report", "--out",
                            str(out), "--batch-size", "4", "--companions", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["sections"] == {"per_class": True, "companions": True}
    page = out.read_text()
    assert "Which classes pay for pruning" in page
    assert "Companion trade-offs" in page and "low rank" in page and "ONNX Runtime" in page
    assert "companions" in err  # progress on stderr

    # An original that cannot be loaded: no per-class section, and the report says why.
    write_json(d / "metrics.json", {"model": "no-such-model", "dataset": "digits"})
    out2 = tmp_path / "r2.html"
    code, stdout, err = cli("export", "--pruned", str(d), "--format", "report", "--out",
                            str(out2), "--batch-size", "4", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["sections"]["per_class"] is False
    assert "not loadable" in doc["notes"][0]
    assert "not loadable" in out2.read_text()
    assert "Which classes pay" not in out2.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pruned", "/nonexistent/dir", "--format", "onnx", "--out", "X.onnx"], "no such"),
        (["--pruned", "{tmp}", "--format", "onnx", "--out", "{tmp}/m.onnx"], "not a model dir"),
        (["--pruned", "{dir}", "--format", "onnx", "--out", "{tmp}/m.txt"], "must end in .onnx"),
        (["--pruned", "{dir}", "--format", "report", "--out", "{tmp}"], "directory"),
        (["--pruned", "{dir}", "--format", "zip", "--out", "{tmp}/a.zip"], "invalid choice"),
        (["--pruned", "{dir}", "--format", "report", "--out", "{tmp}/r.html", "--sweep",
          "{tmp}/none.csv"], "no such file"),
    ],
)  # fmt: skip
def test_bad_input_exits_2(
    cli, pruned_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    args = [a.format(tmp=tmp_path, dir=pruned_dir) for a in args]
    before = sorted(tmp_path.iterdir())
    code, _out, err = cli("export", *args)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_corrupt_weights_exit_2(cli, pruned_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pruned_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = cli("export", "--pruned", str(bad), "--format", "onnx", "--out",
                       str(tmp_path / "m.onnx"))  # fmt: skip
    assert code == 2 and "corrupt" in err
    assert not (tmp_path / "m.onnx").exists()


def test_report_names_low_rank_series_as_prune_does(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    d = tmp_path / "lr"
    code, _, err = cli("prune", "--model", "digits-mlp", "--granularity", "lowrank", "--ratio",
                       "0.5", "--out", str(d), "--quiet")  # fmt: skip
    assert code == 0, err
    # A sweep CSV written before sweeps named low rank "lowrank" is named as now, too.
    old = tmp_path / "old.csv"
    pd.DataFrame({"method": ["magnitude"], "granularity": ["lowrank"], "ratio": [0.5],
                  "sparsity": [0.4], "accuracy": [0.9], "finetuned_accuracy": [float("nan")],
                  "dense_accuracy": [0.95]}).to_csv(old, index=False)  # fmt: skip
    for extra in ([], ["--sweep", str(old)]):
        out = tmp_path / f"r{len(extra)}.html"
        code, _, err = cli("export", "--pruned", str(d), "--format", "report", "--out",
                           str(out), "--batch-size", "4", *extra)  # fmt: skip
        assert code == 0, err
        page = out.read_text()
        assert '"name":"lowrank"' in page and '"name":"magnitude"' not in page, extra
