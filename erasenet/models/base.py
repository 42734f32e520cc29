"""The ReLU-site contract every model of the zoo follows.

A model is a stack of *blocks* (a paper's "basic modules"). Each block owns its
rectifiers as separate ``nn.ReLU`` submodules and lists their attribute names
in forward order in ``sites``. ReLUs outside any block (a stem's, a head's)
are named in the model's ``fixed_sites``; a model registers its modules in the
order its forward pass runs them, so that registration order places each fixed
site before or after the blocks. The erase policy only ever talks to this
contract, never to a concrete architecture.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn as nn


class Block(nn.Module):
    """A basic module whose rectifiers are named submodules listed in forward order."""

    sites: tuple[str, ...] = ()
    # False where the last site is followed by a weighted layer inside the block (pre-activation
    # blocks end with a convolution): such a block has no output ReLU for ``erase.location=last``.
    ends_with_site: bool = True


def iter_blocks(model: nn.Module) -> Iterator[tuple[str, Block]]:
    """Yield ``(qualified_name, block)`` in depth order (module registration order)."""
    for name, module in model.named_modules():
        if isinstance(module, Block):
            yield name, module


def block_sites(model: nn.Module) -> list[list[str]]:
    """Qualified site names of every block, one list per block, in depth order."""
    return [[f"{name}.{site}" for site in block.sites] for name, block in iter_blocks(model)]


def fixed_sites(model: nn.Module) -> list[str]:
    """Qualified names of the rectifiers that belong to no block (stem, head)."""
    return list(getattr(model, "fixed_sites", ()))


def declared_sites(model: nn.Module) -> list[str]:
    """Every rectifier site the model declares, in the order its forward pass calls them.

    Blocks and fixed sites are ordered by where their modules are registered (a stem's
    ReLU before the first block, a head's after the last); within a block, by ``sites``.
    """
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    entries = [(position[name], [f"{name}.{s}" for s in block.sites]) for name, block in iter_blocks(model)]
    entries += [(position[site], [site]) for site in fixed_sites(model)]
    return [s for _, sites in sorted(entries, key=lambda e: e[0]) for s in sites]


def make_stage(make_block: Callable[[int, int], nn.Module], in_planes: int, planes: int, count: int,
               downsample: bool) -> nn.Sequential:
    """``count`` blocks built by ``make_block(in_planes, stride)``: the first takes the previous stage's
    ``in_planes`` (and stride 2 when the stage ``downsample``s), the rest take this stage's ``planes``."""
    return nn.Sequential(*(make_block(in_planes if j == 0 else planes, 2 if downsample and j == 0 else 1)
                           for j in range(count)))


class Stem(nn.Sequential):
    """3x3 conv at full resolution, followed by BN-ReLU unless the blocks after it are pre-activated."""

    def __init__(self, in_chans: int, planes: int, activate: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, planes, 3, 1, 1, bias=False)
        if activate:
            self.bn = nn.BatchNorm2d(planes)
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
