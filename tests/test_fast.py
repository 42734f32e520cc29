"""The speed knobs change speed, not results: the fast path, channels_last, bf16, compile, concurrent seeds."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from erasenet.accel import Accel, compile_model, to_channels_last
from erasenet.checkpoint import list_checkpoints, load_checkpoint
from erasenet.concurrent import StackedLoader, StackedModels, member_optimizer_state, with_seed
from erasenet.data import TensorLoader
from erasenet.data.digits import load_digits_splits
from erasenet.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from erasenet.launcher import plan_batches
from erasenet.models import create_model
from erasenet.results import find_results, summarize
from erasenet.run import train_run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(180, 0)


@pytest.fixture
def schedule(make_cfg):
    return make_cfg("schedule=quick").schedule


def small_loader(digits, seed=0, n=128, batch=32):
    return TensorLoader(digits.train.subset(range(n)), batch, train=True, crop_padding=1, mean=[0.3], std=[0.4],
                        seed=seed)


def resnet(seed, dtype=torch.float32, depth=20):
    torch.manual_seed(seed)
    return create_model("resnet", depth=depth, num_classes=10, in_chans=1).to(dtype)


def train(model, loader, schedule, accel=None, epochs=1):
    opt = build_optimizer(model, schedule)
    sched = build_scheduler(opt, schedule, len(loader))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out = train_one_epoch(model, loader, opt, sched, epoch=epoch, accel=accel)
    return out, opt


def assert_same_weights(a, b, atol):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=atol, rtol=0), name


def test_fast_path_with_knobs_off_trains_like_the_plain_loop(digits, schedule):
    loader = small_loader(digits)
    fast, plain = resnet(0), resnet(0)
    train(fast, loader, schedule, Accel(CPU))
    opt = build_optimizer(plain, schedule)
    loader.set_epoch(0)
    for x, y in loader:  # the loop everyone writes
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_same_weights(fast, plain, atol=1e-6)


def test_channels_last_gives_the_same_training(digits, schedule):
    """In float64, so that the two memory formats' different summation orders cannot grow into visible noise."""
    batches = double_batches(small_loader(digits, n=64))
    nhwc, nchw = resnet(1, torch.float64, depth=8), resnet(1, torch.float64, depth=8)
    accel = Accel(CPU, channels_last=True)
    to_channels_last(nhwc, accel)
    assert nhwc.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    train(nhwc, batches, schedule, accel)
    train(nchw, batches, schedule, Accel(CPU))
    assert_same_weights(nhwc, nchw, atol=1e-10)


def test_bf16_autocast_trains_on_cpu(digits, schedule):
    accel = Accel(CPU, torch.bfloat16)
    model = resnet(2).eval()
    x, y = next(iter(small_loader(digits)))
    with accel.autocast():
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    assert F.cross_entropy(logits.float(), y).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=0.02)
    out, _ = train(model, small_loader(digits), schedule, accel)
    assert math.isfinite(out["loss"]) and out["images"] == 128
    assert model.stem.conv.weight.dtype == torch.float32  # autocast keeps fp32 master weights
    test = TensorLoader(digits.test, 1000, mean=[0.3], std=[0.4])
    assert evaluate(model, test, accel=accel)["count"] == 360


def test_compile_failure_falls_back_to_the_eager_model():
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler on this machine")

    model = resnet(3)
    before = copy.deepcopy(model.state_dict())
    result = compile_model(model, Accel(CPU), [((4, 1, 8, 8), True)], backend=broken_backend)
    assert not result.compiled and result.module is model
    assert "no compiler on this machine" in result.error
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_compile_warm_up_changes_no_result(digits, schedule):
    """A real torch.compile (the cheap ``eager`` backend: Dynamo's tracing without code generation)."""
    loader = small_loader(digits, n=64)
    model, reference = resnet(4), resnet(4)
    result = compile_model(model, Accel(CPU), [((32, 1, 8, 8), True)], backend="eager")
    assert result.compiled and result.seconds > 0
    assert_same_weights(model, reference, atol=0)  # the warm-up step was undone
    train(result.module, loader, schedule)
    train(reference, loader, schedule)
    assert_same_weights(model, reference, atol=1e-5)


def test_stacked_seeds_train_exactly_like_each_seed_alone(digits, schedule):
    """In float64, where rounding cannot hide a wrong gradient or a shared batch-norm statistic."""
    seeds = (0, 1, 2)
    loaders = [small_loader(digits, seed=s, n=64) for s in seeds]
    stack = StackedModels([resnet(s, torch.float64, depth=8) for s in seeds])
    batches = [double_batches(ld) for ld in loaders]  # epoch 0 of each seed's own loader
    stacked = [(torch.stack([b[i][0] for b in batches]), torch.stack([b[i][1] for b in batches]))
               for i in range(len(batches[0]))]
    out, opt = train(stack, ListLoader(stacked), schedule)
    for k, s in enumerate(seeds):
        alone = resnet(s, torch.float64, depth=8)
        alone_out, alone_opt = train(alone, batches[k], schedule)
        member = stack.copy_into(k, resnet(99, torch.float64, depth=8))
        assert_same_weights(member, alone, atol=1e-10)  # includes BN running stats and num_batches_tracked
        assert out["loss"][k] == pytest.approx(alone_out["loss"], abs=1e-10)
        assert out["error"][k] == alone_out["error"]
        mine = member_optimizer_state(opt, k)["state"]
        theirs = alone_opt.state_dict()["state"]
        assert all(torch.allclose(mine[i]["momentum_buffer"], theirs[i]["momentum_buffer"], atol=1e-10)
                   for i in theirs)


