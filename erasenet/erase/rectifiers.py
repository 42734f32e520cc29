"""Every rectifier one forward pass evaluates, however it is called: the ReLU count and the site contract.

A ``TorchDispatchMode`` sees the ATen operators a forward pass runs, below every Python spelling: ``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu``/``relu_`` and ``inplace=True`` all arrive as ``aten.relu`` or
``aten.relu_``, and ``nn.PReLU``/``F.prelu`` as ``aten._prelu_kernel``. Forward hooks on every module tell which
module's forward was running when the operator ran. Runs on the ``meta`` device: shapes only, no arithmetic.

The ReLU count is the number of scalar ReLU and PReLU evaluations for one image, the cost metric of
private-inference work on ReLU reduction (DeepReDuce, SNL, AutoReP). ReLU6 (``aten.hardtanh``) and other
activations are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from .graph_sites import site_of_module

_aten = torch.ops.aten
RECTIFIER_OPS = {_aten.relu.default: "relu", _aten.relu_.default: "relu_",
                 _aten._prelu_kernel.default: "prelu", _aten.prelu.default: "prelu"}


@dataclass(frozen=True)
class RectifierCall:
    """One rectifier operator that ran: in the forward of ``module`` (qualified name, "" for the top level)."""

    module: str
    module_type: type
    op: str  # relu, relu_ or prelu
    elements: int  # per forward pass of the given input
    shape: tuple[int, ...]  # of its output (= its input), batch first


class _Recorder(TorchDispatchMode):
    def __init__(self, where: list[tuple[str, type]]):
        super().__init__()
        self.where = where
        self.calls: list[RectifierCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RECTIFIER_OPS:
            module, module_type = self.where[-1]
            self.calls.append(RectifierCall(module, module_type, RECTIFIER_OPS[func], out.numel(),
                                            tuple(out.shape)))
        return out


def rectifier_calls(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> list[RectifierCall]:
    """The rectifier operators one evaluation-mode forward pass of ``batch`` inputs of ``input_shape`` (C, H, W)
    runs, in order, each with the module whose forward ran it. ``model`` is left as it was: its parameters
    and buffers are stood in for by meta tensors for the pass."""
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    where: list[tuple[str, type]] = [("", type(model))]

    def enter(module, args):
        where.append((names.get(id(module), "?"), type(module)))

    def leave(module, args, output):
        where.pop()

    hooks = []
    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(enter))
        hooks.append(module.register_forward_hook(leave, always_call=True))
    recorder = _Recorder(where)
    try:
        with recorder:
            _forward_on_meta(model, input_shape, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return recorder.calls


def _forward_on_meta(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> None:
    """One evaluation-mode forward pass of ``batch`` inputs of ``input_shape``, every parameter and buffer stood in
    for by a meta tensor (``model`` is left as it was)."""
    state = {k: torch.empty_like(v, device="meta") for k, v in
             [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    x = torch.empty(batch, *input_shape, device="meta")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            functional_call(model, state, (x,), tie_weights=False, strict=False)
    finally:
        model.train(was_training)


def input_shapes_seen(model: nn.Module, modules: Sequence[nn.Module], input_shape: Sequence[int],
                      knob: str) -> list[tuple[int, ...]]:
    """The input shape (batch first) each of ``modules`` (in ``model``) sees in one evaluation-mode forward pass of
    one ``input_shape`` input on the meta device; ``ValueError`` naming ``knob`` when the pass fails or a module
    never runs."""
    seen: dict[int, tuple[int, ...]] = {}

    def note(module: nn.Module, args: tuple) -> None:
        seen.setdefault(id(module), tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(note) for m in modules]
    size = "x".join(map(str, input_shape))
    try:
        _forward_on_meta(model, input_shape)
    except (RuntimeError, NotImplementedError) as err:
        raise ValueError(f"{knob} could not find the shapes its modules see: a forward pass of one {size} input "
                         f"on the meta device failed ({err})") from None
    finally:
        for hook in hooks:
            hook.remove()
    names = {id(m): name for name, m in model.named_modules()}
    missing = [names.get(id(m), "?") for m in modules if id(m) not in seen]
    if missing:
        raise ValueError(f"{knob}: the module at {missing[0]} never ran in an evaluation-mode forward pass of one "
                         f"{size} input, so the shape it sees is unknown")
    return [seen[id(m)] for m in modules]


def shapes_seen(model: nn.Module, modules: Sequence[nn.Module], input_shape: Sequence[int],
                knob: str) -> list[tuple[int, ...]]:
    """The output shape (batch first) of the rectifier each of ``modules`` (in ``model``) runs, in one
    evaluation-mode forward pass of one ``input_shape`` input on the meta device; ``ValueError`` naming ``knob``
    (the setting that needs the shapes) when the pass fails or a module never runs."""
    size = "x".join(map(str, input_shape))
    try:
        calls = rectifier_calls(model, input_shape)
    except (RuntimeError, NotImplementedError) as err:  # an operator without a meta kernel
        raise ValueError(f"{knob} could not find the shapes its modules see: a forward pass of one {size} input "
                         f"on the meta device failed ({err})") from None
    names = {id(m): name for name, m in model.named_modules()}
    seen = {c.module: c.shape for c in calls}
    missing = [names[id(m)] for m in modules if names[id(m)] not in seen]
    if missing:
        raise ValueError(f"{knob}: the module at {missing[0]} never ran in an evaluation-mode forward pass of one "
                         f"{size} input, so the shape it sees is unknown")
    return [seen[names[id(m)]] for m in modules]


def count_relus(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Scalar ReLU and PReLU evaluations of one forward pass on one image of ``input_shape`` (C, H, W).

    A module that computes a ReLU for only some of its elements (an SNL gate, ``erasenet.erase.gates.Gate``: none
    under a gate at 0) says how many of a call's elements count through its ``counted_relus(elements)``.
    """
    return sum(site["kept"] for site in relus_per_site(model, input_shape))


