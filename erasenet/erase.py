"""The erase policy: which blocks, which ReLU site in each, and what replaces it.

It knows no architecture: it reads the ReLU-site contract of ``erasenet.models.base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
import math

import torch.nn as nn

from .models.base import Block, iter_blocks

REPLACEMENTS = ("identity", "prelu")  # what an erased site becomes (config.py validates against the same names)


@dataclass(frozen=True)
class ErasePolicy:
    """``location``: ``last``, ``first``, ``all`` or a 1-based site index within each block (``"2"``)."""

    location: str = "last"
    proportion: float = 0.0
    replace: str = "identity"


@dataclass
class EraseRecord:
    """Exactly which sites the policy changed, and into what."""

    policy: ErasePolicy
    num_blocks: int
    blocks: list[int] = field(default_factory=list)  # 1-indexed, as in the paper
    sites: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"location": self.policy.location, "proportion": self.policy.proportion,
                "replace": self.policy.replace, "num_blocks": self.num_blocks,
                "blocks": self.blocks, "sites": self.sites}

    def summary(self) -> str:
        if not self.sites:
            return f"erase: nothing changed ({self.num_blocks} blocks, proportion {self.policy.proportion:g})"
        return (f"erase: {len(self.sites)} site(s) -> {self.policy.replace} in {len(self.blocks)}/{self.num_blocks} "
                f"blocks (location {self.policy.location}, proportion {self.policy.proportion:g}): "
                + ", ".join(self.sites))


def select_blocks(num_blocks: int, proportion: float) -> list[int]:
    """1-indexed blocks to erase: evenly spread, starting with the first block.

    Block i (0-indexed) is chosen when ``floor(i * p)`` steps up, i.e. every ``1/p``-th
    block: p=0.5 -> 1,3,5,...; p=0.25 -> 1,5,9,...; p=1 -> all; p=0 -> none.
    ``ceil(num_blocks * p)`` blocks are chosen. Exact rational arithmetic avoids
    float rounding at the step boundaries.
    """
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must lie in [0, 1], got {proportion}")
    p = Fraction(str(proportion))
    return [i + 1 for i in range(num_blocks) if math.floor(i * p) > math.floor((i - 1) * p)]


def _site_names(block_name: str, block: Block, location: str) -> list[str]:
    sites = block.sites
    if not sites:
        raise ValueError(f"block {block_name!r} declares no ReLU site to erase")
    if location == "last" and not block.ends_with_site:
        # EraseReLU's "last" is the ReLU a block ends with; a pre-activation block ends with a convolution.
        raise ValueError(f"erase.location=last names the ReLU a block ends with, but block {block_name!r} "
                         f"({type(block).__name__}) ends with a convolution; build its after-activation form "
                         f"(model.form=post), as EraseReLU does, or name its site by index "
                         f"(erase.location=1..{len(sites)}, sites {', '.join(sites)})")
    if location == "last":
        chosen = [sites[-1]]
    elif location == "first":
        chosen = [sites[0]]
    elif location == "all":
        chosen = list(sites)
    elif location.isdigit() and 1 <= int(location) <= len(sites):
        chosen = [sites[int(location) - 1]]
    else:
        raise ValueError(f"erase.location={location!r} does not exist in block {block_name!r}, whose sites are "
                         f"{', '.join(sites)}; use last, first, all or a site index 1..{len(sites)}")
    return [f"{block_name}.{s}" for s in chosen]


def _replacement(kind: str) -> nn.Module:
    if kind == "identity":
        return nn.Identity()
    if kind == "prelu":
        return nn.PReLU()
    raise ValueError(f"erase.replace must be one of {', '.join(REPLACEMENTS)}, got {kind!r}")


def apply_erase(model: nn.Module, policy: ErasePolicy) -> EraseRecord:
    """Swap the chosen ReLU sites of ``model`` in place; return the record of what changed."""
    blocks = list(iter_blocks(model))
    record = EraseRecord(policy, len(blocks))
    for index in select_blocks(len(blocks), policy.proportion):
        name, block = blocks[index - 1]
        for site in _site_names(name, block, policy.location):
            parent_name, _, leaf = site.rpartition(".")
            parent = model.get_submodule(parent_name)
            if not isinstance(getattr(parent, leaf), nn.ReLU):
                raise ValueError(f"site {site!r} is not an nn.ReLU; the model breaks the ReLU-site contract")
            setattr(parent, leaf, _replacement(policy.replace))
            record.sites.append(site)
        record.blocks.append(index)
    return record
