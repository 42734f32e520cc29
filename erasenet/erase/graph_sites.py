"""Blocks and ReLU sites of any network, found from its computation graph (``torch.fx``).

erasenet's own zoo declares its sites (``erasenet.erase.sites``). A network from torchvision, timm or a user's
own code does not: torchvision's ``BasicBlock`` calls one ``self.relu`` twice. This module traces the network
symbolically and reads its structure off the graph:

- a *residual unit* is the innermost module whose own ``forward`` adds two computed tensors; every module of a
  class that has such a unit is a block too, so a stride-2 unit that skips its addition (MobileNet-V2) still
  counts. Blocks are ordered by where the forward pass enters them;
- a *site* is one call of an activation: a call of an activation module (``nn.ReLU`` by default) or a functional
  ReLU (``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms). A module called twice is two
  sites, named ``<module>#1`` and ``<module>#2``;
- a block's ``last`` site exists when its final site consumes the residual addition;
- a network with no residual addition (VGG) has one block per activation call, in forward order;
- activation calls outside every block (a stem's, a head's) are fixed sites, never erased.

Erasing a call of a module that runs once swaps the module. Erasing one call of a shared module, or a
functional call, rewrites only the forward of the module that makes the call (an ``fx.GraphModule`` with the
same submodules and state-dict keys), so the module's other calls are left as they are.
"""

from __future__ import annotations

import operator
import re
from collections import Counter, defaultdict
from typing import Callable, Container, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .sites import Site, SiteBlock, Sites

_FUNCTIONAL_RELU = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu_", F.relu_: "relu_"}
_FUNCTIONAL_RELU6 = {F.relu6: "relu6"}
_RELU_METHODS = {"relu", "relu_"}
_ADDITIONS = {operator.add, operator.iadd, torch.add}

_NO_LAST = "has no activation right after its residual addition; erase another site with first or all"

ACTIVATION_NAMES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class AnalysisError(ValueError):
    """The network's structure cannot be analysed; erasing it could go wrong, so nothing is changed."""


def resolve_activations(names: str | Sequence[str | type[nn.Module]]) -> tuple[type[nn.Module], ...]:
    """Activation classes from short names (``relu``, ``relu6``), dotted class paths or classes."""
    import importlib

    items = [names] if isinstance(names, (str, type)) else list(names)
    classes = []
    for item in items:
        if isinstance(item, type):
            classes.append(item)
        elif item in ACTIVATION_NAMES:
            classes.append(ACTIVATION_NAMES[item])
        elif "." in item:
            module_name, _, attr = item.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                raise ValueError(f"activation {item!r} cannot be imported; name a class such as torch.nn.SiLU") from None
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ValueError(f"activation {item!r} is not an nn.Module class")
            classes.append(cls)
        else:
            raise ValueError(f"unknown activation {item!r}: use relu, relu6 or a dotted class path "
                             f"such as torch.nn.SiLU")
    return tuple(classes)


class _Tracer(fx.Tracer):
    """Keeps activation modules as leaves even when they are not ``torch.nn`` classes."""

    def __init__(self, activations: tuple[type[nn.Module], ...]):
        super().__init__()
        self.activations = tuple(activations)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.activations) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, activations: tuple[type[nn.Module], ...] = (nn.ReLU,),
          same_code: bool = False) -> fx.Graph:
    """The symbolic graph of ``model``'s forward in evaluation mode.

    ``AnalysisError`` naming the reason if it cannot be traced, if training mode runs other activation calls
    (or, with ``same_code``, any other operation: a graph frozen in one mode would be wrong in the other), or if
    a module fx keeps opaque holds an activation.
    """
    was_training = model.training
    try:
        graphs = [_trace(model.train(mode), activations) for mode in (True, False)]
    finally:
        model.train(was_training)
    modules = dict(model.named_modules(remove_duplicate=False))
    if same_code:
        differ = graphs[0].python_code("self").src != graphs[1].python_code("self").src
    else:
        differ = [t for _, t in _activation_nodes(graphs[0], modules, activations)] != [
            t for _, t in _activation_nodes(graphs[1], modules, activations)]
    if differ:
        what = "operations" if same_code else "activation calls"
        raise AnalysisError(f"cannot analyse {type(model).__name__}: its forward runs different {what} in "
                            f"training and in evaluation mode (a Python branch on self.training outside a torch.nn "
                            f"layer), so no single graph describes it")
    for node in graphs[1].nodes:
        if node.op == "call_module" and not isinstance(modules[node.target], activations):
            hidden = [n for n, m in modules[node.target].named_modules() if isinstance(m, activations)]
            if hidden:
                raise AnalysisError(f"cannot analyse {type(model).__name__}: module {node.target} "
                                    f"({type(modules[node.target]).__name__}) runs as one opaque call yet holds the "
                                    f"activation(s) {', '.join(hidden)}, whose calls erasenet cannot see")
    return graphs[1]


