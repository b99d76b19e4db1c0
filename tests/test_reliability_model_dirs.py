"""Model folders are validated before use: each schema violation is exit 2 naming the field.

Table-driven: every case mutates a copy of the digits-cnn sample folder (model.json and/or its
tensors), runs `inspect --model DIR` in-process and expects exit status 2, one stderr line that
contains the expected text, no stdout, and the folder left byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning_core.checkpoint import save_model_dir
from pruning_core.errors import UserError
from pruning_core.models import create_model, get_entry, load_model, sample_models_dir
from pruning_core.models.validate import MAX_PARAMS

Meta = dict[str, Any]
State = dict[str, torch.Tensor]
Mutation = Callable[[Meta, State], None]

SAMPLE = sample_models_dir() / "digits-cnn"


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted model.json field (`arch_kwargs.num_classes`)."""

    def mutate(meta: Meta, _state: State) -> None:
        *parents, leaf = path.split(".")
        d = meta
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(meta: Meta, _state: State) -> None:
        *parents, leaf = path.split(".")
        d = meta
        for p in parents:
            d = d[p]
        del d[leaf]

    return mutate


def _surgery(surgery: Any) -> Mutation:
    return _set("surgery", surgery)


def _tensor(key: str, value: torch.Tensor | None) -> Mutation:
    def mutate(_meta: Meta, state: State) -> None:
        if value is None:
            del state[key]
        else:
            state[key] = value

    return mutate


def _poison(key: str, value: float) -> Mutation:
    def mutate(_meta: Meta, state: State) -> None:
        t = state[key].clone()
        t.view(-1)[::3] = value
        state[key] = t

    return mutate


def _both(*ms: Mutation) -> Mutation:
    def mutate(meta: Meta, state: State) -> None:
        for m in ms:
            m(meta, state)

    return mutate


def _narrow_conv2(meta: Meta, state: State) -> None:
    """conv2 really cut to 16 filters, but fc1 still reads 64 channels: fails at forward."""
    meta["surgery"] = {"attrs": {"conv2": {"out_channels": 16}}}
    state["conv2.weight"] = state["conv2.weight"][:16].clone()
    state["conv2.bias"] = state["conv2.bias"][:16].clone()


def _drop_classifier(meta: Meta, state: State) -> None:
    """The classifier replaced by an identity: 128 outputs where the spec promises 10."""
    meta["surgery"] = {"identity": ["fc2"]}
    del state["fc2.weight"], state["fc2.bias"]


def _budget(meta: Meta, _state: State) -> None:
    meta["arch"] = "digits-mlp"
    meta["arch_kwargs"] = {"num_classes": 10, "in_channels": 16, "image_size": 1024}
    meta["spec"] = {
        "channels": 16, "size": 1024, "mean": [0.5] * 16, "std": [0.25] * 16, "num_classes": 10,
    }  # fmt: skip


def _other_arch(meta: Meta, state: State) -> None:
    """A shrunk digits-cnn's surgery record under model.json's arch edited to digits-mlp."""
    _set("arch", "digits-mlp")(meta, state)
    _surgery({"attrs": {"conv2": {"out_channels": 16}}})(meta, state)


