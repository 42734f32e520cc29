"""DeepReDuce's ReLU culling and thinning (Jha et al., ICML 2021): which ReLU sites a stage-wise policy erases.

A *stage* is a run of consecutive blocks with one parent module: ``layer1``..``layer4`` of a ResNet (the zoo's
``make_stage`` and torchvision's ``layerN``), ``stages.N`` of a timm network. A network whose blocks share one
parent (an MLP, a plain stack) is one stage.

- *culling* (``erase.cull_stages=[1,2]``, 1-based): every ReLU site of those stages is erased;
- *thinning* (``erase.thin=true``): in every other stage, every second ReLU site in forward order is erased,
  starting with the second (a post-activation basic block keeps its first ReLU and loses the one after its
  addition);
- ``erase.fixed_sites=true`` also culls the ReLUs outside every block (a stem's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .replacements import Replacement
from .sites import Site, Sites


def stages(block_names: Sequence[str]) -> list[list[int]]:
    """The 0-based indices of the blocks named ``block_names`` grouped into stages: consecutive blocks whose names
    share the parent module."""
    grouped: list[list[int]] = []
    parent = None
    for i, name in enumerate(block_names):
        this = name.rpartition(".")[0]
        if not grouped or this != parent:
            grouped.append([])
        grouped[-1].append(i)
        parent = this
    return grouped


@dataclass(frozen=True)
class Cull:
    """``erase.method=cull``: ``stages`` (1-based) culled; with ``thin``, every second site of the others."""

    stages: tuple[int, ...] = ()
    thin: bool = False

    name = "cull"

    @classmethod
    def from_config(cls, erase: dict) -> "Cull":
        return cls(tuple(erase.get("cull_stages", ())), bool(erase.get("thin", False)))

    def choose(self, sites: Sites, fixed_sites: bool) -> list[Site]:
        groups = stages([b.name for b in sites.blocks])
        unknown = [s for s in self.stages if not 1 <= s <= len(groups)]
        if unknown:
            names = ", ".join(f"{k + 1}: {sites.blocks[g[0]].name.rpartition('.')[0] or '(top level)'}"
                              for k, g in enumerate(groups))
            raise ValueError(f"erase.cull_stages={list(self.stages)} names stage(s) {unknown} the network does not "
                             f"have; its {len(groups)} stage(s) are {names}")
        chosen: list[Site] = []
        for k, group in enumerate(groups):
            in_stage = [s for i in group for s in sites.blocks[i].sites]
            if k + 1 in self.stages:
                chosen += in_stage
            elif self.thin:
                chosen += in_stage[1::2]
        return chosen + (sites.fixed if fixed_sites else [])

    def replacement(self, replace: Replacement) -> Replacement:
        return replace

    def record(self) -> dict:
        return {"cull_stages": list(self.stages), "thin": self.thin}

    def describe(self) -> str:
        return f"stages {list(self.stages) or 'none'} culled{', the rest thinned' if self.thin else ''}"
