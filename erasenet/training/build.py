"""Build everything a group of runs needs from their configs: data, models, the stack or DDP, optimizer, schedule."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .accel import Accel, Compiled, apply_torch_settings, build_accel, prepare_model, to_channels_last
from .concurrent import StackedLoader, StackedModels, check_members, generator_state, with_seed
from ..common.config import MODEL_META_KEYS
from ..data import build_loaders
from .distill import Teacher, distill_loss_fn, find_teacher, frozen_teacher, load_init
from .distributed import Dist
from .engine import LossFn, build_optimizer, build_scheduler
from ..erase import EraseRecord, ErasePolicy, apply_erase
from ..common.errors import UserError
from ..models import builder_options, create_model, list_models
from ..erase.rectifiers import count_relus
from ..erase.gates import GateSchedule, gate_schedule
from .resume import TrainState

if TYPE_CHECKING:
    from .runfiles import RunFiles

log = logging.getLogger("erasenet")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, init: Teacher | None = None) -> tuple[nn.Module, EraseRecord]:
    """Create the configured model (initialised by its builder, or with ``init``'s weights) and apply the erase
    policy to it."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    if name not in list_models(external=True):
        raise UserError(f"model.name={name!r} is not a registered model. "
                        f"Choose one of: {', '.join(list_models(external=True))}.")
    accepted = builder_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"model {name} takes no option {', '.join(unknown)}. Its options are: "
                        f"{', '.join(k for k in accepted if k not in ('num_classes', 'in_chans'))}.")
    try:
        model = create_model(name, num_classes=cfg.dataset.num_classes, in_chans=cfg.dataset.in_chans, **kwargs)
        if init is not None:  # before erasing: an erase policy wraps or replaces a trained network's ReLUs
            load_init(model, init)
        erased = apply_erase(model, ErasePolicy.from_config(OmegaConf.to_container(cfg.erase)),
                             input_shape=image_shape(cfg))
    except ValueError as err:
        raise UserError(f"cannot build model {name}: {err}.") from None
    return model, erased



def load_teacher(cfg: DictConfig, device: torch.device, out_dir: Path | None = None) -> Teacher | None:
    """The frozen teacher of the run ``cfg`` on ``device`` (``distill.teacher``), or None without one.

    Raises ``UserError`` when the teacher is missing, unfinished, unreadable, or another network or data split.
    """
    source = find_teacher(cfg, out_dir)
    if source is None:
        return None
    with torch.random.fork_rng(devices=[]):  # building the teacher must not move the student's random draws
        model, _ = build_model(source.cfg)
    return frozen_teacher(model, source, device)

