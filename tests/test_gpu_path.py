"""The GPU path, checked where the CPU can show it: the amp decision, determinism, fp32 evaluation, CUDA graphs'
static shapes and fallback, and the ImageNet folder loader's reduced-size decoding."""

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from erasenet.training.accel import (CUBLAS_WORKSPACE, Accel, CudaGraphTraining, apply_torch_settings, build_accel,
                            compile_mode_for, prepare_model, resolve_amp)
from erasenet.data import TensorLoader
from erasenet.data.folder_loader import ImageTransform
from erasenet.data.digits import load_digits_splits
from erasenet.training.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from erasenet.training.state import Learner
from erasenet.common.errors import UserError
from erasenet.models import create_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(180, 0)


def resnet(seed=0, depth=8):
    torch.manual_seed(seed)
    return create_model("resnet", depth=depth, num_classes=10, in_chans=1)


def loader(digits, n=80, batch=32):
    return TensorLoader(digits.train.subset(range(n)), batch, train=True, crop_padding=1, mean=[0.3], std=[0.4])


@pytest.fixture
def gpu_of(monkeypatch):
    """``gpu_of(major, minor, emulated_bf16)``: torch.cuda answers as a GPU of that compute capability would."""

    def pretend(major: int, minor: int, emulated_bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: emulated_bf16)

    return pretend


@pytest.mark.parametrize("capability,expected", [((6, 0), torch.float16), ((7, 5), torch.float16),
                                                 ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_amp_auto_picks_bf16_only_where_the_gpu_has_it_natively(gpu_of, capability, expected):
    gpu_of(*capability, emulated_bf16=True)  # torch.cuda.is_bf16_supported() says yes even on a T4 (7.5)
    assert resolve_amp("auto", CUDA) == expected
    assert resolve_amp("off", CUDA) is None
    assert resolve_amp("auto", CPU) is None


def test_explicit_bf16_on_an_older_gpu_warns_or_refuses(gpu_of, caplog):
    gpu_of(7, 5, emulated_bf16=True)
    with caplog.at_level(logging.WARNING, logger="erasenet"):
        assert resolve_amp("bf16", CUDA) == torch.bfloat16
    assert "emulates bf16" in caplog.text
    gpu_of(6, 1, emulated_bf16=False)
    with pytest.raises(UserError, match="does not support bfloat16"):
        resolve_amp("bf16", CUDA)


@pytest.fixture
def restore_torch_settings():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE[0]))
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:3]
    if before[3] is None:
        os.environ.pop(CUBLAS_WORKSPACE[0], None)


def test_deterministic_flag_sets_every_switch(restore_torch_settings, make_cfg, monkeypatch):
    from erasenet.training.run import configure_torch

    monkeypatch.delenv(CUBLAS_WORKSPACE[0], raising=False)
    configure_torch(make_cfg("trainer.deterministic=true").trainer)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ[CUBLAS_WORKSPACE[0]] == CUBLAS_WORKSPACE[1]
    configure_torch(make_cfg().trainer)  # the default: autotuned, and nothing left over from the run before
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_deterministic_mode_refuses_an_op_without_a_deterministic_kernel(restore_torch_settings):
    index = torch.tensor([0, 0])  # a repeated index: which write wins is up to the kernel
    apply_torch_settings(True)
    with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
        torch.zeros(4).put_(index, torch.tensor([1.0, 2.0]))
    apply_torch_settings(False)
    torch.zeros(4).put_(index, torch.tensor([1.0, 2.0]))


def test_a_run_trains_in_deterministic_mode_and_records_fp32_evaluation(restore_torch_settings, make_cfg,
                                                                         tmp_path):
    """Every op of a real run has a deterministic kernel (or the run would raise), and result.json says how it
    evaluated."""
    from erasenet.training.run import train_run

    cfg = make_cfg("dataset=digits", "schedule=quick", "schedule.epochs=1", "trainer.deterministic=true",
                   "trainer.tensorboard=false", "trainer.checkpoint=false")
    result = train_run(cfg, tmp_path / "run")
    assert result["status"] == "ok" and torch.are_deterministic_algorithms_enabled()
    assert result["accel"]["eval_amp"] is False and result["accel"]["compile_mode"] is None


class AutocastProbe:
    """Records, per forward call, whether CPU autocast was on and the logits' dtype."""

    def __init__(self, model: nn.Module):
        self.seen: list[tuple[bool, torch.dtype]] = []
        model.register_forward_hook(lambda m, args, out: self.seen.append((torch.is_autocast_enabled("cpu"),
                                                                            out.dtype)))


