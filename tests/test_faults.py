"""Faults as a matrix: a tiny run is stopped by SIGKILL, or by a full disk (ENOSPC), at every named fault point of
its life (erasenet.common.faults), and each time the same command run again finishes it exactly as an uninterrupted run.

Each case forks this process (torch is imported once): the child arms the fault and trains in-process; the parent
inspects what it left, then forks the rerun.
"""

import functools
import json
import os
import signal
import traceback
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from erasenet.common import faults
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.training.diskfull import DiskFull
from erasenet.training.run import train_run

# two epochs of ~22 steps; a checkpoint every 5 steps and at each epoch's end
TINY = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "model=mlp", "model.width=16", "model.dropout=0.1",
        "trainer.tensorboard=false", "trainer.num_threads=1", "trainer.check_every=5",
        "trainer.checkpoint_every_min=1e-6", "trainer.keep_checkpoints=2", "trainer.progress=off")
TIMING = {"seconds", "images_per_s"}
DISK_FULL = 3  # the child's exit status when the run stopped with DiskFull

# (point, occurrence): where in the run's life the fault fires; every place a run writes or steps
FAULT_POINTS = [
    ("config.write", 1), ("config.rename", 1), ("metrics.write", 1), ("metrics.rename", 1),
    ("train.step", 1), ("train.step", 12), ("train.step", 30),  # between steps, in the first and second epoch
    ("checkpoint.write", 1), ("checkpoint.write", 70), ("checkpoint.write", 250),  # inside a checkpoint's bytes
    ("checkpoint.rename", 1), ("checkpoint.rename", 5), ("checkpoint.rename", 9),  # written, not yet in place
    ("checkpoint.prune", 3), ("checkpoint.prune", 6),  # in place, older ones not yet deleted
    ("metrics.append", 1), ("metrics.append", 2),  # half of an epoch's line written
    ("epoch.logged", 1), ("epoch.logged", 2),  # the epoch's line written, its checkpoint not yet
    ("result.write", 1), ("result.rename", 1), ("result.written", 1),  # the final result, inside and after
]


@functools.cache
def compose_tiny(*extra: str):
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return compose(config_name="config", overrides=[*TINY, *extra])


def in_child(out: Path, fault: tuple[str, int, str] | None = None) -> int:
    """Train the tiny run into ``out`` in a forked child (with ``fault`` armed); its wait status."""
    cfg = compose_tiny()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        signal.alarm(120)  # a child that hangs dies, and its test fails, instead of the suite hanging
        try:
            if fault:
                faults.arm(*fault)
            train_run(cfg, out)
            code = 0
        except DiskFull:
            code = DISK_FULL
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def metrics(out: Path, whole_lines_only: bool = False) -> list[dict]:
    text = (out / "metrics.jsonl").read_text()
    lines = text.splitlines()[:text.count("\n")] if whole_lines_only else text.splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, keeping every checkpoint it writes; trained here, so that the children start warm."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    train_run(compose_tiny("trainer.keep_checkpoints=1000"), out)
    torch.set_num_threads(threads)  # as the other tests of this process expect
    return out


def assert_intact(out: Path, reference: Path) -> None:
    """What the stopped run left is whole: every checkpoint equals the reference's at that point, the metrics
    lines are the reference's first ones, and a result is the reference's."""
    for path in list_checkpoints(out):
        mine, theirs = load_checkpoint(path), load_checkpoint(reference / "checkpoints" / path.name)
        assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"]), path
    if (out / "metrics.jsonl").exists():  # a line cut short by a kill has no end yet; the rerun rewrites the file
        lines = metrics(out, whole_lines_only=True)
        assert lines == metrics(reference)[:len(lines)]
    if (out / "result.json").exists():
        assert json.loads((out / "result.json").read_text())["test_error"] == \
            json.loads((reference / "result.json").read_text())["test_error"]


def assert_finished_like(out: Path, reference: Path) -> None:
    """The rerun ended with the reference's weights and metrics, each epoch once, and gave up its lock."""
    final = load_checkpoint(out / "checkpoints" / "epoch0002.pt")["model"]
    ref = load_checkpoint(reference / "checkpoints" / "epoch0002.pt")["model"]
    assert final.keys() == ref.keys() and all(torch.equal(final[k], ref[k]) for k in ref)
    assert metrics(out) == metrics(reference) and [m["epoch"] for m in metrics(out)] == [1, 2]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["test_error"] == json.loads((reference / "result.json").read_text())[
        "test_error"]
    assert not (out / ".lock").exists() and not list(out.rglob("*.tmp"))  # nothing half-written left behind


def test_the_matrix_covers_every_fault_point_of_the_code():
    import re

    code = "".join(p.read_text() for p in Path(faults.__file__).parents[1].rglob("*.py"))  # the whole package
    named = set(re.findall(r'faults\.(?:point|wrap)\((?:\w+, )?"([\w.]+)"\)', code))
    files = {f"{kind}.{step}" for kind in ("config", "metrics", "checkpoint", "result") for step in ("write", "rename")}
    assert named | files == {p for p, _ in FAULT_POINTS}


@pytest.mark.parametrize("point,occurrence", FAULT_POINTS, ids=[f"{p}#{n}" for p, n in FAULT_POINTS])
def test_sigkill_at_a_fault_point_then_the_rerun_is_exact(tmp_path, reference, point, occurrence):
    status = in_child(tmp_path, (point, occurrence, "kill"))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the fault point was not reached"
    assert_intact(tmp_path, reference)
    assert os.waitstatus_to_exitcode(in_child(tmp_path)) == 0
    assert_finished_like(tmp_path, reference)


@pytest.mark.parametrize("point,occurrence", FAULT_POINTS, ids=[f"{p}#{n}" for p, n in FAULT_POINTS])
def test_full_disk_at_a_fault_point_damages_nothing_then_the_rerun_is_exact(tmp_path, reference, point, occurrence):
    status = in_child(tmp_path, (point, occurrence, "enospc"))
    assert os.waitstatus_to_exitcode(status) == DISK_FULL, "the fault point was not reached, or not a DiskFull"
    assert_intact(tmp_path, reference)
    assert not list(tmp_path.rglob("*.tmp"))  # a write that failed takes its temporary file back
    if (tmp_path / "metrics.jsonl").exists():  # and a metrics line that did not fit its first half
        text = (tmp_path / "metrics.jsonl").read_text()
        assert text == "" or text.endswith("\n")
    assert "disk full" in json.loads((tmp_path / "failure.json").read_text())["failure"]
    assert not (tmp_path / ".lock").exists()  # given up on the way out
    assert os.waitstatus_to_exitcode(in_child(tmp_path)) == 0
    assert_finished_like(tmp_path, reference)
