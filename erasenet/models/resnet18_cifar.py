"""The CIFAR ResNet-18 of the private-inference literature (SNL, Cho et al. 2022; DeepReDuce, Jha et al. 2021).

Both papers train kuangliu/pytorch-cifar's ResNet-18: torchvision's BasicBlock ResNet-18 with a 3x3 stride-1 stem
and no max pool, so its four stages (64/128/256/512 channels, strides 1, 2, 2, 2) run at 32, 16, 8 and 4 pixels on
CIFAR. Its 17 ReLUs evaluate 557,056 scalars per 32x32 image, the count both papers start their budgets from.

DeepReDuce's *ReLU reshaping* scales it down for its smallest budgets, and its released model definitions do so
with three knobs, which this builder takes too: ``width`` (their ``alpha``: every stage's channels times it, e.g.
0.5 for 32/64/128/256), ``stem_stride`` (their ``rho`` = 0.5 is a stride-2 stem conv, so the stages run at half
the resolution and each ReLU count is a quarter) and ``blocks`` (blocks per stage, ``[2, 1, 1, 1]`` for their
smallest model).

SNL's released network (``resnet18_in`` of its ``archs_unstructured/cifar_resnet.py``) has no ReLU in its stem: the
stem is conv-BN and the first ReLU is inside the first block, so its 16 ReLUs evaluate 491,520 scalars per image,
the count its budgets are cut from. ``stem_relu=False`` builds that network.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import Head, Stem, init_weights, make_stage
from .registry import register_model
from .residual import apply_stochastic_depth, residual_block

WIDTHS = (64, 128, 256, 512)


class CifarResNet18(nn.Module):
    """Stem conv-BN-ReLU (3x3, stride 1), four stages of two post-activation basic blocks, pool, classifier.

    Shortcuts are identities where shapes match and 1x1 projections with BN where they change (option B),
    as in kuangliu's code. ``width``, ``stem_stride`` and ``blocks`` scale it; ``stem_relu=False`` drops the stem's
    ReLU (SNL's network; module docstring).
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, survival_prob: float = 1.0, width: float = 1.0,
                 stem_stride: int = 1, blocks: Sequence[int] | None = None, stem_relu: bool = True):
        super().__init__()
        blocks = tuple(int(b) for b in blocks) if blocks is not None else (2, 2, 2, 2)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"model.blocks gives the blocks of each of the 4 stages, each at least 1; got {blocks}")
        widths = tuple(int(w * width) for w in WIDTHS)  # as DeepReDuce's int(64 * alpha)
        if min(widths) < 1:
            raise ValueError(f"model.width={width} leaves a stage without channels ({widths})")
        if stem_stride < 1:
            raise ValueError(f"model.stem_stride must be a positive integer, got {stem_stride}")
        self.fixed_sites = ("stem.act",) if stem_relu else ()
        self.stem = Stem(in_chans, widths[0], stride=stem_stride, relu=stem_relu)
        for i, (cin, planes, count) in enumerate(zip([widths[0], *widths[:-1]], widths, blocks)):
            self.add_module(f"layer{i + 1}", make_stage(
                lambda c, stride, planes=planes: residual_block("basic", "post", c, planes, stride, "B"),
                cin, planes, count, i > 0))
        self.head = Head(widths[-1], num_classes)
        apply_stochastic_depth(self, survival_prob)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


@register_model
def resnet18_cifar(num_classes: int = 100, in_chans: int = 3, survival_prob: float = 1.0, width: float = 1.0,
                   stem_stride: int = 1, blocks: Sequence[int] | None = None,
                   stem_relu: bool = True) -> CifarResNet18:
    """CIFAR ResNet-18 of SNL and DeepReDuce (3x3 stride-1 stem, no max pool, 64/128/256/512); ``width``,
    ``stem_stride`` and ``blocks`` (per stage; None: two each) give DeepReDuce's channel, resolution and depth
    scaling; ``stem_relu=False`` SNL's stem without a ReLU (491,520 ReLUs per 32x32 image instead of 557,056)."""
    return CifarResNet18(num_classes, in_chans, survival_prob, width, stem_stride, blocks, stem_relu)
