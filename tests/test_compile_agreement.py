"""Under DDP every rank trains compiled or every rank trains eagerly: one rank's compile failure decides for all.

Two real gloo processes exchange the decision; torch.compile itself is stood in for by its outcome on each rank
(a real compile costs about a minute on this CPU, and the agreement is what is tested here).
"""

import os
import socket

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn as nn
from omegaconf import OmegaConf

from erasenet.training import build
from erasenet.training.accel import Accel, Compiled
from erasenet.training.distributed import Dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, fails_on: set, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = nn.Linear(4, 2)
        build.prepare_model = lambda m, *a, **k: Compiled(m if rank in fails_on else nn.Sequential(m),
                                                          rank not in fails_on, 1.0, "boom" if rank in fails_on else None)
        trainer = OmegaConf.create({"compile": True, "sync_batchnorm": False})
        out = build.compile_for_training(model, trainer, Accel(torch.device("cpu")), (8, 4), Dist(rank, rank, 2))
        results[rank] = (out.compiled, out.module is model, out.error)
    finally:
        torch_dist.destroy_process_group()


def _decisions(fails_on: set) -> dict:
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), fails_on, results), nprocs=2, join=True)
    return dict(results)


def test_one_failing_rank_makes_every_rank_train_eagerly():
    decisions = _decisions({1})
    assert decisions[0] == (False, True, "failed on another process")  # compiled here, but trains eagerly
    assert decisions[1] == (False, True, "boom")


def test_ranks_that_all_compile_train_compiled():
    decisions = _decisions(set())
    assert all(compiled and not eager for compiled, eager, _ in decisions.values())
