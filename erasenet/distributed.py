"""Process groups from the torchrun or Slurm environment, DDP wrapping, and cross-rank helpers.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; Slurm's ``srun`` (one task per GPU)
sets SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and the rendezvous address is derived from the job's first
node. Without either, training runs in one process and every helper here is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError

log = logging.getLogger("erasenet")


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun or Slurm; None outside both."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {k: env[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in env} | {
            "LOCAL_RANK": env.get("LOCAL_RANK", "0")}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "MASTER_ADDR": env.get("MASTER_ADDR", first_host(nodes)),
                # one port per job, so two jobs sharing a node do not collide
                "MASTER_PORT": env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))}
    return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list such as ``gpu[03-05,09],cpu1`` (``gpu03``)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def setup(trainer: Any, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group the launcher describes (``trainer.distributed``); return it and this rank's device."""
    env = launch_env()
    if not trainer.distributed:
        if env and int(env["WORLD_SIZE"]) > 1:
            raise UserError(f"{env['WORLD_SIZE']} processes were launched (torchrun or srun) but trainer.distributed "
                            "is false, so each would train the same run on its own. Add trainer=ddp to the command.")
        return Dist(), device
    if env is None:
        log.warning("trainer=ddp without a torchrun or Slurm environment: training in one process")
        return Dist(), device
    os.environ.update(env)  # init_method env:// reads them
    rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {rank} has local rank {local_rank} but this node has "
                            f"{torch.cuda.device_count()} GPU(s). Start at most one process per GPU.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = trainer.backend if trainer.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    if rank != 0:
        quiet_logging()
    return Dist(rank, local_rank, world), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def quiet_logging() -> None:
    """On ranks other than 0: no log file (rank 0 writes it) and only warnings on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    log.setLevel(logging.WARNING)


def wrap(model: nn.Module, ctx: Dist, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` (SyncBatchNorm first if asked); the model itself in one process."""
    if not ctx.enabled:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs GPUs: PyTorch's SyncBatchNorm has no CPU version. "
                            "Drop it on CPUs (each process then normalises over its share of the batch).")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (what checkpoints hold)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of ``flags`` over all ranks, so every rank takes the same decision."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable value such as a path or a decision)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so all ranks evaluate one model."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