def image_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(C, H, W) of one input image of the configured dataset."""
    d = cfg.dataset
    return d.in_chans, d.image_size, d.image_size


def count_macs(cfg: DictConfig) -> int | None:
    """Multiply-accumulates of one forward pass on one image, counted on a meta-device build (no memory, no math)."""
    from torch.utils.flop_counter import FlopCounterMode

    d = cfg.dataset
    try:
        with torch.device("meta"):
            model, _ = build_model(cfg)
            image = torch.zeros(1, d.in_chans, d.image_size, d.image_size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(image)
    except (RuntimeError, NotImplementedError) as err:  # an op without a meta kernel must not cost the run
        log.warning("could not count MACs on the meta device: %s", err)
        return None
    return counter.get_total_flops() // 2  # the counter reports 2 FLOPs per multiply-add


def count_model_relus(model: nn.Module, image: tuple[int, int, int]) -> int | None:
    """ReLU elements of one forward pass on one image (meta tensors stand in for the weights: no math)."""
    try:
        return count_relus(model, image)
    except (RuntimeError, NotImplementedError) as err:  # an op without a meta kernel must not cost the run
        log.warning("could not count ReLUs on the meta device: %s", err)
        return None


def count_original_relus(cfg: DictConfig) -> int | None:
    """ReLU elements of one forward pass of the configured network with nothing erased (built on the meta
    device: no memory, no math)."""
    unerased = OmegaConf.merge(cfg, {"erase": {"method": "erase", "proportion": 0.0, "fixed_sites": False,
                                               "budget": None, "cull_stages": [], "thin": False}})
    try:
        with torch.device("meta"):
            model, _ = build_model(unerased)
    except (RuntimeError, NotImplementedError) as err:
        log.warning("could not count the original network's ReLUs on the meta device: %s", err)
        return None
    return count_model_relus(model, image_shape(cfg))


def progress_enabled(setting: str) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return setting == "on"


def configure_torch(trainer: DictConfig) -> None:
    if trainer.num_threads > 0:
        torch.set_num_threads(trainer.num_threads)
    apply_torch_settings(trainer.deterministic)


def schedule_per_process(schedule: DictConfig, world_size: int) -> DictConfig:
    """The schedule one process runs: its share of the global batch, and the lr after ``lr_scaling``."""
    s = OmegaConf.create(OmegaConf.to_container(schedule, resolve=True))
    if s.batch_size % world_size:
        raise UserError(f"schedule.batch_size={s.batch_size} (the global batch) does not split evenly over "
                        f"{world_size} processes. Use a multiple of {world_size}.")
    if s.lr_scaling == "linear":
        factor = s.batch_size / s.base_batch_size
        s.lr, s.warmup_lr = s.lr * factor, s.warmup_lr * factor
    s.batch_size //= world_size
    s.eval_batch_size = -(-s.eval_batch_size // world_size)
    return s


@dataclass(kw_only=True)
class Member:
    """One run of a group: its config and directory, its plain model, its progress, files and log."""

    cfg: DictConfig
    out_dir: Path
    model: nn.Module  # the plain model: what its checkpoints hold and its evaluation runs
    erased: EraseRecord
    config: dict  # the resolved config, as checkpoints and result.json hold it
    overrides: list[str]
    group: str
    log: logging.Logger
    state: TrainState = field(default_factory=TrainState)
    files: RunFiles | None = None
    teacher: Teacher | None = None  # distillation's frozen teacher (``distill.teacher``)
    gates: GateSchedule | None = None  # the phases of an erase.method=gates run


@dataclass(kw_only=True)
class Run:
    """K >= 1 runs of one configuration, differing only in their seed, that train in one epoch loop.

    With K = 1 the optimizer steps the member's own model (wrapped by DDP under DDP); with K > 1 it steps a
    :class:`StackedModels` of the members, which evaluation copies back into each member's plain model.
    """

    members: list[Member]
    dist: Dist
    device: torch.device
    train_model: nn.Module  # what a training step calls: the plain model, its DDP wrapper or the stack, compiled
    stack: StackedModels | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: object  # a TensorLoader, a FolderLoader, or a StackedLoader of the members' loaders
    eval_loaders: dict
    sizes: dict[str, int]
    params: int
    macs: int | None
    relus: int | None  # scalar ReLU/PReLU evaluations of one forward pass on one image
    relus_original: int | None  # the same for the network with no ReLU erased or gated
    accel: Accel  # autocast, memory format, loss scaling
    compiled: Compiled  # what compiling the model cost (or why it failed)
    loss_fn: LossFn | None = None  # the training loss in place of cross-entropy (distillation)

    @property
    def cfg(self) -> DictConfig:
        """The configuration the members share (the first member's, seed included)."""
        return self.members[0].cfg

    @property
    def seeds(self) -> list[int]:
        return [m.cfg.seed for m in self.members]


def build_run(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], dist: Dist, device: torch.device, *,
              overrides: Sequence[list[str]], groups: Sequence[str], logs: Sequence[logging.Logger]) -> Run:
    """Data, models (create → init → erase → device → SyncBN → DDP, or the stack), optimizer and scheduler."""
    check_members(cfgs)
    cfg = cfgs[0]
    if len(cfgs) > 1 and dist.enabled:
        raise UserError("trainer.concurrent > 1 trains seeds together in one process and cannot run under DDP. "
                        "Use trainer.concurrent=1 with trainer=ddp.")
    schedule = schedule_per_process(cfg.schedule, dist.world_size)
    train_loader, eval_loaders, sizes = build_loaders(
        cfg.dataset, schedule, device=device, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
        out_dir=Path(out_dirs[0]), progress=progress_enabled(cfg.trainer.progress) and dist.is_main)
    macs = count_macs(cfg)
    accel = build_accel(cfg.trainer, device)
    members, generators = [], []
    teachers = [load_teacher(c, device, Path(out)) for c, out in zip(cfgs, out_dirs)]
    for c, out, o, g, member_log, teacher in zip(cfgs, out_dirs, overrides, groups, logs, teachers):
        seed_everything(c.seed)  # each member starts from its own seed's weights and draws
        model, erased = build_model(c, init=teacher if c.distill.init_from_teacher else None)
        model.to(device)
        generators.append(generator_state(device))
        try:
            gates = gate_schedule(model, OmegaConf.to_container(c.erase), image_shape(c), c.schedule.epochs)
        except ValueError as err:
            raise UserError(f"cannot gate model {c.model.name}: {err}.") from None
        members.append(Member(cfg=c, out_dir=Path(out), model=to_channels_last(model, accel), erased=erased,
                              config=OmegaConf.to_container(c, resolve=True), overrides=list(o), group=g,
                              log=member_log, teacher=teacher, gates=gates))
        if teacher is not None:
            to_channels_last(teacher.model, accel)
    image = image_shape(cfg)
    stack = None
    if len(members) == 1:
        trained = distributed.wrap(members[0].model, dist, device, cfg.trainer.sync_batchnorm)
        members[0].model = distributed.unwrap(trained)  # SyncBatchNorm conversion builds a new module
        compiled = compile_for_training(trained, cfg.trainer, accel, (schedule.batch_size, *image), dist)
    else:
        stack = StackedModels([m.model for m in members], generators)
        train_loader = StackedLoader([with_seed(train_loader, c.seed) for c in cfgs])
        # the stacked weights are 5-d: channels_last applies to the members' evaluation models only
        compiled = compile_for_training(stack, cfg.trainer, dataclasses.replace(accel, channels_last=False),
                                        (len(members), schedule.batch_size, *image), dist)
    params = sum(p.numel() for p in members[0].model.parameters())
    relus = count_model_relus(members[0].model, image)
    relus_original = count_original_relus(cfg)
    optimizer = build_optimizer(members[0].model, schedule, stack.named_member_parameters() if stack else None)
    scheduler = build_scheduler(optimizer, schedule, len(train_loader))
    run = Run(members=members, dist=dist, device=device, train_model=compiled.module, stack=stack,
              optimizer=optimizer, scheduler=scheduler, train_loader=train_loader, eval_loaders=eval_loaders,
              sizes=sizes, params=params, macs=macs, relus=relus, relus_original=relus_original, accel=accel,
              compiled=compiled,
              # weight 0: the labels alone (init_from_teacher without distillation); the teacher is not run
              loss_fn=distill_loss_fn(teachers, cfg.distill) if teachers[0] is not None and cfg.distill.weight > 0
              else None)
    describe(run, schedule)
    return run


