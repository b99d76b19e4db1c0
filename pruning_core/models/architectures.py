"""Architectures defined by Pruning Lab: the sample models and the classics of the pruning literature.

The classics follow their papers closely enough for the numbers people quote to be comparable:
LeNet-300-100 and LeNet-5 (LeCun et al. 1998, used by Han et al. 2015), CIFAR ResNet-20/56
(He et al. 2016, section 4.2) and VGG-16 for CIFAR (as in Li et al. 2017, "Pruning Filters for
Efficient ConvNets"). Downsampling shortcuts use a 1x1 convolution (option B) so that channel
pruning can follow them through the dependency graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Both attention classes live in `pruning_core.attention`; they stay importable here because
# models pickled before the move (trusted pickles) name them in this module.
from pruning_core.attention import Attention, SelfAttention

__all__ = [
    "Attention",
    "BasicBlock",
    "CifarResNet",
    "DigitsCNN",
    "DigitsMLP",
    "LeNet5",
    "LeNet300100",
    "SelfAttention",
    "TinyViT",
    "TransformerBlock",
    "VGGCifar",
]


class DigitsMLP(nn.Module):
    """Two hidden layers on the 8x8 digits (64 -> 128 -> 64 -> classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        d = in_channels * image_size * image_size
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(d, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self.flatten(x)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convs, a max-pool and two linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (image_size // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs with BatchNorm) with an optional 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, three stages of `n` basic blocks, global pooling.

    Args:
        n: Blocks per stage (3 -> ResNet-20, 9 -> ResNet-56, 2 -> the 14-layer sample).
        widths: Channels of the three stages.
    """

    def __init__(
        self,
        n: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _scaled_randn(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """`torch.randn(shape) * std`, or an uninitialised tensor when built on the meta device.

    Model folders are size-checked by building them on `torch.device("meta")`; random and
    arithmetic ops there load torch's symbolic-shape machinery (seconds, once per process),
    and the values of a shape-only build do not matter.
    """
    if torch.empty(0).is_meta:
        return torch.empty(shape)
    return torch.randn(shape) * std


class TinyViT(nn.Module):
    """A tiny vision transformer (Dosovitskiy et al. 2021) with a class token.

    Args:
        patch: Patch side in pixels.
        dim: Embedding width.
        depth: Number of transformer blocks.
        num_heads: Heads per block.
        mlp_dim: Hidden width of each block's MLP.
        conv_stem: Replace the patchify convolution by a small convolutional stem.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_dim: int = 128,
        conv_stem: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed: nn.Module
        if conv_stem:
            # Two stride-2 3x3 convs before the patchify step ("Early convolutions help
            # transformers see better", Xiao et al. 2021): far better on small datasets.
            self.patch_embed = nn.Sequential(
                nn.Conv2d(in_channels, dim // 2, 3, 2, 1),
                nn.BatchNorm2d(dim // 2),
                nn.ReLU(),
                nn.Conv2d(dim // 2, dim, 3, 2, 1),
                nn.BatchNorm2d(dim),
                nn.ReLU(),
                nn.Conv2d(dim, dim, patch // 4, patch // 4),
            )
        else:
            self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(_scaled_randn((1, tokens + 1, dim), 0.02))
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, num_heads, mlp_dim) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected 784-300-100-10 network."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 (6 and 16 filters of 5x5, then 120-84-classes), with ReLU and max-pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        side = ((image_size // 2) - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc3(F.relu(self.fc2(x)))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs and a single linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(cin, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(),
                ]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
