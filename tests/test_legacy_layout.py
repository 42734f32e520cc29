"""Runs recorded by erasenet 0.1's flat layout (erasenet/run.py, erasenet/checkpoint.py, ...) still load: a finished
one is recognised as finished, an interrupted one resumes from its checkpoint. The fixture is such a run, as that
layout wrote it: mlp on digits, 2 epochs, a checkpoint after each."""

import json
import shutil

import torch

from conftest import REPO
from erasenet.training.checkpoint import load_checkpoint
from erasenet.training.run import train_run

FIXTURE = REPO / "tests" / "fixtures" / "run_v0_1_flat_layout"
OVERRIDES = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "model=mlp", "model.width=32",
             "trainer.tensorboard=false", "trainer.num_threads=1")


def test_a_finished_run_of_the_flat_layout_is_not_trained_again(make_cfg, tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = train_run(make_cfg(*OVERRIDES), run, list(OVERRIDES))
    assert result == json.loads((FIXTURE / "result.json").read_text())
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_interrupted_run_of_the_flat_layout_resumes_from_its_checkpoint(make_cfg, tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    (run / "result.json").unlink()
    (run / "checkpoints" / "epoch0002.pt").unlink()
    first_epoch = (run / "metrics.jsonl").read_text().splitlines()[0]
    (run / "metrics.jsonl").write_text(first_epoch + "\n")

    result = train_run(make_cfg(*OVERRIDES), run, list(OVERRIDES))

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[0] == json.loads(first_epoch)
    assert result["status"] == "ok" and result["epochs"] == 2
    # The second epoch retrained from the old checkpoint lands where the old layout's run did (up to the last digits
    # a different CPU gives the same arithmetic).
    resumed = load_checkpoint(run / "checkpoints" / "epoch0002.pt")["model"]
    original = load_checkpoint(FIXTURE / "checkpoints" / "epoch0002.pt")["model"]
    assert resumed.keys() == original.keys()
    for name in original:
        assert torch.allclose(resumed[name].float(), original[name].float(), atol=1e-4), name
