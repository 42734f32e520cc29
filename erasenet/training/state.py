"""The records the training modules share: what a run is (``Job``), what was built for it (``Run``), and how far it
has come (``TrainState``, ``EpochState``).

Every other training module imports these from here and none of them is imported back, so the modules that build,
restore, record and train a run depend on this one and not on each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from .accel import Accel, Compiled
from .distributed import Dist
from ..erase import EraseRecord
from ..erase.gates import GateSchedule

# (inputs, logits, labels) -> the mean loss of the batch: a training loss other than the cross-entropy, e.g.
# distillation's (erasenet.training.distill)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochState:
    """Where a training epoch stands: steps taken and the running sums (on the device), so it can resume."""

    step: int
    loss_sum: torch.Tensor
    wrong: torch.Tensor
    count: int  # samples seen
    seconds: float = 0.0  # training time of the epoch so far, over all sessions

    @classmethod
    def fresh(cls, device: torch.device) -> EpochState:
        return cls(0, torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0)

    def sums(self) -> torch.Tensor:
        """Loss sum, wrong, count as one float64 tensor (what ranks sum up)."""
        count = torch.full_like(self.loss_sum, float(self.count), dtype=torch.float64)
        return torch.stack([self.loss_sum.double(), self.wrong.double(), count])

    def to(self, device: torch.device) -> EpochState:
        return EpochState(self.step, self.loss_sum.to(device), self.wrong.to(device), self.count, self.seconds)


@dataclass
class TrainState:
    """How far a run has come; with the model and optimizer, what a checkpoint holds."""

    epoch: int = 0  # full epochs done
    partial: EpochState | None = None  # the steps done of the next epoch, when a run stopped inside it
    best: dict = field(default_factory=lambda: {"val_error": None, "epoch": None, "test_error": None})
    history: list[dict] = field(default_factory=list)  # metrics.jsonl, one entry per finished epoch
    seconds: float = 0.0  # training time of earlier sessions of this run

    def finish_epoch(self, metrics: dict) -> None:
        """Count a finished epoch: its metrics join the history, and the best epoch on val is kept."""
        self.epoch, self.partial = metrics["epoch"], None
        self.history.append(metrics)
        best = self.best["val_error"]
        # a gated run's final network exists from its fine-tuning on: only those epochs can be selected
        final = metrics.get("gate_phase", "finetune") == "finetune"
        if "val_error" in metrics and final and (best is None or metrics["val_error"] < best):
            self.best = {"val_error": metrics["val_error"], "epoch": metrics["epoch"],
                         "test_error": metrics["test_error"]}


# A checkpoint to continue from, as loaded, and its file.
Checkpoint = tuple[dict, Path]


@dataclass
class Teacher:
    """Distillation's frozen trained network and where it came from (``erasenet.training.distill``)."""

    model: nn.Module
    path: Path  # the file its weights were read from
    sha256: str  # of its weights (see ``distill.weights_digest``)

    def record(self) -> dict:
        """What result.json (``provenance.teacher``) and checkpoints keep of it."""
        return {"path": str(self.path), "sha256": self.sha256}


@dataclass
class Job:
    """What to train and where: the config, the run directory, and how the command named it."""

    cfg: DictConfig
    out_dir: Path
    overrides: list[str] = field(default_factory=list)  # the run's own command-line overrides
    group: str = ""  # the sweep group it belongs to (result.json's ``group``)

    @functools.cached_property
    def config(self) -> dict:
        """The resolved config, as checkpoints and result.json hold it."""
        return OmegaConf.to_container(self.cfg, resolve=True)


@dataclass
class Learner:
    """What one training step uses: the module it calls, the optimizer and schedule that step, and the precision."""

    module: nn.Module  # the plain model, its DDP wrapper, compiled or not
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accel: Accel  # autocast, memory format, loss scaling
    loss_fn: LossFn | None = None  # the training loss in place of the cross-entropy (distillation)


@dataclass
class Counts:
    """What result.json reports of the built network and data: sizes, parameters, MACs, ReLUs, compiling."""

    sizes: dict[str, int]  # images of the train, val and test splits
    params: int
    macs: int | None
    relus: int | None  # scalar ReLU/PReLU evaluations of one forward pass on one image
    relus_original: int | None  # the same for the network with no ReLU erased or gated
    compiled: Compiled  # what compiling the training module cost (or why it failed)


@dataclass(kw_only=True)
class Run:
    """One run, built: its job, model, training step, data, and progress."""

    job: Job
    dist: Dist
    model: nn.Module  # the plain model: what its checkpoints hold and its evaluation runs
    learner: Learner
    train_loader: object  # a TensorLoader or a FolderLoader
    eval_loaders: dict
    erased: EraseRecord
    counts: Counts
    teacher: Teacher | None = None  # distillation's frozen teacher (``distill.teacher``)
    gates: GateSchedule | None = None  # the phases of an erase.method=gates run
    state: TrainState = field(default_factory=TrainState)

    @property
    def cfg(self) -> DictConfig:
        return self.job.cfg

    @property
    def device(self) -> torch.device:
        return self.learner.accel.device
