"""Build everything one run needs from its config, train it, and write the run's files."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import __version__, distributed
from .accel import Accel, Compiled, accel_record, build_accel, prepare_model, sample_shapes, to_channels_last
from .accel import apply_torch_settings
from .checkpoint import (CHECKPOINT_DIR, atomic_write, check_writable, config_differences, load_checkpoint,
                         load_latest, rng_state, save_json, save_run_checkpoint, set_rng_state)
from .config import MODEL_META_KEYS
from .data import TensorLoader, build_loaders, describe_splits
from .distributed import Dist
from .engine import (EpochState, NonFiniteLoss, Reduce, build_optimizer, build_scheduler, evaluate, resolve_device,
                     train_one_epoch)
from .erase import EraseRecord, ErasePolicy, apply_erase
from .errors import UserError
from .models import builder_options, create_model, list_models
from .preemption import Interrupted, StopSignals
from .tblog import scalar_tag, write_hparams

log = logging.getLogger("erasenet")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig) -> tuple[nn.Module, EraseRecord]:
    """Create the configured model (initialised by its builder) and apply the erase policy to it."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    if name not in list_models():
        raise UserError(f"model.name={name!r} is not a registered model. Choose one of: {', '.join(list_models())}.")
    accepted = builder_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"model {name} takes no option {', '.join(unknown)}. Its options are: "
                        f"{', '.join(k for k in accepted if k not in ('num_classes', 'in_chans'))}.")
    try:
        model = create_model(name, num_classes=cfg.dataset.num_classes, in_chans=cfg.dataset.in_chans, **kwargs)
        record = apply_erase(model, ErasePolicy(**OmegaConf.to_container(cfg.erase)))
    except ValueError as err:
        raise UserError(f"cannot build model {name}: {err}.") from None
    return model, record


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


def progress_enabled(setting: str) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return setting == "on"