def _trace(model: nn.Module, activations: tuple[type[nn.Module], ...]) -> fx.Graph:
    try:
        return _Tracer(activations).trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError... depending on the construct
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnalysisError(
            f"cannot analyse {type(model).__name__}: torch.fx could not trace its forward ({reason}). Data-dependent "
            f"control flow (an `if` or loop on tensor values) hides which activations run, so erasenet changes "
            f"nothing rather than risk a wrong erase; make the forward trace-able, or declare the sites with "
            f"erasenet.models.Block") from None


def _module_stack(node: fx.Node) -> list[str]:
    """Qualified names of the modules whose forward is running at ``node``, outermost first."""
    return [path for path, _ in node.meta.get("nn_module_stack", {}).values()]


def _is_addition(node: fx.Node) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADDITIONS) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    return is_add and len(node.args) >= 2 and all(isinstance(a, fx.Node) and a.op != "get_attr"
                                                  for a in node.args[:2])


def _activation_kind(node: fx.Node, modules: dict[str, nn.Module],
                     activations: tuple[type[nn.Module], ...]) -> str | None:
    """``"module"``, a functional name (``relu``...) or None when ``node`` is no activation call that counts."""
    if node.op == "call_module" and isinstance(modules.get(node.target), activations):
        return "module"
    if node.op == "call_function" and nn.ReLU in activations and node.target in _FUNCTIONAL_RELU:
        return _FUNCTIONAL_RELU[node.target]
    if node.op == "call_function" and nn.ReLU6 in activations and node.target in _FUNCTIONAL_RELU6:
        return _FUNCTIONAL_RELU6[node.target]
    if node.op == "call_method" and nn.ReLU in activations and node.target in _RELU_METHODS:
        return node.target
    return None


def _owner(node: fx.Node) -> str:
    stack = _module_stack(node)
    if node.op == "call_module":
        stack = stack[:-1]  # the activation module itself
    return stack[-1] if stack else ""


def _activation_nodes(graph: fx.Graph, modules: dict[str, nn.Module],
                      activations: tuple[type[nn.Module], ...]) -> list[tuple[fx.Node, str]]:
    """Every activation call in forward order, with its target string (module name or ``owner:function``)."""
    found = []
    for node in graph.nodes:
        kind = _activation_kind(node, modules, activations)
        if kind is None:
            continue
        target = node.target if kind == "module" else f"{_owner(node)}:{kind}"
        if not node.users:
            raise AnalysisError(f"the activation call {target} has no user: the forward relies on it changing "
                                f"a tensor in place, which erasing cannot preserve")
        found.append((node, target))
    return found


def analyse(model: nn.Module, activations: Sequence[type[nn.Module]] = (nn.ReLU,)) -> Sites:
    """Blocks and sites of ``model`` (see the module docstring for the rules)."""
    activations = tuple(activations)
    graph = trace(model, activations)
    modules = dict(model.named_modules(remove_duplicate=False))
    calls = _activation_nodes(graph, modules, activations)
    totals = Counter(target for _, target in calls)
    seen: Counter = Counter()
    sites: list[tuple[fx.Node, Site]] = []
    for node, target in calls:
        seen[target] += 1
        sites.append((node, Site(target, seen[target], totals[target], _owner(node), node.op != "call_module")))

    units = _residual_units(graph)
    if not units:  # VGG and other plain stacks: every activation call is a block of its own
        blocks = [SiteBlock(site.name, (site,), True) for _, site in sites]
        return Sites(blocks, [], [site for _, site in sites], residual=False, activations=activations,
                     how="found from the graph: no residual addition, one block per activation call")

    unit_types = {type(model.get_submodule(name)) for name in units}
    entered: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for path in _module_stack(node):
            entered.setdefault(path, index)
    block_names = sorted((path for path in entered if path and isinstance(model.get_submodule(path),
                                                                          tuple(unit_types))),
                         key=lambda path: entered[path])
    for outer in block_names:
        for inner in block_names:
            if inner != outer and inner.startswith(outer + "."):
                raise AnalysisError(f"residual unit {inner} lies inside residual unit {outer}; erasenet cannot "
                                    f"tell which of the two a site belongs to")
    members: dict[str, list[Site]] = defaultdict(list)
    ends: dict[str, bool] = {}
    fixed = []
    for node, site in sites:
        stack = _module_stack(node)
        block = next((b for b in stack if b in entered and b in set(block_names)), None)
        if block is None:
            fixed.append(site)
            continue
        members[block].append(site)
        last_add = units.get(block)
        ends[block] = last_add is not None and node.args and node.args[0] is last_add
    blocks = [SiteBlock(name, tuple(members[name]), ends.get(name, False), _NO_LAST)
              for name in block_names if members[name]]
    return Sites(blocks, fixed, [site for _, site in sites], residual=True, activations=activations,
                 how="found from the graph: residual units")


