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

from typing import Sequence


def stages(blocks: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
    """The 0-based indices of ``blocks`` (name, sites) grouped into stages: consecutive blocks whose names share
    the parent module."""
    grouped: list[list[int]] = []
    parent = None
    for i, (name, _) in enumerate(blocks):
        this = name.rpartition(".")[0]
        if not grouped or this != parent:
            grouped.append([])
        grouped[-1].append(i)
        parent = this
    return grouped


def choose_sites(blocks: Sequence[tuple[str, Sequence[str]]], fixed: Sequence[str], cull_stages: Sequence[int],
                 thin: bool, fixed_sites: bool) -> list[str]:
    """The site names culling and thinning erase, in forward order of ``blocks`` then ``fixed``."""
    groups = stages(blocks)
    unknown = [s for s in cull_stages if not 1 <= s <= len(groups)]
    if unknown:
        names = ", ".join(f"{k + 1}: {blocks[g[0]][0].rpartition('.')[0] or '(top level)'}"
                          for k, g in enumerate(groups))
        raise ValueError(f"erase.cull_stages={list(cull_stages)} names stage(s) {unknown} the network does not have; "
                         f"its {len(groups)} stage(s) are {names}")
    chosen: list[str] = []
    for k, group in enumerate(groups):
        sites = [s for i in group for s in blocks[i][1]]
        if k + 1 in cull_stages:
            chosen += sites
        elif thin:
            chosen += sites[1::2]
    if fixed_sites:
        chosen += list(fixed)
    return chosen
