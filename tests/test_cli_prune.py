"""`pruning-lab prune`: metrics, reloadable output, recipes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sparsity_helpers import pruned_share

from pruning_core.models import load_model

torch.set_num_threads(1)

METRIC_KEYS = {
    "model", "dataset", "method", "granularity", "target_ratio", "sparsity", "params_before",
    "params_after", "macs_before", "macs_after", "dense_accuracy", "pruned_accuracy",
    "finetuned_accuracy", "size_bytes_before", "size_bytes_after", "seconds", "recipe",
}  # fmt: skip
BASE = ["prune", "--model", "digits-mlp", "--dataset", "digits", "--quiet", "--json"]


def test_prune_writes_metrics_reloads_and_repeats_from_its_recipe(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    code, stdout, err = cli(*BASE, "--method", "magnitude", "--granularity", "unstructured",
                            "--ratio", "0.8", "--finetune-epochs", "1", "--out", str(out))  # fmt: skip
    assert code == 0, err
    printed = json.loads(stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    want = 0.8 * pruned_share(load_model("digits-mlp").model)  # the classifier stays dense
    assert printed["sparsity"] == metrics["sparsity"] == pytest.approx(want, abs=2e-3)
    assert metrics["params_after"] < 0.3 * metrics["params_before"]
    assert metrics["finetuned_accuracy"] is not None and metrics["dense_accuracy"] > 0.9
    assert (out / "recipe.json").exists()
    meta = json.loads((out / "model.json").read_text())
    assert {"arch", "arch_kwargs", "spec"} <= set(meta)

    code, stdout, _ = cli("evaluate", "--model", str(out), "--dataset", "digits", "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(
        metrics["finetuned_accuracy"]
    )

    again = tmp_path / "again"
    code, stdout, err = cli(
        "prune", "--recipe", str(out / "recipe.json"), "--out", str(again), "--quiet", "--json"
    )
    assert code == 0, err
    repeat = json.loads(stdout)
    assert repeat["sparsity"] == metrics["sparsity"]
    assert repeat["finetuned_accuracy"] == metrics["finetuned_accuracy"]
    a, b = load_model(str(out)).model.state_dict(), load_model(str(again)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pruned_dir_prunes_again_with_nm_and_a_ratios_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = tmp_path / "first"
    ratios = tmp_path / "ratios.yaml"
    ratios.write_text("fc1: 0.9\n")
    code, _, err = cli(*BASE, "--method", "magnitude", "--granularity", "unstructured", "--ratio", "0.3",
                       "--ratios-file", str(ratios), "--out", str(first))  # fmt: skip
    assert code == 0, err
    m = json.loads((first / "metrics.json").read_text())
    assert m["layer_sparsity"]["fc1"] == pytest.approx(0.9, abs=1e-3)
    assert m["finetuned_accuracy"] is None
    second = tmp_path / "second"
    code, stdout, err = cli("prune", "--model", str(first), "--dataset", "digits", "--method", "magnitude",
                            "--granularity", "2:4", "--out", str(second), "--quiet", "--json")  # fmt: skip
    assert code == 0, err
    model = load_model(str(second)).model
    for name in ("fc1", "fc2"):
        w = dict(model.named_modules())[name].weight.detach()
        assert ((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all()
    assert json.loads(stdout)["target_ratio"] == 0.5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "magnitude", "--granularity", "unstructured", "--ratio", "1.0"], "ratio"),
        (["--method", "magnitude", "--granularity", "unstructured", "--ratio", "-0.5"], "ratio"),
        (["--method", "magnitude", "--granularity", "unstructured", "--ratio", "nan"], "ratio"),
        (
            ["--method", "nope", "--granularity", "unstructured", "--ratio", "0.5"],
            "unknown criterion",
        ),
        (["--method", "magnitude", "--granularity", "head", "--ratio", "0.5"], "attention"),
        (
            ["--method", "bn-scale", "--granularity", "unstructured", "--ratio", "0.5"],
            "does not support",
        ),
        (["--method", "magnitude", "--granularity", "unstructured"], "--ratio"),
        (
            ["--method", "magnitude", "--granularity", "2:4", "--ratio", "0.3"],
            "--ratio 0.3: 2:4 granularity fixes the ratio at 0.5",
        ),
        (
            [
                "--method",
                "magnitude",
                "--criterion",
                "random",
                "--granularity",
                "unstructured",
                "--ratio",
                "0.5",
            ],
            "--method and --criterion are two names of one option: give only one",
        ),
        (["--granularity", "unstructured", "--ratio", "0.5"], "--criterion"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(cli, tmp_path: Path, args: list[str], match: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bad"
    code, stdout, err = cli(*BASE, *args, "--out", str(out))
    assert code == 2
    assert stdout == "" and len(err.strip().splitlines()) == 1 and match in err
    assert "Traceback" not in err and not out.exists()


def test_bad_recipe_and_ratios_file_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    code, _, err = cli("prune", "--recipe", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "recipe" in err
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"conv9": 0.5}))
    code, _, err = cli(*BASE, "--method", "magnitude", "--granularity", "unstructured", "--ratio", "0.5",
                       "--ratios-file", str(ratios), "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 2 and "conv9" in err


def test_subprocess_ratio_one_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pruning_core", "prune", "--model", "digits-cnn", "--dataset", "digits",
         "--method", "magnitude", "--granularity", "unstructured", "--ratio", "1.0", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_low_rank_needs_no_criterion_and_a_named_model_no_dataset(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Low rank takes one criterion (a component's magnitude is its singular value): --criterion
    # may be left out, and the line names the granularity alone; the model names its dataset.
    code, out, err = cli("prune", "--model", "digits-mlp", "--granularity", "lowrank",
                         "--ratio", "0.5", "--out", str(tmp_path / "lr"))  # fmt: skip
    assert code == 0, err
    assert "digits-mlp on digits: lowrank, ratio 0.5" in out
    metrics = json.loads((tmp_path / "lr" / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["method"], metrics["dataset"]) == ("magnitude", "digits")
    # A granularity that takes many criteria still needs one, in one line.
    code, out, err = cli("prune", "--model", "digits-mlp", "--granularity", "channel",
                         "--ratio", "0.5", "--out", str(tmp_path / "ch"))  # fmt: skip
    assert code == 2 and err.strip() == "error: --criterion is required (or --recipe FILE)"
    assert not (tmp_path / "ch").exists()
    # A pruned folder names the dataset it was pruned on: pruning it again needs no --dataset.
    code, out, err = cli("prune", "--model", str(tmp_path / "lr"), "--criterion", "magnitude",
                         "--granularity", "unstructured", "--ratio", "0.3",
                         "--out", str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    assert "on digits: magnitude unstructured, ratio 0.3" in out
    # A checkpoint file names no dataset: the flag is still asked for, in one line.
    ckpt = tmp_path / "m.pt"
    torch.save(load_model("digits-mlp").model.state_dict(), ckpt)
    code, out, err = cli("prune", "--model", str(ckpt), "--arch", "digits-mlp", "--criterion",
                         "magnitude", "--granularity", "unstructured", "--ratio", "0.3",
                         "--out", str(tmp_path / "c"))  # fmt: skip
    assert code == 2
    assert (
        err.strip() == f"error: --dataset is required (or --recipe FILE): {ckpt} names no dataset"
    )


def test_a_pruned_folder_pruned_again_calls_its_accuracy_the_inputs(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["--dataset", "digits", "--method", "magnitude", "--granularity", "unstructured",
            "--quiet"]  # fmt: skip
    code, first, err = cli("prune", "--model", "digits-mlp", *args, "--ratio", "0.5",
                           "--out", str(tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    code, second, err = cli("prune", "--model", str(tmp_path / "a"), *args, "--ratio", "0.7",
                            "--out", str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    assert "accuracy: dense " in first and "of all Linear/Conv weights" in first
    assert "accuracy: input " in second and "dense" not in second.split("accuracy:")[1][:20]
    # `evaluate` says the sparsity of what it evaluates: the same count as `prune`'s.
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text(encoding="utf-8"))
    code, out, err = cli("evaluate", "--model", str(tmp_path / "b"), "--dataset", "digits",
                         "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["sparsity"] == pytest.approx(metrics["sparsity"], abs=1e-6)


def test_evaluate_counts_removed_weights_against_the_dense_architecture(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Channels removed, then zeros on what is left: the second folder has lost more, and says so.
    common = ["--criterion", "magnitude", "--ratio", "0.5", "--quiet"]
    assert cli("prune", "--model", "digits-cnn", "--granularity", "channel", *common,
               "--out", str(tmp_path / "c1"))[0] == 0  # fmt: skip
    assert cli("prune", "--model", str(tmp_path / "c1"), "--granularity", "unstructured",
               *common, "--out", str(tmp_path / "c2"))[0] == 0  # fmt: skip
    dense = sum(w.numel() for n, w in load_model("digits-cnn").model.named_parameters()
                if n.endswith("weight") and w.dim() > 1)  # fmt: skip
    seen = []
    for name in ("c1", "c2"):
        code, out, err = cli("evaluate", "--model", str(tmp_path / name), "--dataset", "digits",
                             "--json")  # fmt: skip
        assert code == 0, err
        model = load_model(str(tmp_path / name)).model
        kept = sum(int(torch.count_nonzero(w)) for n, w in model.named_parameters()
                   if n.endswith("weight") and w.dim() > 1)  # fmt: skip
        seen.append(json.loads(out)["sparsity"])
        assert seen[-1] == pytest.approx(1 - kept / dense, abs=1e-6)
    assert seen[1] > seen[0]


def test_without_dataset_a_broken_model_says_what_is_wrong(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # "--dataset is required" would only hide the real problem: the model's own error comes.
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"")
    (torn / "model.json").write_text('{"arch": "digits-mlp", ', encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--criterion", "magnitude", "--granularity", "unstructured", "--ratio", "0.5"]
    for model, words in ((torn, "corrupt model.json"), (empty, "is not a model directory"),
                         (tmp_path / "nope", "unknown model")):  # fmt: skip
        code, _, err = cli("prune", "--model", str(model), *args, "--out", str(tmp_path / "o"))
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("channel", "unstructured"),
        ("channel", "channel"),
        ("unstructured", "lowrank"),
        ("channel", "lowrank"),
    ],
)
def test_prune_and_evaluate_agree_on_a_folder_pruned_twice(
    first: str, second: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # prune's own line, metrics.json and model.json say what evaluate says: zeros and removed
    # weights against the dense architecture, not against the shrunk folder it started from.
    def prune(src: str, granularity: str, out: Path) -> dict[str, object]:
        crit = [] if granularity == "lowrank" else ["--criterion", "magnitude"]
        code, text, err = cli("prune", "--model", src, "--granularity", granularity, *crit,
                              "--ratio", "0.4", "--json", "--out", str(out))  # fmt: skip
        assert code == 0, err
        return json.loads(text)

    prune("digits-cnn", first, tmp_path / "a")
    metrics = prune(str(tmp_path / "a"), second, tmp_path / "b")
    code, out, err = cli("evaluate", "--model", str(tmp_path / "b"), "--dataset", "digits",
                         "--json")  # fmt: skip
    assert code == 0, err
    measured = json.loads(out)["sparsity"]
    assert metrics["sparsity"] == pytest.approx(measured, abs=1e-5)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["pruned"]["sparsity"] == pytest.approx(measured, abs=1e-5)
    assert metrics["curve"][-1]["sparsity"] == pytest.approx(measured, abs=1e-5)


def test_schedules_say_their_cycle_and_what_keep_best_does(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    quick = ["prune", "--model", "digits-mlp", "--method", "magnitude", "--granularity",
             "unstructured", "--ratio", "0.5", "--finetune-epochs", "1", "--batch-size", "256",
             "--min-steps-per-epoch", "0"]  # fmt: skip
    # A linear schedule's epochs are each cycle's own: the progress says which cycle it is in.
    code, _, err = cli(*quick, "--schedule", "linear", "--steps", "2", "--out", str(tmp_path / "l"))
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("fine-tune")]
    assert [ln.split(" epoch ")[0] for ln in lines] == [
        "fine-tune cycle 1/2 (ratio 0.25)", "fine-tune cycle 2/2 (ratio 0.5)",
    ]  # fmt: skip
    # The dynamic schedule hands back its last epoch: with keep-best on (the default) it says so.
    from pruning_core.schedules import DYNAMIC_KEEP_BEST_NOTE

    for keep, said in (([], True), (["--no-keep-best"], False)):
        out = tmp_path / f"d{len(keep)}"
        code, stdout, err = cli(*quick, "--schedule", "dynamic", "--steps", "2", *keep,
                                "--out", str(out))  # fmt: skip
        assert code == 0, err
        assert (DYNAMIC_KEEP_BEST_NOTE in stdout) is said
        notes = json.loads((out / "metrics.json").read_text())["notes"]
        assert (DYNAMIC_KEEP_BEST_NOTE in notes) is said


def test_nm_refuses_per_layer_and_recipe_ratios_it_would_not_use(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 2:4 removes 2 of every 4 weights whatever is asked: a per-layer 0.3 (a ratios file or a
    # recipe) ran at 0.5 while the recipe recorded 0.3.
    ratios = tmp_path / "ratios.json"
    ratios.write_text('{"fc1": 0.3}')
    base = [*BASE, "--model", "digits-cnn", "--criterion", "magnitude", "--granularity", "2:4"]
    code, _, err = cli(*base, "--ratios-file", str(ratios), "--out", str(tmp_path / "a"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--ratios-file fc1 0.3: 2:4 granularity fixes the ratio at 0.5" in err
    assert not (tmp_path / "a").exists()
    recipe = tmp_path / "r.json"
    code, _, err = cli(*base, "--out", str(tmp_path / "b"))
    assert code == 0, err
    doc = json.loads((tmp_path / "b" / "recipe.json").read_text())
    doc["settings"]["ratio"] = 0.3
    recipe.write_text(json.dumps(doc))
    code, _, err = cli("prune", "--recipe", str(recipe), "--out", str(tmp_path / "c"), "--quiet")
    assert code == 2 and "r.json's ratio 0.3: 2:4 granularity fixes the ratio at 0.5" in err
    assert not (tmp_path / "c").exists()


def test_a_ratio_that_removes_no_block_says_so(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # shapes-resnet has 4 removable blocks: 0.2 rounds down to none. It ran, exit 0, with
    # "sparsity 0.00%" and no word about why.
    code, out, err = cli("prune", "--model", "shapes-resnet", "--criterion", "magnitude",
                         "--granularity", "block", "--ratio", "0.2", "--out", str(tmp_path / "b"),
                         "--quiet")  # fmt: skip
    assert code == 0, err
    assert "ratio 0.2 removes none of the 4 removable blocks" in out
    assert "0.25 removes the first" in out
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["sparsity"] == 0 and any("removes none" in n for n in metrics["notes"])
