"""The ReLU sites of a network: the contract a zoo model declares them by, and the one list the planner reads.

A model is a stack of *blocks* (a paper's "basic modules"). Each block owns its
rectifiers as separate ``nn.ReLU`` submodules and lists their attribute names
in forward order in ``sites``. ReLUs outside any block (a stem's, a head's)
are named in the model's ``fixed_sites``; a model registers its modules in the
order its forward pass runs them, so that registration order places each fixed
site before or after the blocks. The erase policy only ever talks to this
contract (and, for networks that declare nothing, to their graph), never to a
concrete architecture; the zoo's models implement it.

However they were found, declared (:func:`declared`) or read off the graph (``erasenet.erase.graph_sites``), a
network's sites arrive at the planner as one :class:`Sites`: blocks of :class:`Site` in depth order, the fixed
sites, and every site in the order the forward pass calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch.nn as nn


class Block(nn.Module):
    """A basic module whose rectifiers are named submodules listed in forward order."""

    sites: tuple[str, ...] = ()
    # False where the last site is followed by a weighted layer inside the block (pre-activation
    # blocks end with a convolution): such a block has no output ReLU for ``erase.location=last``.
    ends_with_site: bool = True


@dataclass(frozen=True)
class Site:
    """One activation call. ``target``: the module's qualified name, or ``<owner>:<function>`` for a functional
    call; ``call``: 1-based among the forward pass's calls of that target; ``calls``: how many there are. A
    declared site is its own ``nn.ReLU`` module's only call."""

    target: str
    call: int = 1
    calls: int = 1
    owner: str = ""  # the module whose forward makes the call ("" for the top level)
    functional: bool = False

    @property
    def name(self) -> str:
        return self.target if self.calls == 1 else f"{self.target}#{self.call}"

    @property
    def swaps_module(self) -> bool:
        """Erasing it swaps the activation module it calls (else it rewrites its owner's forward)."""
        return not (self.functional or self.calls > 1)


@dataclass(frozen=True)
class SiteBlock:
    name: str
    sites: tuple[Site, ...]
    ends_with_site: bool  # the last site is the block's output (the ReLU after a residual addition)
    no_last: str = ""  # why a block that does not end with a site has no ``last``, and what to do instead

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]


@dataclass
class Sites:
    """A network's sites: its blocks in depth order, the fixed sites (outside every block), and every site in the
    order the forward pass calls them. ``residual``: False for a graph with no residual addition (one block per
    activation call); ``activations``: the module classes whose calls are sites."""

    blocks: list[SiteBlock]
    fixed: list[Site]
    forward: list[Site] = field(default_factory=list)
    residual: bool = True
    activations: tuple[type[nn.Module], ...] = (nn.ReLU,)
    how: str = "declared by the model"

    @property
    def sites(self) -> list[Site]:
        return [s for b in self.blocks for s in b.sites] + self.fixed

    def in_forward_order(self, chosen: list[Site]) -> list[Site]:
        position = {site: i for i, site in enumerate(self.forward)}
        return sorted(chosen, key=position.__getitem__)


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


def _declared_site(name: str) -> Site:
    return Site(name, owner=name.rpartition(".")[0])


def declared(model: nn.Module) -> Sites:
    """The sites a zoo model declares (its blocks' ``sites`` and its ``fixed_sites``)."""
    blocks = []
    for name, block in iter_blocks(model):
        # EraseReLU's "last" is the ReLU a block ends with; a pre-activation block ends with a convolution.
        why = (f"({type(block).__name__}) ends with a convolution; build its after-activation form "
               f"(model.form=post), as EraseReLU does")
        blocks.append(SiteBlock(name, tuple(_declared_site(f"{name}.{s}") for s in block.sites),
                                block.ends_with_site, why))
    return Sites(blocks, [_declared_site(s) for s in fixed_sites(model)],
                 [_declared_site(s) for s in declared_sites(model)])
