"""The erase policy: which sites change, and what replaces them; one planner for every method and network.

It knows no architecture. A zoo model declares its sites (the ReLU-site contract of ``erasenet.erase.sites``);
any other network is analysed from its computation graph (``erasenet.erase.graph_sites``). Either way the planner
reads one :class:`~erasenet.erase.sites.Sites`, asks the policy's method which of them change, and swaps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
import math

from typing import Protocol, Sequence, Union

import torch.nn as nn

from ..common.choices import METHODS as METHOD_NAMES
from . import graph_sites
from .cull import Cull
from .gates import Gates
from .replacements import Replacement, replacement
from .sites import Site, SiteBlock, Sites, declared, iter_blocks


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


@dataclass(frozen=True)
class EraseReLU:
    """``erase.method=erase``, EraseReLU's rule: ``location`` (``last``, ``first``, ``all`` or a 1-based site index
    within each block, ``"2"``) in a ``proportion`` of the blocks, evenly spread (:func:`select_blocks`)."""

    location: str = "last"
    proportion: float = 0.0

    name = "erase"

    @classmethod
    def from_config(cls, erase: dict) -> "EraseReLU":
        return cls(erase.get("location", "last"), erase.get("proportion", 0.0))

    def choose(self, sites: Sites, fixed_sites: bool) -> list[Site]:
        chosen = [site for index in select_blocks(len(sites.blocks), self.proportion)
                  for site in self._pick(sites.blocks[index - 1])]
        return chosen + (sites.fixed if fixed_sites else [])

    def _pick(self, block: SiteBlock) -> list[Site]:
        sites, location = block.sites, self.location
        if not sites:
            raise ValueError(f"block {block.name!r} declares no ReLU site to erase")
        if location == "last" and not block.ends_with_site:
            raise ValueError(f"erase.location=last names the ReLU a block ends with, but block {block.name!r} "
                             f"{block.no_last}, or name its site by index (erase.location=1..{len(sites)}, "
                             f"sites {', '.join(block.site_names)})")
        if location == "last":
            return [sites[-1]]
        if location == "first":
            return [sites[0]]
        if location == "all":
            return list(sites)
        if location.isdigit() and 1 <= int(location) <= len(sites):
            return [sites[int(location) - 1]]
        raise ValueError(f"erase.location={location!r} does not exist in block {block.name!r}, whose sites are "
                         f"{', '.join(block.site_names)}; use last, first, all or a site index 1..{len(sites)}")

    def replacement(self, replace: Replacement) -> Replacement:
        return replace

    def record(self) -> dict:
        return {"location": self.location, "proportion": self.proportion}

    def describe(self) -> str:
        return f"location {self.location}, proportion {self.proportion:g}"


class Method(Protocol):
    """What a method says: which sites change (``choose``), what stands in them (``replacement``, given the
    ``erase.replace`` entry), and how its record and log line read."""

    name: str

    def choose(self, sites: Sites, fixed_sites: bool) -> list[Site]: ...

    def replacement(self, replace: Replacement) -> Replacement: ...

    def record(self) -> dict: ...

    def describe(self) -> str: ...


AnyMethod = Union[EraseReLU, Gates, Cull]
_METHODS: dict[str, type] = {"erase": EraseReLU, "gates": Gates, "cull": Cull}
# One settings class per name the config accepts; a name without one fails here, at import.
METHODS: dict[str, type] = {name: _METHODS[name] for name in METHOD_NAMES}


@dataclass(frozen=True)
class ErasePolicy:
    """The part every method shares (``replace``: an ``erase.replace`` name; ``fixed_sites``: also change the
    rectifiers outside every block, a stem's or a pre-activation head's) and the method's own settings."""

    method: AnyMethod = EraseReLU()
    replace: str = "identity"
    fixed_sites: bool = False

    @classmethod
    def from_config(cls, erase: dict) -> "ErasePolicy":
        """The policy of an ``erase`` config node (its training-schedule keys, such as the gates' penalty, are
        the training loop's)."""
        method = METHODS[erase.get("method", "erase")].from_config(erase)
        return cls(method, erase.get("replace", "identity"), bool(erase.get("fixed_sites", False)))

    def replacement(self) -> Replacement:
        return self.method.replacement(replacement(self.replace))


