"""End to end: a real (tiny) training run, the multirun summary, and the bad-input errors."""

import json
import math
import statistics

import pytest
import torch

from conftest import run_cli, write_cifar
from erasenet.results import find_results, summarize, write_summary
from erasenet.run import train_run

TINY = ("dataset=digits", "schedule=quick", "schedule.epochs=3", "schedule.milestones=[2]", "trainer.tensorboard=true")


def test_tiny_training_run_writes_everything_and_learns(tmp_path, make_cfg):
    cfg = make_cfg(*TINY, "erase.proportion=0.5", "seed=3")
    result = train_run(cfg, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "result.json", "checkpoints", "tb"} <= names
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[2]["lr"] == pytest.approx(0.01)  # milestone at epoch 2, gamma 0.1
    assert result["test_error"] < 50.0  # ten classes: chance is 90%
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["erased"] == ["layer1.0.act_out", "layer1.2.act_out", "layer2.1.act_out", "layer3.0.act_out",
                                 "layer3.2.act_out"]
    assert on_disk["seed"] == 3 and on_disk["params"] == 269_434 and on_disk["status"] == "ok"
    assert on_disk["best_val_error"] == min(m["val_error"] for m in lines)
    assert on_disk["test_error_at_best_val"] == lines[on_disk["best_epoch"] - 1]["test_error"]
    assert set(on_disk["versions"]) >= {"torch", "torchvision", "erasenet"}
    state = torch.load(tmp_path / "checkpoints" / "epoch0003.pt", weights_only=True)
    assert "layer1.0.conv1.weight" in state["model"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("error/val")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("error/val")] == pytest.approx([m["val_error"] for m in lines])


def test_same_seed_same_result(tmp_path, make_cfg):
    cfg = make_cfg(*TINY[:3], "schedule.epochs=1", "trainer.tensorboard=false", "trainer.checkpoint=false")
    a, b = train_run(cfg, tmp_path / "a"), train_run(cfg, tmp_path / "b")
    assert a["test_error"] == b["test_error"]
    timing = {"seconds", "images_per_s"}
    ma, mb = (json.loads((tmp_path / f"{r}/metrics.jsonl").read_text()) for r in "ab")
    assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}


def test_cifar_format_training(tmp_path, make_cfg):
    write_cifar(tmp_path / "data", "cifar10", n_train=60, n_test=20)
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=10", "schedule=quick",
                   "schedule.epochs=1", "schedule.batch_size=25", "erase=last", "trainer.tensorboard=false")
    result = train_run(cfg, tmp_path / "run")
    assert result["splits"] == {"train": 50, "val": 10, "test": 20}
    assert len(result["erased"]) == 9


def test_multirun_summary_matches_the_runs(tmp_path):
    proc = run_cli("-m", *TINY, "schedule.epochs=2", "trainer.tensorboard=false", "name=sweep",
                   "erase.proportion=0,1", "seed=0,1,2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "multirun" / "sweep"
    results = find_results(sweep)
    assert len(results) == 6
    csv_lines = (sweep / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 3
    rows = {r["config"]: r for r in summarize(results)}
    for p in ("0", "1"):
        runs = [r for r in results if f"erase.proportion={p}" in r["overrides"]]
        row = rows[next(k for k in rows if f"erase.proportion={p}" in k)]
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
        assert math.isclose(row["test_error"], statistics.fmean(r["test_error"] for r in runs))
        assert math.isclose(row["test_error_std"], statistics.stdev(r["test_error"] for r in runs))
    assert "± " in (sweep / "summary.md").read_text()
    assert "summary.md" in proc.stdout
    assert {r["macs"] for r in results} == {2_516_608}  # ResNet-20's convolutions and head on 8x8 digits
    # ReLU elements on 8x8 inputs: a sixteenth of the 32x32 counts (188,416 unerased, 102,400 with every block's
    # last ReLU erased), since every stage's feature maps are a quarter as wide and high
    assert {r["erase"]["proportion"]: r["relus"] for r in results} == {0.0: 11_776, 1.0: 6_400}
    for r in results:
        assert r["provenance"]["command"] == "python -m erasenet.train " + " ".join(r["overrides"])
        assert r["provenance"]["erasenet"] == r["versions"]["erasenet"] and r["num_threads"] >= 1
    for plot in ("curves.png", "proportion.png", "pareto.png"):
        assert (sweep / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from erasenet.select import select

    (chosen,) = select(results, among=(0.0, 1.0))
    val = {p: statistics.fmean(r["best_val_error"] for r in results if r["erase"]["proportion"] == p) for p in (0, 1)}
    assert chosen["proportion"] == min(val, key=lambda p: (val[p], p))
    # the summary can be rebuilt by hand from the run directories alone
    (sweep / "summary.md").unlink()
    write_summary(sweep)
    assert (sweep / "summary.md").is_file()


def test_results_cli_errors(tmp_path):
    from erasenet.results import main

    assert main([str(tmp_path / "nope")]) == 2
    assert main([str(tmp_path)]) == 1


@pytest.mark.parametrize("args,expected", [
    (["erase.proportion=1.5"], "outside [0, 1]"),
    (["erase.location=middle"], "erase.location='middle'"),
    (["erase.replace=tanh"], "erase.replace='tanh'"),
    (["model=resnet9"], "resnet110"),  # Hydra lists the available models
    (["erase.proportio=1"], "proportio"),
    (["schedule.lr=-1"], "lr > 0"),
    (["dataset=cifar10", "dataset.download=false"], "cifar-10-batches-py"),
    (["trainer.device=tpu"], "trainer.device='tpu'"),
])
def test_bad_input_is_one_clear_paragraph(tmp_path, args, expected):
    root = ["dataset.root=" + str(tmp_path / "empty")]
    proc = run_cli(*args, *root, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "runs").exists()  # a rejected run leaves no directory behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path):
    proc = run_cli("dataset=digits", "trainer.device=cuda", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_lr_factor_warms_up_linearly_then_steps_at_the_milestones(make_cfg):
    from erasenet.engine import lr_factor

    s = make_cfg("schedule=quick", "schedule.lr=0.1", "schedule.warmup_iters=4", "schedule.warmup_lr=0.02",
                 "schedule.warmup=linear", "schedule.milestones=[2]", "schedule.gamma=0.1").schedule
    factor = lr_factor(s, steps_per_epoch=10)
    assert [0.1 * factor(step) for step in range(6)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    assert 0.1 * factor(19) == pytest.approx(0.1) and 0.1 * factor(20) == pytest.approx(0.01)
    constant = lr_factor(make_cfg("schedule=quick", "schedule.warmup_iters=4", "schedule.warmup_lr=0.02").schedule, 10)
    assert [constant(step) for step in (0, 3, 4)] == pytest.approx([0.2, 0.2, 1.0])
