"""The speed settings change speed, not results: the fast path, channels_last, bf16, compile."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import train_cli
from erasenet.training.accel import Accel, compile_model, to_channels_last
from erasenet.data import TensorLoader
from erasenet.training.engine import build_optimizer, evaluate
from tiny_training import (CPU, assert_same_weights, digits, double_batches, resnet, schedule,  # noqa: F401
                           small_loader, train)

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


@pytest.mark.parametrize("args,expected", [
    (["trainer.amp=fp8"], "trainer.amp='fp8'"),
    (["trainer.concurrent=2"], "trainer.concurrent was removed"),  # a key of earlier versions: what to use instead
    (["+trainer.concurrent=2"], "hydra/launcher=parallel"),
    (["trainer.amp=fp16", "trainer.device=cpu", "dataset=digits"], "needs a CUDA GPU"),
])
def test_bad_speed_knobs_are_one_clear_paragraph(tmp_path, args, expected):
    proc = train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
