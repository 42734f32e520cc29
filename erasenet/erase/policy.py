"""The erase policy: which blocks, which ReLU site in each, and what replaces it.

It knows no architecture. A zoo model declares its sites (the ReLU-site contract of ``erasenet.erase.sites``);
any other network is analysed from its computation graph (``erasenet.erase.graph_sites``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from fractions import Fraction
import math

from typing import Sequence

import torch.nn as nn

from . import cull, graph_sites
from .gates import Gate, shape_gates
from .sites import declared_sites, fixed_sites, iter_blocks
from .rectifiers import shapes_seen

# What an erased site becomes: nothing (EraseReLU), or a PReLU with learned slopes initialised at 0.25: one per
# site, or one per channel of the tensor the site sees (He et al. 2015), set by ``_slope_per_channel``.
REPLACEMENTS: dict[str, type[nn.Module]] = {"identity": nn.Identity, "prelu": nn.PReLU,
                                             "prelu_channel": nn.PReLU}


@dataclass(frozen=True)
class ErasePolicy:
    """``location``: ``last``, ``first``, ``all`` or a 1-based site index within each block (``"2"``).

    ``method``: ``erase`` (EraseReLU's rule: ``location`` in a ``proportion`` of the blocks), ``gates`` (an SNL
    gate on every site, ``erasenet.erase.gates``) or ``cull`` (DeepReDuce's culling and thinning,
    ``erasenet.erase.cull``).
    """

    location: str = "last"
    proportion: float = 0.0
    replace: str = "identity"
    fixed_sites: bool = False  # also change the rectifiers outside every block (a stem's, a pre-activation head's)
    method: str = "erase"
    budget: float | None = None  # gates: ReLUs per image kept (<= 1: a fraction of the original's)
    granularity: str = "channel"  # gates: one per channel or per element
    cull_stages: Sequence[int] = ()  # cull: 1-based stages whose ReLUs are all erased
    thin: bool = False  # cull: erase every second ReLU site of the other stages

    @classmethod
    def from_config(cls, erase: dict) -> "ErasePolicy":
        """The policy of an ``erase`` config node (its training-schedule keys, such as the gates' penalty, are
        the training loop's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "cull_stages" else v) for k, v in erase.items() if k in names})


@dataclass
class EraseRecord:
    """Exactly which sites the policy changed, and into what."""

    policy: ErasePolicy
    num_blocks: int
    blocks: list[int] = field(default_factory=list)  # 1-indexed, as in the paper
    sites: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        p = self.policy
        record = {"location": p.location, "proportion": p.proportion, "replace": p.replace,
                  "fixed_sites": p.fixed_sites, "num_blocks": self.num_blocks, "blocks": self.blocks,
                  "sites": self.sites, "method": p.method}
        if p.method == "gates":
            record.update(budget=p.budget, granularity=p.granularity)
        elif p.method == "cull":
            record.update(cull_stages=list(p.cull_stages), thin=p.thin)
        return record

    def summary(self) -> str:
        p = self.policy
        if p.method == "gates":
            return (f"gates: {len(self.sites)} site(s) gated per {p.granularity}, budget {p.budget:g} ReLUs per "
                    f"image{' of the original' if p.budget <= 1 else ''}: " + ", ".join(self.sites))
        if p.method == "cull":
            return (f"cull: {len(self.sites)} site(s) -> {p.replace} (stages {list(p.cull_stages) or 'none'} culled"
                    f"{', the rest thinned' if p.thin else ''}){': ' if self.sites else ''}" + ", ".join(self.sites))
        if not self.sites:
            return f"erase: nothing changed ({self.num_blocks} blocks, proportion {self.policy.proportion:g})"
        return (f"erase: {len(self.sites)} site(s) -> {self.policy.replace} in {len(self.blocks)}/{self.num_blocks} "
                f"blocks (location {self.policy.location}, proportion {self.policy.proportion:g}): "
                + ", ".join(self.sites))


def select_blocks(num_blocks: int, proportion: float) -> list[int]:
    """1-indexed blocks to erase: evenly spread, starting with the first block.

    Block i (0-indexed) is chosen when ``floor(i * p)`` steps up, i.e. every ``1/p``-th
    block: p=0.5 -> 1,3,5,...; p=0.25 -> 1,5,9,...; p=1 -> all; p=0 -> none.
    ``floor(p * (num_blocks - 1)) + 1`` blocks are chosen for p > 0. Exact rational
    arithmetic avoids float rounding at the step boundaries.
    """
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must lie in [0, 1], got {proportion}")
    p = Fraction(str(proportion))
    return [i + 1 for i in range(num_blocks) if math.floor(i * p) > math.floor((i - 1) * p)]


def _pick(block_name: str, sites: Sequence, names: list[str], ends_with_site: bool, location: str,
          last_hint: str) -> list:
    """The entries of ``sites`` (named ``names``) that ``location`` chooses in one block."""
    if not sites:
        raise ValueError(f"block {block_name!r} declares no ReLU site to erase")
    if location == "last" and not ends_with_site:
        raise ValueError(f"erase.location=last names the ReLU a block ends with, but block {block_name!r} "
                         f"{last_hint}, or name its site by index (erase.location=1..{len(sites)}, "
                         f"sites {', '.join(names)})")
    if location == "last":
        return [sites[-1]]
    if location == "first":
        return [sites[0]]
    if location == "all":
        return list(sites)
    if location.isdigit() and 1 <= int(location) <= len(sites):
        return [sites[int(location) - 1]]
    raise ValueError(f"erase.location={location!r} does not exist in block {block_name!r}, whose sites are "
                     f"{', '.join(names)}; use last, first, all or a site index 1..{len(sites)}")


def _check_replacement(kind: str, input_shape: Sequence[int] | None, method: str = "erase") -> None:
    if method == "gates" and input_shape is None:
        raise ValueError("erase.method=gates gives each gate the shape of the tensor it sees, which a forward pass "
                         "finds: pass input_shape=(C, H, W), the shape of one input image")
    if kind not in REPLACEMENTS:
        raise ValueError(f"erase.replace must be one of {', '.join(REPLACEMENTS)}, got {kind!r}")
    if kind == "prelu_channel" and input_shape is None:
        raise ValueError("erase.replace=prelu_channel gives each site one slope per channel of the tensor it sees, "
                         "which a forward pass finds: pass input_shape=(C, H, W), the shape of one input image")


def _slope_per_channel(model: nn.Module, prelus: list[nn.Module], input_shape: Sequence[int]) -> None:
    """Swap each of ``prelus`` (one shared slope, already in ``model``) for a PReLU with one slope (0.25) per
    channel (dim 1) of its input, read off one forward pass on the meta device."""
    shapes = shapes_seen(model, prelus, input_shape, "erase.replace=prelu_channel")
    names = {id(m): name for name, m in model.named_modules()}
    for prelu, shape in zip(prelus, shapes):
        parent_name, _, leaf = names[id(prelu)].rpartition(".")
        channels = shape[1] if len(shape) > 1 else 1
        setattr(model.get_submodule(parent_name), leaf, nn.PReLU(num_parameters=channels, init=0.25))


def declares_sites(model: nn.Module) -> bool:
    """True for a zoo model (it contains erasenet Blocks); any other network is analysed from its graph."""
    return any(True for _ in iter_blocks(model))


def model_activations(model: nn.Module, activations: Sequence | None = None) -> tuple[type[nn.Module], ...]:
    """The activation classes whose calls are sites: ``activations``, else the model's ``site_activations``
    attribute (set by the external-model builders), else ``nn.ReLU``."""
    chosen = activations if activations is not None else getattr(model, "site_activations", None)
    return graph_sites.resolve_activations(chosen) if chosen is not None else (nn.ReLU,)


def _plan_budgeted(blocks: list[tuple[str, list[str]]], fixed: list[str], policy: ErasePolicy) -> EraseRecord:
    """Gates: every site; cull: the sites of the culled stages and every second one of the rest (thin)."""
    if policy.method == "gates":
        chosen = [s for _, sites in blocks for s in sites] + list(fixed)
    else:
        chosen = cull.choose_sites(blocks, fixed, policy.cull_stages, policy.thin, policy.fixed_sites)
    picked = set(chosen)
    return EraseRecord(policy, len(blocks), [i + 1 for i, (_, sites) in enumerate(blocks) if picked & set(sites)],
                       chosen)


def _plan_declared(model: nn.Module, policy: ErasePolicy) -> EraseRecord:
    blocks = list(iter_blocks(model))
    if policy.method != "erase":
        return _plan_budgeted([(name, [f"{name}.{s}" for s in block.sites]) for name, block in blocks],
                              fixed_sites(model), policy)
    record = EraseRecord(policy, len(blocks))
    for index in select_blocks(len(blocks), policy.proportion):
        name, block = blocks[index - 1]
        # EraseReLU's "last" is the ReLU a block ends with; a pre-activation block ends with a convolution.
        hint = (f"({type(block).__name__}) ends with a convolution; build its after-activation form "
                f"(model.form=post), as EraseReLU does")
        chosen = _pick(name, block.sites, list(block.sites), block.ends_with_site, policy.location, hint)
        record.sites += [f"{name}.{s}" for s in chosen]
        record.blocks.append(index)
    if policy.fixed_sites:
        record.sites = [s for s in declared_sites(model) if s in set(record.sites) | set(fixed_sites(model))]
    return record


def _plan_found(found: graph_sites.GraphSites, policy: ErasePolicy) -> tuple[EraseRecord, list]:
    if policy.method != "erase":
        record = _plan_budgeted([(b.name, b.site_names) for b in found.blocks], [s.name for s in found.fixed], policy)
        by_name = {s.name: s for s in found.sites}
        return record, [by_name[name] for name in record.sites]
    record, chosen = EraseRecord(policy, len(found.blocks)), []
    for index in select_blocks(len(found.blocks), policy.proportion):
        block = found.blocks[index - 1]
        hint = "has no activation right after its residual addition; erase another site with first or all"
        picked = _pick(block.name, block.sites, block.site_names, block.ends_with_site, policy.location, hint)
        chosen += picked
        record.sites += [s.name for s in picked]
        record.blocks.append(index)
    if policy.fixed_sites:
        chosen += found.fixed
        record.sites += [s.name for s in found.fixed]
    return record, chosen


def plan_erase(model: nn.Module, policy: ErasePolicy, activations: Sequence | None = None, *,
               input_shape: Sequence[int] | None = None) -> EraseRecord:
    """The record ``apply_erase`` would return, leaving ``model`` unchanged."""
    _check_replacement(policy.replace, input_shape, policy.method)
    if declares_sites(model):
        return _plan_declared(model, policy)
    return _plan_found(graph_sites.analyse(model, model_activations(model, activations)), policy)[0]


def apply_erase(model: nn.Module, policy: ErasePolicy, activations: Sequence | None = None, *,
                input_shape: Sequence[int] | None = None) -> EraseRecord:
    """Swap the chosen ReLU sites of ``model`` in place; return the record of what changed.

    A zoo model's sites are the ``nn.ReLU`` modules its blocks declare. Any other network is analysed from its
    graph (``erasenet.erase.graph_sites``); there ``activations`` (classes, ``relu``/``relu6`` or dotted class names)
    says which activation calls are sites, by default the model's ``site_activations`` or ``nn.ReLU``.
    ``input_shape`` (C, H, W of one input) is needed by ``replace="prelu_channel"`` and ``method="gates"`` only.
    ``method="gates"`` puts an unshaped ``Gate`` at every site and shapes it the same way ``prelu_channel`` widens
    its PReLUs; ``method="cull"`` replaces the sites ``erasenet.erase.cull`` chooses by ``replace``.
    """
    _check_replacement(policy.replace, input_shape, policy.method)
    added: list[nn.Module] = []

    def replacement() -> nn.Module:
        added.append(Gate(policy.granularity) if policy.method == "gates" else REPLACEMENTS[policy.replace]())
        return added[-1]

    if not declares_sites(model):
        found = graph_sites.analyse(model, model_activations(model, activations))
        record, chosen = _plan_found(found, policy)
        graph_sites.erase_calls(model, found, chosen, replacement)
    else:
        record = _plan_declared(model, policy)
        for site in record.sites:
            parent_name, _, leaf = site.rpartition(".")
            parent = model.get_submodule(parent_name)
            if not isinstance(getattr(parent, leaf), nn.ReLU):
                raise ValueError(f"site {site!r} is not an nn.ReLU; the model breaks the ReLU-site contract")
        for site in record.sites:
            parent_name, _, leaf = site.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, replacement())
    # A site's channel count is known only once a forward pass reaches it; a shared module's calls (torchvision's
    # BasicBlock.relu) and functional ReLUs have no module of their own to ask before erasing, their new PReLUs do.
    if policy.method == "gates":
        shape_gates(model, added, input_shape)
    elif policy.replace == "prelu_channel" and added:
        _slope_per_channel(model, added, input_shape)
    return record
