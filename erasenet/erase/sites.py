"""The ReLU-site contract: how a network tells the erase policy where its rectifiers are.

A model is a stack of *blocks* (a paper's "basic modules"). Each block owns its
rectifiers as separate ``nn.ReLU`` submodules and lists their attribute names
in forward order in ``sites``. ReLUs outside any block (a stem's, a head's)
are named in the model's ``fixed_sites``; a model registers its modules in the
order its forward pass runs them, so that registration order places each fixed
site before or after the blocks. The erase policy only ever talks to this
contract (and, for networks that declare nothing, to their graph), never to a
concrete architecture; the zoo's models implement it.
"""

from __future__ import annotations

from typing import Iterator

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