CASES: list[tuple[str, Mutation, str]] = [
    ("unknown arch", _set("arch", "nope"), "model.json: arch: unknown model 'nope'"),
    ("arch not a string", _set("arch", 5), "model.json: arch must be a registry name"),
    # Names with newlines are shown escaped, so the refusal stays one line.
    ("arch with a newline", _set("arch", "digits\ncnn"), "arch: unknown model 'digits\\ncnn'"),
    (
        "surgery path with a newline",
        _surgery({"attrs": {"conv2\nx": {"out_channels": 3}}}),
        "surgery.attrs.'conv2\\nx': the model has no module 'conv2\\nx'",
    ),
    ("arch missing", _drop("arch"), "names no architecture ('arch')"),
    (
        "extra arch_kwargs key",
        _set("arch_kwargs.pretrained", True),
        "model.json: arch_kwargs.pretrained is not an architecture argument",
    ),
    (
        "huge num_classes",
        _set("arch_kwargs.num_classes", 10**12),
        "model.json: arch_kwargs.num_classes must be in [1, 100000], got 1000000000000",
    ),
    (
        "negative image_size",
        _set("arch_kwargs.image_size", -8),
        "model.json: arch_kwargs.image_size must be in [1, 4096], got -8",
    ),
    (
        "image_size above its bound",
        _set("arch_kwargs.image_size", 4097),
        "model.json: arch_kwargs.image_size must be in [1, 4096], got 4097",
    ),
    (
        "string in_channels",
        _set("arch_kwargs.in_channels", "1"),
        "model.json: arch_kwargs.in_channels must be an integer, got '1'",
    ),
    (
        "fractional num_classes",
        _set("arch_kwargs.num_classes", 9.5),
        "arch_kwargs.num_classes must be an integer",
    ),
    ("arch_kwargs a list", _set("arch_kwargs", [10, 1, 8]), "arch_kwargs must be an object"),
    (
        "parameter budget",
        _budget,
        f"model.json: arch_kwargs {{'num_classes': 10, 'in_channels': 16, 'image_size': 1024}} "
        f"build a model of 2,147,492,682 parameters, over the limit of {MAX_PARAMS:,}",
    ),
    ("spec missing mean", _drop("spec.mean"), "model.json: spec lacks 'mean'"),
    ("spec std 0", _set("spec.std", [0.0]), "model.json: spec.std[0] must be in [1e-06"),
    ("spec std denormal", _set("spec.std", [1e-320]), "model.json: spec.std[0] must be in [1e-06"),
    ("spec mean huge int", _set("spec.mean", [10**400]), "model.json: spec.mean[0] must be in"),
    ("spec std negative", _set("spec.std", [-1.0]), "spec.std[0] must be in [1e-06"),
    ("spec NaN mean", _set("spec.mean", [math.nan]), "spec.mean[0] must be a finite number"),
    (
        "spec wrong-length mean",
        _set("spec.mean", [0.1, 0.2]),
        "spec.mean must be a list of 1 numbers",
    ),
    ("spec string channels", _set("spec.channels", "1"), "spec.channels must be an integer"),
    ("spec zero size", _set("spec.size", 0), "spec.size must be in [1, 4096], got 0"),
    ("spec unknown field", _set("spec.eval", "x"), "spec.eval is not a spec field"),
    ("spec not an object", _set("spec", "rgb"), "spec must be an object"),
    (
        "spec disagrees with arch_kwargs",
        _set("spec.num_classes", 5),
        "arch_kwargs.num_classes is 10 but spec.num_classes is 5",
    ),
    (
        "class_names of the wrong length",
        _set("spec.class_names", ["a", "b"]),
        "spec.class_names has 2 names for 10 classes",
    ),
    (
        "surgery attr forward",
        _surgery({"attrs": {"conv2": {"forward": 3}}}),
        "surgery.attrs.conv2.forward is not a shape attribute",
    ),
    (
        "surgery attr __class__",
        _surgery({"attrs": {"conv2": {"__class__": 1}}}),
        "surgery.attrs.conv2.__class__ is not a shape attribute",
    ),
    (
        "surgery attr the module lacks",
        _surgery({"attrs": {"conv2": {"hidden_dim": 3}}}),
        "surgery.attrs.conv2.hidden_dim: Conv2d 'conv2' has no shape attribute 'hidden_dim'",
    ),
    (
        "surgery attr zero",
        _surgery({"attrs": {"conv2": {"out_channels": 0}}}),
        "surgery.attrs.conv2.out_channels must be in [1, 2147483647], got 0",
    ),
    (
        "surgery attr a string",
        _surgery({"attrs": {"fc1": {"in_features": "576"}}}),
        "surgery.attrs.fc1.in_features must be an integer",
    ),
    (
        "surgery on a missing module",
        _surgery({"attrs": {"conv9": {"out_channels": 8}}}),
        "surgery.attrs.conv9: the model has no module 'conv9'",
    ),
    (
        # A shrunk digits-cnn folder whose model.json was edited to another architecture: the
        # refusal says which architecture the record was tried on.
        "surgery made on another architecture",
        _other_arch,
        "surgery.attrs.conv2: the model has no module 'conv2' (model.json names architecture "
        "'digits-mlp': the folder's surgery record does not fit it)",
    ),
    (
        # The digits-cnn folder's model.json edited to another architecture (no surgery to
        # trip on): the refusal says the architecture came from model.json.
        "arch edited to another architecture",
        _set("arch", "digits-mlp"),
        "/m/model.json)",
    ),
    (
        "identity on an unknown path",
        _surgery({"identity": ["layer9.0"]}),
        "surgery.identity[0]: the model has no module 'layer9.0'",
    ),
    (
        "identity on the root",
        _surgery({"identity": [""]}),
        "surgery.identity[0] must be a module path",
    ),
    (
        "self_attention on a conv",
        _surgery({"self_attention": ["conv1"]}),
        "'conv1' is a Conv2d, not an nn.MultiheadAttention",
    ),
    ("unknown surgery key", _surgery({"exec": ["x"]}), "surgery.exec is not a surgery field"),
    ("surgery a list", _surgery(["conv2"]), "surgery must be an object"),
    (
        "wrong shape without surgery",
        _tensor("fc1.weight", torch.zeros(128, 999)),
        "fc1.weight: checkpoint (128, 999) vs model (128, 1024)",
    ),
    (
        "wrong shape with surgery",
        _surgery({"attrs": {"conv2": {"out_channels": 16}}}),
        "tensor 'conv2.weight' has shape (64, 32, 3, 3) but Conv2d 'conv2' "
        "(in_channels=32, out_channels=16, groups=1) needs (16, 32, 3, 3)",
    ),
    (
        "resized tensor the surgery does not explain",
        _both(
            _surgery({"attrs": {"conv2": {"out_channels": 16}}}),
            _tensor("conv2.weight", torch.zeros(16, 32, 3, 3)),
            _tensor("conv2.bias", torch.zeros(16)),
            _tensor("fc1.weight", torch.zeros(128, 256)),
        ),
        "tensor 'fc1.weight' has shape (128, 256) but Linear 'fc1' "
        "(in_features=1024, out_features=128) needs (128, 1024)",
    ),
    ("inconsistent folder fails its dry forward", _narrow_conv2, "does not run on a 1x1x8x8 input"),
    ("classifier removed", _drop_classifier, "gives (1, 128) for one image"),
    ("missing tensor", _tensor("fc2.bias", None), "missing keys fc2.bias"),
    ("extra tensor", _tensor("fc3.weight", torch.zeros(2, 2)), "unexpected keys fc3.weight"),
    ("NaN weights", _poison("conv1.weight", math.nan), "tensor 'conv1.weight' holds 96 NaN/inf"),
    ("inf bias", _poison("fc1.bias", math.inf), "tensor 'fc1.bias' holds 43 NaN/inf"),
    (
        "integer weights",
        _tensor("fc2.weight", torch.ones(10, 128, dtype=torch.int64)),
        "tensor 'fc2.weight' is int64 but the model's is floating",
    ),
    (
        "bool bias",
        _tensor("conv2.bias", torch.ones(64, dtype=torch.bool)),
        "tensor 'conv2.bias' is bool but the model's is floating",
    ),
]


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _write(d: Path, meta: Meta, state: State, *, raw_json: str | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "model.json").write_text(raw_json if raw_json is not None else json.dumps(meta))
    save_file(state, str(d / "model.safetensors"))
    return d


