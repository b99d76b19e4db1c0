"""The model registry: every entry builds, runs and carries its input spec."""

from __future__ import annotations

import pytest
import torch

from pruning_core.errors import UserError
from pruning_core.models import create_model, get_entry, list_models, model_spec

REQUIRED = [
    "digits-mlp",
    "digits-cnn",
    "shapes-resnet",
    "shapes-vit",
    "lenet-300-100",
    "lenet5",
    "resnet20",
    "resnet56",
    "vgg16-cifar",
]


def test_registry_lists_required_models() -> None:
    names = {m.name for m in list_models()}
    assert set(REQUIRED) <= names
    assert any(n.startswith("torchvision:") for n in names)


@pytest.mark.parametrize("name", REQUIRED)
def test_each_model_runs_with_its_spec(name: str) -> None:
    spec = model_spec(name)
    model = create_model(name, pretrained=False)
    x = torch.randn(2, spec.channels, spec.size, spec.size)
    with torch.no_grad():
        assert model(x).shape == (2, spec.num_classes)
    assert len(spec.mean) == spec.channels == len(spec.std)


def test_sample_models_load_trained_weights() -> None:
    a = create_model("digits-cnn")
    b = create_model("digits-cnn", pretrained=False)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_adapting_classes_and_channels() -> None:
    m = create_model("resnet20", num_classes=7, in_channels=1)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    tv = create_model("torchvision:resnet18", num_classes=5, in_channels=1, image_size=32)
    assert tv(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert model_spec("torchvision:resnet18", num_classes=5, in_channels=1).channels == 1


def test_torchvision_vit_takes_image_size() -> None:
    m = create_model("torchvision:vit_b_16", num_classes=3, image_size=32)
    assert get_entry("torchvision:vit_b_16").family == "torchvision"
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_names_are_clear() -> None:
    with pytest.raises(UserError, match="unknown model 'nope'"):
        get_entry("nope")
    with pytest.raises(UserError, match="unknown torchvision"):
        get_entry("torchvision:not_a_net")


def test_pretrained_offline_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a: object, **k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="offline"):
        create_model("torchvision:resnet18", pretrained=True)


def _hub_offline(monkeypatch: pytest.MonkeyPatch, cache) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants as hub

    from pruning_core.models import families

    monkeypatch.setattr(families, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_timm_pretrained_offline_is_one_line_and_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import time

    import huggingface_hub.constants as hub

    _hub_offline(monkeypatch, tmp_path)
    before = hub.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"not in the local cache and .* cannot be reached"):
        create_model("timm:mobilenetv3_small_050", pretrained=True)
    # Without the probe the hub retries each file for about a minute.
    assert time.perf_counter() - start < 20
    assert before == hub.HF_HUB_OFFLINE  # the switch does not outlive the call


def test_timm_pretrained_weights_in_the_cache_load_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import timm
    from safetensors.torch import save_file

    name = "mobilenetv3_small_050"
    tag = timm.models.get_pretrained_cfg(name).hf_hub_id
    snap = tmp_path / f"models--{tag.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(3)
    weights = timm.create_model(name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(snap / "model.safetensors"))
    _hub_offline(monkeypatch, tmp_path)
    model = create_model(f"timm:{name}", pretrained=True, num_classes=4)
    got = model.state_dict()
    # Every weight came from the cached file except the classifier, resized for 4 classes.
    same = [k for k in weights if k in got and got[k].shape == weights[k].shape]
    assert len(same) >= len(weights) - 2
    assert all(torch.equal(got[k], weights[k]) for k in same)