def _residual_units(graph: fx.Graph) -> dict[str, fx.Node]:
    """Each module whose own forward adds two computed tensors, with its last such addition."""
    units: dict[str, fx.Node] = {}
    for node in graph.nodes:
        if _is_addition(node):
            stack = _module_stack(node)
            if not stack:
                raise AnalysisError("the top-level forward adds two computed tensors itself; erasenet finds residual "
                                    "units as the modules that make the addition, so wrap each unit in a module")
            units[stack[-1]] = node
    return units


_REWRITTEN_CALL = re.compile(r"^(?P<owner>.+)\.(?P<leaf>\w+)_call(?P<call>\d+)$")


def site_of_module(module_name: str, module_names: Container[str]) -> str:
    """The site name, as the erase record and the log write it, of the module that now stands at a site: one call
    of a shared module, which :func:`erase_calls` rewrote into ``owner.relu_call2``, is ``owner.relu#2``; any other
    module's site is its own name (``module_names``: the network's module names)."""
    m = _REWRITTEN_CALL.match(module_name)
    if m and f"{m['owner']}.{m['leaf']}" in module_names:
        return f"{m['owner']}.{m['leaf']}#{m['call']}"
    return module_name


# --- erasing ----------------------------------------------------------------------------------------------------

def erase_calls(model: nn.Module, found: Sites, chosen: Sequence[Site],
                make_replacement: Callable[[], nn.Module]) -> None:
    """Replace the ``chosen`` activation calls of ``model`` in place by ``make_replacement()`` (identity or a
    fresh module per call), leaving every other call as it is. Declared sites are module calls: swapped."""
    rewrite: dict[str, list[Site]] = defaultdict(list)
    for site in chosen:
        if not site.swaps_module:
            rewrite[site.owner].append(site)
    for owner, sites in rewrite.items():
        _rewrite_owner(model, owner, sites, found.activations, make_replacement)
    for site in chosen:
        if site.swaps_module:
            parent_name, _, leaf = site.target.rpartition(".")
            parent = model.get_submodule(parent_name)
            if not isinstance(getattr(parent, leaf), found.activations):
                raise AnalysisError(f"site {site.name} is a {type(getattr(parent, leaf)).__name__}, not an activation "
                                    f"module: a declared site that breaks the ReLU-site contract, or one erased twice")
            setattr(parent, leaf, make_replacement())


def _rewrite_owner(model: nn.Module, owner: str, sites: list[Site], activations: tuple[type[nn.Module], ...],
                   make_replacement: Callable[[], nn.Module]) -> None:
    if not owner:
        raise AnalysisError(f"{', '.join(s.name for s in sites)}: erasing one call of a module the top-level forward "
                            f"calls several times would replace the model object; erasenet changes models in place")
    module = model.get_submodule(owner)
    graph = trace(module, activations, same_code=True)
    local = _activation_nodes(graph, dict(module.named_modules(remove_duplicate=False)), activations)
    prefix = owner + "."
    by_target: dict[str, list[fx.Node]] = defaultdict(list)
    for node, target in local:
        by_target[owner + target if target.startswith(":") else prefix + target].append(node)
    graph_module = fx.GraphModule(module, graph, class_name=type(module).__name__)
    for site in sites:
        nodes = by_target.get(site.target, [])
        if len(nodes) != site.calls:
            raise AnalysisError(f"{owner} calls {site.target} {len(nodes)} time(s) when traced alone but "
                                f"{site.calls} within the model; erasenet cannot tell which call is {site.name}")
        node = nodes[site.call - 1]
        replacement = make_replacement()
        if isinstance(replacement, nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        else:
            name = f"{site.target.rpartition('.')[2].replace(':', '_')}_call{site.call}"
            graph_module.add_submodule(name, replacement)
            with graph.inserting_after(node):
                new = graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    graph.lint()
    graph_module.recompile()
    parent_name, _, leaf = owner.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, graph_module)
