"""Deeply fused merge-and-run networks, DFN-MR (Zhao et al. 2016), as trained by Zhao et al. 2017.

A merge-and-run block runs two residual branches (conv-BN-ReLU-conv-BN) side by side: it averages
their inputs (merge) and adds that average to each branch's output, followed by a ReLU (run).
``depth`` counts the weighted layers as the authors' code does, through both branches: a block is
four 3x3 convolutions, so a depth of ``12n + 2`` has n blocks per stage, widths ``w/2w/4w``;
DFN-MR1 of depth 110 is ``width=16``, 9 blocks per stage, 1.7M parameters. Where a stage starts,
both branches stride, and each path's input reaches the merge through its own 1x1 conv-BN
projection (``shortcut="B"``, the authors' code) before the two are averaged; ``shortcut="A"``
averages first and takes the parameter-free zero-padding shortcut. Sites in forward order: the inner
ReLU of branch a, of branch b, then the ReLUs after the additions of a and of b; ``last`` is
Zhao et al.'s Type 1 proportional module (the ReLU after the addition in one branch), site 2 their
Type 2 (the ReLU before the addition in one branch).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..erase.sites import Block
from .base import Head, Stem, init_weights, make_stage
from .registry import register_model
from .residual import make_shortcut

LAYERS_PER_BLOCK = 4  # two branches of two 3x3 convolutions


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

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.a = ResidualBranch(in_planes, planes, stride)
        self.b = ResidualBranch(in_planes, planes, stride)
        reshape = stride != 1 or in_planes != planes
        self.per_path = shortcut == "B" and reshape  # each path projected on its own, then averaged
        if self.per_path:
            self.shortcut_a = make_shortcut(in_planes, planes, stride, "B")
            self.shortcut_b = make_shortcut(in_planes, planes, stride, "B")
        else:
            self.shortcut = make_shortcut(in_planes, planes, stride, shortcut)
        self.act_a = nn.ReLU(inplace=True)
        self.act_b = nn.ReLU(inplace=True)

    def forward(self, xs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = xs
        fa, fb = self.a(xa), self.b(xb)
        if self.per_path:
            merged = (self.shortcut_a(xa) + self.shortcut_b(xb)) / 2
        else:
            merged = self.shortcut((xa + xb) / 2)
        return self.act_a(fa + merged), self.act_b(fb + merged)


class DFNMR(nn.Module):
    """Stem conv-BN-ReLU feeding both paths, three stages of merge-and-run blocks, mean of the paths, head."""

    fixed_sites = ("stem.act",)

    def __init__(self, blocks: int, width: int = 16, num_classes: int = 10, in_chans: int = 3, shortcut: str = "B"):
        super().__init__()
        self.stem = Stem(in_chans, width)
        widths = [width * 2**i for i in range(3)]
        self.stages = nn.Sequential(*(
            make_stage(lambda cin, stride, planes=planes: MergeRunBlock(cin, planes, stride, shortcut),
                       cin, planes, blocks, i > 0)
            for i, (cin, planes) in enumerate(zip([width] + widths[:-1], widths))))
        self.head = Head(widths[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        xa, xb = self.stages((x, x))
        return self.head((xa + xb) / 2)


def merge_run_blocks(depth: int) -> int:
    """Blocks per stage of a DFN-MR of ``depth`` = 12n + 2 (stem, 3 stages of n four-conv blocks, classifier)."""
    if depth <= 2 or (depth - 2) % (3 * LAYERS_PER_BLOCK):
        raise ValueError(f"a DFN-MR counts both branches and has depth 12n+2 (e.g. 110: 9 blocks per stage), "
                         f"got {depth}")
    return (depth - 2) // (3 * LAYERS_PER_BLOCK)


@register_model
def dfn_mr(depth: int = 110, width: int = 16, num_classes: int = 10, in_chans: int = 3,
           shortcut: str = "B") -> DFNMR:
    """DFN-MR of ``depth`` 12n+2, both branches counted (Zhao et al. 2017's DFN-MR1: depth 110, 1.7M parameters)."""
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut option must be 'A' or 'B', got {shortcut!r}")
    return DFNMR(merge_run_blocks(depth), width, num_classes, in_chans, shortcut)
