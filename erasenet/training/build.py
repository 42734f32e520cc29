"""Build everything a run needs from its config: data, model, DDP, optimizer, schedule."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .accel import Accel, Compiled, apply_torch_settings, build_accel, prepare_model, to_channels_last
from ..common.config import MODEL_META_KEYS
from ..data import build_loaders
from .distill import distill_loss_fn, find_teacher, frozen_teacher, load_init
from .distributed import Dist
from .phases import build_learning, phased
from ..erase import EraseRecord, ErasePolicy, apply_erase
from ..common.errors import UserError
from ..models import builder_options, create_model, list_models
from ..erase.rectifiers import count_relus
from ..erase.gates import gate_schedule
from .state import Counts, Job, Learner, Run, Teacher

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


def build_run(job: Job, dist: Dist, device: torch.device) -> Run:
    """Data, model (create → init → erase → device → SyncBN → DDP → compile), optimizer and scheduler."""
    cfg = job.cfg
    schedule = schedule_per_process(cfg.schedule, dist.world_size)
    train_loader, eval_loaders, sizes = build_loaders(
        cfg.dataset, schedule, device=device, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
        out_dir=job.out_dir, progress=progress_enabled(cfg.trainer.progress) and dist.is_main)
    macs = count_macs(cfg)
    accel = build_accel(cfg.trainer, device)
    teacher = load_teacher(cfg, device, job.out_dir)
    seed_everything(cfg.seed)
    model, erased = build_model(cfg, init=teacher if cfg.distill.init_from_teacher else None)
    model.to(device)
    try:
        gates = gate_schedule(model, OmegaConf.to_container(cfg.erase), image_shape(cfg), cfg.schedule.epochs)
    except ValueError as err:
        raise UserError(f"cannot gate model {cfg.model.name}: {err}.") from None
    model = to_channels_last(model, accel)
    if teacher is not None:
        to_channels_last(teacher.model, accel)
    image = image_shape(cfg)
    trained = distributed.wrap(model, dist, device, cfg.trainer.sync_batchnorm)
    model = distributed.unwrap(trained)  # SyncBatchNorm conversion builds a new module
    compiled = compile_for_training(trained, cfg.trainer, accel, (schedule.batch_size, *image), dist)
    counts = Counts(sizes=sizes, params=sum(p.numel() for p in model.parameters()), macs=macs,
                    relus=count_model_relus(model, image), relus_original=count_original_relus(cfg), compiled=compiled)
    optimizer, scheduler = build_learning(model, cfg, schedule, gates, len(train_loader))
    # weight 0: the labels alone (init_from_teacher without distillation); the teacher is not run
    loss_fn = distill_loss_fn(teacher, cfg.distill) if teacher is not None and cfg.distill.weight > 0 else None
    learner = Learner(module=compiled.module, optimizer=optimizer, scheduler=scheduler, accel=accel, loss_fn=loss_fn)
    run = Run(job=job, dist=dist, model=model, learner=learner, train_loader=train_loader, eval_loaders=eval_loaders,
              erased=erased, counts=counts, teacher=teacher, gates=gates)
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
    """Log what was built."""
    cfg, dist, counts = run.cfg, run.dist, run.counts
    optimizer = run.learner.optimizer  # a gated run with phases of their own: its gate phase's
    lr = f"lr {optimizer.param_groups[0]['lr']:g}" + (f" ({type(optimizer).__name__}, gate phase)" if phased(cfg) else "")
    log.info(f"{cfg.model.name}: {counts.params:,} parameters on {run.device}"
             f"{f', {dist.world_size} processes' if dist.enabled else ''}; train/val/test = "
             f"{counts.sizes['train']}/{counts.sizes['val']}/{counts.sizes['test']} images; batch "
             f"{cfg.schedule.batch_size} ({schedule.batch_size} per process), {lr}")
    log.info(run.erased.summary())
    log.info(f"{run.learner.accel.describe()}, compile {'on' if counts.compiled.compiled else 'off'}")
    if run.teacher is not None:
        d = cfg.distill
        log.info("distilling from %s (sha256 %s…): T=%g, weight %g%s", run.teacher.path, run.teacher.sha256[:12],
                 d.temperature, d.weight, ", started from its weights" if d.init_from_teacher else "")
