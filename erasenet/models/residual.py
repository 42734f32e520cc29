"""Residual blocks shared by every ResNet family (CIFAR and ImageNet), and stochastic depth.

Post-activation blocks (He et al. 2016a) end with the ReLU after the shortcut addition;
pre-activation blocks (He et al. 2016b) start with BN-ReLU and end with a convolution,
so they declare ``ends_with_site = False``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..erase.sites import Block, iter_blocks

FORMS = ("pre", "post")
KINDS = ("basic", "bottleneck")
# Where a downsampling bottleneck strides: "3x3" (fb.resnet.torch, torchvision, erasenet's default) or "1x1",
# its first 1x1 convolution (He et al.'s own pre-activation code, resnet-1k-layers).
BOTTLENECK_STRIDES = ("3x3", "1x1")


def _strides(stride: int, stride_on: str) -> tuple[int, int]:
    """(stride of the first 1x1 conv, stride of the 3x3 conv) of a bottleneck."""
    if stride_on not in BOTTLENECK_STRIDES:
        raise ValueError(f"bottleneck_stride must be one of {', '.join(BOTTLENECK_STRIDES)}, got {stride_on!r}")
    return (stride, 1) if stride_on == "1x1" else (1, stride)


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels; no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(in_planes: int, planes: int, stride: int, option: str, norm: bool = True) -> nn.Module:
    """Identity when shapes match, otherwise option A (zero-pad) or B (1x1 conv projection, + BN if ``norm``).

    Pre-activation blocks project their already normalised input, so they pass ``norm=False``.
    """
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_planes, planes, stride)
    if option == "B":
        conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(planes)) if norm else nn.Sequential(conv)
    raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")


class ResidualBlock(Block):
    """A block that adds a residual branch to a shortcut, with optional stochastic depth (Huang et al. 2016).

    In training the whole branch is dropped for the mini-batch with probability ``1 - survival``;
    at evaluation the branch is scaled by ``survival`` (the paper's test-time rule). The ReLU
    after the addition runs either way.

    The keep decision is a 0/1 tensor drawn on the input's device and multiplied in, never read back to
    Python: no device sync, no graph break under ``torch.compile``, and every parameter gets a gradient
    (zero when dropped), as DDP requires. A dropped branch is still computed, so its batch-norm running
    statistics see the batch.
    """

    survival: float = 1.0

    @property
    def random_in_training(self) -> bool:
        """Whether training draws random numbers (the keep decisions)."""
        return self.survival < 1.0

    def add_branch(self, shortcut: torch.Tensor, branch: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.survival >= 1.0:
            return shortcut + branch()
        if not self.training:
            return shortcut + self.survival * branch()
        keep = torch.rand((), device=shortcut.device) < self.survival
        return shortcut + keep.to(shortcut.dtype) * branch()


def apply_stochastic_depth(model: nn.Module, survival_prob: float) -> None:
    """Survival ``1 - l/L * (1 - survival_prob)`` for residual block l = 1..L (Huang et al.'s linear decay)."""
    if not 0.0 < survival_prob <= 1.0:
        raise ValueError(f"survival_prob must lie in (0, 1], got {survival_prob}")
    blocks = [b for _, b in iter_blocks(model) if isinstance(b, ResidualBlock)]
    for index, block in enumerate(blocks, 1):
        block.survival = 1.0 - index / len(blocks) * (1.0 - survival_prob)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class BasicBlock(ResidualBlock):
    """conv-BN-ReLU-[dropout]-conv-BN, add the shortcut, ReLU."""

    sites = ("act1", "act_out")

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.drop = _dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut)
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def branch() -> torch.Tensor:
            return self.bn2(self.conv2(self.drop(self.act1(self.bn1(self.conv1(x))))))

        return self.act_out(self.add_branch(self.shortcut(x), branch))


class PreActBlock(ResidualBlock):
    """BN-ReLU-conv-BN-ReLU-[dropout]-conv, add the shortcut (a projection sees the pre-activated input)."""

    sites = ("act1", "act2")
    ends_with_site = False

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.drop = _dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre)
        return self.add_branch(shortcut, lambda: self.conv2(self.drop(self.act2(self.bn2(self.conv1(pre))))))


class Bottleneck(ResidualBlock):
    """1x1 conv-BN-ReLU, 3x3 (grouped) conv-BN-ReLU, 1x1 conv-BN, add the shortcut, ReLU.

    Strided in the 3x3 conv unless ``stride_on="1x1"``, and with torchvision's attribute names
    (``downsample`` for the shortcut), so an ImageNet ResNet-50 built from it loads torchvision's weights.
    """

    sites = ("act1", "act2", "act_out")

    def __init__(self, in_planes: int, width: int, planes: int, stride: int = 1, groups: int = 1,
                 shortcut: str = "B", stride_on: str = "3x3"):
        super().__init__()
        stride1, stride3 = _strides(stride, stride_on)
        self.conv1 = nn.Conv2d(in_planes, width, 1, stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride3, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(in_planes, planes, stride, shortcut)
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def branch() -> torch.Tensor:
            out = self.act1(self.bn1(self.conv1(x)))
            out = self.act2(self.bn2(self.conv2(out)))
            return self.bn3(self.conv3(out))

        return self.act_out(self.add_branch(self.downsample(x), branch))


class PreActBottleneck(ResidualBlock):
    """BN-ReLU-1x1 conv, BN-ReLU-3x3 (grouped) conv, BN-ReLU-1x1 conv, add the shortcut.

    Strided in the 3x3 conv, or in the first 1x1 conv with ``stride_on="1x1"`` (He et al.'s own code).
    """

    sites = ("act1", "act2", "act3")
    ends_with_site = False

    def __init__(self, in_planes: int, width: int, planes: int, stride: int = 1, groups: int = 1,
                 shortcut: str = "B", stride_on: str = "3x3"):
        super().__init__()
        stride1, stride3 = _strides(stride, stride_on)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, width, 1, stride1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride3, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, planes, 1, bias=False)
        self.downsample = make_shortcut(in_planes, planes, stride, shortcut, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if isinstance(self.downsample, nn.Identity) else self.downsample(pre)

        def branch() -> torch.Tensor:
            out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
            return self.conv3(self.act3(self.bn3(out)))

        return self.add_branch(shortcut, branch)


def residual_block(kind: str, form: str, in_planes: int, planes: int, stride: int, shortcut: str,
                   dropout: float = 0.0, width: int | None = None, groups: int = 1,
                   bottleneck_stride: str = "3x3") -> ResidualBlock:
    """The ``kind`` (basic | bottleneck) block in ``form`` (pre | post); ``width``: a bottleneck's inner width,
    ``bottleneck_stride``: the bottleneck's convolution that strides (3x3 | 1x1)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if kind == "basic":
        return (PreActBlock if form == "pre" else BasicBlock)(in_planes, planes, stride, shortcut, dropout)
    if kind == "bottleneck":
        if dropout:
            raise ValueError("dropout is only defined for basic blocks (between their two convolutions)")
        cls = PreActBottleneck if form == "pre" else Bottleneck
        return cls(in_planes, width or planes // 4, planes, stride, groups, shortcut, bottleneck_stride)
    raise ValueError(f"block must be one of {', '.join(KINDS)}, got {kind!r}")