def test_evaluation_runs_in_fp32_unless_asked(digits, make_cfg):
    model = resnet()
    probe = AutocastProbe(model)
    test = TensorLoader(digits.test.subset(range(100)), 50, mean=[0.3], std=[0.4])
    accel = build_accel(make_cfg("trainer.amp=bf16", "trainer.device=cpu").trainer, CPU)
    assert accel.amp_dtype == torch.bfloat16 and not accel.eval_amp
    fp32 = evaluate(model, test, accel=accel)
    assert probe.seen == [(False, torch.float32)] * 2
    probe.seen.clear()
    bf16 = evaluate(model, test, accel=Accel(CPU, torch.bfloat16, eval_amp=True))
    assert probe.seen == [(True, torch.bfloat16)] * 2
    assert fp32 == evaluate(model, test)  # the default evaluation is exactly the plain fp32 one
    assert fp32["count"] == bf16["count"] == 100
    probe.seen.clear()
    opt = build_optimizer(model, make_cfg("schedule=quick").schedule)
    train_one_epoch(Learner(model, opt, build_scheduler(opt, make_cfg().schedule, 1), accel), loader(digits, n=32),
                    epoch=0)
    assert probe.seen == [(True, torch.bfloat16)]  # training itself stays under autocast


def test_cuda_graph_modes_fall_back_off_cuda_and_keep_other_modes():
    model = resnet()
    assert compile_mode_for("reduce-overhead", model, CUDA) == ("reduce-overhead", None)
    mode, why = compile_mode_for("reduce-overhead", model, CPU)
    assert mode == "default" and "need a CUDA device" in why
    assert compile_mode_for("max-autotune", model, CPU)[0] == "max-autotune-no-cudagraphs"
    assert compile_mode_for("default", model, CPU) == ("default", None)
    assert compile_mode_for("max-autotune-no-cudagraphs", model, CUDA) == ("max-autotune-no-cudagraphs", None)


def test_trainer_fast_asks_for_cuda_graphs_and_says_when_it_cannot(make_cfg, caplog):
    trainer = make_cfg("trainer=fast", "trainer.compile_backend=eager").trainer
    assert trainer.compile_mode == "reduce-overhead" and trainer.amp == "auto" and trainer.channels_last
    with caplog.at_level(logging.INFO, logger="erasenet"):
        net = prepare_model(resnet(), trainer, build_accel(trainer, CPU), [((8, 1, 8, 8), True)])
    assert net.compiled and net.mode == "default"
    assert "captures CUDA graphs, which need a CUDA device; compiling with mode default on the cpu" in caplog.text


class CountingBackend:
    """A torch.compile backend that runs the traced graph as it is, counting compilations and calls."""

    def __init__(self):
        self.compiled = self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.compiled += 1

        def run(*args):
            self.calls += 1
            return graph.forward(*args)

        return run


def test_cuda_graph_training_compiles_one_shape_and_runs_the_rest_eagerly(digits, make_cfg):
    """Batches of 32, 32 and a last one of 16: the first shape runs compiled, the last batch eagerly (no second
    compilation or capture), and the training equals the eager one."""
    schedule = make_cfg("schedule=quick").schedule
    model, reference = resnet(1), resnet(1)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, dynamic=False)
    graphed = CudaGraphTraining(compiled, model, (32, 1, 8, 8))
    assert set(graphed.state_dict()) == {f"compiled._orig_mod.{k}" for k in model.state_dict()}
    for net in (graphed, reference):
        data = loader(digits)
        opt = build_optimizer(net, schedule)
        train_one_epoch(Learner(net, opt, build_scheduler(opt, schedule, len(data)), Accel(CPU)), data, epoch=0)
    assert backend.compiled == 1 and backend.calls == 2
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    evaluate(graphed, TensorLoader(digits.test, 100, mean=[0.3], std=[0.4]))
    assert backend.compiled == 1 and backend.calls == 2  # evaluation runs the eager model


@pytest.mark.parametrize("name,options", [("resnet20", {}), ("preact_resnet", {"depth": 20}),
                                          ("wrn", {"depth": 10, "width": 1})])