def library_versions() -> dict:
    import torchvision

    return {"erasenet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


@dataclass
class Run:
    """Everything one training process holds."""

    cfg: DictConfig
    out_dir: Path
    ctx: Dist
    device: torch.device
    model: nn.Module  # what trains: the DDP wrapper under DDP
    module: nn.Module  # the plain model: what checkpoints hold and evaluation runs
    record: EraseRecord
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: TensorLoader
    eval_loaders: dict[str, TensorLoader | None]
    sizes: dict[str, int]
    params: int
    macs: int | None
    accel: Accel  # autocast, memory format, loss scaling
    compiled: Compiled  # what compiling the model cost (or why it failed)


@dataclass
class TrainState:
    """How far a run has come; with the model and optimizer, what a checkpoint holds."""

    epoch: int = 0  # full epochs done
    partial: EpochState | None = None  # the steps done of the next epoch, when a run stopped inside it
    best: dict = field(default_factory=lambda: {"val_error": None, "epoch": None, "test_error": None})
    history: list[dict] = field(default_factory=list)  # metrics.jsonl, one record per finished epoch
    seconds: float = 0.0  # training time of earlier sessions of this run

    def finish_epoch(self, record: dict) -> None:
        """Count a finished epoch: its metrics record joins the history, and the best epoch on val is kept."""
        self.epoch, self.partial = record["epoch"], None
        self.history.append(record)
        best = self.best["val_error"]
        if "val_error" in record and (best is None or record["val_error"] < best):
            self.best = {"val_error": record["val_error"], "epoch": record["epoch"],
                         "test_error": record["test_error"]}


def train_run(cfg: DictConfig, out_dir: Path, overrides: list[str] = (), group: str = "") -> dict:
    """Train one configuration into ``out_dir``; return (and write) its ``result.json`` record.

    A run whose ``result.json`` matches the config returns that record untrained (unless
    ``trainer.resume=never``); one with checkpoints continues from the newest (``trainer.resume=auto``).
    A stop signal writes a checkpoint and raises :class:`Interrupted`.
    """
    out_dir = Path(out_dir)
    configure_torch(cfg.trainer)
    ctx, device = distributed.setup(cfg.trainer, resolve_device(cfg.trainer.device))
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        if cfg.trainer.skip_finished and cfg.trainer.resume != "never":
            finished = distributed.broadcast(finished_result(out_dir, config) if ctx.is_main else None)
            if finished is not None:
                log.info("already finished (result.json matches the config): %s", out_dir)
                return finished
        run = build_run(cfg, out_dir, ctx, device)
        if ctx.is_main:
            check_writable(out_dir, disk_needed(run))
        state = resume(run, config)
        files = RunFiles(out_dir, enabled=ctx.is_main, tensorboard=cfg.trainer.tensorboard)
        files.open(cfg, run.record, state)
        start = time.perf_counter()
        try:
            status, failure = fit(run, state, files, config)
            result = make_result(run, state, status, failure, config, overrides, group,
                                 seconds=state.seconds + time.perf_counter() - start)
            files.write_result(result, cfg, list(overrides))
        finally:
            files.close()
        log.info("done: test error %s%%, best val error %s%% (epoch %s) -> %s", _fmt(result["test_error"]),
                 _fmt(state.best["val_error"]), state.best["epoch"], out_dir)
        return result
    finally:
        distributed.cleanup()


def configure_torch(trainer: DictConfig) -> None:
    if trainer.num_threads > 0:
        torch.set_num_threads(trainer.num_threads)
    apply_torch_settings(trainer.deterministic)


def process_schedule(schedule: DictConfig, world_size: int) -> DictConfig:
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


def build_run(cfg: DictConfig, out_dir: Path, ctx: Dist, device: torch.device) -> Run:
    """Data, model (create → init → erase → device → SyncBN → DDP), optimizer and scheduler."""
    schedule = process_schedule(cfg.schedule, ctx.world_size)
    train_loader, eval_loaders, sizes = build_loaders(cfg.dataset, schedule, device=device, seed=cfg.seed,
                                                      rank=ctx.rank, world_size=ctx.world_size, out_dir=out_dir,
                                                      progress=progress_enabled(cfg.trainer.progress) and ctx.is_main)
    seed_everything(cfg.seed)
    module, record = build_model(cfg)
    module.to(device)
    accel = build_accel(cfg.trainer, device)
    to_channels_last(module, accel)
    wrapped = distributed.wrap(module, ctx, device, cfg.trainer.sync_batchnorm)
    module = distributed.unwrap(wrapped)  # SyncBatchNorm conversion builds a new module
    compiled = prepare_model(wrapped, cfg.trainer, accel, sample_shapes(cfg.dataset, schedule))
    model = compiled.module  # what trains: compiled and/or DDP-wrapped; `module` stays the plain model
    params = sum(p.numel() for p in module.parameters())
    macs = count_macs(cfg)
    log.info("%s: %s parameters on %s%s; train/val/test = %d/%d/%d images; batch %d (%d per process), lr %g",
             cfg.model.name, f"{params:,}", device, f", {ctx.world_size} processes" if ctx.enabled else "",
             sizes["train"], sizes["val"], sizes["test"], cfg.schedule.batch_size, schedule.batch_size, schedule.lr)
    log.info(record.summary())
    log.info("%s, compile %s", accel.describe(), "on" if compiled.compiled else "off")
    optimizer = build_optimizer(module, schedule)
    scheduler = build_scheduler(optimizer, schedule, len(train_loader))
    return Run(cfg, out_dir, ctx, device, model, module, record, optimizer, scheduler, train_loader, eval_loaders,
               sizes, params, macs, accel, compiled)


def disk_needed(run: Run) -> int:
    """Bytes a run will write at most: its kept checkpoints, one being written, and room for logs."""
    tensors = [*run.module.state_dict().values()]
    checkpoint = 2 * sum(t.numel() * t.element_size() for t in tensors)  # weights + momentum, roughly
    return (run.cfg.trainer.keep_checkpoints + 1) * checkpoint * run.cfg.trainer.checkpoint + 64 * 2**20


# --- resuming -------------------------------------------------------------------------------------------------

def finished_result(out_dir: Path, config: dict) -> dict | None:
    """The stored ``result.json`` of ``out_dir`` if the run it records had this config; else None."""
    path = out_dir / "result.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    differences = config_differences(stored.get("config", {}), config)
    if differences:
        log.warning("%s is from another configuration (%s): training again", path, "; ".join(differences))
        return None
    return stored


def resume(run: Run, config: dict) -> TrainState:
    """Restore the newest valid checkpoint of the run directory into ``run`` (``trainer.resume=auto``)."""
    if run.cfg.trainer.resume == "never":
        return TrainState()
    found = load_latest(run.out_dir) if run.ctx.is_main else None
    path = distributed.broadcast(str(found[1]) if found else None)
    if path is None:
        return TrainState()
    ckpt = found[0] if found else load_checkpoint(Path(path))
    differences = config_differences(ckpt["config"], config)
    if differences:
        raise UserError(f"the checkpoint {path} is from another configuration; these keys differ (checkpoint -> "
                        f"now): {'; '.join(differences)}. Run that configuration to continue it, or start this "
                        "one afresh with trainer.resume=never (which replaces the run directory's checkpoints).")
    run.module.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.accel.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    partial = None
    if ckpt["step"]:
        sums = ckpt["partial"] if run.ctx.is_main else {k: 0 for k in ckpt["partial"]}  # totals over ranks
        partial = EpochState(ckpt["step"], torch.as_tensor(sums["loss_sum"], device=run.device).float(),
                             torch.as_tensor(sums["wrong"], device=run.device).long(), int(sums["count"]))
    log.info("resuming from %s (epoch %d, step %d)", path, ckpt["epoch"], ckpt["step"])
    return TrainState(ckpt["epoch"], partial, ckpt["best"], ckpt["history"], ckpt["seconds"])


def checkpoint_state(run: Run, state: TrainState, config: dict, seconds: float,
                     optimizer_state: dict | None = None) -> dict:
    """What a checkpoint holds; ``state.partial`` must already hold the totals over all ranks.
    ``optimizer_state`` stands in for ``run.optimizer``'s (a member of a stack of models has its own slice)."""
    partial = state.partial
    return {
        "model": run.module.state_dict(), "optimizer": optimizer_state or run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "epoch": state.epoch, "step": partial.step if partial else 0,
        "partial": {"loss_sum": partial.loss_sum.detach().cpu(), "wrong": partial.wrong.cpu(),
                    "count": partial.count} if partial else None,
        "best": state.best, "history": state.history, "seconds": seconds, "rng": rng_state(), "config": config,
        "erase": run.record.as_dict(), "world_size": run.ctx.world_size, "scaler": run.accel.scaler.state_dict(),
    }


# --- training -------------------------------------------------------------------------------------------------

def fit(run: Run, state: TrainState, files: "RunFiles", config: dict) -> tuple[str, str | None]:
    """Train from ``state`` to the last epoch; return the status (``ok``/``failed``) and the failure, if any."""
    cfg, t = run.cfg, run.cfg.trainer
    reduce = distributed.all_reduce_sum if run.ctx.enabled else None
    progress = progress_enabled(t.progress) and run.ctx.is_main
    started = time.perf_counter()
    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        if t.checkpoint:
            files.save_checkpoint(checkpoint_state(run, state, config, state.seconds + time.perf_counter() - started),
                                  t.keep_checkpoints)
        distributed.barrier()
        last_save = time.monotonic()

    def after_step(partial: EpochState) -> bool:
        """Every ``check_every`` steps: stop on a signal, or write a checkpoint that is due; all ranks agree."""
        if partial.step % t.check_every:
            return False
        due = t.checkpoint_every_min > 0 and time.monotonic() - last_save >= 60 * t.checkpoint_every_min
        stop_now, due = distributed.any_rank([stop.received is not None, due], run.device)
        if stop_now or due:
            state.partial = total_over_ranks(partial) if reduce else partial
            save()
        return stop_now

    with StopSignals() as stop:
        for epoch in range(state.epoch, cfg.schedule.epochs):
            try:
                record = run_epoch(run, epoch, state.partial, after_step, reduce, progress)
            except NonFiniteLoss as err:
                log.error("%s; stopping this run (its last good checkpoint is kept).", err)
                return "failed", str(err)
            if record is None:
                raise interrupted(stop, run)
            state.finish_epoch(record)
            files.log_epoch(record)  # before the checkpoint: a kill in between repeats the epoch, loses nothing
            save()
            if distributed.any_rank([stop.received is not None], run.device)[0]:
                raise interrupted(stop, run)
    return "ok", None


def total_over_ranks(partial: EpochState) -> EpochState:
    """The partial epoch's sums over all ranks (rank 0 carries them on resume)."""
    sums = distributed.all_reduce_sum(partial.sums())
    return EpochState(partial.step, sums[0].float(), sums[1].long(), int(sums[2].item()))


def interrupted(stop: StopSignals, run: Run) -> Interrupted:
    """Hand the signal to an earlier handler (submitit requeues the job), then say how to resume."""
    name = stop.name
    where = "a checkpoint was written" if run.cfg.trainer.checkpoint else "no checkpoint (trainer.checkpoint=false)"
    log.warning("stopped on %s: %s; run the same command again to resume", name, where)
    stop.pass_on()
    return Interrupted(f"stopped on {name}; {where} in {run.out_dir}")


def run_epoch(run: Run, epoch: int, partial: EpochState | None, after_step: Callable[[EpochState], bool],
              reduce: Reduce | None, progress: bool) -> dict | None:
    """Train one epoch (from ``partial`` on) and evaluate; the epoch's metrics record, or None if stopped."""
    run.train_loader.set_epoch(epoch, start_batch=partial.step if partial else 0)
    train = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scheduler, epoch=epoch,
                            progress=progress, state=partial, after_step=after_step, reduce=reduce, accel=run.accel)
    if train is None:
        return None
    distributed.sync_buffers(run.module)  # BN statistics of rank 0, as the checkpoint holds them
    return epoch_record(run, epoch, train, reduce)


