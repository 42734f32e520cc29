"""Inception-V2 for CIFAR, the EraseReLU paper's own (Dong et al. 2017, Sec. 4 and Figure 2(e)).

Stem conv 64, three stages of ten Inception modules with base output channels 16/32/64. A module's
four branches (1x1; 3x3; two stacked 3x3 in place of 5x5; 3x3 max pool + 1x1) output channels in the
ratio 1 : 8 : 2 : 1, so a module outputs 12 x base channels. Each branch ends with conv-BN; the
branches are concatenated and the module's last ReLU follows the concatenation: that ReLU is
EraseReLU's ``last`` site. The 1x1 reductions in front of the 3x3 convs are half as wide as their
branch's output and carry the module's inner ReLUs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..erase.sites import Block
from .base import Head, Stem, init_weights, make_stage
from .registry import register_model


def conv_bn(in_planes: int, planes: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, bias=False),
                                     bn=nn.BatchNorm2d(planes)))


class InceptionModule(Block):
    """Four branches, concatenated, then one ReLU; strided modules stride every branch."""

    sites = ("b3.act", "b5.act1", "b5.act2", "act_out")

    def __init__(self, in_planes: int, base: int, stride: int = 1):
        super().__init__()
        self.b1 = conv_bn(in_planes, base, 1, stride)
        self.b3 = nn.Sequential(OrderedDict(reduce=conv_bn(in_planes, 4 * base, 1), act=nn.ReLU(inplace=True),
                                            conv=conv_bn(4 * base, 8 * base, 3, stride)))
        self.b5 = nn.Sequential(OrderedDict(reduce=conv_bn(in_planes, base, 1), act1=nn.ReLU(inplace=True),
                                            conv1=conv_bn(base, 2 * base, 3), act2=nn.ReLU(inplace=True),
                                            conv2=conv_bn(2 * base, 2 * base, 3, stride)))
        self.pool = nn.Sequential(OrderedDict(pool=nn.MaxPool2d(3, stride, 1), proj=conv_bn(in_planes, base, 1)))
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1))


class InceptionCifar(nn.Module):
    """Stem conv-BN-ReLU, stages of Inception modules (the first of each later stage strided), pool, classifier."""

    fixed_sites = ("stem.act",)

    def __init__(self, modules_per_stage: int = 10, bases: tuple[int, ...] = (16, 32, 64), num_classes: int = 10,
                 in_chans: int = 3, stem_width: int = 64):
        super().__init__()
        self.stem = Stem(in_chans, stem_width)
        outs = [12 * base for base in bases]  # a module's output: its branches' 1 : 8 : 2 : 1 shares of 12 * base
        self.stages = nn.Sequential(*(
            make_stage(lambda cin, stride, base=base: InceptionModule(cin, base, stride), cin, out, modules_per_stage,
                       i > 0)
            for i, (base, cin, out) in enumerate(zip(bases, [stem_width, *outs[:-1]], outs))))
        self.head = Head(outs[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model
def inception_v2_cifar(num_classes: int = 10, in_chans: int = 3, modules_per_stage: int = 10,
                       base_width: int = 16) -> InceptionCifar:
    """Inception-V2-CIFAR: 3 stages x ``modules_per_stage`` modules, base widths w/2w/4w (w=16: the paper's)."""
    return InceptionCifar(modules_per_stage, (base_width, 2 * base_width, 4 * base_width), num_classes, in_chans)
