"""The training driver: K >= 1 runs of one configuration (differing only in their seed) through one epoch loop.

A single run is the case K = 1. Its path: ``train_runs`` skips finished runs and groups the rest by the point
they resume from → ``build.build_run`` → ``resume.restore`` → ``fit`` (one ``run_epoch`` per epoch, a checkpoint
after each) → ``runfiles.make_result``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed
from ..common import faults, runlock
from .build import Member, Run, build_run, configure_torch, progress_enabled
from .concurrent import check_members
from ..common.config import IMAGE_FOLDER_DATASETS
from .diskfull import disk_full, is_disk_full
from .distributed import Dist
from .engine import EpochState, NonFiniteLoss, Reduce, evaluate, resolve_device, train_one_epoch
from .preemption import Interrupted, StopSignals
from .resume import Checkpoint, checkpoint_state, finished_result, latest_checkpoint, restore
from .runfiles import RunFiles, check_writable, disk_needed, log_file, make_result
from ..common.runlock import RunLock, RunLocked

log = logging.getLogger("erasenet")


def train_run(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (), group: str = "", *,
              skip_locked: bool = False) -> dict:
    """Train one configuration into ``out_dir``; return (and write) its ``result.json`` record."""
    return train_runs([cfg], [out_dir], [list(overrides)], [group], skip_locked=skip_locked)[0]


def train_runs(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], overrides: Sequence[list[str]] = (),
               groups: Sequence[str] = (), *, log_files: bool = False, skip_locked: bool = False) -> list[dict]:
    """Train the seeds ``cfgs`` of one configuration, each into its own directory; write and return each one's
    ``result.json`` record.

    Each run directory is locked first (erasenet.common.runlock): one held by another live process raises
    :class:`RunLocked`, or, with ``skip_locked`` (a sweep), is skipped with a warning and returns a record with
    ``status: running elsewhere``. A run whose ``result.json`` matches its config returns that record untrained
    (unless ``trainer.resume=never``); one with checkpoints continues from the newest (``trainer.resume=auto``).
    The rest train together, in one group per point they resume from (ImageFolder data and DDP: one at a time).
    ``log_files``: each run also logs to its directory's ``train.log`` (where Hydra does not). A stop signal
    writes checkpoints and raises :class:`Interrupted`; a full disk raises :class:`DiskFull`.
    """
    check_members(cfgs)
    out_dirs = [Path(out) for out in out_dirs]
    overrides = [list(o) for o in overrides] or [[] for _ in cfgs]
    groups = list(groups) or ["" for _ in cfgs]
    configure_torch(cfgs[0].trainer)
    dist, device = distributed.setup(cfgs[0].trainer, resolve_device(cfgs[0].trainer.device))
    try:
        with contextlib.ExitStack() as locks:
            return _train_locked(cfgs, out_dirs, overrides, groups, dist, device, log_files, skip_locked, locks)
    finally:
        distributed.cleanup()


def lock_runs(out_dirs: Sequence[Path], dist: Dist, locks: contextlib.ExitStack) -> list[RunLocked | None]:
    """Take each run directory's lock on rank 0 (released when ``locks`` closes); per run, the refusal if another
    live process holds it, on every rank."""
    refused = []
    for out in out_dirs:
        found = None
        if dist.is_main:
            lock = RunLock(out)  # before anything is created: it notes which folders are new
            check_writable(out, 0)  # an unwritable directory is said so, before its lock is tried
            try:
                lock.acquire()
                locks.callback(lock.release)
            except RunLocked as err:
                found = (str(err), err.holder)
        found = distributed.broadcast(found)
        refused.append(None if found is None else RunLocked(found[0], out, found[1]))
    return refused


def _train_locked(cfgs: Sequence[DictConfig], out_dirs: list[Path], overrides: list[list[str]], groups: list[str],
                  dist: Dist, device: torch.device, log_files: bool, skip_locked: bool,
                  locks: contextlib.ExitStack) -> list[dict]:
    results, pending = {}, {}
    for k, refusal in enumerate(lock_runs(out_dirs, dist, locks)):
        if refusal is not None and not skip_locked:
            raise refusal
        if refusal is not None:
            log.warning("skipping %s: it is running elsewhere (%s)", out_dirs[k], runlock.describe(refusal.holder))
            results[k] = {"status": runlock.RUNNING, "failure": None, "seed": cfgs[k].seed,
                          "holder": refusal.holder}
    for k, (c, out) in enumerate(zip(cfgs, out_dirs)):
        if k in results:
            continue
        config = OmegaConf.to_container(c, resolve=True)
        if c.trainer.skip_finished and c.trainer.resume != "never":
            finished = distributed.broadcast(finished_result(out, config) if dist.is_main else None)
            if finished is not None:
                log.info("already finished (result.json matches the config): %s", out)
                results[k] = finished
                continue
        pending[k] = latest_checkpoint(out, config, c.trainer.resume, dist.is_main)
    for batch in plan_groups(cfgs[0], pending, dist):
        with member_logs([out_dirs[k] for k in batch], [cfgs[k].seed for k in batch], log_files) as logs:
            try:
                trained = train_group([cfgs[k] for k in batch], [out_dirs[k] for k in batch],
                                      [pending[k] for k in batch], dist, device,
                                      overrides=[overrides[k] for k in batch], groups=[groups[k] for k in batch],
                                      logs=logs)
            except Exception as err:
                if not is_disk_full(err):
                    raise
                raise disk_full([out_dirs[k] for k in batch], err, [overrides[k] for k in batch]) from None
        results.update(zip(batch, trained))
    return [results[k] for k in range(len(cfgs))]


def plan_groups(cfg: DictConfig, pending: dict[int, Checkpoint | None], dist: Dist) -> list[list[int]]:
    """The runs that train together: those resuming from one point (epoch, step), fresh ones at (0, 0)."""
    # no stacking: one run at a time (a gated run changes its gates' phase, which a stack does not follow)
    if dist.enabled or cfg.dataset.name in IMAGE_FOLDER_DATASETS or cfg.erase.get("method") == "gates":
        return [[k] for k in pending]
    by_point: dict[tuple[int, int], list[int]] = {}
    for k, found in pending.items():
        by_point.setdefault((found[0]["epoch"], found[0]["step"]) if found else (0, 0), []).append(k)
    return list(by_point.values())


@contextlib.contextmanager
def member_logs(out_dirs: Sequence[Path], seeds: Sequence[int], log_files: bool) -> Iterator[list[logging.Logger]]:
    """Each member's logger: a single run logs as ``erasenet`` (to the console, and to its ``train.log`` when
    ``log_files``); runs trained together each log to their own ``train.log`` only."""
    with contextlib.ExitStack() as exits:
        if len(out_dirs) == 1:
            if log_files:
                exits.enter_context(log_file(log, out_dirs[0]))
            yield [log]
            return
        loggers = []
        for out, seed in zip(out_dirs, seeds):
            member_log = logging.getLogger(f"erasenet.seed{seed}")
            member_log.propagate, member_log.level = False, logging.INFO
            loggers.append(exits.enter_context(log_file(member_log, out)))
        yield loggers


def train_group(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], checkpoints: Sequence[Checkpoint | None],
                dist: Dist, device: torch.device, *, overrides: Sequence[list[str]], groups: Sequence[str],
                logs: Sequence[logging.Logger]) -> list[dict]:
    """Build, restore and train one group; write and return its members' results."""
    run = build_run(cfgs, out_dirs, dist, device, overrides=overrides, groups=groups, logs=logs)
    if dist.is_main:
        for m in run.members:
            check_writable(m.out_dir, disk_needed(run, m.out_dir))
    restore(run, checkpoints)
    with contextlib.ExitStack() as exits:
        for m in run.members:
            m.files = RunFiles(m.out_dir, enabled=dist.is_main, tensorboard=m.cfg.trainer.tensorboard)
            exits.callback(m.files.close)
            m.files.open(m.cfg, m.erased, m.state)
        start = time.perf_counter()
        status, failure = fit(run)
        spent = (time.perf_counter() - start) / len(run.members)
        results = [make_result(run, m, status, failure, seconds=m.state.seconds + spent) for m in run.members]
        for m, result in zip(run.members, results):
            m.files.write_result(result, m.cfg, m.overrides)
    for m, r in zip(run.members, results):
        m.log.info("done: test error %s%%, best val error %s%% (epoch %s) -> %s", _fmt(r["test_error"]),
                   _fmt(r["best_val_error"]), r["best_epoch"], m.out_dir)
    if run.stack is not None:
        log.info("done: seeds %s, test error %s%% -> %s", run.seeds, " ".join(_fmt(r["test_error"]) for r in results),
                 run.members[0].out_dir.parent)
    return results


