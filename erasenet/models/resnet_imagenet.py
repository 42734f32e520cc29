"""ImageNet ResNets in torchvision's layout: ResNet-50/101/152/200, ResNeXt-152 (32x4d), Pre-act ResNet-200.

Post-activation models carry torchvision's module names (``conv1``, ``bn1``, ``layer1.0.downsample.0``,
``fc``, ...), so ``resnet50`` loads ``torchvision.models.resnet50`` weights with ``strict=True``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import global_average, init_weights, make_stage
from .registry import register_model
from .residual import apply_stochastic_depth, residual_block

IMAGENET_INPUT = (3, 224, 224)
LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


class ImageNetResNet(nn.Module):
    """7x7/2 stem and 3x3/2 max pool, four stages of bottlenecks (strides 1, 2, 2, 2), pool, classifier.

    ``form="pre"``: the stem is conv and max pool only, the blocks are pre-activated, and a final
    BN-ReLU precedes the pool. (The first block's own BN-ReLU stands in for the stem's BN-ReLU of
    He et al.'s code, with the same parameter count.)
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_chans: int = 3, form: str = "post",
                 groups: int = 1, width_per_group: int = 64, survival_prob: float = 1.0,
                 bottleneck_stride: str = "3x3"):
        super().__init__()
        pre = form == "pre"
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        if not pre:
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for i, count in enumerate(layers):
            planes = 64 * 2**i
            width = planes * width_per_group // 64 * groups
            self.add_module(f"layer{i + 1}", make_stage(
                lambda c, stride, planes=planes, width=width: residual_block("bottleneck", form, c, planes * 4, stride,
                                                                            "B", 0.0, width, groups,
                                                                            bottleneck_stride),
                in_planes, planes * 4, count, i > 0))
            in_planes = planes * 4
        if pre:
            self.bn_final = nn.BatchNorm2d(in_planes)
            self.relu_final = nn.ReLU(inplace=True)
        self.fixed_sites = ("relu_final",) if pre else ("relu",)
        self.fc = nn.Linear(in_planes, num_classes)
        apply_stochastic_depth(self, survival_prob)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if hasattr(self, "relu"):
            x = self.relu(self.bn1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))
        if hasattr(self, "relu_final"):
            x = self.relu_final(self.bn_final(x))
        return self.fc(global_average(x))


def _named(name: str, depth: int, form: str | None = None, groups: int = 1, width_per_group: int = 64,
           doc: str = "") -> None:
    """Register ``name``; a ``form`` option (default ``form``) only where the family has both forms."""
    if form is None:
        def build(num_classes: int = 1000, in_chans: int = 3, survival_prob: float = 1.0) -> ImageNetResNet:
            return ImageNetResNet(LAYERS[depth], num_classes, in_chans, "post", groups, width_per_group,
                                  survival_prob)
    else:
        def build(num_classes: int = 1000, in_chans: int = 3, form: str = form, survival_prob: float = 1.0,
                  bottleneck_stride: str = "3x3") -> ImageNetResNet:
            return ImageNetResNet(LAYERS[depth], num_classes, in_chans, form, groups, width_per_group,
                                  survival_prob, bottleneck_stride)

    build.__name__, build.__doc__ = name, doc
    register_model(build, input_shape=IMAGENET_INPUT)


for _depth in (50, 101, 152, 200):
    _named(f"resnet{_depth}", _depth, doc=f"ImageNet ResNet-{_depth} (torchvision layout, stride in the 3x3 conv).")
_named("resnext152_32x4d", 152, groups=32, width_per_group=4, doc="ImageNet ResNeXt-152 (32x4d).")
_named("preact_resnet200", 200, form="pre", doc="ImageNet Pre-act ResNet-200; form=post: after-activation.")
