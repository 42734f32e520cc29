"""Exact resume and faults: SIGKILL and SIGTERM mid-run, corrupt checkpoints, other configs, NaN, full disks."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, train_cli
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.common.errors import UserError
from erasenet.reports.summary import summarize
from erasenet.training.run import train_run
from erasenet.training.runfiles import check_writable

# Dropout and random crops draw from the RNGs a resume must restore; checkpoint_every_min is tiny, so a checkpoint
# is written at every check (every 2 steps): a kill lands between checkpoints in the middle of an epoch.
RESUMABLE = ("dataset=digits", "schedule=quick", "schedule.epochs=8", "schedule.milestones=[3]", "model=mlp",
             "model.width=64", "model.dropout=0.2", "trainer.num_threads=1", "trainer.check_every=2",
             "trainer.checkpoint_every_min=1e-6", "trainer.keep_checkpoints=3", "trainer.tensorboard=true")
TIMING = {"seconds", "images_per_s"}
QUICK = ("dataset=digits", "schedule=quick", "schedule.epochs=3", "model=mlp", "model.width=32",
         "trainer.tensorboard=false")


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "erasenet.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def resume(*args: str, cwd: Path) -> tuple[int, str]:
    """The same command again, after the process was stopped: run in this process (the stop needed one)."""
    proc = train_cli(*args, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def run_dir(cwd: Path) -> Path:
    return next((cwd / "runs" / "default").iterdir())


def wait_for_checkpoint(cwd: Path, pattern: str) -> None:
    """Poll until the running job has written a checkpoint matching ``pattern`` (e.g. the second epoch's)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (cwd / "runs").is_dir() and any((cwd / "runs").rglob(pattern)):
            return
        time.sleep(0.002)
    raise AssertionError(f"no checkpoint {pattern} appeared")


def outcome(directory: Path) -> tuple[dict, list[dict], list[int]]:
    """Final weights, metrics without timings, and the epochs TensorBoard shows for loss/train."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weights = load_checkpoint(list_checkpoints(directory)[-1])["model"]
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (directory / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(directory / "tb"))
    events.Reload()
    return weights, metrics, [e.step for e in events.Scalars("loss/train")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, started in the background so the interrupted ones can run beside it."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = start(*RESUMABLE, cwd=cwd)

    def result():
        code, out = finish(proc)
        assert code == 0, out[-3000:]
        return outcome(run_dir(cwd))

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def assert_same(resumed: Path, reference) -> None:
    weights, metrics, steps = outcome(resumed)
    ref_weights, ref_metrics, ref_steps = reference()
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)  # bit for bit
    assert metrics == ref_metrics and [m["epoch"] for m in metrics] == list(range(1, 9))
    assert steps == ref_steps == list(range(1, 9))  # TensorBoard: no repeated, no missing epoch


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, reference):
    victim = start(*RESUMABLE, cwd=tmp_path)
    wait_for_checkpoint(tmp_path, "epoch0002_step*.pt")  # inside the third epoch
    victim.kill()
    finish(victim)
    directory = run_dir(tmp_path)
    assert not (directory / "result.json").exists()
    code, out = resume(*RESUMABLE, cwd=tmp_path)
    assert code == 0, out[-3000:]
    assert "resuming from" in (directory / "train.log").read_text()
    assert_same(directory, reference)


@pytest.mark.slow
@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_writes_a_checkpoint_says_so_in_one_line_exits_128_plus_n_then_resumes(
        tmp_path, reference, stop, status):
    victim = start(*RESUMABLE, cwd=tmp_path)
    wait_for_checkpoint(tmp_path, "epoch0001*.pt")
    victim.send_signal(stop)
    code, out = finish(victim)
    assert code == status and "Traceback" not in out and "KeyboardInterrupt" not in out
    said = [line for line in out.splitlines() if "interrupted" in line]
    assert len(said) == 1 and f"({stop.name})" in said[0] and "run the same command again to resume" in said[0]
    directory = run_dir(tmp_path)
    assert not (directory / "result.json").exists()
    state = load_checkpoint(list_checkpoints(directory)[-1])
    assert state["epoch"] < 8 and state["config"]["seed"] == 0
    code, out = resume(*RESUMABLE, cwd=tmp_path)
    assert code == 0, out[-3000:]
    assert_same(directory, reference)


def test_a_second_ctrl_c_stops_at_once():
    from erasenet.training.preemption import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT  # the first one only asks for a checkpoint and a stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs in this thread before the sleep returns


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, make_cfg, caplog):
    cfg = make_cfg(*QUICK, "trainer.keep_checkpoints=3")
    first = train_run(cfg, tmp_path)
    newest = list_checkpoints(tmp_path)[-1]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch0001.pt", "epoch0002.pt", "epoch0003.pt"]
    final = load_checkpoint(newest)["model"]
    newest.write_bytes(newest.read_bytes()[:5000])  # a write cut short
    (tmp_path / "result.json").unlink()
    with caplog.at_level(logging.INFO, logger="erasenet"):
        again = train_run(cfg, tmp_path)
    assert "skipping unreadable checkpoint" in caplog.text and "epoch0003.pt" in caplog.text
    assert "resuming from" in caplog.text and "epoch0002.pt (epoch 2, step 0)" in caplog.text
    assert (tmp_path / "unreadable_checkpoints" / "epoch0003.pt").stat().st_size == 5000  # kept, not deleted
    assert all(torch.equal(final[k], v) for k, v in load_checkpoint(newest)["model"].items())
    assert {k: again[k] for k in ("test_error", "best_val_error", "train_error")} == \
        {k: first[k] for k in ("test_error", "best_val_error", "train_error")}


def test_why_a_checkpoint_is_unreadable_is_told_in_whole_sentences(tmp_path):
    from erasenet.training.checkpoint import why_unreadable

    path = tmp_path / "a.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception) as err:
        load_checkpoint(path)
    message = " ".join(str(err.value).split())
    told = why_unreadable(err.value)
    name, _, reason = told.partition(": ")
    assert name == type(err.value).__name__ and len(reason) > 20
    assert message.startswith(reason) and reason.endswith(".") and message[len(reason):len(reason) + 1] in ("", " ")
    long = "The first sentence is long " + "and goes on " * 30 + "until it ends."
    assert why_unreadable(ValueError(f"{long} A second one.\nMore")) == f"ValueError: {long}"
    assert why_unreadable(EOFError()) == "EOFError, with no message"


def test_checkpoint_of_another_config_is_refused(tmp_path, make_cfg):
    train_run(make_cfg(*QUICK, "schedule.epochs=1"), tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as err:
        train_run(make_cfg(*QUICK, "schedule.epochs=1", "erase.proportion=0.5", "model.width=16"), tmp_path)
    message = str(err.value)
    assert "erase.proportion: 0.0 -> 0.5" in message and "model.width: 32 -> 16" in message
    assert "trainer.resume=never" in message
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_finished_run_is_skipped(tmp_path, make_cfg, caplog):
    cfg = make_cfg(*QUICK, "schedule.epochs=1")
    first = train_run(cfg, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="erasenet"):
        again = train_run(make_cfg(*QUICK, "schedule.epochs=1", "trainer.progress=off"), tmp_path)
    assert "already finished" in caplog.text and again == json.loads((tmp_path / "result.json").read_text())
    assert again["test_error"] == first["test_error"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


# Keys a run recorded before they existed lacks: their defaults are the behaviour from before they existed.
ADDED_LATER = (("schedule", "prelu_weight_decay"), ("schedule", "decay"), ("dataset", "color_jitter"),
               ("dataset", "lighting"), ("dataset", "top5"), ("erase", "fixed_sites"), ("model", "batch_norm"),
               *(("erase", k) for k in ("method", "budget", "granularity", "gate_epochs", "penalty", "penalty_factor",
                                        "penalty_warmup", "threshold", "cull_stages", "thin")))


def _as_recorded_before(config: dict) -> dict:
    for section, key in ADDED_LATER:
        del config[section][key]
    return config


def test_runs_recorded_before_a_knob_existed_still_match(tmp_path, make_cfg, caplog):
    from erasenet.training.checkpoint import save_checkpoint

    cfg = make_cfg(*QUICK, "schedule.epochs=2")
    first = train_run(cfg, tmp_path)
    stored = json.loads((tmp_path / "result.json").read_text())
    stored["config"] = _as_recorded_before(stored["config"])
    (tmp_path / "result.json").write_text(json.dumps(stored))
    with caplog.at_level(logging.INFO, logger="erasenet"):
        assert train_run(cfg, tmp_path)["test_error"] == first["test_error"]
    assert "already finished" in caplog.text and "training again" not in caplog.text
    # a checkpoint from before resumes
    (tmp_path / "result.json").unlink()
    older, newest = list_checkpoints(tmp_path)[-2:]
    newest.unlink()
    state = load_checkpoint(older)
    state["config"] = _as_recorded_before(state["config"])
    save_checkpoint(older, state)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="erasenet"):
        again = train_run(cfg, tmp_path)
    assert "resuming from" in caplog.text and again["test_error"] == first["test_error"]
    # a knob set away from its default is a difference, present or absent
    with pytest.raises(UserError, match=r"dataset.lighting: 0.0 -> 0.1"):
        train_run(make_cfg(*QUICK, "schedule.epochs=2", "dataset=imagenet", "dataset.lighting=0.1",
                           "dataset.num_classes=10"), tmp_path)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, make_cfg):
    # one epoch of warm-up at a sane lr, then lr=1e6 diverges in the second epoch
    cfg = make_cfg(*QUICK, "schedule.lr=1e6", "schedule.warmup_iters=20", "schedule.warmup_lr=0.01")
    result = train_run(cfg, tmp_path)
    assert result["status"] == "failed" and "non-finite in epoch 2" in result["failure"]
    assert "step" in result["failure"] and result["epochs"] == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch0001.pt"]
    assert torch.isfinite(load_checkpoint(tmp_path / "checkpoints" / "epoch0001.pt")["model"]["head.weight"]).all()
    row = summarize([json.loads((tmp_path / "result.json").read_text())])[0]
    assert (row["n"], row["failed"]) == (0, 1)


def test_unwritable_or_full_output_fails_before_training(tmp_path, make_cfg):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="cannot write to the run directory"):
        train_run(make_cfg(*QUICK), tmp_path / "a_file" / "run")
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserError, match="MiB free but this run needs"):
        check_writable(tmp_path / "run", need_bytes=free + 2**40)


def test_resume_never_starts_afresh_and_replaces_the_earlier_files(tmp_path, make_cfg):
    first = train_run(make_cfg(*QUICK, "schedule.epochs=2"), tmp_path)
    (tmp_path / "checkpoints" / "epoch0009.pt").write_bytes(b"from an earlier attempt")
    again = train_run(make_cfg(*QUICK, "schedule.epochs=1", "trainer.resume=never"), tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch0001.pt"]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert again["epochs"] == 1 and first["epochs"] == 2
    assert json.loads((tmp_path / "result.json").read_text())["epochs"] == 1


def test_stop_signals_hand_the_signal_to_the_earlier_handler():
    """submitit's requeue is a handler installed before ours: after the checkpoint it gets the signal."""
    from erasenet.training.preemption import StopSignals

    received = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.received == signal.SIGUSR1 and received == []  # only recorded while training
            stop.pass_on()
            assert received == [signal.SIGUSR1]
            os.kill(os.getpid(), signal.SIGUSR1)  # ours is uninstalled: the earlier handler is back
            assert received == [signal.SIGUSR1] * 2
        with StopSignals() as stop:  # Ctrl-C is never passed on to Python's handler (no KeyboardInterrupt)
            os.kill(os.getpid(), signal.SIGINT)
            stop.pass_on()
        assert stop.received == signal.SIGINT
    finally:
        signal.signal(signal.SIGUSR1, before)


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_the_same_way_and_the_same_command_finishes_it(tmp_path):
    sweep = ("-m", *QUICK, "schedule.epochs=6", "trainer.check_every=2", "seed=0,1")
    victim = start(*sweep, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not list(tmp_path.rglob("epoch0001*.pt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGINT)
    code, out = finish(victim)
    assert code == 130 and "Traceback" not in out
    assert len([line for line in out.splitlines() if "interrupted (SIGINT)" in line]) == 1
    assert not list(tmp_path.rglob("result.json"))
    code, out = resume(*sweep, cwd=tmp_path)
    assert code == 0, out[-3000:]
    assert len(list(tmp_path.rglob("result.json"))) == 2 and "resuming from" in out


def test_a_resumed_runs_event_file_sorts_after_the_killed_sessions(tmp_path):
    """TensorBoard reads event files in name order (second opened, host, pid): a resume within the second the
    killed session opened its file must still come after it, or its purge of that session's last epochs is lost."""
    from torch.utils.tensorboard import SummaryWriter

    from erasenet.training.runfiles import wait_to_sort_last

    killed = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.host.{2**31 - 1}.0"
    killed.write_bytes(b"")
    wait_to_sort_last(tmp_path)
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir())[-1] != killed.name
