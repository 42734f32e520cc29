"""A disk that fills up mid-run: one paragraph, exit status 74, failure.json saying so, intact checkpoints, and a
resume once there is room for what is still to be written (not for what is already on disk)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, train_cli
from erasenet.training.build import build_run
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.training.distributed import Dist
from erasenet.training.run import train_run
from erasenet.training.runfiles import LOG_ROOM, disk_needed
from erasenet.training.state import Job

QUICK = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "model=mlp", "model.width=32",
         "trainer.tensorboard=false", "trainer.num_threads=1")


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "erasenet.train", *args], cwd=cwd,
                            env={**os.environ, "CI": "1", "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_free_space_needed_counts_only_what_is_still_to_be_written(tmp_path, make_cfg):
    cfg = make_cfg(*QUICK, "trainer.keep_checkpoints=2")
    train_run(cfg, tmp_path / "done")
    run = build_run(Job(cfg, tmp_path / "new"), Dist(), torch.device("cpu"))
    params = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    assert disk_needed(run, tmp_path / "new") == 3 * 2 * params + LOG_ROOM  # 2 kept + 1 being written, estimated
    sizes = [p.stat().st_size for p in list_checkpoints(tmp_path / "done")]
    assert len(sizes) == 2
    # resuming: the two on disk stay until the third is written: room for one more (of the real size)
    assert disk_needed(run, tmp_path / "done") == 3 * max(sizes) - sum(sizes) + LOG_ROOM


def test_a_full_disk_stops_the_cli_with_one_paragraph_and_failure_json(tmp_path):
    """ENOSPC injected inside the second checkpoint's bytes (erasenet.common.faults), as torch.save meets it (the first
    takes 199 writes)."""
    proc = train_cli(*QUICK, "hydra.run.dir=run", cwd=tmp_path, env={"ERASENET_FAULT": "checkpoint.write:300:enospc"})
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    run = tmp_path / "run"
    assert code == 74, err[-3000:]
    assert "Traceback" not in out + err and "inline_container" not in out + err
    paragraph = err.strip()
    assert paragraph.startswith("error: disk full: the disk holding ") and "\n" not in paragraph
    assert f"the last good checkpoint is {run / 'checkpoints' / 'epoch0001.pt'}." in paragraph
    assert "MiB free" in paragraph and "run the same command again" in paragraph
    failure = json.loads((run / "failure.json").read_text())
    assert failure["status"] == "failed" and failure["failure"].startswith("disk full")
    assert not (run / "result.json").exists() and not (run / ".lock").exists()
    proc = train_cli(*QUICK, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr + proc.stdout
    assert json.loads((run / "result.json").read_text())["status"] == "ok"
    assert not (run / "failure.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 80 MiB file system (tmpfs), where this process may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, name: str, leave: int) -> None:
    """Fill ``disk`` with a file ``name`` until ``leave`` bytes are free (or none: a training writing beside it may
    take the last of them first)."""
    size = shutil.disk_usage(disk).free - leave
    with open(disk / name, "wb", buffering=0) as f:
        f.truncate(0)
        chunk = b"\0" * 2**20
        try:
            while size > 0:
                size -= f.write(chunk[:min(size, len(chunk))])
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise


@pytest.mark.slow
def test_a_real_disk_filling_up_then_a_resume_once_there_is_room(small_disk, tmp_path):
    args = ("dataset=digits", "schedule=quick", "schedule.epochs=8", "model=mlp", "model.width=256",
            "trainer.tensorboard=false", "trainer.num_threads=1", "trainer.keep_checkpoints=2",
            f"hydra.run.dir={small_disk / 'run'}")
    run = small_disk / "run"
    proc = cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "epoch0002.pt").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "no second checkpoint"
        time.sleep(0.01)
    fill(small_disk, "filler", leave=64 * 2**10)  # room for log lines, not for a checkpoint (~1.2 MB)
    code, out, err = finish(proc)
    assert code == 74, err[-3000:]
    assert "Traceback" not in err and f"mounted at {small_disk}" in err and "error: disk full" in err
    kept = list_checkpoints(run)
    assert kept and f"the last good checkpoint is {kept[-1]}" in err
    for path in kept:  # intact
        load_checkpoint(path)
    assert json.loads((run / "failure.json").read_text())["failure"].startswith("disk full")

    # room for what remains (one more checkpoint, the logs), not for three more checkpoints as the estimate had it
    (small_disk / "filler").unlink()
    size = kept[-1].stat().st_size
    fill(small_disk, "filler", leave=LOG_ROOM + 2 * size)
    proc = train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {kept[-1]}" in proc.stderr + proc.stdout
    assert json.loads((run / "result.json").read_text())["epochs"] == 8
