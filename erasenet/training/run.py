"""The training driver, read top to bottom: ``train_run`` (what the command calls) → ``fit`` (the epoch loop) →
``engine.train_one_epoch`` (the step).

``train_run`` joins the process group, returns a finished run's record untrained, builds the run
(``build.build_run``), continues it from its newest checkpoint (``resume.restore``), trains it (``fit``) and writes
its ``result.json`` (``runfiles.make_result``). The faults are handled around that path, each behind one seam:
the run directory's lock (``runfiles.run_lock``), a full disk (``diskfull.stopping_on_full_disk``), and stop
signals (``preemption.StopSignals`` around the loop, looked at between steps by the :class:`Checkpointer`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from . import distributed, phases
from ..common import faults, runlock
from .build import build_run, configure_torch, progress_enabled
from .diskfull import stopping_on_full_disk
from .distributed import Dist
from .engine import NonFiniteLoss, evaluate, resolve_device, train_one_epoch
from .preemption import Interrupted, StopSignals
from .resume import checkpoint_state, finished_result, latest_checkpoint, restore
from .runfiles import RunFiles, check_writable, disk_needed, make_result, run_lock
from ..common.runlock import RunLocked
from .state import EpochState, Job, Run

log = logging.getLogger("erasenet")


def train_run(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (), group: str = "", *,
              skip_locked: bool = False) -> dict:
    """Train one configuration into ``out_dir``; return (and write) its ``result.json`` record.

    The run directory is locked first (erasenet.common.runlock): one held by another live process raises
    :class:`RunLocked`, or, with ``skip_locked`` (a sweep), is skipped with a warning and returns a record with
    ``status: running elsewhere``. A run whose ``result.json`` matches its config returns that record untrained
    (unless ``trainer.resume=never``); one with checkpoints continues from the newest (``trainer.resume=auto``).
    A stop signal writes a checkpoint and raises :class:`Interrupted`; a full disk raises :class:`DiskFull`.
    """
    job = Job(cfg, Path(out_dir), list(overrides), group)
    configure_torch(cfg.trainer)
    dist, device = distributed.setup(cfg.trainer, resolve_device(cfg.trainer.device))
    try:
        with run_lock(job.out_dir, dist) as refusal, stopping_on_full_disk(job.out_dir, job.overrides):
            if refusal is not None:
                return running_elsewhere(job, refusal, skip_locked)
            finished = finished_run(job, dist)
            if finished is not None:
                return finished
            checkpoint = latest_checkpoint(job.out_dir, job.config, cfg.trainer.resume, dist.is_main)
            run = build_run(job, dist, device)
            if dist.is_main:
                check_writable(job.out_dir, disk_needed(run, job.out_dir))
            restore(run, checkpoint)
            with RunFiles(job.out_dir, enabled=dist.is_main, tensorboard=cfg.trainer.tensorboard) as files:
                files.open(cfg, run.erased, run.state)
                start = time.perf_counter()
                status, failure = fit(run, files)
                result = make_result(run, status, failure, seconds=run.state.seconds + time.perf_counter() - start)
                files.write_result(result, cfg, job.overrides)
    finally:
        distributed.cleanup()
    best = ("no epoch selected on validation" if result["best_epoch"] is None else
            f"best val error {_fmt(result['best_val_error'])}% (epoch {result['best_epoch']})")
    log.info("done: test error %s%%, %s -> %s", _fmt(result["test_error"]), best, job.out_dir)
    return result


def fit(run: Run, files: RunFiles) -> tuple[str, str | None]:
    """Train from where the run stands to the last epoch, a checkpoint after each; return the status
    (``ok``/``failed``) and the failure, if any."""
    progress = progress_enabled(run.cfg.trainer.progress) and run.dist.is_main
    gates = run.gates  # SNL's gate phases (erase.method=gates), or None
    with StopSignals() as stop:
        checkpoints = Checkpointer(run, files, stop)
        for epoch in range(run.state.epoch, run.cfg.schedule.epochs):
            if phases.finished(run):  # SNL's fine-tuning of fixed length is done: the run ends early
                break
            partial = run.state.partial  # the steps done of this epoch, when a run stopped inside it
            run.train_loader.set_epoch(epoch, start_batch=partial.step if partial else 0)
            try:
                train = train_one_epoch(run.learner, run.train_loader, epoch=epoch, state=partial,
                                        after_step=checkpoints.after_step, progress=progress,
                                        penalty=gates.penalty_term if gates is not None and gates.learning else None)
            except NonFiniteLoss as err:
                log.error("%s; stopping (the last good checkpoint is kept). Lower schedule.lr and run again%s.", err,
                          "; a network of polynomials (erase.replace=poly*) needs a smaller one than a network of "
                          "ReLUs" if run.cfg.erase.replace.startswith("poly") else "")
                return "failed", str(err)
            if train is None:
                raise interrupted(stop, run)
            distributed.sync_buffers(run.model)  # BN statistics of rank 0, as the checkpoint holds them
            metrics = evaluate_epoch(run, epoch, train)
            if gates is not None:  # SNL: raise the penalty, or binarise the gates, before the checkpoint
                phase = gates.phase
                gates.end_epoch(metrics)
                if gates.phase != phase:
                    phases.enter_phase(run)  # the fine-tuning's own optimizer, where it has one
            run.state.finish_epoch(metrics)
            files.log_epoch(metrics)  # before the checkpoint: a kill in between repeats the epoch
            checkpoints.save()
            if checkpoints.stop_requested():
                raise interrupted(stop, run)
    return "ok", None


def evaluate_epoch(run: Run, epoch: int, train: dict) -> dict:
    """Evaluate the model after the trained ``epoch`` (``train``: its totals); log and return its metrics."""
    scheduler = run.learner.scheduler
    # the lr of the epoch's first step, as LambdaLR computes it (also when the epoch resumed in its middle); a gated
    # run's phase with its own scheduler counts the steps from the phase's first
    lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0]((epoch - phases.first_epoch(run)) * len(run.train_loader))
    top5 = run.cfg.dataset.top5 and run.cfg.dataset.num_classes >= 10
    reduce = distributed.all_reduce_sum if run.dist.enabled else None
    evals = {k: evaluate(run.model, loader, reduce, accel=run.learner.accel, top5=top5)
             for k, loader in run.eval_loaders.items() if loader is not None}
    metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_error": train["error"],
               "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
    for split, m in evals.items():
        metrics[f"{split}_loss"], metrics[f"{split}_error"] = m["loss"], m["error"]
        if "top5_error" in m:
            metrics[f"{split}_top5_error"] = m["top5_error"]
    log.info("epoch %d/%d  lr %.4g  train loss %.3f err %.2f%%  %s  %.1fs (%.0f img/s)", epoch + 1,
             run.cfg.schedule.epochs, lr, train["loss"], train["error"],
             "  ".join(f"{k} err {m['error']:.2f}%" for k, m in evals.items()), train["seconds"],
             train["images_per_s"])
    return metrics


class Checkpointer:
    """Writes the run's checkpoints (rank 0; the other ranks wait): after each epoch, and, every
    ``trainer.check_every`` steps, inside one when a stop signal came or ``trainer.checkpoint_every_min`` has
    passed since the last (all ranks take the same decision)."""

    def __init__(self, run: Run, files: RunFiles, stop: StopSignals):
        self.run, self.files, self.stop = run, files, stop
        self.trainer = run.cfg.trainer
        self.started = time.perf_counter()  # this session's training time counts from here
        self.last_save = time.monotonic()

    def save(self) -> None:
        if self.trainer.checkpoint:
            seconds = self.run.state.seconds + time.perf_counter() - self.started
            self.files.save_checkpoint(checkpoint_state(self.run, seconds), self.trainer.keep_checkpoints)
        distributed.barrier()
        self.last_save = time.monotonic()

    def stop_requested(self) -> bool:
        """Whether a stop signal reached any rank."""
        return distributed.any_rank([self.stop.received is not None], self.run.device)[0]

    def after_step(self, partial: EpochState) -> bool:
        """The loop's check between steps: save if a checkpoint is due or a stop signal came; True to stop."""
        faults.point("train.step")
        if partial.step % self.trainer.check_every:
            return False
        every = 60 * self.trainer.checkpoint_every_min
        due = every > 0 and time.monotonic() - self.last_save >= every
        stop_now, due = distributed.any_rank([self.stop.received is not None, due], self.run.device)
        if stop_now or due:
            self.run.state.partial = total_over_ranks(partial) if self.run.dist.enabled else partial
            self.save()
        return stop_now


