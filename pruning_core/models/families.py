"""Model families from other libraries: torchvision (`torchvision:NAME`) and timm (`timm:NAME`).

A family turns a name into a registry entry whose builder takes the registry's arguments
(`num_classes`, `in_channels`, `image_size`, `pretrained`) and passes each one to the library
only in the form that architecture takes: classes and input channels are adapted, and an input
size is passed only to architectures whose constructor takes one (a ViT's `image_size`,
MaxViT's `input_size`, timm's `img_size`); the others run at any size their layers allow.

Input sizes are *fitted*, not assumed (`fit_size`): each candidate size is tried on a skeleton
of the model (weights on the `meta` device: shapes only, no memory), and the smallest size at
or above the one wanted that runs is taken, or a one-line refusal names the rule (e.g.
"multiple of 224", "at least 75 px").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError, first_line
from pruning_core.layers import set_submodule
from pruning_core.spec import MAX_SIZE, InputSpec

__all__ = [
    "FAMILIES",
    "Family",
    "adapt_first_conv",
    "fit_size",
    "replace_classifier",
    "size_rule",
]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The sides tried when fitting an input size above the one wanted (beyond it: refused).
_MAX_TRIES = 12


def replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear for one with `num_classes` outputs (pretrained ImageNet heads)."""
    last_name, last = None, None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last_name, last = name, mod
    if last is None or last_name is None:
        raise UserError("cannot find the classifier layer to resize")
    set_submodule(model, last_name, nn.Linear(last.in_features, num_classes))


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d by one reading `in_channels` (RGB filters averaged, so that
    pretrained weights still see grayscale images sensibly)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(
                in_channels,
                mod.out_channels,
                mod.kernel_size,  # type: ignore[arg-type]
                mod.stride,  # type: ignore[arg-type]
                mod.padding,  # type: ignore[arg-type]
                mod.dilation,  # type: ignore[arg-type]
                mod.groups,
                mod.bias is not None,
                device=mod.weight.device,
            )
            if mod.weight.device.type != "meta":
                with torch.no_grad():
                    mean = mod.weight.mean(dim=1, keepdim=True)
                    new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3 / in_channels))
                    if mod.bias is not None and new.bias is not None:
                        new.bias.copy_(mod.bias)
            set_submodule(model, name, new)
            return
    raise UserError("model has no Conv2d input layer to adapt to the channel count")


class Family:
    """A library of architectures addressed as `PREFIX:NAME`.

    Attributes:
        prefix: `torchvision:` or `timm:`.
        label: The library's name for menus.
        suggested: A few names for short lists.
    """

    prefix: str = ""
    label: str = ""
    suggested: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """Every classification architecture of the library (without the prefix)."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        """True when the library has this architecture."""
        return name in set(self.names())

    def default_spec(self, name: str) -> InputSpec:
        """The input spec of the architecture as its library defines it (1000 classes)."""
        return InputSpec(3, 224, IMAGENET[0], IMAGENET[1], 1000)

    def size_kwarg(self, name: str) -> str | None:
        """The constructor argument that sets the input size, or None (any size runs)."""
        return None

    def create(
        self, name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
    ) -> nn.Module:
        """Build the architecture with the library, adapted to the registry's arguments."""
        raise NotImplementedError

    def description(self, name: str) -> str:
        """One line for lists."""
        return f"{self.label} {name} (ImageNet architecture; pretrained weights on request)"


class TorchvisionFamily(Family):
    """torchvision's classification models (`torchvision.models.list_models`)."""

    prefix = "torchvision:"
    label = "torchvision"
    suggested = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")

    def names(self) -> list[str]:
        from torchvision import models as tvm

        return list(tvm.list_models(module=tvm))

    def size_kwarg(self, name: str) -> str | None:
        if name.startswith("vit_"):
            return "image_size"
        if name.startswith("maxvit"):
            return "input_size"
        return None

    def create(
        self, name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
    ) -> nn.Module:
        from torchvision import models as tvm

        kwargs: dict[str, Any] = {}
        kw = self.size_kwarg(name)
        if kw == "input_size":
            kwargs[kw] = (image_size, image_size)
        elif kw is not None:
            kwargs[kw] = image_size
        if name in ("googlenet", "inception_v3"):
            # Untrained, their auxiliary heads are built anyway (torchvision warns otherwise).
            kwargs["init_weights"] = True
        if pretrained:
            weights = tvm.get_model_weights(name).DEFAULT
            try:
                model = tvm.get_model(name, weights=weights, **kwargs)
            except Exception as e:  # urllib raises several types; all mean the same to the user
                raise UserError(
                    f"could not fetch pretrained weights for {name} ({first_line(e, 160)}); you may be "
                    f"offline: place the file in {torch.hub.get_dir()}/checkpoints, or "
                    "start from untrained weights"
                ) from None
            if num_classes != 1000:
                replace_classifier(model, num_classes)
        else:
            model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            adapt_first_conv(model, in_channels)
        return model


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (one try).

    With a proxy configured (`HTTPS_PROXY`, `ALL_PROXY`) the answer is True: only the proxy
    knows, and the library's own request will say.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