def relus_per_site(model: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """Per rectifier call of one forward pass, in forward order: its site (named as the erase record names it),
    the ``elements`` it covers and the ReLU/PReLU evaluations it ``kept`` (fewer than its elements under a gate)."""
    modules = dict(model.named_modules())
    sites = []
    for call in rectifier_calls(model, input_shape):
        counted = getattr(modules.get(call.module), "counted_relus", None)
        sites.append({"site": site_of_module(call.module, modules), "elements": call.elements,
                      "kept": call.elements if counted is None else counted(call.elements)})
    return sites


def contract_violations(calls: Iterable[RectifierCall], declared: Sequence[str]) -> list[str]:
    """How the rectifiers a forward pass ran break the ReLU-site contract (none: it holds).

    The contract: every rectifier that runs is an ``nn.ReLU`` module's own call, and those calls name exactly
    the ``declared`` sites, each once, in declared order. A functional ReLU (``F.relu``, ``torch.relu``,
    ``Tensor.relu_``...) shows up as a call from some other module's forward and breaks it.
    """
    calls = list(calls)
    problems = [f"{c.op} runs in the forward of {c.module or 'the model'} ({c.module_type.__name__}), which is not "
                f"an nn.ReLU site: a functional ReLU the erase policy cannot see"
                for c in calls if not issubclass(c.module_type, nn.ReLU)]
    ran = [c.module for c in calls if issubclass(c.module_type, nn.ReLU)]
    repeated = sorted({m for m in ran if ran.count(m) > 1})
    if repeated:
        problems.append(f"ReLU module(s) called more than once: {', '.join(repeated)}")
    if not problems and ran != list(declared):
        missing = [s for s in declared if s not in ran]
        extra = [m for m in ran if m not in declared]
        problems.append("the ReLUs that ran differ from the declared sites"
                        + (f"; never ran: {', '.join(missing)}" if missing else "")
                        + (f"; not declared: {', '.join(extra)}" if extra else "")
                        + ("" if missing or extra else "; same sites, other order"))
    return problems