def total_over_ranks(partial: EpochState) -> EpochState:
    """The partial epoch's sums over all ranks (rank 0 carries them on resume)."""
    sums = distributed.all_reduce_sum(partial.sums())
    return EpochState(partial.step, sums[0].float(), sums[1].long(), int(sums[2].item()), partial.seconds)


def interrupted(stop: StopSignals, run: Run) -> Interrupted:
    """Say in one line how to resume, then hand the signal to an earlier handler (submitit requeues the job)."""
    where = (f"checkpoint written in {run.job.out_dir}" if run.cfg.trainer.checkpoint
             else "no checkpoint (trainer.checkpoint=false)")
    message = f"interrupted ({stop.name}): {where}; run the same command again to resume"
    log.warning(message)
    stop.pass_on()
    return Interrupted(message, stop.received)


def running_elsewhere(job: Job, refusal: RunLocked, skip_locked: bool) -> dict:
    """The record of a run whose directory another live process holds: skipped in a sweep, else refused."""
    if not skip_locked:
        raise refusal
    log.warning("skipping %s: it is running elsewhere (%s)", job.out_dir, runlock.describe(refusal.holder))
    return {"status": runlock.RUNNING, "failure": None, "seed": job.cfg.seed, "holder": refusal.holder}


def finished_run(job: Job, dist: Dist) -> dict | None:
    """The stored result.json of the run when it matches the config (``trainer.skip_finished``), else None."""
    t = job.cfg.trainer
    if not t.skip_finished or t.resume == "never":
        return None
    finished = distributed.broadcast(finished_result(job.out_dir, job.config) if dist.is_main else None)
    if finished is not None:
        log.info("already finished (result.json matches the config): %s", job.out_dir)
    return finished


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
