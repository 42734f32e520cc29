"""Which ReLUs go: one planner and its methods (EraseReLU's rule, gates, culling), the site contract, counting."""

from .cull import Cull
from .gates import Gates
from .policy import (EraseRecord, ErasePolicy, EraseReLU, apply_erase, declares_sites, find_sites,
                     model_activations, plan_erase, select_blocks)
from .replacements import REPLACEMENTS, Replacement
from .sites import Block, Site, SiteBlock, Sites, block_sites, declared_sites, fixed_sites, iter_blocks

__all__ = [
    "REPLACEMENTS", "Block", "Cull", "EraseRecord", "EraseReLU", "ErasePolicy", "Gates", "Replacement", "Site",
    "SiteBlock", "Sites", "apply_erase", "block_sites", "declared_sites", "declares_sites", "find_sites",
    "fixed_sites", "iter_blocks", "model_activations", "plan_erase", "select_blocks",
]
