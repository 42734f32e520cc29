"""One process per run directory: a second one is refused with the holder named, a sweep skips the run and lists
it as running elsewhere, and a lock whose holder is gone (dead pid, stale heartbeat, a requeued Slurm job) is
taken over with a warning."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from erasenet.common import runlock
from erasenet.reports.summary import find_incomplete, summarize, to_markdown
from erasenet.common.runlock import LOCK_FILE, RunLock, RunLocked

QUICK = ("dataset=digits", "schedule=quick", "model=mlp", "model.width=32", "trainer.tensorboard=false",
         "trainer.num_threads=1")


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "erasenet.train", *args], cwd=cwd,
                            env={**os.environ, "CI": "1", "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def write_lock(run_dir: Path, age_s: float = 0.0, **record) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00", **record}))
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(RunLocked, match=f"in use by another process \\(host {socket.gethostname()}, pid "
                                            f"{os.getpid()}, since "):
            RunLock(tmp_path).acquire()
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    again = RunLock(tmp_path)
    again.acquire()
    again.release()


def test_a_lock_whose_process_died_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid, start=12345)
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="erasenet"):
        lock.acquire()
    assert f"its process {pid} has ended" in caplog.text and "taking over the lock" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_dead_holder_alive(tmp_path):
    me = runlock.me()
    write_lock(tmp_path, pid=os.getpid(), start=me["start"] - 1, boot=me["boot"])  # this pid, another process
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path, caplog):
    write_lock(tmp_path, host="node-elsewhere", pid=1, age_s=60)
    with pytest.raises(RunLocked, match="host node-elsewhere, pid 1"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, host="node-elsewhere", pid=1, age_s=runlock.STALE_S + 60)
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="erasenet"):
        lock.acquire()
    assert "no heartbeat for 11 min" in caplog.text
    lock.release()


def test_a_process_in_another_container_of_this_host_is_judged_by_its_heartbeat(tmp_path):
    """Its pid means nothing here (another pid namespace, even under this host's name): only time tells."""
    write_lock(tmp_path, pid=dead_pid(), pidns="pid:[1]", age_s=60)
    with pytest.raises(RunLocked, match=f"host {socket.gethostname()}"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, pid=dead_pid(), pidns="pid:[1]", age_s=runlock.STALE_S + 60)
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_earlier_run(tmp_path, monkeypatch, caplog):
    write_lock(tmp_path, host="node-elsewhere", pid=1, slurm_job="4242", slurm_restart="0")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="erasenet"):
        lock.acquire()
    assert "an earlier run of Slurm job 4242" in caplog.text
    lock.release()
    write_lock(tmp_path, host="node-elsewhere", pid=1, slurm_job="4242", slurm_restart="1")  # the same run: alive
    with pytest.raises(RunLocked, match="Slurm job 4242"):
        RunLock(tmp_path).acquire()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path)
    lock.acquire()
    os.utime(tmp_path / LOCK_FILE, (0, 0))
    time.sleep(0.5)
    assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5
    lock.release()


@pytest.mark.slow
def test_two_identical_commands_train_once(tmp_path):
    """The second command is refused while the first trains; the first goes on alone, its log without doubles."""
    args = (*QUICK, "schedule.epochs=100000", "hydra.run.dir=run")  # trains until stopped
    first = cli(*args, cwd=tmp_path)
    run = tmp_path / "run"
    deadline = time.monotonic() + 240
    while not (run / "checkpoints").is_dir():
        assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
        time.sleep(0.01)
    code, out = finish(cli(*args, cwd=tmp_path))
    assert code == 75, out[-3000:]
    holder = f"host {socket.gethostname()}, pid {first.pid}, since "
    assert f"error: the run directory {run} is in use by another process ({holder}" in out
    assert "Traceback" not in out and "epoch 1/" not in out
    assert first.poll() is None  # untouched
    first.terminate()
    code, out = finish(first)
    assert code == 143, out[-3000:]
    log = (run / "train.log").read_text()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and epochs
    assert all(log.count(f"epoch {e}/100000 ") == 1 for e in epochs)
    assert log.count("mlp: ") == 1  # one process wrote this log
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_sweep_skips_a_run_held_elsewhere_and_lists_it(tmp_path):
    sweep = tmp_path / "sweep"
    held = RunLock(sweep / "1")
    held.acquire()
    try:
        code, out = finish(cli("-m", *QUICK, "schedule.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}",
                               "hydra.sweep.subdir=${hydra.job.num}", cwd=tmp_path))
        assert code == 0, out[-3000:]
        assert f"skipping {sweep / '1'}: it is running elsewhere (host {socket.gethostname()}, pid {os.getpid()}" \
            in out
        assert (sweep / "0" / "result.json").exists() and not (sweep / "1" / "result.json").exists()
        summary = (sweep / "summary.md").read_text()
        assert "| 1 (+1 running elsewhere) |" in summary
        assert f", seed 1: host {socket.gethostname()}, pid {os.getpid()}, since " in summary
        assert [r["status"] for r in find_incomplete(sweep)] == ["running elsewhere"]
    finally:
        held.release()
    assert [r["status"] for r in find_incomplete(sweep)] == ["unfinished"]  # its holder gave it up unfinished
    assert "running" not in to_markdown(summarize(find_incomplete(sweep)))
