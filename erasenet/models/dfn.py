"""Deeply fused merge-and-run networks, DFN-MR (Zhao et al. 2016), as trained by Zhao et al. 2017.

A merge-and-run block runs two residual branches (conv-BN-ReLU-conv-BN) side by side: it averages
their inputs (merge) and adds that average to each branch's output, followed by a ReLU (run).
``depth`` counts the weighted layers along one path, 6n + 2 with n blocks per stage, widths
``w/2w/4w``; DFN-MR1 of depth 110 is ``width=16``. Where a stage starts, both branches stride and
the merged input takes the parameter-free option-A shortcut. Sites in forward order: the inner
ReLU of branch a, of branch b, then the ReLUs after the additions of a and of b; ``last`` is
Zhao et al.'s Type 1 proportional module (the ReLU after the addition in one branch), site 2 their
Type 2 (the ReLU before the addition in one branch).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Block, init_weights, make_stage
from .registry import register_model
from .resnet_cifar import Head, Stem, blocks_per_stage
from .residual import make_shortcut


class ResidualBranch(nn.Sequential):
    """conv-BN-ReLU-conv-BN."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)


class MergeRunBlock(Block):
    """Two residual branches ``a`` and ``b``; each output is ReLU(branch + mean of the two inputs)."""

    sites = ("a.act1", "b.act1", "act_a", "act_b")

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.a = ResidualBranch(in_planes, planes, stride)
        self.b = ResidualBranch(in_planes, planes, stride)
        self.shortcut = make_shortcut(in_planes, planes, stride, "A")
        self.act_a = nn.ReLU(inplace=True)
        self.act_b = nn.ReLU(inplace=True)

    def forward(self, xs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = xs
        fa, fb = self.a(xa), self.b(xb)
        merged = self.shortcut((xa + xb) / 2)
        return self.act_a(fa + merged), self.act_b(fb + merged)


class DFNMR(nn.Module):
    """Stem conv-BN-ReLU feeding both paths, three stages of merge-and-run blocks, mean of the paths, head."""

    fixed_sites = ("stem.act",)

    def __init__(self, blocks: int, width: int = 16, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.stem = Stem(in_chans, width)
        widths = [width * 2**i for i in range(3)]
        self.stages = nn.Sequential(*(
            make_stage(lambda cin, stride, planes=planes: MergeRunBlock(cin, planes, stride), cin, planes, blocks, i > 0)
            for i, (cin, planes) in enumerate(zip([width] + widths[:-1], widths))))
        self.head = Head(widths[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        xa, xb = self.stages((x, x))
        return self.head((xa + xb) / 2)


@register_model
def dfn_mr(depth: int = 110, width: int = 16, num_classes: int = 10, in_chans: int = 3) -> DFNMR:
    """DFN-MR of ``depth`` 6n+2 along one path (Zhao et al. 2017 report DFN-MR1 at depth 110)."""
    return DFNMR(blocks_per_stage(depth, "basic"), width, num_classes, in_chans)
