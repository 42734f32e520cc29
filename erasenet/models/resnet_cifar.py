"""CIFAR ResNets of He et al. 2016: 6n+2 layers of basic blocks, widths 16/32/64."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Block, init_weights
from .registry import register_model


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels; no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(in_planes: int, planes: int, stride: int, option: str) -> nn.Module:
    """Identity when shapes match, otherwise option A (zero-pad) or B (1x1 conv + BN projection)."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_planes, planes, stride)
    if option == "B":
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")


class BasicBlock(Block):
    """conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    sites = ("act1", "act_out")

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut)
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act_out(out + self.shortcut(x))


class Stem(nn.Sequential):
    """3x3 conv-BN-ReLU at full resolution."""

    def __init__(self, in_chans: int, planes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, planes, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)


class Head(nn.Module):
    """Global average pool and a linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarResNet(nn.Module):
    """Stem, three stages of ``blocks_per_stage`` basic blocks (stride 1, 2, 2), head."""

    fixed_sites = ("stem.act",)

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64), shortcut: str = "A"):
        super().__init__()
        self.stem = Stem(in_chans, widths[0])
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.head = Head(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _depth_to_blocks(depth: int) -> int:
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
    return (depth - 2) // 6


@register_model
def resnet(depth: int = 20, num_classes: int = 10, in_chans: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2."""
    return CifarResNet(_depth_to_blocks(depth), num_classes, in_chans, shortcut=shortcut)


def _named(depth: int):
    def build(num_classes: int = 10, in_chans: int = 3, shortcut: str = "A") -> CifarResNet:
        return CifarResNet(_depth_to_blocks(depth), num_classes, in_chans, shortcut=shortcut)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR ({_depth_to_blocks(depth)} basic blocks per stage)."
    return register_model(build)


for _depth in (20, 32, 44, 56, 110, 1202):
    _named(_depth)
