"""Which process is which: torchrun's and Slurm's environments, and the GPU each process takes."""

import pytest
import torch

from erasenet.training.distributed import Dist, first_host, gpu_index, launch_env, setup, shared_devices
from erasenet.common.errors import UserError

# What a job's processes see, as printed by `env` on a Slurm 22.05 node (a job started with sbatch --ntasks=2)
BATCH_SCRIPT = {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_JOB_NUM_NODES": "2",
                "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


def srun_task(procid: int, localid: int, ntasks: int = 8) -> dict[str, str]:
    """The environment of one task of ``srun`` inside that job (a job step)."""
    return BATCH_SCRIPT | {"SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid),
                           "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NUM_TASKS": str(ntasks),
                           "SLURM_STEP_NODELIST": "gpu[04-05,09],cpu1", "SLURM_STEP_NUM_NODES": "2"}


def test_outside_any_launcher_there_is_no_process_group():
    assert launch_env({}) is None
    assert launch_env({"PATH": "/usr/bin", "HOME": "/root"}) is None


def test_torchrun_environment_is_taken_as_it_is():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launch_env(env) == env
    assert launch_env({"RANK": "0", "WORLD_SIZE": "2"}) == {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}


def test_tasks_of_an_srun_step_are_the_processes():
    slurm = launch_env(srun_task(procid=5, localid=1))
    assert slurm == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu04", "MASTER_PORT": "20041"}
    assert launch_env(srun_task(5, 1) | {"MASTER_ADDR": "head", "MASTER_PORT": "1234"})["MASTER_ADDR"] == "head"
    # a step of 2 tasks in an allocation of 8: the step's tasks train together
    assert launch_env(srun_task(1, 1) | {"SLURM_STEP_NUM_TASKS": "2"})["WORLD_SIZE"] == "2"


def test_the_batch_script_of_a_multi_task_job_is_one_process():
    assert launch_env(BATCH_SCRIPT) is None  # `python -m erasenet.train` in an sbatch --ntasks=2 script
    assert launch_env(srun_task(0, 0, ntasks=1)) is None  # srun with one task


def test_torchrun_inside_an_srun_step_wins():
    env = srun_task(procid=1, localid=0, ntasks=2) | {"RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "2",
                                                     "MASTER_ADDR": "gpu03", "MASTER_PORT": "29400"}
    assert launch_env(env) == {"RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "2", "MASTER_ADDR": "gpu03",
                               "MASTER_PORT": "29400"}


def test_first_host_of_a_node_list():
    assert first_host("node7") == "node7" and first_host("a[1,2]") == "a1"
    assert first_host("gpu[03-05,09],cpu1") == "gpu03" and first_host("x-[010-012]") == "x-010"


def test_each_task_takes_the_gpu_it_sees():
    # srun --gpus-per-task=1: four tasks on a node, local ranks 0..3, each sees one GPU
    assert [gpu_index(rank, local_rank=rank, visible=1) for rank in range(4)] == [0, 0, 0, 0]
    # every task sees the node's four GPUs: the local rank chooses
    assert [gpu_index(rank, local_rank=rank, visible=4) for rank in range(4)] == [0, 1, 2, 3]
    with pytest.raises(UserError, match="local rank 3 but sees only 2 GPU"):
        gpu_index(3, local_rank=3, visible=2)


def test_two_ranks_on_one_gpu_are_found():
    assert shared_devices([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a")]) == []
    assert shared_devices([("n1", "GPU-a"), ("n1", "GPU-b"), ("n1", "GPU-a")]) == [("n1", "GPU-a", [0, 2])]


def test_plain_python_in_a_multi_task_batch_script_trains_alone(monkeypatch, make_cfg):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in BATCH_SCRIPT.items():
        monkeypatch.setenv(key, value)
    cpu = torch.device("cpu")
    assert setup(make_cfg("trainer.device=cpu").trainer, cpu) == (Dist(), cpu)
    assert setup(make_cfg("trainer=ddp", "trainer.device=cpu").trainer, cpu) == (Dist(), cpu)
    for key, value in srun_task(0, 0, ntasks=2).items():  # the same job's srun step without trainer=ddp
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="2 processes were launched"):
        setup(make_cfg("trainer.device=cpu").trainer, cpu)