def fit(run: Run) -> tuple[str, str | None]:
    """Train the group from where its members stand to the last epoch; return the status (``ok``/``failed``)
    and the failure, if any."""
    t, epochs, members = run.cfg.trainer, run.cfg.schedule.epochs, run.members
    reduce = distributed.all_reduce_sum if run.dist.enabled else None
    progress = progress_enabled(t.progress) and run.dist.is_main
    started = time.perf_counter()
    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        if t.checkpoint:
            spent = (time.perf_counter() - started) / len(members)
            for k, m in enumerate(members):
                m.files.save_checkpoint(checkpoint_state(run, k, m.state.seconds + spent), t.keep_checkpoints)
        distributed.barrier()
        last_save = time.monotonic()

    def after_step(partial: EpochState) -> bool:
        """Every ``trainer.check_every`` steps: stop on a signal, or write a checkpoint that is due; all ranks
        agree."""
        faults.point("train.step")
        if partial.step % t.check_every:
            return False
        due = t.checkpoint_every_min > 0 and time.monotonic() - last_save >= 60 * t.checkpoint_every_min
        stop_now, due = distributed.any_rank([stop.received is not None, due], run.device)
        if stop_now or due:
            totals = total_over_ranks(partial) if reduce else partial
            for k, m in enumerate(members):
                m.state.partial = totals.member(k)
            save()
        return stop_now

    with StopSignals() as stop:
        for epoch in range(members[0].state.epoch, epochs):
            try:
                metrics = run_epoch(run, epoch, after_step, reduce, progress)
            except NonFiniteLoss as err:
                together = f" (in one of the seeds {run.seeds}, trained together)" if len(members) > 1 else ""
                failure = f"{err}{together}"
                log.error("%s; stopping (the last good checkpoint is kept).", failure)
                return "failed", failure
            if metrics is None:
                raise interrupted(stop, run)
            for m, epoch_metrics in zip(members, metrics):
                if m.gates is not None:  # SNL: raise the penalty, or binarise the gates, before the checkpoint
                    m.gates.end_epoch(epoch_metrics)
                m.state.finish_epoch(epoch_metrics)
                m.files.log_epoch(epoch_metrics)  # before the checkpoint: a kill in between repeats the epoch
            save()
            if distributed.any_rank([stop.received is not None], run.device)[0]:
                raise interrupted(stop, run)
    return "ok", None


