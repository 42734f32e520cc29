"""The CIFAR ResNet-18 of the private-inference literature (SNL, Cho et al. 2022; DeepReDuce, Jha et al. 2021).

Both papers train kuangliu/pytorch-cifar's ResNet-18: torchvision's BasicBlock ResNet-18 with a 3x3 stride-1 stem
and no max pool, so its four stages (64/128/256/512 channels, strides 1, 2, 2, 2) run at 32, 16, 8 and 4 pixels on
CIFAR. Its 17 ReLUs evaluate 557,056 scalars per 32x32 image, the count both papers start their budgets from.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Head, Stem, init_weights, make_stage
from .registry import register_model
from .residual import apply_stochastic_depth, residual_block

WIDTHS = (64, 128, 256, 512)


class CifarResNet18(nn.Module):
    """Stem conv-BN-ReLU (3x3, stride 1), four stages of two post-activation basic blocks, pool, classifier.

    Shortcuts are identities where shapes match and 1x1 projections with BN where they change (option B),
    as in kuangliu's code.
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, survival_prob: float = 1.0):
        super().__init__()
        self.fixed_sites = ("stem.act",)
        self.stem = Stem(in_chans, WIDTHS[0])
        for i, (cin, planes) in enumerate(zip([WIDTHS[0], *WIDTHS[:-1]], WIDTHS)):
            self.add_module(f"layer{i + 1}", make_stage(
                lambda c, stride, planes=planes: residual_block("basic", "post", c, planes, stride, "B"),
                cin, planes, 2, i > 0))
        self.head = Head(WIDTHS[-1], num_classes)
        apply_stochastic_depth(self, survival_prob)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


@register_model
def resnet18_cifar(num_classes: int = 100, in_chans: int = 3, survival_prob: float = 1.0) -> CifarResNet18:
    """CIFAR ResNet-18 of SNL and DeepReDuce (3x3 stride-1 stem, no max pool, 64/128/256/512)."""
    return CifarResNet18(num_classes, in_chans, survival_prob)
