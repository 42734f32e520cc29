"""The cluster path against a real Slurm (``sudo scripts/slurm_local.sh start``): a sweep, preemption and requeue,
DDP through srun, and a failed job, each on digits with a few epochs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli, train_cli
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint


def _cluster_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None,
                       reason="no Slurm on this machine (sbatch not found); `sudo scripts/slurm_local.sh start` "
                              "installs and starts a single-node one"),
    pytest.mark.skipif(shutil.which("sbatch") is not None and not _cluster_answers(),
                       reason="Slurm is installed but its controller does not answer (sinfo failed); "
                              "`sudo scripts/slurm_local.sh start` starts a single-node one"),
]

# one CPU per task, no GPU, an hour's limit (a shorter one makes submitit call every signal a time-out)
SLURM = ("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60")
RUN = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "model=mlp", "model.width=32", "trainer.num_threads=1")
TIMING = ("seconds", "images_per_s")  # the only values that differ between two runs of one config on the CPU


def sweep_dir(cwd: Path) -> Path:
    return cwd / "multirun" / "default"


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m erasenet.train ARGS`` in ``cwd``, running while the test acts on it."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "erasenet.train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition, what: str, timeout: float = 180, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def slurm_jobs(root: Path) -> list[str]:
    """The Slurm job ids submitit used for the sweep in ``root`` (``12`` or ``12_0`` for an array's first job)."""
    return sorted(p.parent.name for p in (root / ".submitit").glob("*/*_submitted.pkl"))


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def job_state(job: str) -> str:
    return slurm("squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job}")


def release_requeued(job: str) -> None:
    """Let a requeued job start now: Slurm holds a requeued batch job for about two minutes (its BeginTime)."""
    wait_for(lambda: job_state(job) == "PENDING", f"job {job} to be requeued", every=0.2)
    # Released while its previous batch script is still exiting, the job would be ended by that script's exit
    # status; the one node turns idle only once it has gone.
    wait_for(lambda: slurm("sinfo", "-h", "-o", "%T").strip() == "idle", "the previous run of the job to end", every=0.2)
    # slurmd revokes the requeued run's credential, to the second: a start in that same second is refused
    # ("Job credential revoked") and ends the job
    time.sleep(2)
    slurm("scontrol", "update", f"jobid={job}", "StartTime=now")


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def result(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "result.json").read_text()).items() if k not in TIMING}


def files(root: Path) -> set[str]:
    """The files of a sweep, relative to it, with TensorBoard event file names (host, pid, time) left out."""
    names = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != ".submitit":
            names.add(str(rel.parent / "<events>") if path.name.startswith("events.out.tfevents") else str(rel))
    return names


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir)[-1])["model"]


