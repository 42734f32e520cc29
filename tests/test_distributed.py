"""DDP on CPU: two gloo processes started by torchrun against one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from erasenet.training.build import build_model, schedule_per_process
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.data import build_loaders
from erasenet.data.loader import TensorLoader
from erasenet.data.splits import Split
from erasenet.training.distributed import first_host, launch_env
from erasenet.training.engine import evaluate
from erasenet.training.run import train_run

# no batch norm: per-process batch statistics would differ from one process's (SyncBatchNorm needs a GPU build);
# val_size=181 leaves 1,256 training images (even) and an odd validation split, so ranks evaluate unequal shares
DDP_RUN = ("dataset=digits", "dataset.val_size=181", "schedule=quick", "schedule.epochs=2", "model=mlp",
           "model.batch_norm=false", "model.width=64", "trainer.num_threads=1", "trainer.tensorboard=true")


def torchrun(*args: str, cwd, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                           "-m", "erasenet.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_process(tmp_path, make_cfg):
    proc = torchrun("trainer=ddp", *DDP_RUN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list(tmp_path.rglob("result.json"))
    assert len(results) == 1  # one set of outputs, written by rank 0
    run_dir = results[0].parent
    ddp = json.loads(results[0].read_text())
    assert ddp["processes"] == 2 and ddp["status"] == "ok" and ddp["splits"]["train"] == 1256
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    writers = {p.name.rsplit(".", 2)[-2] for p in (run_dir / "tb").iterdir()}  # event files are named ...<pid>.<n>
    assert len(writers) == 1  # one process wrote TensorBoard (scalars and the HParams entry)
    assert (run_dir / "train.log").read_text().count("done: test error") == 1

    cfg = make_cfg(*DDP_RUN)
    single = train_run(cfg, tmp_path / "single")
    ddp_weights = load_checkpoint(list_checkpoints(run_dir)[-1])["model"]
    one_weights = load_checkpoint(list_checkpoints(tmp_path / "single")[-1])["model"]
    assert ddp_weights.keys() == one_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], rtol=1e-4, atol=1e-5)
    assert abs(ddp["train_error"] - single["train_error"]) < 1.0  # same images seen; errors counted over ranks

    # distributed evaluation counts exactly what one process counts on the same weights
    model, _ = build_model(cfg)
    model.load_state_dict(ddp_weights)
    _, evals, _ = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=cfg.seed)
    for split in ("val", "test"):
        assert evaluate(model, evals[split])["error"] == ddp[f"{split}_error"]


def test_global_batches_are_the_same_for_any_world_size():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (52, 1, 4, 4), dtype=torch.uint8, generator=g), torch.arange(52) % 10)
    common = dict(train=True, crop_padding=1, flip=True, seed=7)
    one = TensorLoader(split, 8, **common)
    ranks = [TensorLoader(split, 4, rank=r, world_size=2, **common) for r in range(2)]
    for loader in (one, *ranks):
        loader.set_epoch(3)
    one_batches = list(one)
    pairs = list(zip(*ranks))
    assert len(one_batches) == len(pairs) == len(one) == len(ranks[0]) == 7  # 48 + a last global batch of 4
    for (x, y), ((x0, y0), (x1, y1)) in zip(one_batches, pairs):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    ranks[1].set_epoch(3, start_batch=5)  # a resumed epoch continues with the same batches
    assert [torch.equal(a[0], b[0]) for a, b in zip(list(ranks[1]), [p[1] for p in pairs[5:]])] == [True, True]
    evals = [TensorLoader(split, 4, rank=r, world_size=3) for r in range(3)]
    seen = torch.cat([y for loader in evals for _, y in loader])
    assert len(seen) == 52 and sorted(seen.tolist()) == sorted(split.labels.tolist())
    # the one exception: a last global batch that would give each rank one image is left out (BatchNorm)
    fifty = Split(split.images[:50], split.labels[:50])
    assert [len(TensorLoader(fifty, 8, train=True)), len(TensorLoader(fifty, 4, train=True, world_size=2))] == [7, 6]


def test_batch_size_is_global_and_lr_scaling_explicit(make_cfg):
    s = make_cfg("schedule=quick", "schedule.batch_size=256").schedule
    assert (s.lr, s.base_batch_size) == (0.1, 64)
    per = schedule_per_process(s, 4)
    assert (per.batch_size, per.eval_batch_size, per.lr) == (64, 250, 0.1)
    scaled = schedule_per_process(make_cfg("schedule=quick", "schedule.batch_size=256",
                                       "schedule.lr_scaling=linear").schedule, 4)
    assert (scaled.batch_size, scaled.lr, scaled.warmup_lr) == (64, 0.4, 0.04)


def test_launch_environment_from_torchrun_or_slurm():
    assert launch_env({}) is None
    assert launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: no process group
    torchrun_env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launch_env(torchrun_env) == torchrun_env
    slurm = launch_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123",
                        "SLURM_JOB_NODELIST": "gpu[03-05,09],cpu1"})
    assert slurm == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03",
                     "MASTER_PORT": "20123"}
    assert first_host("node7") == "node7" and first_host("a[1,2]") == "a1"


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        def launcher(name: str):
            return compose(config_name="config", overrides=[f"hydra/launcher={name}", "trainer=ddp"],
                           return_hydra_config=True).hydra.launcher

        assert launcher("parallel")._target_.endswith("JoblibLauncher")
        slurm, ddp = launcher("slurm"), launcher("slurm_ddp")
        assert slurm._target_.endswith("SlurmLauncher") and slurm.additional_parameters.requeue
        assert (slurm.gpus_per_node, slurm.tasks_per_node) == (1, 1)
        assert ddp.tasks_per_node == ddp.gpus_per_node == 4 and ddp.max_num_timeout == slurm.max_num_timeout


def test_ddp_trainer_without_a_launcher_is_one_process(tmp_path, make_cfg, caplog):
    quick = ("dataset=digits", "schedule=quick", "schedule.epochs=1", "model=mlp", "model.width=32",
             "trainer.tensorboard=false")
    plain = train_run(make_cfg(*quick), tmp_path / "plain")
    ddp = train_run(make_cfg(*quick, "trainer=ddp"), tmp_path / "ddp")
    assert "without a torchrun or Slurm environment" in caplog.text
    assert ddp["processes"] == 1
    assert {k: ddp[k] for k in ("test_error", "val_error", "train_error")} == \
        {k: plain[k] for k in ("test_error", "val_error", "train_error")}


@pytest.mark.slow
def test_ddp_trains_with_stochastic_depth(tmp_path):
    """A dropped branch still gets a (zero) gradient, so DDP's reducer finishes every step."""
    proc = torchrun("trainer=ddp", "dataset=digits", "schedule=quick", "schedule.epochs=1", "model=resnet",
                    "model.depth=8", "model.survival_prob=0.5", "trainer.num_threads=1", "trainer.tensorboard=false",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")]
    assert result["processes"] == 2 and result["status"] == "ok" and result["epochs"] == 1
