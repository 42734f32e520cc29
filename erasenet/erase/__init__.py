"""Which ReLUs go: the erase policy, its budgeted methods (gates, culling), the site contract, discovery, counting."""

from .policy import (REPLACEMENTS, EraseRecord, ErasePolicy, apply_erase, declares_sites, model_activations,
                     plan_erase, select_blocks)
from .sites import Block, block_sites, declared_sites, fixed_sites, iter_blocks

__all__ = [
    "REPLACEMENTS", "Block", "EraseRecord", "ErasePolicy", "apply_erase", "block_sites", "declared_sites",
    "declares_sites", "fixed_sites", "iter_blocks", "model_activations", "plan_erase", "select_blocks",
]