def summary_rows(root: Path) -> list[dict]:
    rows = csv.DictReader(io.StringIO((root / "summary.csv").read_text()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def job_logs(root: Path, job: str = "*") -> str:
    """What submitit's jobs printed (stdout and stderr of every task)."""
    return "".join(p.read_text() for p in sorted((root / ".submitit").glob(f"{job}/*_log.*")))


def test_a_slurm_sweep_writes_what_the_local_launcher_writes(tmp_path):
    on_slurm = start_cli("-m", *SLURM, *RUN, "seed=0,1", cwd=tmp_path / "slurm")
    (tmp_path / "local").mkdir()
    local = train_cli("-m", *RUN, "seed=0,1", cwd=tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    code, out, err = finish(on_slurm)
    assert code == 0, err[-3000:]
    assert "sacct" not in err  # no accounting here: states come from squeue, without a warning on every poll
    mine, theirs = sweep_dir(tmp_path / "slurm"), sweep_dir(tmp_path / "local")
    assert len(slurm_jobs(mine)) == 2 and files(mine) == files(theirs)
    runs = sorted(p.parent for p in mine.rglob("result.json"))
    assert [p.name[-6:] for p in runs] == ["seed=0", "seed=1"]
    for run in runs:
        twin = theirs / run.name
        assert result(run) == result(twin) and metrics(run) == metrics(twin)
        assert all(torch.equal(a, b) for a, b in zip(final_weights(run).values(), final_weights(twin).values()))
    assert summary_rows(mine) == summary_rows(theirs)
    assert "| 2 |" in out  # the printed summary: both seeds

    # the same command again: every job finds its run finished and trains nothing
    stored = {run: (run / "result.json").read_bytes() for run in runs}
    again = run_cli("-m", *SLURM, *RUN, "seed=0,1", cwd=tmp_path / "slurm")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(slurm_jobs(mine)) == 4
    assert job_logs(mine).count("[INFO] - already finished") == 2
    assert all((run / "result.json").read_bytes() == data for run, data in stored.items())
    assert summary_rows(mine) == summary_rows(theirs)


def test_a_preempted_job_checkpoints_is_requeued_and_resumes_exactly(tmp_path):
    # epochs of about a second on one thread, dropout for a random stream that must resume too
    run = ("dataset=digits", "schedule=quick", "schedule.epochs=3", "model=mlp", "model.width=1024",
           "model.dropout=0.1", "trainer.num_threads=1", "trainer.check_every=1")
    on_slurm = start_cli("-m", *SLURM, *run, "seed=0", cwd=tmp_path / "slurm")
    reference = start_cli(*run, "seed=0", "hydra.run.dir=uninterrupted", cwd=tmp_path / "local")
    root = sweep_dir(tmp_path / "slurm")
    run_dir = wait_for(lambda: next((p.parent for p in root.glob("*/metrics.jsonl")), None), "the run to start")
    job = wait_for(lambda: slurm_jobs(root), "the Slurm job")[0]

    # a time limit or preemption announced by signal, in epoch 2: the run checkpoints, submitit requeues the job
    wait_for(lambda: (run_dir / "checkpoints" / "epoch0001.pt").exists(), "epoch 1")
    slurm("scancel", "--signal=USR2", job)
    release_requeued(job)
    # preemption without a signal first, in epoch 3: Slurm sends SIGTERM, kills the job and requeues it
    wait_for(lambda: (run_dir / "checkpoints" / "epoch0002.pt").exists(), "epoch 2 of the resumed job", timeout=240)
    slurm("scontrol", "requeue", job)
    release_requeued(job)

    code, _, err = finish(on_slurm)
    assert code == 0, err[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    uninterrupted = tmp_path / "local" / "uninterrupted"
    assert metrics(run_dir) == metrics(uninterrupted) and len(metrics(run_dir)) == 3
    assert result(run_dir)["test_error"] == result(uninterrupted)["test_error"]
    mine, theirs = final_weights(run_dir), final_weights(uninterrupted)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    # what happened, as the run's log and Slurm tell it
    log = (run_dir / "train.log").read_text()
    assert "interrupted (SIGUSR2)" in log and "interrupted (SIGTERM)" in log
    resumed = re.findall(r"resuming from \S+ \(epoch (\d+), step (\d+)\)", log)
    assert [epoch for epoch, _ in resumed] == ["1", "2"] and all(int(step) > 0 for _, step in resumed)  # mid-epoch
    job_log = job_logs(root, job)
    assert "this job is preempted" in job_log and f"Requeued job {job}" in job_log
    # Slurm marks the job completed once its batch script has exited, which can lag the sweep's end
    wait_for(lambda: job_state(job) != "RUNNING", f"job {job} to end", timeout=120, every=0.5)
    assert job_state(job) == "COMPLETED" and "Restarts=2" in slurm("scontrol", "show", "job", job)


def test_ddp_through_slurm_trains_one_run_like_torchrun(tmp_path):
    # the torchrun test's run: no batch norm, so two processes train what one would
    run = ("trainer=ddp", "dataset=digits", "dataset.val_size=181", "schedule=quick", "schedule.epochs=2",
           "model=mlp", "model.batch_norm=false", "model.width=64", "trainer.num_threads=1")
    ddp = ("hydra/launcher=slurm_ddp", "hydra.launcher.tasks_per_node=2", *SLURM[1:])
    on_slurm = start_cli("-m", *ddp, *run, "seed=0", cwd=tmp_path / "slurm")
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    (tmp_path / "torchrun").mkdir()
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                               "-m", "erasenet.train", *run, "hydra.run.dir=ddp"], cwd=tmp_path / "torchrun",
                              env=env, capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    code, _, err = finish(on_slurm)
    assert code == 0, err[-3000:]

    results = list(sweep_dir(tmp_path / "slurm").rglob("result.json"))
    assert len(results) == 1  # one set of files, written by rank 0
    run_dir, reference = results[0].parent, tmp_path / "torchrun" / "ddp"
    mine, theirs = result(run_dir), result(reference)
    assert mine["processes"] == theirs["processes"] == 2 and mine["splits"] == theirs["splits"]
    assert (run_dir / "train.log").read_text().count("done: test error") == 1
    assert len({p.name.rsplit(".", 2)[-2] for p in (run_dir / "tb").iterdir()}) == 1  # one TensorBoard writer
    assert [m["epoch"] for m in metrics(run_dir)] == [1, 2]
    weights, torchrun_weights = final_weights(run_dir), final_weights(reference)
    assert weights.keys() == torchrun_weights.keys()
    for key in weights:
        torch.testing.assert_close(weights[key], torchrun_weights[key], rtol=1e-4, atol=1e-5)
    assert abs(mine["train_error"] - theirs["train_error"]) < 1.0
    assert (mine["val_error"], mine["test_error"]) == (theirs["val_error"], theirs["test_error"])


def test_a_failed_job_is_reported_and_the_sweep_is_not_clean(tmp_path):
    # a validation split larger than the data: that job stops with its one-paragraph error; the other trains
    (tmp_path / "slurm").mkdir()
    proc = run_cli("-m", *SLURM, *RUN, "schedule.epochs=1", "dataset.val_size=180,2000", cwd=tmp_path / "slurm")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: 1 of 2 jobs of the sweep failed" in proc.stderr and "val_size=2000" in proc.stderr
    root = sweep_dir(tmp_path / "slurm")
    records = {p.parent.name: json.loads(p.read_text()) for p in root.rglob("result.json")}
    failed = next(r for name, r in records.items() if "val_size=2000" in name)
    ok = next(r for name, r in records.items() if "val_size=180," in name)
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert failed["failure"].startswith("cannot hold out dataset.val_size=2000 of 1437 training images")
    rows = {row["config"]: row for row in summary_rows(root)}
    assert sorted((row["n"], row["failed"], "val_size=2000" in name) for name, row in rows.items()) == [
        ("0", "1", True), ("1", "0", False)]
    assert "cannot hold out dataset.val_size=2000" in (root / "summary.md").read_text()  # the reason, not a count
