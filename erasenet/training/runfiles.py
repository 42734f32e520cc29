"""A run directory's files: config.yaml, metrics.jsonl, TensorBoard, checkpoints, result.json, train.log."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from . import distributed
from .accel import accel_record
from ..common import faults
from ..common.atomic import atomic_write, save_json
from .checkpoint import CHECKPOINT_DIR, list_checkpoints, save_run_checkpoint
from ..data import describe_splits
from ..erase import EraseRecord
from ..erase.polynomial import polys_per_site
from ..erase.rectifiers import relus_per_site
from ..common.errors import UserError
from ..common.provenance import cpu_model, provenance
from ..common.runlock import RunLock, RunLocked
from .distributed import Dist
from ..reports.tblog import scalar_tag, write_hparams
from .state import Run, TrainState

log = logging.getLogger("erasenet")
LOG_ROOM = 64 * 2**20  # metrics, TensorBoard and train.log of a run, with room to spare


class RunFiles:
    """The run directory's logs, checkpoints and result; only rank 0 writes (``enabled``)."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.out_dir, self.enabled, self.tensorboard = Path(out_dir), enabled, tensorboard
        self.metrics = self.writer = None

    def open(self, cfg: DictConfig, erased: EraseRecord, state: TrainState) -> None:
        """Start or continue the logs: metrics.jsonl holds exactly the finished epochs, TensorBoard drops later
        steps; a run starting afresh first clears what an earlier attempt left."""
        if not self.enabled:
            return
        fresh = state.epoch == 0 and state.partial is None
        # half-written files of a process killed while writing (this one holds the run's lock: nobody else writes)
        for leftover in [*self.out_dir.glob(".*.tmp"), *(self.out_dir / CHECKPOINT_DIR).glob(".*.tmp")]:
            log.info("removing %s, left half-written by a process that was killed", leftover)
            leftover.unlink(missing_ok=True)
        if fresh:
            for leftover in (self.out_dir / CHECKPOINT_DIR, self.out_dir / "tb", self.out_dir / "result.json"):
                if leftover.exists():
                    log.warning("starting afresh: removing %s of an earlier attempt", leftover)
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        atomic_write(self.out_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode()),
                     "config")
        atomic_write(self.out_dir / "metrics.jsonl",
                     lambda f: f.write("".join(json.dumps(m) + "\n" for m in state.history).encode()), "metrics")
        self.metrics = open(self.out_dir / "metrics.jsonl", "ab", buffering=0)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # scalars are logged at step = epoch (1-based): purge what a killed session logged after the checkpoint
            wait_to_sort_last(self.out_dir / "tb")
            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=None if fresh else state.epoch + 1)
            if fresh:
                self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
                self.writer.add_text("erase", erased.summary())

    def log_epoch(self, metrics: dict) -> None:
        if not self.enabled:
            return
        append(self.metrics, (json.dumps(metrics) + "\n").encode())
        faults.point("epoch.logged")
        if self.writer:
            for key, value in metrics.items():
                if key != "epoch" and not isinstance(value, str):  # a gated run's phase is a word
                    self.writer.add_scalar(scalar_tag(key), value, metrics["epoch"])
            self.writer.flush()

    def save_checkpoint(self, state: dict, keep: int) -> None:
        if self.enabled:
            save_run_checkpoint(self.out_dir, state, keep)

    def write_result(self, result: dict, cfg: DictConfig, overrides: list[str]) -> None:
        if self.enabled:
            if self.writer:
                write_hparams(self.writer, cfg, overrides, result)
            save_json(self.out_dir / "result.json", result, "result")
            faults.point("result.written")

    def close(self) -> None:
        for f in (self.metrics, self.writer):
            if f is not None:
                f.close()

    def __enter__(self) -> "RunFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_to_sort_last(tb_dir: Path) -> None:
    """Wait, at most a second, until a new event file's name sorts after every one in ``tb_dir``.

    TensorBoard reads a directory's event files in name order, and the name starts with the second it was opened in
    and then the process id: a run resumed within the second its killed session opened its file could sort first,
    and its purge of the killed session's last epochs would come before them instead of after.
    """
    seconds = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*") if p.name.count(".") >= 4
               and p.name.split(".")[3].isdigit()]
    if seconds and time.time() < max(seconds) + 1:
        time.sleep(max(seconds) + 1 - time.time())


def append(f: BinaryIO, line: bytes) -> None:
    """Append ``line`` whole, or, if it does not fit (a full disk), take back the part that was written."""
    start = f.tell()
    try:
        out = faults.wrap(f, "metrics.append")
        view = memoryview(line)
        while view:
            view = view[out.write(view):]
    except BaseException:
        f.truncate(start)
        raise