def total_over_ranks(partial: EpochState) -> EpochState:
    """The partial epoch's sums over all ranks (rank 0 carries them on resume)."""
    sums = distributed.all_reduce_sum(partial.sums())
    return EpochState(partial.step, sums[0].float(), sums[1].long(), int(sums[2].item()), partial.seconds)


def interrupted(stop: StopSignals, run: Run) -> Interrupted:
    """Say in one line how to resume, then hand the signal to an earlier handler (submitit requeues the job)."""
    where = (f"checkpoint written in {run.members[0].out_dir}" if len(run.members) == 1
             else f"checkpoints written in the {len(run.members)} run directories of seeds {run.seeds}")
    if not run.cfg.trainer.checkpoint:
        where = "no checkpoint (trainer.checkpoint=false)"
    message = f"interrupted ({stop.name}): {where}; run the same command again to resume"
    log.warning(message)
    stop.pass_on()
    return Interrupted(message, stop.received)


def run_epoch(run: Run, epoch: int, after_step: Callable[[EpochState], bool], reduce: Reduce | None,
              progress: bool) -> list[dict] | None:
    """Train one epoch (from where the members stopped inside it) and evaluate each member; their epoch
    metrics, or None if stopped."""
    partials = [m.state.partial for m in run.members]
    partial = EpochState.stacked(partials) if partials[0] is not None else None
    run.train_loader.set_epoch(epoch, start_batch=partial.step if partial else 0)
    gates = run.members[0].gates  # gated runs train alone (plan_groups)
    totals = train_one_epoch(run.train_model, run.train_loader, run.optimizer, run.scheduler, epoch=epoch,
                             progress=progress, state=partial, after_step=after_step, reduce=reduce, accel=run.accel,
                             loss_fn=run.loss_fn,
                             penalty=gates.penalty_term if gates is not None and gates.learning else None)
    if totals is None:
        return None
    if run.stack is None:
        distributed.sync_buffers(run.members[0].model)  # BN statistics of rank 0, as the checkpoint holds them
    metrics = []
    for k, m in enumerate(run.members):
        if run.stack is not None:
            run.stack.copy_into(k, m.model)
        own = {**totals, "loss": _pick(totals["loss"], k), "error": _pick(totals["error"], k)}
        metrics.append(evaluate_epoch(run, m, epoch, own, reduce))
    if run.stack is not None:
        split = "val" if "val_error" in metrics[0] else "test"
        log.info("epoch %d/%d  lr %.4g  %s err per seed %s  %.1fs (%.0f img/s per seed, %d seeds)", epoch + 1,
                 run.cfg.schedule.epochs, metrics[0]["lr"], split,
                 " ".join(f"{e[f'{split}_error']:.2f}" for e in metrics), totals["seconds"], totals["images_per_s"],
                 len(run.members))
    return metrics