def test_a_training_step_is_one_graph_without_host_syncs(name, options):
    """What CUDA graphs capture must hold no host sync or Python-side randomness: Dynamo sees no graph break."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, **options).train()
    explained = torch._dynamo.explain(model)(torch.randn(4, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def write_jpeg(path, width, height, seed=0, quality=90, noise=10):
    """A real JPEG of a smooth colour field with mild noise (photo-like: JPEG compresses it as it does photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 24, width // 24, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = (pixels + rng.integers(-noise, noise + 1, pixels.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=quality)
    return path


def load_both(path, train, size, resize, seed):
    """The transform's output decoding at full size and at reduced size, with the same augmentation draw."""
    out = []
    for reduced in (False, True):
        torch.manual_seed(seed)
        out.append(ImageTransform(train, size, resize, flip=True, reduced_decode=reduced).load(path))
    return out


def test_reduced_decode_changes_nothing_where_the_crop_needs_every_pixel(tmp_path):
    """500x375 photos at 224: no crop side can be halved and stay >= 224, so the output is bit-identical."""
    path = write_jpeg(tmp_path / "a.JPEG", 500, 375)
    for seed in range(8):
        full, reduced = load_both(path, True, 224, 256, seed)
        assert full.shape == (3, 224, 224) and torch.equal(full, reduced)
    full, reduced = load_both(path, False, 224, 256, 0)
    assert torch.equal(full, reduced)  # evaluation: the short side 375 is under 2 x 256


def test_reduced_decode_keeps_the_crop_and_the_picture(tmp_path):
    """1024x768 photos: the decoder shrinks by 2 or 4 whenever the crop still has the output's pixels, and the
    result is the full-size decode's crop of the same box, rounded to the reduced decode's pixel grid."""
    from torchvision.transforms.v2 import functional as F

    from erasenet.data.folder_loader import read_rgb

    path = write_jpeg(tmp_path / "big.JPEG", 1024, 768, seed=1)
    full = read_rgb(path)
    transform = ImageTransform(True, 112, 128, flip=False)
    reductions = []
    for seed in range(12):
        torch.manual_seed(seed)
        box = transform._crop_box(1024, 768)
        reductions.append(transform.decode_reduction(box, 1024, 768))
        assert min(box[2:]) >= reductions[-1] * 112 or reductions[-1] == 1
        torch.manual_seed(seed)
        reduced = transform.load(path)
        snapped = [round(v / reductions[-1]) * reductions[-1] for v in box]
        expected = F.resized_crop(full, *snapped, [112, 112], antialias=True)
        difference = (reduced.float() - expected.float()).abs()
        assert reduced.shape == (3, 112, 112) and difference.mean() < 1.5 and difference.max() <= 10
    assert {2, 4} <= set(reductions)  # the reduced decode was used, at more than one scale
    evaluation = ImageTransform(False, 224, 256, flip=False)
    assert evaluation.decode_reduction(None, 1024, 768) == 2
    difference = (evaluation.load(path).float() - evaluation(full).float()).abs()
    assert difference.mean() < 1.5 and difference.max() <= 10


def test_png_and_unreadable_files_take_the_plain_path(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    full, reduced = load_both(tmp_path / "a.png", True, 112, 128, 3)
    assert torch.equal(full, reduced)  # only JPEG decoders can shrink while decoding
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="bad.JPEG"):
        ImageTransform(True, 112, 128, flip=True).load(tmp_path / "bad.JPEG")


def test_bench_measures_the_folder_loader_on_real_jpegs(tmp_path):
    """The benchmark's folder-loader section end to end on a few images (its figures are in docs/performance.md)."""
    spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "scripts/bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.bench_folder(tmp_path, n=2, repeats=1)
    assert [(r["image"], r["transform"]) for r in rows] == [
        ("500x375", "train 224"), ("500x375", "eval 224 (resize 256)"), ("500x375", "train 128"),
        ("1024x768", "train 224"), ("1024x768", "eval 224 (resize 256)")]
    assert all(r["full_decode_images_per_s"] > 0 and r["reduced_decode_images_per_s"] > 0 for r in rows)
    assert len(list(tmp_path.glob("*.JPEG"))) == 4


@pytest.mark.slow
def test_bench_quick_runs_end_to_end_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    # the script imports erasenet from this checkout, installed or not
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "bench.py"), "--device", "cpu", "--quick", "--json",
                           str(tmp_path / "bench.json")], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| resnet20 |" in proc.stdout and (tmp_path / "bench.json").is_file()
    json.loads((tmp_path / "bench.json").read_text())
