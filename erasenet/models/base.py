"""What the zoo's families share: stages, the CIFAR stem and head, weight initialisation.

Every zoo model implements the ReLU-site contract of ``erasenet.erase.sites`` (``Block`` and ``fixed_sites``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

def make_stage(make_block: Callable[[int, int], nn.Module], in_planes: int, planes: int, count: int,
               downsample: bool) -> nn.Sequential:
    """``count`` blocks built by ``make_block(in_planes, stride)``: the first takes the previous stage's
    ``in_planes`` (and stride 2 when the stage ``downsample``s), the rest take this stage's ``planes``."""
    return nn.Sequential(*(make_block(in_planes if j == 0 else planes, 2 if downsample and j == 0 else 1)
                           for j in range(count)))


class Stem(nn.Sequential):
    """3x3 conv (at full resolution unless ``stride`` > 1), followed by BN-ReLU unless the blocks after it are
    pre-activated; ``relu=False`` keeps the BN and drops the ReLU (SNL's CIFAR ResNet-18)."""

    def __init__(self, in_chans: int, planes: int, activate: bool = True, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, planes, 3, stride, 1, bias=False)
        if activate:
            self.bn = nn.BatchNorm2d(planes)
            if relu:
                self.act = nn.ReLU(inplace=True)


def global_average(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W, ``(N, C, H, W) -> (N, C)``.

    A plain mean rather than ``adaptive_avg_pool2d``: its CUDA backward is deterministic.
    """
    return x.mean((-2, -1))


class Head(nn.Module):
    """[BN-ReLU, for pre-activation trunks,] global average pool and a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, activate: bool = False):
        super().__init__()
        if activate:
            self.bn = nn.BatchNorm2d(in_features)
            self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "act"):
            x = self.act(self.bn(x))
        return self.fc(global_average(x))


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal for convolutions and linear layers, BN weight 1 and bias 0."""
    if any(p.is_meta for p in model.parameters()):
        return  # meta tensors hold no values (a model built only to be measured)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in",
                                    nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
