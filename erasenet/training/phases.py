"""The optimizer and learning-rate schedule of each phase of a gated run (``erase.method=gates``).

SNL's released code (``snl_finetune_unstructured.py``) trains its two phases with two optimizers: gate learning with
Adam over the weights and the gates together, then, once the gates are binarised, a fresh SGD with a cosine schedule
over a fixed number of fine-tuning epochs, after which the run ends. ``schedule.gate_phase`` and
``schedule.finetune_phase`` (erasenet.common.config.PhaseConfig) configure the two; the run then lasts as long as
gate learning takes (``erase.gate_epochs`` at most) plus the fine-tuning's epochs.

With neither phase's optimizer set, one optimizer (SGD, ``schedule.*``) and one schedule over ``schedule.epochs``
drive both phases, as erasenet first read SNL: :func:`build_learning` then builds exactly what every other run gets,
and nothing here changes a run.

A phase's schedule is a ``LambdaLR`` over the phase's own steps, counted from its first; a checkpoint holds the
optimizer and scheduler of the phase it was written in, and :func:`enter_phase` rebuilds that phase's pair on resume
before their states are loaded.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn as nn
from omegaconf import DictConfig

from ..erase.gates import GateSchedule
from .engine import build_optimizer, build_scheduler, parameter_groups
from .state import Run

log = logging.getLogger("erasenet")

Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LambdaLR


def phased(cfg: DictConfig) -> bool:
    """Whether the run gives each gate phase its own optimizer (``schedule.gate_phase.optimizer`` is set)."""
    phase = cfg.schedule.get("gate_phase")
    return cfg.erase.method == "gates" and phase is not None and phase.get("optimizer") is not None


def phase_config(cfg: DictConfig, phase: str) -> DictConfig:
    """``schedule.gate_phase`` for gate learning (``phase`` ``gates``), ``schedule.finetune_phase`` after it."""
    return cfg.schedule.gate_phase if phase == "gates" else cfg.schedule.finetune_phase


def phase_optimizer(model: nn.Module, schedule: DictConfig, phase: DictConfig) -> Optimizer:
    """The phase's optimizer over every parameter of ``model``, the gates without weight decay; its lr scaled as
    ``schedule.lr_scaling`` scales the run's."""
    lr = phase.lr * (schedule.batch_size / schedule.base_batch_size if schedule.lr_scaling == "linear" else 1.0)
    groups = parameter_groups(model, schedule)
    if phase.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=phase.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=phase.momentum, nesterov=phase.nesterov and phase.momentum > 0,
                           weight_decay=phase.weight_decay)


def phase_factor(decay: str, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the phase's lr at each of its steps: constant, or a half cosine from 1 to 0 over ``epochs``,
    either per step (``cosine``) or held through each epoch (``cosine_epoch``: torch's ``CosineAnnealingLR``
    stepped once an epoch, as SNL's code steps it)."""
    total = max(1, epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if decay == "constant":
            return 1.0
        done = step // steps_per_epoch * steps_per_epoch if decay == "cosine_epoch" else step
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done / total)))

    return factor


def phase_length(cfg: DictConfig, gates: GateSchedule) -> int:
    """Epochs the current phase lasts at most: gate learning ``erase.gate_epochs``; fine-tuning its own epochs, or
    what is left of ``schedule.epochs`` after binarising."""
    if gates.phase == "gates":
        return gates.max_epochs
    epochs = cfg.schedule.finetune_phase.epochs
    return epochs if epochs is not None else cfg.schedule.epochs - gates.phase_epochs


def build_learning(model: nn.Module, cfg: DictConfig, schedule: DictConfig, gates: GateSchedule | None,
                   steps_per_epoch: int) -> tuple[Optimizer, Scheduler]:
    """The optimizer and scheduler a run starts with: its gate phase's where the phases have their own
    (``schedule`` is the per-process schedule), else the run's one SGD and schedule."""
    if gates is None or not phased(cfg):
        optimizer = build_optimizer(model, schedule)
        return optimizer, build_scheduler(optimizer, schedule, steps_per_epoch)
    phase = phase_config(cfg, gates.phase)
    optimizer = phase_optimizer(model, schedule, phase)
    return optimizer, Scheduler(optimizer, phase_factor(phase.decay, phase_length(cfg, gates), steps_per_epoch))


def enter_phase(run: Run) -> None:
    """Give the run the optimizer and scheduler of the phase its gates are in (fresh: SNL starts fine-tuning with a
    new SGD); nothing for a run whose phases share one optimizer."""
    if run.gates is None or not phased(run.cfg):
        return
    optimizer, scheduler = build_learning(run.model, run.cfg, run.cfg.schedule, run.gates, len(run.train_loader))
    run.learner.optimizer, run.learner.scheduler = optimizer, scheduler
    phase = phase_config(run.cfg, run.gates.phase)
    log.info("%s phase: %s, lr %g, %s decay over %d epoch(s) at most", run.gates.phase, phase.optimizer,
             optimizer.param_groups[0]["lr"], phase.decay, phase_length(run.cfg, run.gates))


def first_epoch(run: Run) -> int:
    """The run's epoch (0-based) at which the current scheduler's steps start."""
    if run.gates is None or not phased(run.cfg) or run.gates.phase == "gates":
        return 0
    return run.gates.phase_epochs


def finished(run: Run) -> bool:
    """Whether a run whose fine-tuning lasts a fixed number of epochs has trained them (it ends before
    ``schedule.epochs`` when gate learning met the budget early)."""
    if run.gates is None or not phased(run.cfg) or run.gates.phase != "finetune":
        return False
    epochs = run.cfg.schedule.finetune_phase.epochs
    return epochs is not None and run.state.epoch - run.gates.phase_epochs >= epochs
