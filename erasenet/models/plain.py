"""One-conv modules on three stages: EraseReLU's VGG-style-31 and Residual-style-31 (Dong et al. 2017,
Sec. 3.2), and the plain conv-BN-ReLU networks of Zhao et al. 2017 (plain-38/62/84).

Every module holds one ReLU, so erasing the ``last`` site of every other module (proportion 0.5) is
Zhao et al.'s 2:1 proportional module.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..erase.sites import Block
from .base import Head, Stem, init_weights, make_stage
from .registry import register_model
from .residual import ResidualBlock, apply_stochastic_depth, make_shortcut


class ConvModule(Block):
    """conv-BN-ReLU (Figure 2(a) of EraseReLU)."""

    sites = ("act",)

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualConvModule(ResidualBlock):
    """conv-BN, add the (option A) shortcut, ReLU (Figure 2(b) of EraseReLU)."""

    sites = ("act_out",)

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride, "A")
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.add_branch(self.shortcut(x), lambda: self.bn(self.conv(x))))


class ModuleStack(nn.Module):
    """Stem conv-BN-ReLU, three stages of one-conv modules (strides 1, 2, 2), pool and classifier."""

    fixed_sites = ("stem.act",)

    def __init__(self, residual: bool, modules_per_stage: Sequence[int], widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, in_chans: int = 3, survival_prob: float = 1.0):
        super().__init__()
        if len(modules_per_stage) != len(widths) or min(modules_per_stage) < 1:
            raise ValueError(f"need at least one module in each of {len(widths)} stages, got {list(modules_per_stage)}")
        module = ResidualConvModule if residual else ConvModule
        self.stem = Stem(in_chans, widths[0])
        self.stages = nn.Sequential(*(
            make_stage(lambda cin, stride, planes=planes: module(cin, planes, stride), cin, planes, count, i > 0)
            for i, (count, cin, planes) in enumerate(zip(modules_per_stage, [widths[0], *widths[:-1]], widths))))
        self.head = Head(widths[-1], num_classes)
        if residual:
            apply_stochastic_depth(self, survival_prob)
        elif survival_prob != 1.0:
            raise ValueError("survival_prob (stochastic depth) needs residual modules (residual=true)")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def split_depth(depth: int) -> list[int]:
    """Modules per stage of a ``depth``-layer plain net (stem conv + modules + classifier).

    Each stage takes an equal share of the convolutions still unplaced, rounded down, so the later
    stages carry the remainder, as in Zhao et al.'s code: plain-84 is ``[27, 27, 28]``.
    """
    convs = depth - 2
    if convs < 3:
        raise ValueError(f"a plain network needs depth >= 5, got {depth}")
    counts: list[int] = []
    for stages_left in (3, 2, 1):
        counts.append((convs - sum(counts)) // stages_left)
    return counts


@register_model
def plain(depth: int = 38, num_classes: int = 10, in_chans: int = 3, residual: bool = False,
          survival_prob: float = 1.0) -> ModuleStack:
    """A ``depth``-layer stack (stem, depth-2 one-conv modules, classifier), widths 16/32/64."""
    return ModuleStack(residual, split_depth(depth), num_classes=num_classes, in_chans=in_chans,
                       survival_prob=survival_prob)


def _named_plain(depth: int) -> None:
    def build(num_classes: int = 10, in_chans: int = 3) -> ModuleStack:
        return plain(depth, num_classes, in_chans)

    build.__name__ = f"plain{depth}"
    build.__doc__ = f"Zhao et al.'s plain-{depth}: modules per stage {split_depth(depth)}."
    register_model(build)


for _depth in (38, 62, 84):
    _named_plain(_depth)


@register_model
def vgg31(num_classes: int = 10, in_chans: int = 3) -> ModuleStack:
    """EraseReLU's VGG-style-31: stem conv 16, 3 stages x 10 conv-BN-ReLU modules (31 conv layers)."""
    return ModuleStack(False, (10, 10, 10), num_classes=num_classes, in_chans=in_chans)


@register_model
def residual31(num_classes: int = 10, in_chans: int = 3, survival_prob: float = 1.0) -> ModuleStack:
    """EraseReLU's Residual-style-31: as vgg31, each module conv-BN + identity, ReLU after the addition."""
    return ModuleStack(True, (10, 10, 10), num_classes=num_classes, in_chans=in_chans, survival_prob=survival_prob)
