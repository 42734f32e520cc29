"""SNL's budgeted linearisation (Cho et al., ICML 2022): a trainable gate on every ReLU, learned, then binarised.

A :class:`Gate` stands where a ReLU was: ``y = m * relu(x) + (1 - m) * x``, with ``m`` one value per channel or
per element of the activation map, initialised to 1 (the original ReLU). A run with ``erase.method=gates`` goes
through three phases in its one training loop, each resumable:

1. *gate learning* (``erase.gate_epochs`` epochs at most): weights and gates train together; the loss gains
   ``lambda * sum |m|`` over every gate entry (SNL's L1 penalty). After each epoch the ReLU count is the number
   of ReLUs whose gate exceeds ``erase.threshold``; when it is no lower than the lowest so far (after
   ``erase.penalty_warmup`` epochs), ``lambda`` is multiplied by ``erase.penalty_factor``. The phase ends when
   the count is within ``erase.budget`` or at its last epoch;
2. *binarise*: the gates above the threshold, highest first, are set to 1 while the ReLUs they cost fit the
   budget; every other gate is set to 0. A count that fell far below the budget in the phase's last epoch leaves
   the rest of the budget unused, as in SNL's code; ``erase.fill_budget`` fills it with the next-highest gates.
   The gates are frozen (``requires_grad`` off: the optimizer skips them);
3. *fine-tune*: the weights train on for the remaining epochs, the gates fixed.

A gate at 0 makes its ReLUs the identity and costs nothing; a gate at 1 costs one ReLU per element it covers
(``Gate.counted_relus``, which ``erasenet.erase.rectifiers.count_relus`` asks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..common.choices import GRANULARITIES
from .rectifiers import count_relus, shapes_seen
from .polynomial import Polynomial
from .replacements import Replacement
from .sites import Site, Sites

log = logging.getLogger("erasenet")

PHASES = ("gates", "finetune")


class Gate(nn.Module):
    """``m * relu(x) + (1 - m) * x``, or with a module ``other`` (AutoReP's polynomial) ``m * relu(x) + (1 - m) *
    other(x)``; ``m`` (parameter ``mask``) has one entry per channel or per element of one sample, set by
    :func:`shape_gates` once a forward pass has shown the shape of what the gate sees."""

    def __init__(self, granularity: str = "channel", other: nn.Module | None = None):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"erase.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        self.granularity = granularity
        self.mask: nn.Parameter | None = None
        self.elements = 0  # of one sample, as the gate sees it
        self.other = None if isinstance(other, nn.Identity) else other

    @property
    def evaluates_polynomial(self) -> bool:
        return isinstance(self.other, Polynomial)

    def shape_from(self, sample_shape: Sequence[int]) -> None:
        """Create the mask (all ones) for inputs of ``sample_shape`` (one sample: C[, H, W])."""
        sample_shape = tuple(sample_shape)
        if self.granularity == "channel":
            shape = (sample_shape[0],) + (1,) * (len(sample_shape) - 1) if sample_shape else ()
        else:
            shape = sample_shape
        self.elements = int(torch.Size(sample_shape).numel())
        self.mask = nn.Parameter(torch.ones(shape))
        if hasattr(self.other, "shape_from"):
            self.other.shape_from(sample_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:  # not yet shaped: the ReLU it stands for
            return torch.relu(x)
        m = self.mask.to(x.dtype)
        return m * torch.relu(x) + (1 - m) * (x if self.other is None else self.other(x))

    def cost(self) -> int:
        """ReLUs per sample that one gate entry stands for (the elements it covers)."""
        return self.elements // self.mask.numel()

    def counted_relus(self, elements: int) -> int:
        """Of the ``elements`` ReLUs one call computes, those still evaluated: the ones under non-zero gates."""
        if self.mask is None or self.mask.is_meta:
            return elements
        return elements // self.mask.numel() * int(torch.count_nonzero(self.mask.detach()))

    def counted_polys(self, elements: int) -> int:
        """Of a call's ``elements``, those its polynomial evaluates: the ones under gates at 0."""
        return elements - self.counted_relus(elements) if self.evaluates_polynomial else 0

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, shape={tuple(self.mask.shape) if self.mask is not None else None}"


def gates_of(model: nn.Module) -> list[tuple[str, Gate]]:
    """Every gate of ``model``, in registration order, with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Gate)]


def mask_names(model: nn.Module) -> set[str]:
    """The parameter names of every gate's mask (kept out of weight decay: the L1 penalty is their regulariser)."""
    return {f"{name}.mask" for name, _ in gates_of(model)}


def shape_gates(model: nn.Module, gates: Sequence[Gate], input_shape: Sequence[int]) -> None:
    """Give each of ``gates`` (unshaped, already in ``model``) its mask, from the shape one evaluation-mode
    forward pass of one ``input_shape`` input on the meta device shows at the gate."""
    for gate, shape in zip(gates, shapes_seen(model, gates, input_shape, "erase.method=gates")):
        gate.shape_from(shape[1:])
        if any(p.is_meta for p in model.parameters()):
            gate.mask = nn.Parameter(gate.mask.to("meta"))
            if gate.other is not None:
                gate.other.to("meta")


@dataclass(frozen=True)
class Gates:
    """``erase.method=gates``: a gate on every site, fixed sites included; binarised to keep ``budget`` ReLUs per
    image (<= 1: a fraction of the original's). The gate schedule's keys are :class:`GateSchedule`'s."""

    budget: float
    granularity: str = "channel"

    name = "gates"

    @classmethod
    def from_config(cls, erase: dict) -> "Gates":
        return cls(erase["budget"], erase.get("granularity", "channel"))

    def choose(self, sites: Sites, fixed_sites: bool) -> list[Site]:
        return sites.sites  # every site: the gates learn which to keep

    def replacement(self, replace: Replacement) -> Replacement:
        """A gate between the ReLU and ``replace``: the identity (SNL: ``1 - m`` passes ``x`` through) or a
        polynomial (AutoReP), which the gate sizes with its mask."""
        return Replacement(lambda: Gate(self.granularity, replace.make()), shape_gates)

    def record(self) -> dict:
        return {"budget": self.budget, "granularity": self.granularity}

    def describe(self) -> str:
        return (f"gated per {self.granularity}, budget {self.budget:g} ReLUs per image"
                f"{' of the original' if self.budget <= 1 else ''}")


def gate_epochs(configured: int | None, epochs: int | None) -> int:
    """``erase.gate_epochs``, or with null half of the run's ``epochs`` (at least one), so that gate learning and
    fine-tuning fit any schedule."""
    if configured is not None:
        return int(configured)
    if epochs is None:
        raise ValueError("erase.gate_epochs=null is half of schedule.epochs: pass the run's epochs")
    return max(1, epochs // 2)


def climb_factor(gate_epochs: int) -> float:
    """The default ``erase.penalty_factor``: what lets lambda grow by four decades within half the gate-learning
    epochs, so that the penalty starting at SNL's 1e-5 finds the scale where the gates move, whatever the learning
    rate, the steps per epoch and the optimizer (SGD moves a gate by lr * lambda / (1 - momentum) a step, Adam by
    about lr)."""
    return min(100.0, 1e4 ** (2 / gate_epochs))


def resolve_budget(budget: float, original: int) -> int:
    """A budget of ReLUs per image: a fraction (<= 1) of the original network's ``original``, or a count."""
    return int(budget * original) if budget <= 1 else int(budget)


class GateSchedule:
    """The phases of a gated run: the penalty weight, the lowest count so far, and binarisation.

    Its state (``state_dict``) travels in the run's checkpoints; with the model's masks it is all a resume needs.
    """

    def __init__(self, model: nn.Module, erase: dict, input_shape: Sequence[int], epochs: int | None = None):
        self.model = model
        self.gates = [g for _, g in gates_of(model)]
        if not self.gates:
            raise ValueError("erase.method=gates found no ReLU site to gate")
        self.threshold = float(erase["threshold"])
        self.fill_budget = bool(erase.get("fill_budget", True))
        self.warmup = int(erase["penalty_warmup"])
        self.max_epochs = gate_epochs(erase.get("gate_epochs"), epochs)
        factor = erase.get("penalty_factor")
        self.factor = climb_factor(self.max_epochs) if factor is None else float(factor)
        self.phase = "gates"
        self.penalty = float(erase["penalty"])
        self.phase_epochs = 0  # gate-learning epochs done
        # the network's count with every gate at 1 (the original's), and the part no gate covers
        capacity = sum(g.cost() * g.mask.numel() for g in self.gates)
        with torch.no_grad():
            saved = [g.mask.detach().clone() for g in self.gates]
            for g in self.gates:
                g.mask.fill_(1.0)
            self.original = count_relus(model, input_shape)
            for g, m in zip(self.gates, saved):
                g.mask.copy_(m)
        self.ungated = self.original - capacity
        self.lowest = self.original  # the lowest count so far (SNL starts from the original's)
        self.budget = resolve_budget(float(erase["budget"]), self.original)
        if self.budget < self.ungated:
            raise ValueError(f"erase.budget={erase['budget']:g} allows {self.budget:,} ReLUs per image, fewer than "
                             f"the {self.ungated:,} no gate covers; raise the budget")
        if self.budget >= self.original:
            raise ValueError(f"erase.budget={erase['budget']:g} keeps {self.budget:,} ReLUs per image, but the network "
                             f"has {self.original:,}: at or above its count, no gate would ever close and the run "
                             f"would file an unreduced network under that budget. Give a budget below "
                             f"{self.original:,}, e.g. erase.budget={self.original // 2} or a fraction such as "
                             f"erase.budget=0.5")

    # --- the penalty term the training loop adds to its loss ---------------------------------------------------

    @property
    def learning(self) -> bool:
        return self.phase == "gates"

    def penalty_term(self) -> torch.Tensor:
        """``lambda * sum |m|`` over every gate entry (SNL's L1 penalty)."""
        return self.penalty * sum(g.mask.abs().sum() for g in self.gates)

    # --- counts ---------------------------------------------------------------------------------------------

    def alive(self) -> int:
        """ReLUs per image whose gate is above the threshold, plus those no gate covers."""
        return self.ungated + sum(g.cost() * int((g.mask.detach() > self.threshold).sum()) for g in self.gates)

    def relus(self) -> int:
        """ReLUs per image the network evaluates now: every element under a non-zero gate."""
        return self.ungated + sum(g.cost() * int(torch.count_nonzero(g.mask.detach())) for g in self.gates)

    # --- the phases -----------------------------------------------------------------------------------------

    def end_epoch(self, metrics: dict) -> None:
        """After an epoch's evaluation: record the phase, penalty and count in ``metrics``; in gate learning,
        raise the penalty or binarise."""
        metrics["gate_phase"], metrics["gate_penalty"] = self.phase, self.penalty
        if self.phase == "gates":
            self.phase_epochs += 1
            count = self.alive()
            metrics["relus_above_threshold"] = count
            if count < self.lowest:
                self.lowest = count
            elif self.phase_epochs > self.warmup:
                self.penalty *= self.factor
            if count <= self.budget or self.phase_epochs >= self.max_epochs:
                metrics["gates_separated"] = separated = count <= self.budget
                values = torch.cat([g.mask.detach().flatten().float().cpu() for g in self.gates])
                low, high = float((values <= self.threshold).float().mean()), float((values > 0.5).float().mean())
                self.binarise()
                log.info("gates binarised after %d epoch(s): %s ReLUs per image (budget %s, %s above the "
                         "threshold; of the gate entries %.0f%% were at or below it and %.0f%% above 0.5)",
                         self.phase_epochs, f"{self.relus():,}", f"{self.budget:,}", f"{count:,}", 100 * low,
                         100 * high)
                if not separated:
                    log.warning(
                        "the gates did not separate: after %d epoch(s) of gate learning %s ReLUs per image still had "
                        "a gate above erase.threshold=%g, more than the budget of %s, so binarising kept the highest "
                        "of gates that had not learned to part (a ranking of little more than noise). Give the "
                        "penalty more room: a larger erase.penalty (it reached %.3g), erase.penalty_factor or "
                        "erase.gate_epochs", self.phase_epochs, f"{count:,}", self.threshold, f"{self.budget:,}",
                        metrics["gate_penalty"])
        metrics["relus"] = self.relus()

    @torch.no_grad()
    def binarise(self) -> None:
        """Keep the gates above the threshold (any gate, with ``fill_budget``), highest first, while their ReLUs
        fit the budget; set them to 1, the rest to 0, and freeze every gate."""
        values = torch.cat([g.mask.detach().flatten().float().cpu() for g in self.gates])
        costs = torch.cat([torch.full((g.mask.numel(),), g.cost(), dtype=torch.long) for g in self.gates])
        order = torch.sort(values, descending=True, stable=True).indices
        spent = torch.cumsum(costs[order], 0)
        fits = spent <= self.budget - self.ungated
        keep = order[fits if self.fill_budget else fits & (values[order] > self.threshold)]
        binary = torch.zeros_like(values)
        binary[keep] = 1.0
        start = 0
        for g in self.gates:
            n = g.mask.numel()
            g.mask.copy_(binary[start:start + n].view_as(g.mask))
            start += n
        self.phase = "finetune"
        self.freeze()

    def freeze(self) -> None:
        for g in self.gates:
            g.mask.requires_grad_(False)
            g.mask.grad = None

    def state_dict(self) -> dict:
        return {"phase": self.phase, "penalty": self.penalty, "lowest": self.lowest,
                "phase_epochs": self.phase_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.penalty, self.lowest = state["phase"], state["penalty"], state["lowest"]
        self.phase_epochs = state["phase_epochs"]
        if self.phase == "finetune":
            self.freeze()


def gate_schedule(model: nn.Module, erase: dict, input_shape: Sequence[int],
                  epochs: int | None = None) -> GateSchedule | None:
    """The schedule of a run with ``erase.method=gates`` (``epochs``: the run's, for ``erase.gate_epochs=null``);
    None for any other method."""
    if erase.get("method", "erase") != "gates":
        return None
    return GateSchedule(model, erase, input_shape, epochs)