def evaluate_epoch(run: Run, member: Member, epoch: int, train: dict, reduce: Reduce | None) -> dict:
    """Evaluate ``member`` after the trained ``epoch`` (``train``: its totals); log and return its metrics."""
    # the lr of the epoch's first step, as LambdaLR computes it (also when the epoch resumed in its middle)
    lr = run.scheduler.base_lrs[0] * run.scheduler.lr_lambdas[0](epoch * len(run.train_loader))
    top5 = run.cfg.dataset.top5 and run.cfg.dataset.num_classes >= 10
    evals = {k: evaluate(member.model, loader, reduce, accel=run.accel, top5=top5)
             for k, loader in run.eval_loaders.items() if loader is not None}
    metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_error": train["error"],
               "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
    for split, m in evals.items():
        metrics[f"{split}_loss"], metrics[f"{split}_error"] = m["loss"], m["error"]
        if "top5_error" in m:
            metrics[f"{split}_top5_error"] = m["top5_error"]
    member.log.info("epoch %d/%d  lr %.4g  train loss %.3f err %.2f%%  %s  %.1fs (%.0f img/s)", epoch + 1,
                    run.cfg.schedule.epochs, lr, train["loss"], train["error"],
                    "  ".join(f"{k} err {m['error']:.2f}%" for k, m in evals.items()), train["seconds"],
                    train["images_per_s"])
    return metrics


def _pick(value: float | list[float], k: int) -> float:
    return value[k] if isinstance(value, list) else value


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
