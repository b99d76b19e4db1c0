"""More hostile inputs of each kind, from a tester who tried to break the first round
(docs/RELIABILITY.md): every one is refused up front in one line, or handled, never exit 1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning_core.errors import UserError
from pruning_core.fsio import clean_stale, is_tool_output, output_dir
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prune_

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
PRUNE = (
    "prune", "--model", "digits-mlp", "--dataset", "digits", "--method", "magnitude",
    "--granularity", "unstructured", "--ratio", "0.5", "--quiet",
)  # fmt: skip


def _one_line_refusal(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err[:500]
    assert "internal error" not in err and len(lines[0]) < 600, lines[0][:600]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# -- kind 1: output folders -----------------------------------------------------------------


def test_out_dot_is_the_folder_itself(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "e"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, _, err = cli(*PRUNE, "--out", ".")
    assert code == 0, err
    assert is_tool_output(empty) and (empty / "metrics.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


@pytest.mark.parametrize("length", [200, 255])
def test_long_names_are_written_or_refused_before_work(
    length: int, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / ("o" * length)
    code, _, err = cli(*PRUNE, "--out", str(out))
    assert code == 0, err  # a legal name is legal for the temporaries too
    assert is_tool_output(out)
    csv = tmp_path / ("s" * (length - 4) + ".csv")
    code, _, err = cli("sweep", "--model", "digits-mlp", "--dataset", "digits", "--ratios", "0.5",
                       "--methods", "magnitude", "--quiet", "--out", str(csv))  # fmt: skip
    assert code == 0, err

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr("pruning_core.cli.prune.resolve", boom)
    _one_line_refusal(cli(*PRUNE, "--out", str(tmp_path / ("o" * 300))), "longer than 255")


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_linked_marker_does_not_make_a_folder_replaceable(link: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli(*PRUNE, "--out", str(tmp_path / "prev"))[0] == 0
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "THESIS.txt").write_text("t")
    marker = tmp_path / "prev" / ".pruning-lab-output"
    if link == "symlink":
        (mine / marker.name).symlink_to(marker)
    else:
        os.link(marker, mine / marker.name)
    assert not is_tool_output(mine)
    _one_line_refusal(cli(*PRUNE, "--out", str(mine)), "not written by pruning-lab")
    assert (mine / "THESIS.txt").read_text() == "t" and (mine / "src").is_dir()


def test_leftovers_of_any_target_in_a_folder_are_cleaned(tmp_path: Path) -> None:
    dead = 2**22 + 777
    left = tmp_path / f".X.pl-tmp-{dead}-abc"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    with output_dir(tmp_path / "Y") as tmp:
        (tmp / "a").write_text("a")
    assert not left.exists() and (tmp_path / "Y" / "a").exists()


def test_long_name_fallback_restores_through_its_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruning_core import fsio

    monkeypatch.setattr(fsio, "_renameat2", lambda *a: False)
    name = "n" * 200
    with output_dir(tmp_path / name) as tmp:
        (tmp / "v").write_text("old")
    short = fsio._short(name)
    dead = 2**22 + 778
    aside = tmp_path / f".{short}.pl-old-{dead}-x"
    (tmp_path / (aside.name + ".name")).write_text(name)
    os.rename(tmp_path / name, aside)  # the kill between the two renames
    clean_stale(tmp_path)
    assert (tmp_path / name / "v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# -- kind 2: tensor contents ------------------------------------------------------------------


def test_meta_device_tensors_in_a_checkpoint_are_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sd = load_file(str(SAMPLES / "digits-cnn" / "model.safetensors"))
    sd["fc1.weight"] = sd["fc1.weight"].to("meta")
    torch.save(sd, tmp_path / "m.pt")
    _one_line_refusal(
        cli("evaluate", "--model", str(tmp_path / "m.pt"), "--arch", "digits-cnn", "--dataset",
            "digits"),
        "fc1.weight", "meta",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("granularity", "model", "tensor"),
    [
        ("2:4", "digits-cnn", "conv1.weight"),  # conv1 is skipped by 2:4: still refused
        ("4:8", "digits-cnn", "conv1.bias"),
        ("block", "shapes-resnet", "conv1.weight"),  # the stem is in no block: still refused
        ("unstructured", "shapes-resnet", "bn1.running_var"),
        ("channel", "shapes-resnet", "layer2.0.bn2.bias"),
    ],
)
def test_one_nan_policy_for_every_granularity(granularity: str, model: str, tensor: str) -> None:
    m = load_model(model).model
    t = dict([*m.named_parameters(), *m.named_buffers()])[tensor]
    with torch.no_grad():
        t.view(-1)[0] = float("inf")
    with pytest.raises(UserError, match="NaN/inf"):
        prune_(m, PruneConfig(granularity=granularity, ratio=0.5))


def test_histograms_of_extreme_finite_weights_stay_finite() -> None:
    from pruning_core.stats import weight_histograms

    m = load_model("digits-cnn").model
    with torch.no_grad():
        m.fc1.weight[0, :2] = torch.tensor([-3e38, 3e38])
    edges, counts = weight_histograms(m, bins=5)["fc1"]
    assert all(abs(e) < float("inf") for e in edges) and sum(counts) == m.fc1.weight.numel()


# -- kind 3: model folders ------------------------------------------------------------------


def _folder(tmp_path: Path, sample: str = "digits-cnn") -> Path:
    d = tmp_path / "m"
    shutil.copytree(SAMPLES / sample, d)
    return d


def _edit(d: Path, **changes: object) -> None:
    meta = json.loads((d / "model.json").read_text())
    meta.update(changes)
    (d / "model.json").write_text(json.dumps(meta))


SPEC = {"channels": 1, "size": 8, "mean": [0.3], "std": [0.4], "num_classes": 10}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('"arch_kwargs": {"num_classes": ' + "9" * 5000 + "}", "corrupt model.json"),
        ('"spec": ' + json.dumps({**SPEC, "mean": [10**400]}), "spec.mean[0] must be in"),
        ('"spec": ' + json.dumps({**SPEC, "std": [1e-320]}), "spec.std[0] must be in"),
    ],
)
def test_extreme_numbers_in_model_json(text: str, needle: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = _folder(tmp_path)
    (d / "model.json").write_text('{"arch": "digits-cnn", ' + text + "}")
    _one_line_refusal(cli("evaluate", "--model", str(d), "--dataset", "digits"), needle)


def test_over_budget_architectures_that_need_real_values_to_build(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    d.mkdir()
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    (d / "model.json").write_text(json.dumps(
        {"arch": "torchvision:regnet_y_128gf", "arch_kwargs": {"num_classes": 100000}}
    ))  # fmt: skip
    _one_line_refusal(cli("evaluate", "--model", str(d), "--dataset", "digits"), "over the limit")


def test_a_free_tensor_changes_only_as_the_surgery_records_it(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = _folder(tmp_path, "shapes-vit")
    sd = load_file(str(d / "model.safetensors"))
    sd["pos_embed"] = sd["pos_embed"][:, :1].clone()
    save_file(sd, str(d / "model.safetensors"))
    _edit(d, surgery={"attrs": {"blocks.0.attn": {"num_heads": 4}}})
    _one_line_refusal(cli("evaluate", "--model", str(d), "--dataset", "shapes"), "pos_embed")
    _edit(d, surgery={"attrs": {}, "free": {"pos_embed": [1, 5, 64]}})
    _one_line_refusal(cli("evaluate", "--model", str(d), "--dataset", "shapes"), "pos_embed")


def test_channel_pruned_vit_records_and_reloads_its_free_tensors(tmp_path: Path) -> None:
    from pruning_core.checkpoint import save_model_dir
    from pruning_core.models import get_entry

    loaded = load_model("shapes-vit")
    prune_(loaded.model, PruneConfig(granularity="channel", ratio=0.4), spec=loaded.spec)
    ref = get_entry("shapes-vit").builder(**loaded.arch_kwargs)
    meta = {"arch": "shapes-vit", "arch_kwargs": loaded.arch_kwargs, "spec": loaded.spec.to_dict()}
    save_model_dir(tmp_path / "p", loaded.model, meta, reference=ref)
    surgery = json.loads((tmp_path / "p" / "model.json").read_text())["surgery"]
    assert "free" in surgery
    again = load_model(str(tmp_path / "p")).model
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again(x), loaded.model.eval()(x), atol=1e-5)


# -- kinds 4/5: datasets ------------------------------------------------------------------


def _idx(path: Path, kind: int, dims: tuple[int, ...], data: bytes) -> None:
    import struct

    path.write_bytes(bytes([0, 0, kind, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data)


@pytest.mark.parametrize(
    ("images", "labels", "needle"),
    [
        ((0, 8, 8), [], "at least one image"),
        ((2, 0, 0), [0, 1], "pixels a side"),
        ((2, 4, 4), [0, 2**31 - 1], "class limit"),
    ],
)
def test_hostile_idx_folders(
    images: tuple[int, int, int], labels: list[int], needle: str, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import math

    d = tmp_path / "idx"
    d.mkdir()
    _idx(d / "train-images-idx3-ubyte", 0x08, images, bytes(math.prod(images)))
    _idx(d / "train-labels-idx1-ubyte", 0x0C, (len(labels),),
         b"".join(v.to_bytes(4, "big") for v in labels))  # fmt: skip
    _one_line_refusal(cli("evaluate", "--model", "lenet5", "--dataset", f"idx:{d}"), needle)


def test_classes_of_one_image_are_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    for c in range(5):
        (tmp_path / "ds" / f"c{c}").mkdir(parents=True)
        Image.new("L", (8, 8), 40 * c).save(tmp_path / "ds" / f"c{c}" / "0.png")
    _one_line_refusal(
        cli("train", "--model", "digits-mlp", "--dataset", f"folder:{tmp_path / 'ds'}",
            "--epochs", "0", "--out", str(tmp_path / "o")),
        "only one image",
    )  # fmt: skip


# -- kind 7: recipes and files that name things ----------------------------------------------


BOMB = (
    'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "version: *c\n"
    "settings: {model: digits-mlp}\n"
)


def test_yaml_alias_bombs_are_refused_at_once(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.yaml").write_text(BOMB)
    _one_line_refusal(cli("prune", "--recipe", str(tmp_path / "r.yaml"), "--out",
                          str(tmp_path / "o")), "aliases")  # fmt: skip
    (tmp_path / "ratios.yaml").write_text("fc1: &x 0.5\nfc2: *x\n")
    _one_line_refusal(cli(*PRUNE, "--ratios-file", str(tmp_path / "ratios.yaml"), "--out",
                          str(tmp_path / "o")), "aliases")  # fmt: skip


@pytest.mark.parametrize(
    "ratios", ['{"fc1": 1' + "0" * 400 + "}", '{"fc1": ' + "[" * 5000 + "]" * 5000 + "}"]
)
def test_ratio_files_with_huge_or_deep_values(ratios: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.json").write_text(ratios)
    line = _one_line_refusal(
        cli(*PRUNE, "--ratios-file", str(tmp_path / "r.json"), "--out", str(tmp_path / "o"))
    )
    assert len(line) < 300


def test_long_values_are_quoted_briefly(tmp_path: Path) -> None:
    from pruning_core.recipe import read_recipe

    doc = {"version": 1, "settings": {"model": "digits-mlp", "ignore": ["x" * 10_000] * 1000}}
    (tmp_path / "r.json").write_text(
        json.dumps({**doc, "settings": {**doc["settings"], "seed": "s" * 10_000}})
    )
    with pytest.raises(UserError) as info:
        read_recipe(tmp_path / "r.json")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("field", "value"),
    [("sparsity", "abc"), ("dense_accuracy", [1, 2]), ("dataset", ["x"]),
     ("params_after", int("9" * 30)), ("curve", {"a": 1})],
)  # fmt: skip
def test_export_checks_the_folders_metrics(field: str, value: object, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli(*PRUNE, "--out", str(tmp_path / "p"))[0] == 0
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    m[field] = value
    (tmp_path / "p" / "metrics.json").write_text(json.dumps(m))
    _one_line_refusal(
        cli("export", "--pruned", str(tmp_path / "p"), "--format", "report", "--out",
            str(tmp_path / "r.html")),
        field,
    )  # fmt: skip


def test_export_never_follows_a_dataset_named_in_the_folder(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    assert cli(*PRUNE, "--out", str(tmp_path / "p"))[0] == 0
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    m["dataset"] = "folder:/usr/share"
    (tmp_path / "p" / "metrics.json").write_text(json.dumps(m))

    def boom(ref: str) -> None:
        raise AssertionError(f"followed {ref}")

    monkeypatch.setattr("pruning_core.data.load_dataset", boom)
    code, _, err = cli("export", "--pruned", str(tmp_path / "p"), "--format", "onnx", "--out",
                       str(tmp_path / "m.onnx"))  # fmt: skip
    assert code == 0, err


# -- kind 8: other paths ----------------------------------------------------------------------


def test_a_fifo_is_not_read_as_a_model(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    _one_line_refusal(
        cli("evaluate", "--model", str(fifo), "--arch", "digits-cnn", "--dataset", "digits"),
        "not a regular file",
    )


def test_a_home_that_names_a_database_file_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruning_core.store import RunStore

    monkeypatch.setenv("PRUNING_LAB_HOME", str(tmp_path / "y.sqlite3"))
    store = RunStore()
    assert store.root == tmp_path / "y.sqlite3" and store.root.is_dir()
    assert not (tmp_path / "runs").exists()


def test_someone_elses_database_is_left_alone(tmp_path: Path) -> None:
    import sqlite3

    from pruning_core.store import RunStore

    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "runs.sqlite3") as con:
        con.execute("CREATE TABLE my_data (x)")
    before = (home / "runs.sqlite3").read_bytes()
    with pytest.raises(UserError, match="did not create"):
        RunStore(home)
    assert (home / "runs.sqlite3").read_bytes() == before
