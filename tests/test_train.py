"""End to end: a real (tiny) training run, the multirun summary, and the bad-input errors."""

import json
import math
import statistics

import pytest
import torch

from conftest import train_cli, write_cifar
from erasenet.reports.summary import find_results, summarize, write_summary
from erasenet.training.run import train_run

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
    assert isinstance(on_disk["cpu"], str)  # the digits of a CPU run depend on the CPU's type too
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


@pytest.mark.slow
def test_multirun_summary_matches_the_runs(tmp_path):
    proc = train_cli("-m", *TINY, "schedule.epochs=1", "trainer.tensorboard=false", "name=sweep",
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
    from erasenet.reports.selection import select

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
    (["erase.replace=prelu_channels"], "prelu_channel (a PReLU with one slope per channel)"),
    (["model=resnet9"], "resnet110"),  # Hydra lists the available models
    (["erase.proportio=1"], "proportio"),
    (["schedule.lr=-1"], "lr > 0"),
    (["dataset=cifar10", "dataset.download=false"], "cifar-10-batches-py"),
    (["trainer.device=tpu"], "trainer.device='tpu'"),
    (["seed=-1"], "seed=-1 is not a seed. seed chooses initialisation, data order and augmentation; it takes an "
                  "integer from 0 to 4294967295"),
    (["dataset.split_seed=4294967296"], "dataset.split_seed=4294967296 is not a seed."),
])
def test_bad_input_is_one_clear_paragraph(tmp_path, args, expected):
    root = ["dataset.root=" + str(tmp_path / "empty")]
    proc = train_cli(*args, *root, cwd=tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "runs").exists()  # a rejected run leaves no directory behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path):
    proc = train_cli("dataset=digits", "trainer.device=cuda", cwd=tmp_path)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_lr_factor_warms_up_linearly_then_steps_at_the_milestones(make_cfg):
    from erasenet.training.engine import lr_factor

    s = make_cfg("schedule=quick", "schedule.lr=0.1", "schedule.warmup_iters=4", "schedule.warmup_lr=0.02",
                 "schedule.warmup=linear", "schedule.milestones=[2]", "schedule.gamma=0.1").schedule
    factor = lr_factor(s, steps_per_epoch=10)
    assert [0.1 * factor(step) for step in range(6)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    assert 0.1 * factor(19) == pytest.approx(0.1) and 0.1 * factor(20) == pytest.approx(0.01)
    constant = lr_factor(make_cfg("schedule=quick", "schedule.warmup_iters=4", "schedule.warmup_lr=0.02").schedule, 10)
    assert [constant(step) for step in (0, 3, 4)] == pytest.approx([0.2, 0.2, 1.0])


def _sgd_step_without_gradient(optimizer):
    """One step with zero gradients: only weight decay moves a parameter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()


def test_prelu_slopes_escape_weight_decay_only_when_asked(make_cfg):
    from erasenet.training.engine import build_optimizer
    from erasenet.erase import EraseReLU, ErasePolicy, apply_erase
    from erasenet.models import create_model

    decayed, undecayed = (make_cfg("schedule=quick", f"schedule.prelu_weight_decay={v}").schedule
                          for v in ("true", "false"))
    plain = create_model("resnet20", num_classes=10)
    names = [n for n, _ in plain.named_parameters()]
    reference = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for schedule in (decayed, undecayed):  # no PReLU: exactly the optimizer of before
        assert build_optimizer(plain, schedule).state_dict() == reference.state_dict()

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    apply_erase(model, ErasePolicy(EraseReLU("all", 1.0), "prelu_channel"), input_shape=(3, 32, 32))
    slopes = [n for n, _ in model.named_parameters() if n.endswith(("act1.weight", "act_out.weight"))]
    assert len(slopes) == 18 and [n for n, _ in model.named_parameters() if n not in slopes] == names
    assert len(build_optimizer(model, decayed).param_groups) == 1
    optimizer = build_optimizer(model, undecayed)
    parameters = dict(model.named_parameters())
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == \
        [[id(parameters[n]) for n in names], [id(parameters[n]) for n in slopes]]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _sgd_step_without_gradient(optimizer)
    assert all(torch.equal(parameters[n], before[n]) for n in slopes)
    assert not torch.equal(parameters["head.fc.weight"], before["head.fc.weight"])



def test_a_run_with_slopes_per_channel_and_no_slope_decay_finishes_and_resumes_exactly(tmp_path):
    args = (*TINY[:2], "schedule.epochs=2", "trainer.tensorboard=false", "trainer.num_threads=1", "erase=prelu_all",
            "erase.replace=prelu_channel", "schedule.prelu_weight_decay=false", "model=resnet", "model.depth=8")
    proc = train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = next((tmp_path / "runs").glob("*/*"))
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["erase"]["replace"] == "prelu_channel"
    assert result["erased"] == ["layer1.0.act1", "layer1.0.act_out", "layer2.0.act1", "layer2.0.act_out",
                                "layer3.0.act1", "layer3.0.act_out"]
    assert result["config"]["schedule"]["prelu_weight_decay"] is False
    final = torch.load(run / "checkpoints" / "epoch0002.pt", weights_only=True)
    assert final["model"]["layer3.0.act_out.weight"].shape == (64,)
    assert [g["weight_decay"] for g in final["optimizer"]["param_groups"]] == [5e-4, 0.0]
    assert len(final["optimizer"]["param_groups"][1]["params"]) == 6
    # the same command continues from the first epoch's checkpoint: two groups' state loads back
    (run / "result.json").unlink()
    (run / "checkpoints" / "epoch0002.pt").unlink()
    proc = train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in (run / "train.log").read_text()
    again = torch.load(run / "checkpoints" / "epoch0002.pt", weights_only=True)
    assert all(torch.equal(again["model"][k], v) for k, v in final["model"].items())
    assert json.loads((run / "result.json").read_text())["test_error"] == result["test_error"]