def epoch_record(run: Run, epoch: int, train: dict, reduce: Reduce | None = None,
                 logger: logging.Logger = log) -> dict:
    """Evaluate ``run.module`` after the trained ``epoch`` (``train``: its totals); log and return its record."""
    # the lr of the epoch's first step, as LambdaLR computes it (also when the epoch resumed in its middle)
    lr = run.scheduler.base_lrs[0] * run.scheduler.lr_lambdas[0](epoch * len(run.train_loader))
    evals = {k: evaluate(run.module, loader, reduce, accel=run.accel)
             for k, loader in run.eval_loaders.items() if loader is not None}
    record = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_error": train["error"],
              "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
    for split, m in evals.items():
        record[f"{split}_loss"], record[f"{split}_error"] = m["loss"], m["error"]
    logger.info("epoch %d/%d  lr %.4g  train loss %.3f err %.2f%%  %s  %.1fs (%.0f img/s)", epoch + 1,
                run.cfg.schedule.epochs, lr, train["loss"], train["error"],
                "  ".join(f"{k} err {m['error']:.2f}%" for k, m in evals.items()), train["seconds"],
                train["images_per_s"])
    return record


# --- the run directory ----------------------------------------------------------------------------------------

class RunFiles:
    """The run directory's logs, checkpoints and result; only rank 0 writes (``enabled``)."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.out_dir, self.enabled, self.tensorboard = out_dir, enabled, tensorboard
        self.metrics = self.writer = None

    def open(self, cfg: DictConfig, record: EraseRecord, state: TrainState) -> None:
        """Start or continue the logs: metrics.jsonl holds exactly the finished epochs, TensorBoard drops later
        steps; a run starting afresh first clears what an earlier attempt left."""
        if not self.enabled:
            return
        fresh = state.epoch == 0 and state.partial is None
        if fresh:
            for leftover in (self.out_dir / CHECKPOINT_DIR, self.out_dir / "tb", self.out_dir / "result.json"):
                if leftover.exists():
                    log.warning("starting afresh: removing %s of an earlier attempt", leftover)
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write(self.out_dir / "metrics.jsonl",
                     lambda f: f.write("".join(json.dumps(r) + "\n" for r in state.history).encode()))
        self.metrics = open(self.out_dir / "metrics.jsonl", "a")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # scalars are logged at step = epoch (1-based): purge what a killed session logged after the checkpoint
            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=None if fresh else state.epoch + 1)
            if fresh:
                self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
                self.writer.add_text("erase", record.summary())

    def log_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.writer:
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(scalar_tag(key), value, record["epoch"])
            self.writer.flush()

    def save_checkpoint(self, state: dict, keep: int) -> None:
        if self.enabled:
            save_run_checkpoint(self.out_dir, state, keep)

    def write_result(self, result: dict, cfg: DictConfig, overrides: list[str]) -> None:
        if self.enabled:
            if self.writer:
                write_hparams(self.writer, cfg, overrides, result)
            save_json(self.out_dir / "result.json", result)

    def close(self) -> None:
        for f in (self.metrics, self.writer):
            if f is not None:
                f.close()


def make_result(run: Run, state: TrainState, status: str, failure: str | None, config: dict,
                overrides: list[str], group: str, seconds: float) -> dict:
    """The run's ``result.json`` record."""
    last, best, d = (state.history[-1] if state.history else {}), state.best, run.cfg.dataset
    return {
        "status": status, "failure": failure, "seed": run.cfg.seed, "model": run.cfg.model.name, "dataset": d.name,
        "group": group, "overrides": list(overrides), "epochs": last.get("epoch", 0),
        "test_error": last.get("test_error"), "test_loss": last.get("test_loss"),
        "val_error": last.get("val_error"), "train_error": last.get("train_error"),
        "best_val_error": best["val_error"], "best_epoch": best["epoch"],
        "test_error_at_best_val": best["test_error"],
        "selection": "best epoch on val, test reported" if run.sizes["val"] else "none (dataset.val_size=0)",
        "splits": run.sizes, "split_sources": describe_splits(d), "params": run.params, "macs": run.macs,
        "erased": run.record.sites, "erase": run.record.as_dict(), "device": str(run.device),
        "processes": run.ctx.world_size, "seconds": seconds, "versions": library_versions(), "config": config,
        "accel": accel_record(run.accel, run.compiled),
        "paper": OmegaConf.to_container(run.cfg.paper) if run.cfg.paper.test_error is not None else None,
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
