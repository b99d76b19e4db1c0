"""Recipes are versioned documents, not instructions to read files (docs/RELIABILITY.md, kind 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pruning_core.errors import UserError
from pruning_core.prune import PruneConfig
from pruning_core.recipe import RECIPE_VERSION, Recipe, portable_ref, read_recipe

BASE = {
    "model": "digits-mlp",
    "dataset": "digits",
    "method": "magnitude",
    "granularity": "unstructured",
    "ratio": 0.5,
}


def _write(folder: Path, doc: dict[str, Any], name: str = "recipe.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def _recipe(**settings: Any) -> dict[str, Any]:
    return {"version": RECIPE_VERSION, "settings": {**BASE, **settings}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 99, "settings": BASE}, "version 99"),
        ({"version": RECIPE_VERSION + 1, "settings": BASE}, "newer Pruning Lab"),
        ({"version": 0, "settings": BASE}, "version 0"),
        ({"version": "1", "settings": BASE}, "'version' must be an integer"),
        ({"version": True, "settings": BASE}, "'version' must be an integer"),
        ({"settings": BASE}, "'version' must be an integer"),
        ({"version": 1, "settings": {**BASE, "quantize_bits": 3}}, "'quantize_bits'"),
        ({"version": 1, "settings": BASE, "hooks": ["rm -rf"]}, "'hooks'"),
        ({"version": 1, "settings": [1, 2]}, "no 'settings' mapping"),
        ({"version": 1}, "no 'settings' mapping"),
    ],
)
def test_unknown_versions_and_keys_are_refused(
    doc: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_recipe(_write(tmp_path, doc))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 0, "must be in \\[1, "),
        ("batch_size", 2.5, "must be an integer"),
        ("batch_size", "64", "must be a number"),
        ("lr", -1, "must be in"),
        ("lr", 0, "must be in"),
        ("weight_decay", -0.1, "must be in"),
        ("seed", -1, "must be in"),
        ("seed", 2**40, "must be in"),
        ("ratio", 1.0, "must be in"),
        ("ratio", True, "must be a number"),
        ("finetune_epochs", -3, "must be in"),
        ("steps", 0, "must be in"),
        ("norm", 3, "must be in"),
        ("max_layer_ratio", 1.0, "must be in"),
        ("distill", "yes", "true or false"),
        ("model", "", "non-empty text"),
        ("method", 5, "non-empty text"),
        ("ignore", {"a": 1}, "list of layer names"),
        ("layer_ratios", {"fc1": 1.5}, r"layer_ratios'\['fc1'\]"),
        ("layer_ratios", {"fc1": "0.5"}, "must be a number"),
        ("layer_ratios", [0.5], "must map layer names"),
    ],
)
def test_bad_setting_values_are_refused_naming_them(
    key: str, value: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message) as info:
        read_recipe(_write(tmp_path, _recipe(**{key: value})))
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "/etc/passwd"),
        ("model", "../elsewhere/model"),
        ("model", "sub/../../x.safetensors"),
        ("model", "~/model.pt"),
        ("dataset", "idx:/data/mnist"),
        ("dataset", "folder:../pictures"),
        ("dataset", "/home/user/data.zip"),
        ("ratios_file", "/etc/shadow"),
        ("ratios_file", "../ratios.json"),
    ],
)
def test_file_settings_may_not_leave_the_recipe_folder(
    key: str, value: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="outside the recipe's folder"):
        read_recipe(_write(tmp_path / "r", _recipe(**{key: value})))


def test_a_symlink_inside_the_folder_pointing_out_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"fc1": 0.5}')
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "ratios.json").symlink_to(secret)
    with pytest.raises(UserError, match="outside the recipe's folder"):
        read_recipe(_write(folder, _recipe(ratios_file="ratios.json")))


def test_relative_files_resolve_beside_the_recipe_and_registry_names_pass(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    settings = read_recipe(
        _write(folder, _recipe(ratios_file="ratios.json", dataset="idx:mnist", model="digits-cnn"))
    )
    real = folder.resolve()
    assert settings["ratios_file"] == str(real / "ratios.json")
    assert settings["dataset"] == f"idx:{real / 'mnist'}"
    assert settings["model"] == "digits-cnn"
    settings = read_recipe(_write(folder, _recipe(model="torchvision:resnet18", dataset="shapes")))
    assert (settings["model"], settings["dataset"]) == ("torchvision:resnet18", "shapes")


def test_yaml_and_metrics_json_recipes_are_checked_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("version: 7\nsettings: {model: digits-mlp}\n")
    with pytest.raises(UserError, match="version 7"):
        read_recipe(tmp_path / "r.yaml")
    metrics = {"sparsity": 0.5, "recipe": {"version": 1, "settings": {**BASE, "evil": 1}}}
    with pytest.raises(UserError, match="'evil'"):
        read_recipe(_write(tmp_path, metrics, "metrics.json"))


def test_exported_recipes_carry_values_not_paths(tmp_path: Path) -> None:
    config = PruneConfig(method="magnitude", ratio=0.6, layer_ratios=(("fc1", 0.3),))
    made = Recipe(
        "/srv/pruning-lab/uploads/models/mine-digits-cnn-abc123",
        "/srv/pruning-lab/uploads/datasets/pics-123.zip",
        config,
    )
    text = made.text(portable=True)
    recipe = made.to_document(portable=True)
    assert "/srv" not in text
    assert recipe["settings"]["model"] == "mine-digits-cnn-abc123"
    assert recipe["settings"]["dataset"] == "pics-123.zip"
    assert recipe["settings"]["layer_ratios"] == {"fc1": 0.3}
    assert portable_ref("idx:/data/mnist/", "dataset") == "idx:mnist"
    assert portable_ref("digits", "dataset") == "digits"
    # Read back from its own folder, the names resolve beside it.
    settings = read_recipe(_write(tmp_path, recipe))
    assert settings["model"] == str(tmp_path.resolve() / "mine-digits-cnn-abc123")


def test_cli_refuses_a_future_recipe_before_any_work(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, {"version": 99, "settings": {**BASE, "quantize_bits": 3}})
    code, out, err = cli("prune", "--recipe", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "version 99" in err and not (tmp_path / "o").exists()


def test_command_line_options_override_a_recipe_path(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "r", _recipe(model="/elsewhere/model.pt"))
    code, _, err = cli("prune", "--recipe", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "--model" in err
    code, _, err = cli(
        "prune", "--recipe", str(path), "--model", "digits-mlp", "--quiet",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, err
    again = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert again["version"] == RECIPE_VERSION and again["settings"]["model"] == "digits-mlp"
