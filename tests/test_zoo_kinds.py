"""The kinds of fault the zoo found, each tested on inputs of our own (not the zoo's models):
channel shuffles refused by name, shrinks the tracer got wrong undone, attention the tracer
cannot see kept whole, input sizes fitted in training mode, skeletons on one device."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.errors import UserError
from pruning_core.prune import PruneConfig, prune_
from pruning_core.spec import InputSpec

SPEC = InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4)
CHANNEL = PruneConfig(criterion="magnitude", granularity="channel", ratio=0.5)


class Shuffle(nn.Module):
    """Two branches whose channels a shuffle interleaves (ShuffleNet's unit, reduced)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.mix(y).mean((2, 3)))


class Hidden(nn.Module):
    """A layer whose weight is also read through a functional call the tracer does not see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.conv2d(y, self.conv2.weight.detach().clone(), padding=1)  # unseen reuse
        return self.fc(y.mean((2, 3)))


class Opaque(nn.Module):
    """Pre-norm attention that reads its qkv weight functionally (torchvision Swin's way)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
        return self.proj(F.scaled_dot_product_attention(q, k, v))


class TinySwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.norm1 = nn.LayerNorm(8)
        self.attn = Opaque()
        self.norm2 = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(1))


def test_a_channel_shuffle_is_refused_by_name() -> None:
    with pytest.raises(UserError, match=r"channel shuffle in 'Shuffle' \(view\)"):
        prune_(Shuffle(), CHANNEL, spec=SPEC)


def test_a_shrink_that_breaks_the_model_is_undone_and_named() -> None:
    torch.manual_seed(0)
    model = Hidden().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    y = model(x)
    with pytest.raises(UserError, match=r"no longer runs at '.*'.*model is unchanged"):
        prune_(model, CHANNEL, spec=SPEC)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.conv1.out_channels == 8
    assert torch.allclose(model(x), y)


def test_attention_the_tracer_cannot_see_keeps_its_channels() -> None:
    torch.manual_seed(0)
    model = TinySwin()
    res = prune_(model, CHANNEL, spec=SPEC)
    assert model.attn.qkv.in_features == 8 and model.norm1.normalized_shape == (8,)
    assert model.mlp[0].out_features < 32  # the MLP's hidden channels still go
    assert any("attention" in n for n in res.notes)
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()


def test_input_size_is_fitted_for_training_mode_branches() -> None:
    """An auxiliary head that runs only in training mode and needs more pixels decides the
    size; the search returns the smallest side where both modes run."""
    from pruning_core.models.families import fit_size

    class Aux(nn.Module):
        def __init__(self, side: int = 0) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.aux = nn.Conv2d(4, 4, 7)  # needs >= 7 px after the pool
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            out = self.fc(y.mean((2, 3)))
            if self.training:
                out = out + self.fc(self.aux(F.avg_pool2d(y, 4)).mean((2, 3)))
            return out

    side = fit_size("toy", lambda s: Aux(), 8, takes_size=False)
    assert side == 32  # 7 px after a /4 pool: 28 is the least side, 32 the next candidate
    model = Aux().train()
    model(torch.zeros(2, 3, side, side))


def test_skeleton_of_a_builder_that_computes_with_small_tensors_runs_on_meta() -> None:
    from pruning_core.models.validate import build_skeleton

    class Widths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Builders such as regnet's compute widths with real tensors while building.
            w = torch.arange(1, 5).float().mul(4).round().int().tolist()
            self.convs = nn.Sequential(
                *[nn.Conv2d(3 if i == 0 else w[i - 1], c, 1) for i, c in enumerate(w)]
            )
            self.register_buffer("scale", torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.convs(x) * self.scale

    sk = build_skeleton(lambda: Widths(), {})
    assert all(t.device.type == "meta" for t in [*sk.parameters(), *sk.buffers()])
    assert sk(torch.zeros(1, 3, 4, 4, device="meta")).shape == (1, 16, 4, 4)


def test_derived_shape_properties_are_not_recorded_as_surgery() -> None:
    from pruning_core.surgery import module_shape_attrs

    class ConvNormAct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        @property
        def in_channels(self) -> int:
            return self.conv.in_channels

    attrs = module_shape_attrs(nn.Sequential(ConvNormAct()))
    assert "in_channels" not in attrs.get("0", {})
    assert attrs["0.conv"]["in_channels"] == 3
    copy.deepcopy(attrs)


def test_timm_attention_heads_are_pruned_and_reopen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """timm's ViT attention reshapes to its input width, so it is converted, exactly, to one
    whose heads can go; the folder records the conversion and reopens with equal outputs."""
    import json

    from pruning_core.attention import as_attention, convertible_attention
    from pruning_core.checkpoint import save_model_dir
    from pruning_core.models import build_for_data, get_entry, load_model

    lm = build_for_data("timm:deit_tiny_patch16_224", 4, 3, 32)
    model = lm.model.eval()
    x = torch.randn(2, 3, lm.spec.size, lm.spec.size)
    attn = model.blocks[0].attn
    assert convertible_attention(attn)
    tokens = torch.randn(2, 5, attn.qkv.in_features)
    assert torch.allclose(as_attention(attn)(tokens), attn(tokens), atol=1e-6)
    heads = attn.num_heads
    prune_(model, PruneConfig(criterion="magnitude", granularity="head", ratio=0.5), spec=lm.spec)
    assert model.blocks[0].attn.num_heads < heads
    y = model(x)
    meta = {"arch": lm.arch, "arch_kwargs": lm.arch_kwargs, "spec": lm.spec.to_dict()}
    ref = get_entry(lm.arch).builder(**lm.arch_kwargs)
    save_model_dir(tmp_path / "m", model, meta, reference=ref)
    surgery = json.loads((tmp_path / "m" / "model.json").read_text())["surgery"]
    assert "blocks.0.attn" in surgery["attention"]
    again = load_model(str(tmp_path / "m")).model.eval()
    assert torch.allclose(again(x), y, atol=1e-6)


def test_surgery_attention_on_something_else_is_refused_by_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from pruning_core.checkpoint import save_model_dir
    from pruning_core.models import load_model

    loaded = load_model("digits-mlp")
    meta = {"arch": "digits-mlp", "arch_kwargs": loaded.arch_kwargs, "spec": loaded.spec.to_dict()}
    save_model_dir(tmp_path / "m", loaded.model, meta)
    path = tmp_path / "m" / "model.json"
    doc = json.loads(path.read_text())
    for bad in (["fc1"], ["nowhere"], [3]):
        doc["surgery"] = {"attention": bad}
        path.write_text(json.dumps(doc))
        with pytest.raises(UserError, match=r"surgery\.attention\[0\]"):
            load_model(str(tmp_path / "m"))
