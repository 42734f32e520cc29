"""CIFAR residual networks: ResNet (He et al. 2016a), Pre-act ResNet (He et al. 2016b), Wide ResNet
(Zagoruyko & Komodakis 2016) and ResNeXt-29 (Xie et al. 2017), all on one three-stage trunk."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import Head, Stem, init_weights, make_stage
from .registry import register_model
from .residual import apply_stochastic_depth, residual_block

__all__ = ["CifarResNet", "blocks_per_stage", "preact_resnet", "resnet", "resnext29", "wrn"]


class CifarResNet(nn.Module):
    """Stem, three stages of ``blocks_per_stage`` residual blocks (strides 1, 2, 2), head.

    ``form="post"``: stem conv-BN-ReLU, post-activation blocks. ``form="pre"``: stem conv only,
    pre-activation blocks, and the final BN-ReLU in the head (a fixed site after the blocks).
    """

    def __init__(self, kind: str, form: str, blocks_per_stage: int, widths: Sequence[int], num_classes: int = 10,
                 in_chans: int = 3, stem_width: int = 16, shortcut: str = "A", dropout: float = 0.0,
                 inner_widths: Sequence[int] | None = None, groups: int = 1, survival_prob: float = 1.0,
                 bottleneck_stride: str = "3x3"):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"a residual network needs at least one block per stage, got {blocks_per_stage}")
        pre = form == "pre"
        self.fixed_sites = ("head.act",) if pre else ("stem.act",)
        self.stem = Stem(in_chans, stem_width, activate=not pre)
        for i, (cin, planes) in enumerate(zip([stem_width, *widths[:-1]], widths)):
            width = inner_widths[i] if inner_widths else None
            self.add_module(f"layer{i + 1}", make_stage(
                lambda c, stride, planes=planes, width=width: residual_block(kind, form, c, planes, stride, shortcut,
                                                                            dropout, width, groups, bottleneck_stride),
                cin, planes, blocks_per_stage, i > 0))
        self.head = Head(widths[-1], num_classes, activate=pre)
        apply_stochastic_depth(self, survival_prob)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def blocks_per_stage(depth: int, kind: str, extra: int = 2) -> int:
    """n of a depth ``6n + extra`` (basic) or ``9n + extra`` (bottleneck) network."""
    layers = {"basic": 6, "bottleneck": 9}[kind]
    if (depth - extra) % layers or depth <= extra:
        raise ValueError(f"a {kind}-block network of this family has depth {layers}n+{extra}, got {depth}")
    return (depth - extra) // layers


def _kind(block: str) -> str:
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be basic or bottleneck, got {block!r}")
    return block


def _widths(kind: str) -> tuple[int, int, int]:
    return (16, 32, 64) if kind == "basic" else (64, 128, 256)  # bottlenecks expand 4x


# --- ResNet (post-activation) -------------------------------------------------------------------------------

@register_model
def resnet(depth: int = 20, num_classes: int = 10, in_chans: int = 3, block: str = "basic", shortcut: str = "A",
           survival_prob: float = 1.0) -> CifarResNet:
    """CIFAR ResNet of depth 6n+2 (basic blocks) or 9n+2 (bottleneck blocks)."""
    kind = _kind(block)
    return CifarResNet(kind, "post", blocks_per_stage(depth, kind), _widths(kind), num_classes, in_chans,
                       shortcut=shortcut, survival_prob=survival_prob)


def _named_resnet(depth: int, block: str = "basic", shortcut: str = "A") -> None:
    def build(num_classes: int = 10, in_chans: int = 3, shortcut: str = shortcut,
              survival_prob: float = 1.0) -> CifarResNet:
        return resnet(depth, num_classes, in_chans, block, shortcut, survival_prob)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR ({blocks_per_stage(depth, block)} {block} blocks per stage)."
    register_model(build)


for _depth in (20, 32, 44, 56, 110, 1202):
    _named_resnet(_depth)
_named_resnet(164, "bottleneck", "B")


# --- Pre-activation ResNet ----------------------------------------------------------------------------------

@register_model
def preact_resnet(depth: int = 110, num_classes: int = 10, in_chans: int = 3, block: str = "basic",
                  form: str = "pre", shortcut: str = "A", survival_prob: float = 1.0,
                  bottleneck_stride: str = "3x3") -> CifarResNet:
    """Pre-activation ResNet of depth 6n+2 (basic) or 9n+2 (bottleneck); ``form=post``: after-activation.

    ``bottleneck_stride``: where a downsampling bottleneck strides, its 3x3 conv or (He et al.'s code) its first 1x1.
    """
    kind = _kind(block)
    return CifarResNet(kind, form, blocks_per_stage(depth, kind), _widths(kind), num_classes, in_chans,
                       shortcut=shortcut, survival_prob=survival_prob, bottleneck_stride=bottleneck_stride)


def _named_preact(depth: int, block: str, shortcut: str) -> None:
    if block == "bottleneck":
        def build(num_classes: int = 10, in_chans: int = 3, form: str = "pre", shortcut: str = shortcut,
                  survival_prob: float = 1.0, bottleneck_stride: str = "3x3") -> CifarResNet:
            return preact_resnet(depth, num_classes, in_chans, block, form, shortcut, survival_prob,
                                 bottleneck_stride)
    else:
        def build(num_classes: int = 10, in_chans: int = 3, form: str = "pre", shortcut: str = shortcut,
                  survival_prob: float = 1.0) -> CifarResNet:
            return preact_resnet(depth, num_classes, in_chans, block, form, shortcut, survival_prob)

    build.__name__ = f"preact_resnet{depth}"
    build.__doc__ = (f"Pre-act ResNet-{depth} for CIFAR ({blocks_per_stage(depth, block)} {block} blocks per "
                     f"stage); form=post is EraseReLU's after-activation conversion.")
    register_model(build)


for _depth, _block, _shortcut in ((62, "basic", "A"), (110, "basic", "A"), (164, "bottleneck", "B"),
                                  (1001, "bottleneck", "B")):
    _named_preact(_depth, _block, _shortcut)


# --- Wide ResNet --------------------------------------------------------------------------------------------

@register_model
def wrn(depth: int = 28, width: int = 10, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0,
        form: str = "pre", survival_prob: float = 1.0) -> CifarResNet:
    """WRN-depth-width: (depth-4)/6 pre-act basic blocks per stage, widths 16k/32k/64k, 1x1 projections."""
    n = blocks_per_stage(depth, "basic", extra=4)
    return CifarResNet("basic", form, n, (16 * width, 32 * width, 64 * width), num_classes, in_chans,
                       shortcut="B", dropout=dropout, survival_prob=survival_prob)


def _named_wrn(depth: int, width: int) -> None:
    def build(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0, form: str = "pre",
              survival_prob: float = 1.0) -> CifarResNet:
        return wrn(depth, width, num_classes, in_chans, dropout, form, survival_prob)

    build.__name__ = f"wrn{depth}_{width}"
    build.__doc__ = f"WRN-{depth}-{width} for CIFAR/SVHN; dropout > 0 gives the -D variant (0.3 CIFAR, 0.4 SVHN)."
    register_model(build)


for _depth, _width in ((16, 8), (28, 10), (40, 4), (52, 1), (52, 10)):
    _named_wrn(_depth, _width)


# --- ResNeXt-29 ---------------------------------------------------------------------------------------------

@register_model
def resnext29(cardinality: int = 8, base_width: int = 64, num_classes: int = 10, in_chans: int = 3,
              blocks: int = 3, out_width: int = 256, survival_prob: float = 1.0) -> CifarResNet:
    """ResNeXt for CIFAR: stem 64, 3 stages of ``blocks`` grouped bottlenecks, outputs 256/512/1024.

    The grouped 3x3 conv of stage i is ``cardinality x base_width x 2**i`` wide (29 layers at 3 blocks);
    ``out_width`` is stage 1's output width, doubled at each stage.
    """
    inner = [cardinality * base_width * 2**i for i in range(3)]
    outs = [out_width * 2**i for i in range(3)]
    return CifarResNet("bottleneck", "post", blocks, outs, num_classes, in_chans, stem_width=64,
                       shortcut="B", inner_widths=inner, groups=cardinality, survival_prob=survival_prob)


def _named_resnext(cardinality: int) -> None:
    def build(num_classes: int = 10, in_chans: int = 3, survival_prob: float = 1.0) -> CifarResNet:
        return resnext29(cardinality, 64, num_classes, in_chans, 3, 256, survival_prob)

    build.__name__ = f"resnext29_{cardinality}x64d"
    build.__doc__ = f"ResNeXt-29 ({cardinality}x64d) for CIFAR."
    register_model(build)


for _cardinality in (8, 16):
    _named_resnext(_cardinality)