@dataclass
class EraseRecord:
    """Exactly which sites the policy changed, and into what."""

    policy: ErasePolicy
    num_blocks: int
    blocks: list[int] = field(default_factory=list)  # 1-indexed, as in the paper: those with a changed site
    sites: list[str] = field(default_factory=list)  # in forward order
    fixed_changed: bool = False  # a site outside every block (a stem's) changed: fixed_sites, or a method's rule

    def as_dict(self) -> dict:
        """What ``result.json`` keeps as ``erase``. Every record has EraseReLU's ``location`` and ``proportion`` (a
        budgeted method's are the unused defaults, proportion 0), as records always had, for the readers of old and
        new runs alike."""
        p = self.policy
        return {"method": p.method.name, **EraseReLU().record(), **p.method.record(), "replace": p.replace,
                "fixed_sites": p.fixed_sites or self.fixed_changed, "num_blocks": self.num_blocks, "blocks": self.blocks,
                "sites": self.sites}

    def summary(self) -> str:
        p = self.policy
        into = "gates" if p.method.name == "gates" else p.replace
        if not self.sites:
            return f"{p.method.name}: nothing changed ({self.num_blocks} blocks, {p.method.describe()})"
        return (f"{p.method.name}: {len(self.sites)} site(s) -> {into} in {len(self.blocks)}/{self.num_blocks} "
                f"blocks ({p.method.describe()}): " + ", ".join(self.sites))


def declares_sites(model: nn.Module) -> bool:
    """True for a zoo model (it contains erasenet Blocks); any other network is analysed from its graph."""
    return any(True for _ in iter_blocks(model))


def model_activations(model: nn.Module, activations: Sequence | None = None) -> tuple[type[nn.Module], ...]:
    """The activation classes whose calls are sites: ``activations``, else the model's ``site_activations``
    attribute (set by the external-model builders), else ``nn.ReLU``."""
    chosen = activations if activations is not None else getattr(model, "site_activations", None)
    return graph_sites.resolve_activations(chosen) if chosen is not None else (nn.ReLU,)


def find_sites(model: nn.Module, activations: Sequence | None = None) -> Sites:
    """The sites of ``model``: declared by its blocks (a zoo model), else found from its graph."""
    if declares_sites(model):
        return declared(model)
    return graph_sites.analyse(model, model_activations(model, activations))


def plan(sites: Sites, policy: ErasePolicy) -> tuple[EraseRecord, list[Site]]:
    """The one planner: the method chooses, the record lists the chosen sites in forward order."""
    chosen = sites.in_forward_order(list(dict.fromkeys(policy.method.choose(sites, policy.fixed_sites))))
    picked = set(chosen)
    blocks = [i + 1 for i, block in enumerate(sites.blocks) if picked.intersection(block.sites)]
    return EraseRecord(policy, len(sites.blocks), blocks, [s.name for s in chosen],
                       bool(picked.intersection(sites.fixed))), chosen


def _check(policy: ErasePolicy, input_shape: Sequence[int] | None) -> Replacement:
    made = policy.replacement()
    if made.needs_input_shape and input_shape is None:
        what = "erase.method=gates gives each gate" if policy.method.name == "gates" else \
            f"erase.replace={policy.replace} gives each new module"
        raise ValueError(f"{what} the shape of the tensor its site sees, which a forward pass finds: pass "
                         f"input_shape=(C, H, W), the shape of one input image")
    return made


def plan_erase(model: nn.Module, policy: ErasePolicy, activations: Sequence | None = None, *,
               input_shape: Sequence[int] | None = None) -> EraseRecord:
    """The record ``apply_erase`` would return, leaving ``model`` unchanged."""
    _check(policy, input_shape)
    return plan(find_sites(model, activations), policy)[0]


def apply_erase(model: nn.Module, policy: ErasePolicy, activations: Sequence | None = None, *,
                input_shape: Sequence[int] | None = None) -> EraseRecord:
    """Swap the chosen ReLU sites of ``model`` in place; return the record of what changed.

    A zoo model's sites are the ``nn.ReLU`` modules its blocks declare. Any other network is analysed from its
    graph (``erasenet.erase.graph_sites``); there ``activations`` (classes, ``relu``/``relu6`` or dotted class names)
    says which activation calls are sites, by default the model's ``site_activations`` or ``nn.ReLU``.
    ``input_shape`` (C, H, W of one input) is needed where the new modules are sized by the tensor they see
    (``replace="prelu_channel"``, gates): each is made unsized, swapped in, then sized from one forward pass.
    """
    made = _check(policy, input_shape)
    sites = find_sites(model, activations)
    record, chosen = plan(sites, policy)
    added: list[nn.Module] = []

    def make() -> nn.Module:
        added.append(made.make())
        return added[-1]

    graph_sites.erase_calls(model, sites, chosen, make)
    if made.fit is not None and added:
        made.fit(model, added, input_shape)
    return record