class TimmFamily(Family):
    """timm's models (`timm.list_models`), with their pretrained configurations (input size,
    mean and std) known offline."""

    prefix = "timm:"
    label = "timm"
    suggested = ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "deit_tiny_patch16_224")

    @functools.cache  # noqa: B019 (one family object per process)
    def names(self) -> list[str]:
        import timm

        return list(timm.list_models())

    def default_spec(self, name: str) -> InputSpec:
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:  # timm raises several types for names without a config
            cfg = None
        if cfg is None:
            return super().default_spec(name)
        c, h, _ = cfg.input_size
        mean = tuple(float(v) for v in (cfg.mean or IMAGENET[0]))[:c]
        std = tuple(float(v) for v in (cfg.std or IMAGENET[1]))[:c]
        return InputSpec(int(c), int(h), mean, std, int(cfg.num_classes or 1000))

    @functools.cache  # noqa: B019
    def size_kwarg(self, name: str) -> str | None:
        import timm

        # Whether the constructor takes `img_size` shows only by trying (on `meta`: no memory).
        try:
            with torch.device("meta"):
                timm.create_model(name, pretrained=False, num_classes=2, img_size=224)
        except TypeError as e:
            if "img_size" in str(e):
                return None
        except Exception:
            pass
        return "img_size"

    def create(
        self, name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
    ) -> nn.Module:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels}
        if self.size_kwarg(name) is not None:
            kwargs["img_size"] = image_size
        if not pretrained:
            return timm.create_model(name, pretrained=False, **kwargs)
        import huggingface_hub.constants as hub

        host = hub.ENDPOINT
        # Unreachable, the hub retries each file for about a minute before it even looks in
        # its cache: ask once, and when nobody answers read the cache only (offline mode).
        offline = hub.HF_HUB_OFFLINE or not reachable(host)
        saved = hub.HF_HUB_OFFLINE
        hub.HF_HUB_OFFLINE = offline
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as e:
            if offline:
                raise UserError(
                    f"pretrained weights for timm:{name} are not in the local cache and {host} "
                    "cannot be reached (offline?): connect once to download them, "
                    "or start from untrained weights"
                ) from None
            raise UserError(
                f"could not fetch pretrained weights for timm:{name} ({first_line(e, 160)}): "
                "start from untrained weights, or try again"
            ) from None
        finally:
            hub.HF_HUB_OFFLINE = saved


FAMILIES: dict[str, Family] = {f.prefix: f for f in (TorchvisionFamily(), TimmFamily())}


# ---------------------------------------------------------------------------------------------
# input sizes

# What each architecture's size rule is, when it is not just "at least this many pixels".
_RULES = {
    "torchvision:maxvit": "MaxViT's 7x7 windows after 32x downsampling: a multiple of 224",
    "torchvision:vit": "a multiple of the patch size",
    "torchvision:inception_v3": "at least 75 px",
}


def size_rule(arch: str) -> str | None:
    """A plain description of an architecture's input-size rule, when one is known."""
    return next((r for k, r in _RULES.items() if arch.startswith(k)), None)


def fit_size(
    arch: str,
    build: Callable[[int], nn.Module],
    wanted: int,
    *,
    takes_size: bool,
    channels: int = 3,
) -> int:
    """The smallest input side at or above `wanted` that the architecture runs at.

    Candidates are `wanted`, then sides rounded up to multiples of 8, 16, 32, 64, 112, 224...;
    each is tried on a skeleton of the model (weights on the `meta` device), so nothing is
    allocated and no weights are initialised, in eval and in training mode (which may run
    more layers).

    Args:
        arch: Registry name, for messages.
        build: Builds the model for a given input side (on the current device context).
        wanted: The side the data would like (pixels).
        takes_size: The constructor takes the size (rebuild for each candidate); else one
            skeleton is built and run at each candidate.
        channels: Input channels.

    Returns:
        The side to build the model at.

    Raises:
        UserError: No candidate up to `MAX_SIZE` runs: naming the rule when it is known.
    """
    from pruning_core.models.validate import build_skeleton

    candidates = sorted(
        {wanted}
        | {-(-wanted // m) * m for m in (8, 16, 32, 64, 112, 128, 224, 256, 384)}
        | {224, 448}
    )
    candidates = [c for c in candidates if wanted <= c <= MAX_SIZE][:_MAX_TRIES]
    fixed = None if takes_size else _skeleton(build_skeleton, build, candidates[0])

    def runs(side: int) -> bool:
        try:
            model = fixed if fixed is not None else _skeleton(build_skeleton, build, side)
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, side, side, device="meta"))
                # Training mode too: auxiliary heads (Inception's) run only then, and need
                # more pixels than the main path.
                model.train()(torch.zeros(2, channels, side, side, device="meta"))
        except UserError:
            raise
        except Exception:  # a size the architecture refuses fails in model-specific ways
            return False
        return True

    below = wanted - 1
    for side in candidates:
        if runs(side):
            # The coarse steps may overshoot (Inception needs ~299 px, not 384): look for a
            # smaller multiple of 8 between the last side that failed and this one.
            finer = range(-(-(below + 1) // 8) * 8, side, 8)
            return next((s for s in list(finer)[:_MAX_TRIES] if runs(s)), side)
        below = side

    rule = size_rule(arch)
    raise UserError(
        f"{arch} runs on no input side from {wanted} to {candidates[-1]} px"
        + (f" (it needs {rule})" if rule else "")
    )


def _skeleton(build_skeleton: Any, build: Callable[[int], nn.Module], side: int) -> nn.Module:
    return build_skeleton(lambda: build(side), {})
