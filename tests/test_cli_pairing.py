"""The CLI says when a model is measured on a dataset it was not trained for (the app's words,
`pruning_core.pairing`), and reopens an int8 folder for `evaluate` through ONNX Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pruning_core.pairing import dataset_mismatch, home_dataset

Cli = Callable[..., tuple[int, str, str]]


def test_mismatch_only_between_two_registry_datasets() -> None:
    assert dataset_mismatch("digits-mlp", "digits") is None
    said = dataset_mismatch("shapes-resnet", "digits")
    assert said is not None and said.startswith("shapes-resnet was trained on shapes, not on")
    # A path may hold the very data of the registry name: never flagged.
    assert dataset_mismatch("lenet5", "idx:../shared/data/mnist") is None
    assert dataset_mismatch("no-such-model", "digits") is None


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pruning_core.cli import main

    out = tmp_path_factory.mktemp("q") / "mlp8"
    assert main(["quantize", "digits-mlp", "--mode", "dynamic", "--out", str(out),
                 "--val-limit", "64", "--json"]) == 0  # fmt: skip
    return out


def test_evaluate_warns_on_another_dataset(cli: Cli, int8_dir: Path) -> None:
    code, out, err = cli("evaluate", "--model", "digits-mlp", "--dataset", "shapes",
                         "--limit", "32", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["n"] == 32
    assert err.strip() == f"warning: {dataset_mismatch('digits-mlp', 'shapes')}"
    code, out, err = cli("evaluate", "--model", "digits-mlp", "--dataset", "digits",
                         "--limit", "32", "--json")  # fmt: skip
    assert code == 0 and err == ""
    # An int8 folder names its home in quantized.json, and is flagged alike.
    assert home_dataset(str(int8_dir)) == "digits"
    code, _, err = cli("evaluate", "--model", str(int8_dir), "--dataset", "shapes", "--limit",
                       "16")  # fmt: skip
    assert code == 0 and "mlp8 was trained on digits, not on shapes" in err


def test_evaluate_reopens_an_int8_folder_through_onnx_runtime(cli: Cli, int8_dir: Path) -> None:
    code, out, err = cli("evaluate", "--model", str(int8_dir), "--dataset", "digits",
                         "--limit", "64", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["runtime"] == "ONNX Runtime (int8 dynamic, CPU)" and doc["n"] == 64
    # The same number `quantize` measured on the same images, through the same runtime.
    measured = json.loads((int8_dir / "quantized.json").read_text())["measured"]
    assert doc["accuracy"] == pytest.approx(measured["int8_accuracy"], abs=1e-9)


def test_an_int8_folder_records_the_models_own_dataset_and_full_source(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Calibrated on another dataset (warned): the folder's home is still the model's own, so
    # later commands warn on the right dataset; a folder source is recorded by its full path.
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("prune", "--model", "digits-mlp", "--dataset", "digits", "--granularity",
                       "lowrank", "--ratio", "0.3", "--out", "lr", "--quiet")  # fmt: skip
    assert code == 0, err
    code, _, err = cli("quantize", "lr", "--mode", "dynamic", "--dataset", "shapes",
                       "--val-limit", "16", "--out", "q", "--json")  # fmt: skip
    assert code == 0 and "lr was trained on digits, not on shapes" in err
    meta = json.loads((tmp_path / "q" / "quantized.json").read_text())
    assert meta["dataset"] == "digits" and meta["calibration_dataset"] == "shapes"
    assert meta["source"] == str((tmp_path / "lr").resolve())
    assert home_dataset(str(tmp_path / "q")) == "digits"
    # Read from elsewhere, the dense reference is still the model it came from.
    monkeypatch.chdir(tmp_path.parent)
    code, out, err = cli("bench", "--model", str(tmp_path / "q"), "--backends",
                         "dense,onnxruntime", "--repeats", "3", "--warmup", "1", "--json")  # fmt: skip
    assert code == 0, err
    assert "quantized from" in json.loads(out)["dense_reference"]


def test_an_int8_folder_is_named_as_such_where_a_float_model_is_needed(
    cli: Cli, int8_dir: Path, tmp_path: Path
) -> None:
    for args in (
        ["prune", "--model", str(int8_dir), "--dataset", "digits", "--granularity", "lowrank",
         "--ratio", "0.5", "--out", str(tmp_path / "p")],
        ["export", "--pruned", str(int8_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        ["bench", "--model", str(int8_dir), "--pruned", str(int8_dir)],
    ):  # fmt: skip
        code, out, err = cli(*args)
        assert code == 2 and out == "" and err.count("\n") == 1, (args, err)
        assert "is an int8 model (from pruning-lab quantize)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bench_refuses_an_int8_folder_that_names_no_architecture(
    cli: Cli, int8_dir: Path, tmp_path: Path
) -> None:
    import shutil

    q = tmp_path / "q"
    shutil.copytree(int8_dir, q)
    meta = json.loads((q / "quantized.json").read_text())
    meta.pop("arch")
    (q / "quantized.json").write_text(json.dumps(meta))
    code, _, err = cli("bench", "--model", "digits-mlp", "--pruned", str(q))
    assert code == 2 and "names no architecture" in err and err.count("\n") == 1


def test_a_folder_pruned_on_another_dataset_is_flagged_by_what_its_weights_know(
    cli: Cli, tmp_path: Path
) -> None:
    # digits-mlp pruned on shapes records shapes; its weights still know digits only, so
    # taking the folder's own dataset (prune without --dataset) warns as --dataset shapes does.
    first = tmp_path / "p"
    base = ["prune", "--method", "magnitude", "--granularity", "unstructured", "--ratio", "0.5"]
    code, _, err = cli(*base, "--model", "digits-mlp", "--dataset", "shapes", "--out", str(first))
    assert code == 0 and "digits-mlp was trained on digits, not on shapes" in err
    said = (
        "warning: p was trained on digits, not on shapes (it was pruned on shapes, which its "
        "folder records): its accuracy here says little about pruning (pick digits, or "
        "fine-tune it on shapes first).\n"
    )
    code, _, err = cli(*base, "--model", str(first), "--out", str(tmp_path / "again"))
    assert code == 0 and err == said
    code, _, err = cli("evaluate", "--model", str(first), "--dataset", "shapes", "--limit", "16")
    assert code == 0 and err == said
    # On the data its weights were trained on: nothing to say.
    code, _, err = cli("evaluate", "--model", str(first), "--dataset", "digits", "--limit", "16")
    assert code == 0 and err == ""
    # Pruned again from there, the lineage holds: its source's source trained on digits.
    assert dataset_mismatch(str(tmp_path / "again"), "shapes") == said[
        len("warning: ") : -1
    ].replace("p was", "again was")
    # Quantized from there (on the folder's own dataset, no --dataset): said too, and the int8
    # folder is flagged by its float source's weights.
    code, _, err = cli("quantize", str(first), "--mode", "dynamic", "--val-limit", "16", "--out",
                       str(tmp_path / "q"), "--json")  # fmt: skip
    assert code == 0 and said in err
    assert dataset_mismatch(str(tmp_path / "q"), "shapes") == said[len("warning: ") : -1].replace(
        "p was", "q was"
    )
    # A folder trained on its dataset (`train` writes no recipe) is that dataset's model.
    trained = tmp_path / "t"
    trained.mkdir()
    (trained / "model.json").write_text(json.dumps({"arch": "digits-mlp", "dataset": "shapes"}))
    assert dataset_mismatch(str(trained), "shapes") is None
    assert dataset_mismatch(str(trained), "digits") is not None
    # The lineage is written into the pruned folder: its source moved away (or the folder
    # copied to another machine), it is still flagged. It was found on disk, then lost.
    first.rename(tmp_path / "moved")
    assert json.loads((tmp_path / "again" / "model.json").read_text())["trained_on"] == "digits"
    code, _, err = cli("evaluate", "--model", str(tmp_path / "again"), "--dataset", "shapes",
                       "--limit", "16")  # fmt: skip
    assert code == 0 and "again was trained on digits, not on shapes" in err