def compile_for_training(model: nn.Module, trainer: DictConfig, accel: Accel, batch: tuple[int, ...],
                         dist: Dist) -> Compiled:
    """``trainer.compile`` for the training step only (evaluation runs the eager plain model); under DDP every
    rank trains compiled, or every rank eagerly, so that their collectives stay in step."""
    if trainer.compile and trainer.sync_batchnorm and dist.enabled:
        log.warning("trainer.compile with trainer.sync_batchnorm: SyncBatchNorm's collectives break the compiled "
                    "graph into pieces, so compiling may gain little; compare against trainer.compile=false.")
    compiled = prepare_model(model, trainer, accel, [(batch, True)])
    if dist.enabled and trainer.compile and any(distributed.any_rank([not compiled.compiled], accel.device)):
        if compiled.compiled:
            log.warning("torch.compile failed on another process: this one trains the eager model as well")
        return Compiled(model, False, compiled.seconds, compiled.error or "failed on another process")
    return compiled


def describe(run: Run, schedule: DictConfig) -> None:
    """Log what was built: to the console, and to each member's own log."""
    cfg, dist = run.cfg, run.dist
    together = f", {len(run.members)} seeds trained together ({', '.join(map(str, run.seeds))})" \
        if run.stack is not None else ""
    lines = [f"{cfg.model.name}: {run.params:,} parameters{' each' if together else ''} on {run.device}"
             f"{f', {dist.world_size} processes' if dist.enabled else ''}{together}; train/val/test = "
             f"{run.sizes['train']}/{run.sizes['val']}/{run.sizes['test']} images; batch {cfg.schedule.batch_size} "
             f"({schedule.batch_size} per process), lr {schedule.lr:g}",
             f"{run.accel.describe()}, compile {'on' if run.compiled.compiled else 'off'}"]
    if run.stack is not None:
        log.info(lines[0])
    for m in run.members:
        for line in (lines[0], m.erased.summary(), lines[1]):
            m.log.info(line)
        if m.teacher is not None:
            d = cfg.distill
            m.log.info("distilling from %s (sha256 %s…): T=%g, weight %g%s", m.teacher.path, m.teacher.sha256[:12],
                       d.temperature, d.weight, ", started from its weights" if d.init_from_teacher else "")