def library_versions() -> dict:
    import torchvision

    return {"erasenet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def make_result(run: Run, status: str, failure: str | None, seconds: float) -> dict:
    """The run's ``result.json`` record."""
    cfg, state, job, counts = run.cfg, run.state, run.job, run.counts
    last, best = (state.history[-1] if state.history else {}), state.best
    result = {
        "status": status, "failure": failure, "seed": cfg.seed, "model": cfg.model.name, "dataset": cfg.dataset.name,
        "group": job.group, "overrides": list(job.overrides), "epochs": last.get("epoch", 0),
        "test_error": last.get("test_error"), "test_loss": last.get("test_loss"),
        "test_top5_error": last.get("test_top5_error"),
        "val_error": last.get("val_error"), "train_error": last.get("train_error"),
        "best_val_error": best["val_error"], "best_epoch": best["epoch"],
        "test_error_at_best_val": best["test_error"],
        "selection": "best epoch on val, test reported" if counts.sizes["val"] else "none (dataset.val_size=0)",
        "splits": counts.sizes, "split_sources": describe_splits(cfg.dataset), "params": counts.params,
        "macs": counts.macs, "relus": run.gates.relus() if run.gates is not None else counts.relus,
        "relus_original": counts.relus_original,
        "relus_per_site": _relus_per_site(run),
        **_polys(run),
        "erased": run.erased.sites, "erase": run.erased.as_dict(), "device": str(run.device),
        "cpu": cpu_model(), "num_threads": torch.get_num_threads(), "processes": run.dist.world_size,
        "seconds": seconds, "versions": library_versions(),
        "provenance": provenance(list(job.overrides)),
        "config": job.config, "accel": accel_record(run.learner.accel, counts.compiled),
        "paper": OmegaConf.to_container(cfg.paper) if cfg.paper.test_error is not None else None,
    }
    if run.teacher is not None:
        result["provenance"]["teacher"] = run.teacher.record()
    return result


def _relus_per_site(run: Run) -> list[dict] | None:
    """Per site of the delivered network: the elements it covers and the ReLUs it keeps (None where the network
    cannot be counted on the meta device, as for ``relus``)."""
    d = run.cfg.dataset
    try:
        return relus_per_site(run.model, (d.in_chans, d.image_size, d.image_size))
    except (RuntimeError, NotImplementedError):
        return None


def _polys(run: Run) -> dict:
    """The polynomial evaluations per image of the delivered network (AutoReP's replacement: each costs a secure
    multiplication), in total and per site; none where no site holds a polynomial."""
    d = run.cfg.dataset
    try:
        sites = polys_per_site(run.model, (d.in_chans, d.image_size, d.image_size))
    except (RuntimeError, NotImplementedError, ValueError):
        return {"polys": None}
    return {"polys": sum(site["polys"] for site in sites), "polys_per_site": sites} if sites else {"polys": 0}


@contextlib.contextmanager
def run_lock(run_dir: Path, dist: Dist) -> Iterator[RunLocked | None]:
    """Hold the run directory's lock (erasenet.common.runlock, taken on rank 0) while the block runs; yield, on
    every rank, None, or the refusal when another live process holds it."""
    lock, found = None, None
    if dist.is_main:
        lock = RunLock(run_dir)  # before anything is created: it notes which folders are new
        check_writable(run_dir, 0)  # an unwritable directory is said so, before its lock is tried
        try:
            lock.acquire()
        except RunLocked as err:
            lock, found = None, (str(err), err.holder)
    found = distributed.broadcast(found)
    try:
        yield None if found is None else RunLocked(found[0], run_dir, found[1])
    finally:
        if lock is not None:
            lock.release()


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Fail now, not hours from now, if ``run_dir`` cannot take a file or lacks ``need_bytes`` of free space."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / ".write_test", lambda f: f.write(b"ok"))
        (run_dir / ".write_test").unlink()
    except OSError as err:
        raise UserError(f"cannot write to the run directory {run_dir} ({err.strerror or err}). Make it writable, "
                        "or put runs elsewhere with hydra.run.dir=... (hydra.sweep.dir=... for -m).") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise UserError(f"the disk of {run_dir} has {free / 2**20:.0f} MiB free but this run needs about "
                        f"{need_bytes / 2**20:.0f} MiB (checkpoints, logs). Free some space, lower "
                        "trainer.keep_checkpoints, or put runs on another disk with hydra.run.dir=...")


def disk_needed(run: Run, run_dir: Path) -> int:
    """Bytes the run will still write at most into ``run_dir``: checkpoints up to its kept ones plus the one being
    written (less those already on disk, which it replaces), and room for logs."""
    if not run.cfg.trainer.checkpoint:
        return LOG_ROOM
    on_disk = [p.stat().st_size for p in list_checkpoints(run_dir)]
    if on_disk:
        checkpoint = max(on_disk)
    else:
        tensors = [*run.model.state_dict().values()]
        checkpoint = 2 * sum(t.numel() * t.element_size() for t in tensors)  # weights + momentum, roughly
    # while the newest is written the older ones are all still there: keep + 1 at most, or one more than now
    peak = max(run.cfg.trainer.keep_checkpoints, len(on_disk)) + 1
    return max(0, peak * checkpoint - sum(on_disk)) + LOG_ROOM


@contextlib.contextmanager
def log_file(logger: logging.Logger, out_dir: Path) -> Iterator[logging.Logger]:
    """Also write ``logger``'s records to ``out_dir/train.log``, where a run launched alone logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()
