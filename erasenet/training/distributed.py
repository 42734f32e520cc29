"""Process groups from the torchrun or Slurm environment, DDP wrapping, and cross-rank helpers.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a Slurm job step (``srun``, one task
per GPU) sets SLURM_PROCID, SLURM_STEP_NUM_TASKS and SLURM_LOCALID, and the rendezvous address is derived from the
step's first node. Without either, training runs in one process and every helper here is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from ..common.errors import UserError

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


def launch_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun or a Slurm job step; None outside both.

    Only the tasks of an ``srun`` step are processes started together. The batch script of an ``sbatch
    --ntasks=N`` job (or an ``salloc`` shell) also carries SLURM_PROCID=0 and SLURM_NTASKS=N, but a plain
    ``python`` there is one process: its environment has no SLURM_STEP_NUM_TASKS.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {k: env[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in env} | {
            "LOCAL_RANK": env.get("LOCAL_RANK", "0")}
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
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
        device = torch.device("cuda", gpu_index(rank, local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    backend = trainer.backend if trainer.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    if device.type == "cuda":
        refuse_shared_gpus(device)
    if rank != 0:
        quiet_logging()
    return Dist(rank, local_rank, world), device


def gpu_index(rank: int, local_rank: int, visible: int) -> int:
    """The GPU this process trains on, among the ``visible`` ones.

    With per-task binding (``srun --gpus-per-task=1``, ``--gpu-bind``) each task sees only its own GPU while its
    local rank still counts the node's tasks: that one visible GPU is the process's. Otherwise every process
    sees the node's GPUs and takes the one of its local rank.
    """
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise UserError(f"process {rank} has local rank {local_rank} but sees only {visible} GPU(s). Start at most "
                        "one process per GPU, or bind one GPU to each task (srun --gpus-per-task=1).")
    return local_rank


def refuse_shared_gpus(device: torch.device) -> None:
    """Refuse to train when two processes ended up on one GPU (NCCL cannot run two ranks on one device)."""
    where = (socket.gethostname(), str(torch.cuda.get_device_properties(device).uuid))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, where)
    shared = shared_devices(everyone)
    if shared:
        host, uuid, ranks = shared[0]
        raise UserError(f"processes {', '.join(map(str, ranks))} all use GPU {uuid} of {host}: each process needs a "
                        "GPU of its own. Start at most one process per GPU, and if Slurm binds GPUs to tasks, give "
                        "each task one (srun --gpus-per-task=1).")


def shared_devices(devices: list[tuple[str, str]]) -> list[tuple[str, str, list[int]]]:
    """(host, device, ranks) for every device that more than one rank of ``devices`` (indexed by rank) uses."""
    ranks: dict[tuple[str, str], list[int]] = {}
    for rank, where in enumerate(devices):
        ranks.setdefault(tuple(where), []).append(rank)
    return [(host, device, r) for (host, device), r in ranks.items() if len(r) > 1]


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
