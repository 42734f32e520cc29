"""The ReLU-site contract every model of the zoo follows.

A model is a stack of *blocks* (a paper's "basic modules"). Each block owns its
rectifiers as separate ``nn.ReLU`` submodules and lists their attribute names
in forward order in ``sites``. ReLUs outside any block (a stem's, a head's)
are named in the model's ``fixed_sites``. The erase policy only ever talks to
this contract, never to a concrete architecture.
"""

from __future__ import annotations

from typing import Iterator

import torch.nn as nn


class Block(nn.Module):
    """A basic module whose rectifiers are named submodules listed in forward order."""

    sites: tuple[str, ...] = ()


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

    Fixed sites named with a ``stem`` prefix come first, then every block site in
    depth order, then the remaining fixed sites (the head's).
    """
    fixed = fixed_sites(model)
    stem = [s for s in fixed if s.split(".")[0] == "stem"]
    head = [s for s in fixed if s not in stem]
    return stem + [s for sites in block_sites(model) for s in sites] + head


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal for convolutions and linear layers, BN weight 1 and bias 0."""
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