def _sample() -> tuple[Meta, State]:
    return json.loads((SAMPLE / "model.json").read_text()), dict(
        load_file(str(SAMPLE / "model.safetensors"))
    )


def _assert_refused(result: tuple[int, str, str], expected: str) -> None:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_violation_exits_2_naming_the_field(
    cli, tmp_path: Path, mutate: Mutation, expected: str
) -> None:  # type: ignore[no-untyped-def]
    meta, state = _sample()
    mutate(meta, state)
    d = _write(tmp_path / "m", meta, state)
    before = _digest(d)
    _assert_refused(cli("inspect", "--model", str(d)), expected)
    assert _digest(d) == before  # nothing of the user's is changed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("[1, 2]", "must hold a JSON object, got list"), ('{"arch": ', "corrupt model.json")],
)
def test_unreadable_model_json(cli, tmp_path: Path, raw: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    meta, state = _sample()
    d = _write(tmp_path / "m", meta, state, raw_json=raw)
    _assert_refused(cli("inspect", "--model", str(d)), expected)


def test_prune_refuses_a_bad_folder_before_writing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    meta, state = _sample()
    meta["surgery"] = {"attrs": {"conv2": {"out_channels": 16}}}
    d = _write(tmp_path / "m", meta, state)
    out = tmp_path / "out"
    code, _, err = cli(
        "prune",
        "--model",
        str(d),
        "--dataset",
        "digits",
        "--method",
        "magnitude",
        "--granularity",
        "unstructured",
        "--ratio",
        "0.5",
        "--out",
        str(out),
    )
    assert code == 2 and "conv2.weight" in err
    assert not out.exists()


def test_valid_variants_load(tmp_path: Path) -> None:
    """Unknown top-level keys are tolerated; spec or arch_kwargs alone are enough."""
    ref = load_model(str(SAMPLE))
    x = torch.randn(3, 1, 8, 8)
    variants: list[Mutation] = [
        _set("recipe", {"anything": [1, 2]}),
        _drop("spec"),
        _drop("arch_kwargs"),
        _set("arch_kwargs.num_classes", 10.0),  # an integral float is an integer
        _set("surgery", {"attrs": {}, "identity": [], "self_attention": []}),
    ]
    for i, mutate in enumerate(variants):
        meta, state = _sample()
        mutate(meta, state)
        loaded = load_model(str(_write(tmp_path / str(i), meta, state)))
        assert loaded.spec == ref.spec, i
        assert torch.equal(loaded.model(x), ref.model(x)), i
        assert isinstance(loaded.meta.get("arch_kwargs", {}).get("num_classes", 10), int)


def test_structurally_pruned_folders_still_load(tmp_path: Path) -> None:
    """Real surgery (shrunk channels, removed blocks) passes every check and runs the same."""
    from pruning_core.prune import PruneConfig, prune_

    for arch, granularity in (("digits-cnn", "channel"), ("shapes-resnet", "block")):
        entry = get_entry(arch)
        m = create_model(arch, pretrained=False)
        prune_(m, PruneConfig(granularity=granularity, ratio=0.5), spec=entry.spec)
        kw = {"num_classes": 10, "in_channels": entry.spec.channels, "image_size": entry.spec.size}
        meta = {"arch": arch, "arch_kwargs": kw, "spec": entry.spec.to_dict()}
        d = tmp_path / arch
        save_model_dir(d, m, meta, reference=entry.builder(**kw))
        assert json.loads((d / "model.json").read_text())["surgery"] != {}
        loaded = load_model(str(d))
        x = torch.randn(2, entry.spec.channels, entry.spec.size, entry.spec.size)
        assert torch.allclose(loaded.model(x), m.eval()(x), atol=1e-5)


def test_python_api_bounds_and_budget() -> None:
    with pytest.raises(UserError, match=r"num_classes must be in \[1, 100000\]"):
        create_model("digits-mlp", num_classes=0)
    with pytest.raises(UserError, match="over the limit"):
        create_model("lenet-300-100", in_channels=16, image_size=1024)
    # The bounds match the architectures' own parameters.
    meta, _ = _sample()
    assert set(meta["arch_kwargs"]) == {"num_classes", "in_channels", "image_size"}


def test_sample_folders_pass_unchanged() -> None:
    for name in ("digits-mlp", "digits-cnn", "shapes-vit"):
        d = sample_models_dir() / name
        before = _digest(d)
        assert load_model(str(d)).arch == name
        assert _digest(d) == before


def test_only_weights_of_another_architecture_point_at_model_json(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tensor missing from the weights file is the file's fault: its refusal does not send
    the user to model.json (an edited arch, with layers missing on both sides, does)."""
    meta, state = _sample()
    _tensor("fc2.bias", None)(meta, state)
    d = _write(tmp_path / "m", meta, state)
    code, _, err = cli("inspect", "--model", str(d))
    _assert_refused((code, "", err), "missing keys fc2.bias")
    assert "model.json" not in err, err