def double_batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return ListLoader((x.double(), y) for x, y in loader)


class ListLoader(list):
    """Fixed batches with the loader interface ``train_one_epoch`` uses."""

    def set_epoch(self, epoch):
        pass


def test_stacked_loader_gives_each_member_its_own_order(digits):
    base = small_loader(digits, seed=0)
    loader = StackedLoader([base, with_seed(base, 5)])
    loader.set_epoch(1)
    x, y = next(iter(loader))
    alone = small_loader(digits, seed=5)
    alone.set_epoch(1)
    x5, y5 = next(iter(alone))
    assert x.shape == (2, 32, 1, 8, 8)
    assert torch.equal(x[1], x5) and torch.equal(y[1], y5) and not torch.equal(y[0], y[1])
    assert with_seed(base, 5).images is base.images  # no copy of the data


def test_plan_batches_groups_seeds_of_one_configuration():
    jobs = [[f"erase.proportion={p}", f"seed={s}"] for p in (0, 1) for s in range(5)]
    assert plan_batches(jobs, [2] * 10) == [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]
    assert plan_batches(jobs, [1] * 10) == [[i] for i in range(10)]


def test_concurrent_sweep_writes_ordinary_runs_like_runs_alone(tmp_path, make_cfg):
    tiny = ("dataset=digits", "schedule=quick", "schedule.epochs=1", "schedule.batch_size=128", "schedule.lr=0.02")
    proc = run_cli("-m", *tiny, "name=together", "seed=0,1", "trainer.concurrent=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trained together" in proc.stderr + proc.stdout
    sweep = tmp_path / "multirun" / "together"
    results = {r["seed"]: r for r in find_results(sweep)}
    assert sorted(results) == [0, 1] and all(r["concurrent"]["seeds"] == [0, 1] for r in results.values())
    alone_dir = tmp_path / "alone"
    alone = train_run(make_cfg(*tiny, "name=together", "seed=1"), alone_dir, group=results[1]["group"])
    together = results.pop(1)
    run_dir = Path(together.pop("_dir"))
    assert "seed=1" in run_dir.name and (run_dir / ".hydra" / "overrides.yaml").is_file()
    # the same files as the seed run alone, plus what Hydra adds to every run directory
    assert {p.name for p in run_dir.iterdir()} == {p.name for p in alone_dir.iterdir()} | {".hydra", "train.log"}
    assert set(together) == set(alone) | {"concurrent"}
    assert together["config"] == {**alone["config"], "trainer": {**alone["config"]["trainer"], "concurrent": 2}}
    assert together["macs"] == alone["macs"] > 0 and together["processes"] == 1
    assert {p.name for p in (run_dir / "tb").iterdir() if p.is_dir()} == {p.name for p in (alone_dir / "tb").iterdir()
                                                                          if p.is_dir()}  # the HParams entry
    assert "epoch 1/1" in (run_dir / "train.log").read_text()
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    alone_lines = [json.loads(s) for s in (alone_dir / "metrics.jsonl").read_text().splitlines()]
    assert [set(m) for m in lines] == [set(m) for m in alone_lines]
    # float32 rounding differs between the batched and the single kernels and grows over SGD steps; the exact
    # equality is checked in float64 above; here the training losses have to agree closely (the test error after
    # ten steps is too unstable to compare)
    for m, a in zip(lines, alone_lines):
        assert m["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
    ours, theirs = list_checkpoints(run_dir), list_checkpoints(alone_dir)
    assert [p.name for p in ours] == [p.name for p in theirs] == ["epoch0001.pt"]
    ours, theirs = load_checkpoint(ours[-1]), load_checkpoint(theirs[-1])
    assert ours.keys() == theirs.keys() and ours["model"].keys() == theirs["model"].keys()
    assert ours["history"] == lines and ours["epoch"] == 1
    assert [{k: v.shape for k, v in s.items()} for s in ours["optimizer"]["state"].values()] == \
        [{k: v.shape for k, v in s.items()} for s in theirs["optimizer"]["state"].values()]
    row, = summarize([together, results[0]])
    assert row["n"] == 2 and row["seeds"] == [0, 1] and "trainer.concurrent" not in row["config"]
    assert (sweep / "summary.md").is_file()

    # Again with two more seeds: seed 0 is finished (skipped), seed 1 lost its result.json but has its checkpoint
    # (continued alone), seeds 2 and 3 train together.
    finished = (Path(results[0]["_dir"]) / "result.json").read_bytes()
    (run_dir / "result.json").unlink()
    proc = run_cli("-m", *tiny, "name=together", "seed=0,1,2,3", "trainer.concurrent=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = {r["seed"]: r for r in find_results(sweep)}
    assert (Path(results[0]["_dir"]) / "result.json").read_bytes() == finished
    assert "resuming from" in (run_dir / "train.log").read_text()
    assert results[1]["test_error"] == together["test_error"] and "concurrent" not in results[1]
    assert results[2]["concurrent"]["seeds"] == results[3]["concurrent"]["seeds"] == [2, 3]


@pytest.mark.parametrize("args,expected", [
    (["trainer.amp=fp8"], "trainer.amp='fp8'"),
    (["trainer.concurrent=0"], "trainer.concurrent=0"),
    (["trainer.amp=fp16", "trainer.device=cpu", "dataset=digits"], "needs a CUDA GPU"),
])
def test_bad_speed_knobs_are_one_clear_paragraph(tmp_path, args, expected):
    proc = run_cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
