"""Training throughput of erasenet against the pipeline a typical user writes, measured in one process.

    python scripts/bench.py --json bench.json               # GPU if there is one: everything, tables to paste
    python scripts/bench.py --device cpu --quick --json bench.json

Every figure is taken after a warm-up, with synchronized timing, under the torch settings a run uses
(``erasenet.training.accel.apply_torch_settings``: cuDNN autotuning, TF32), on synthetic data of the real shapes:

- loader: images/s of torchvision's PIL pipeline (Dataset + RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor +
  Normalize, DataLoader with the workers a real script uses) against erasenet's TensorLoader, CIFAR-shaped;
- CIFAR ResNets, training images/s: (a) that PIL pipeline with an fp32 eager model and a plain loop;
  (b32) erasenet's loop with amp off (fp32, TF32 on a GPU); (b) erasenet's default path (``trainer.amp=auto``);
  (f) ``trainer=fast`` (amp, channels_last, torch.compile with CUDA graphs; GPU only, compile time apart);
- ImageNet ResNet-50 at batch 256 (GPU only): the bare model's step and erasenet's loop (TensorLoader on the GPU,
  engine.train_one_epoch) in bf16 and in fp32, images/s and peak memory;
- the aten ops one training step of ResNet-20 and ResNet-110 dispatches, fp32 and bf16 (what makes them
  launch-bound on a GPU);
- the ImageNet folder loader: images/s of one worker on JPEGs it writes (500x375 and 1024x768, quality 90),
  decoding at full size against decoding at the reduced size the crop allows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from erasenet.training.accel import Accel, apply_torch_settings, build_accel, prepare_model, resolve_amp
from erasenet.data import TensorLoader
from erasenet.data.splits import Split
from erasenet.training.engine import build_optimizer, build_scheduler, train_one_epoch
from erasenet.training.state import Learner
from erasenet.models import create_model

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SCHEDULE = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "milestones": [],
                             "gamma": 0.1, "warmup_iters": 0, "warmup_lr": 0.01, "warmup": "constant",
                             "decay": "step"})


@functools.lru_cache(maxsize=None)
def trainer_config(*overrides: str) -> DictConfig:
    """The ``trainer`` config a run composes from ``overrides`` (e.g. ``trainer=fast``); read only."""
    from hydra import compose, initialize_config_module

    from erasenet.common.config import register_configs

    register_configs()
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides)).trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(n: int, size: int = 32, classes: int = 10, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                 torch.randint(0, classes, (n,), generator=g))


class PILDataset(torch.utils.data.Dataset):
    """What a typical CIFAR script uses: HWC uint8 arrays, one PIL image and one transform call per sample."""

    def __init__(self, split: Split):
        import torchvision.transforms as T

        self.images = split.images.permute(0, 2, 3, 1).numpy()
        self.labels = split.labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def pil_loader(split: Split, batch: int, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PILDataset(split), batch_size=batch, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=True,
                                       persistent_workers=workers > 0)


def tensor_loader(split: Split, batch: int, device: torch.device, seed: int = 0) -> TensorLoader:
    return TensorLoader(split, batch, device=device, train=True, crop_padding=4, flip=True, mean=CIFAR_MEAN,
                        std=CIFAR_STD, seed=seed, drop_last=True)


def timed_epochs(run_epoch, device: torch.device, images: int) -> float:
    """Images/s of the second of two calls of ``run_epoch`` (the first warms up)."""
    run_epoch(0)
    sync(device)
    start = time.perf_counter()
    run_epoch(1)
    sync(device)
    return images / (time.perf_counter() - start)


def bench_loaders(device: torch.device, n: int, batch: int, workers: int) -> dict:
    split = synthetic_images(n)
    pil = pil_loader(split, batch, workers, device)
    tensors = tensor_loader(split, batch, device)

    def through(loader):
        def run(epoch):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return run

    a = timed_epochs(through(pil), device, n // batch * batch)
    b = timed_epochs(through(tensors), device, n // batch * batch)
    return {"pil_images_per_s": a, "tensor_images_per_s": b, "loader_ratio": b / a}


def model(name: str, device: torch.device, seed: int = 0, in_chans: int = 3, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=classes, in_chans=in_chans).to(device)


def train_baseline(name: str, split: Split, batch: int, workers: int, device: torch.device) -> float:
    """(a): PIL DataLoader, fp32, eager, the loop everyone writes."""
    net = model(name, device)
    loader = pil_loader(split, batch, workers, device)
    opt = build_optimizer(net, SCHEDULE)

    def run(epoch):
        net.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return timed_epochs(run, device, len(loader) * batch)


def train_erasenet(make_model, loader, accel: Accel, device: torch.device, trainer: DictConfig | None = None) -> dict:
    """The engine's loop over a TensorLoader, the model prepared as a run prepares it under ``trainer``
    (channels_last, compile); images/s and the compile time."""
    net = make_model()
    opt = build_optimizer(net, SCHEDULE)
    sched = build_scheduler(opt, SCHEDULE, len(loader))
    shape = (loader.batch_size, *loader.images.shape[1:])
    prepared = prepare_model(net, trainer or trainer_config(), accel, [(shape, True)])
    learner = Learner(prepared.module, opt, sched, accel)

    def run(epoch):
        loader.set_epoch(epoch)
        train_one_epoch(learner, loader, epoch=epoch)
    rate = timed_epochs(run, device, len(loader) * loader.batch_size)
    return {"images_per_s": rate, "compiled": prepared.compiled, "compile_seconds": prepared.seconds,
            "compile_error": prepared.error}


def bench_cifar(names: list[str], device: torch.device, n: int, batch: int, workers: int) -> list[dict]:
    split = synthetic_images(n)
    gpu = device.type == "cuda"
    fp32, default = Accel(device), build_accel(trainer_config(), device)
    fast_trainer = trainer_config("trainer=fast")
    rows = []
    for name in names:
        row = {"model": name, "a_pil_fp32_eager": train_baseline(name, split, batch, workers, device)}
        row["b32_erasenet_fp32"] = train_erasenet(lambda: model(name, device), tensor_loader(split, batch, device),
                                                  fp32, device)["images_per_s"]
        # on the CPU trainer.amp=auto is off: (b) would repeat (b32)
        row["b_erasenet"] = train_erasenet(lambda: model(name, device), tensor_loader(split, batch, device),
                                           default, device)["images_per_s"] if gpu else row["b32_erasenet_fp32"]
        if gpu:  # compiling alone takes minutes on a CPU, where these nets are compute-bound anyway
            fast = train_erasenet(lambda: model(name, device), tensor_loader(split, batch, device),
                                  build_accel(fast_trainer, device), device, trainer=fast_trainer)
            row["f_fast"], row["f_compile_seconds"] = fast["images_per_s"], fast["compile_seconds"]
            row["f_compile_error"] = fast["compile_error"]
        row["b32_over_a"] = row["b32_erasenet_fp32"] / row["a_pil_fp32_eager"]
        row["b_over_a"] = row["b_erasenet"] / row["a_pil_fp32_eager"]
        row["b_over_b32"] = row["b_erasenet"] / row["b32_erasenet_fp32"]
        if gpu:
            row["f_over_a"] = row["f_fast"] / row["a_pil_fp32_eager"]
        rows.append(row)
        print_cifar_row(row)
    return rows


def bench_resnet50(device: torch.device, steps: int, batch: int = 256) -> list[dict]:
    """ResNet-50 at 224 px: the bare model's step on one fixed batch, and erasenet's loop (a TensorLoader on the
    GPU with flips, engine.train_one_epoch), each in bf16 + channels_last and in fp32 (TF32)."""
    split = synthetic_images(batch * steps, size=224, classes=1000)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rows = []
    for amp in ("auto", "off"):
        accel = Accel(device, resolve_amp(amp, device), channels_last=amp == "auto")
        precision = "fp32 (TF32)" if accel.amp_dtype is None else str(accel.amp_dtype).removeprefix("torch.")
        for loop in ("bare model", "erasenet loop"):
            net = model("resnet50", device, classes=1000)
            if accel.channels_last:
                net = net.to(memory_format=torch.channels_last)
            opt = build_optimizer(net, SCHEDULE)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            if loop == "bare model":
                x = torch.randn(batch, 3, 224, 224, device=device)
                y = torch.randint(0, 1000, (batch,), device=device)

                def step():
                    with accel.autocast():
                        loss = F.cross_entropy(net(accel.inputs(x)), y)
                    opt.zero_grad(set_to_none=True)
                    accel.backward_and_step(loss, opt)

                def run(epoch):
                    for _ in range(steps):
                        step()
            else:
                loader = TensorLoader(split, batch, device=device, train=True, flip=True, mean=mean, std=std,
                                      drop_last=True)
                sched = build_scheduler(opt, SCHEDULE, len(loader))

                def run(epoch):
                    loader.set_epoch(epoch)
                    train_one_epoch(Learner(net, opt, sched, accel), loader, epoch=epoch)
            rate = timed_epochs(run, device, batch * steps)
            rows.append({"loop": loop, "precision": precision, "channels_last": accel.channels_last,
                         "images_per_s": rate, "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30})
            print(f"| {loop} | {precision} | {'on' if accel.channels_last else 'off'} | {rate:.0f} | "
                  f"{rows[-1]['peak_memory_gib']:.1f} |", flush=True)
            net = opt = None  # free the model before the next one is built
    return rows


def count_step_ops(names: list[str], device: torch.device, batch: int = 8) -> list[dict]:
    """The aten ops one training step dispatches (forward, loss, backward, SGD), fp32 and under bf16 autocast:
    on a GPU, roughly the kernels it launches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    rows = []
    for name in names:
        for dtype in (None, torch.bfloat16):
            net = model(name, device)
            opt = build_optimizer(net, SCHEDULE)
            accel = Accel(device, dtype)
            x = torch.randn(batch, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            counts = {}
            for part in ("warm-up", "forward", "step"):
                counter = Count()
                with counter:
                    with accel.autocast():
                        loss = F.cross_entropy(net(x), y)
                    if part != "forward":
                        opt.zero_grad(set_to_none=True)
                        accel.backward_and_step(loss, opt)
                counts[part] = counter.ops
            rows.append({"model": name, "amp": "bf16" if dtype else "off", "forward_ops": counts["forward"],
                         "step_ops": counts["step"]})
            print(f"| {name} | {rows[-1]['amp']} | {counts['forward']} | {counts['step']} |", flush=True)
    return rows


def write_photo_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) of smooth colour fields with mild noise: decoding costs about what a photo's does,
    unlike pure noise, which JPEG cannot compress."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = (pixels + rng.integers(-10, 11, pixels.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"{width}x{height}_{i}.JPEG")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


FOLDER_CASES = (  # (width, height, train, image_size, resize_size)
    (500, 375, True, 224, 256), (500, 375, False, 224, 256), (500, 375, True, 128, 146),
    (1024, 768, True, 224, 256), (1024, 768, False, 224, 256),
)


def bench_folder(folder: Path, n: int, repeats: int = 2) -> list[dict]:
    """Images/s of one loader worker (decode, crop, resize, flip: ``FolderDataset``'s work per image), decoding
    at full size against at the reduced size the crop allows, alternated and the best of ``repeats`` kept.

    Timed in CPU seconds of this process (one thread, as a worker runs): what a worker delivers with a core to
    itself, also on a machine shared with other jobs, where wall-clock time would measure them too.
    """
    from erasenet.data.folder_loader import ImageTransform

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    images = {}
    rows = []
    try:
        for width, height, train, size, resize in FOLDER_CASES:
            if (width, height) not in images:
                images[width, height] = write_photo_jpegs(folder, n, width, height)
            paths = images[width, height]
            rates = {False: 0.0, True: 0.0}
            for _ in range(repeats):
                for reduced in (False, True):
                    transform = ImageTransform(train, size, resize, flip=True, reduced_decode=reduced)
                    torch.manual_seed(0)
                    start = time.process_time()
                    for path in paths:
                        transform.load(path)
                    rates[reduced] = max(rates[reduced], len(paths) / (time.process_time() - start))
            rows.append({"image": f"{width}x{height}", "transform": f"{'train' if train else 'eval'} {size}"
                         f"{'' if train else f' (resize {resize})'}", "full_decode_images_per_s": rates[False],
                         "reduced_decode_images_per_s": rates[True], "ratio": rates[True] / rates[False]})
            r = rows[-1]
            print(f"| {r['image']} | {r['transform']} | {r['full_decode_images_per_s']:.0f} | "
                  f"{r['reduced_decode_images_per_s']:.0f} | {r['ratio']:.2f} |", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def print_cifar_row(r: dict) -> None:
    def fmt(key: str, spec: str = ".0f") -> str:
        return format(r[key], spec) if key in r else "GPU only"
    print(f"| {r['model']} | {fmt('a_pil_fp32_eager')} | {fmt('b32_erasenet_fp32')} | {fmt('b_erasenet')} | "
          f"{fmt('f_fast')} | {fmt('b32_over_a', '.2f')} | {fmt('b_over_a', '.2f')} | {fmt('f_over_a', '.2f')} |",
          flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small sizes: ResNet-20 only, few steps (CI, CPU)")
    p.add_argument("--json", type=Path, help="write every measured figure to this file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the PIL baseline (default: 4, as typical CIFAR scripts use, or "
                        "the CPU count if smaller)")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_torch_settings(deterministic=False)  # what every run sets: cuDNN autotuning, TF32
    gpu = device.type == "cuda"
    if args.quick:
        names, n, batch = ["resnet20"], (4096 if gpu else 256), (128 if gpu else 64)
    else:
        names, n, batch = ["resnet20", "resnet56", "resnet110"], (25600 if gpu else 1024), 128
    machine = (torch.cuda.get_device_name(device) if gpu else
               f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})")
    out = {"machine": machine, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "quick": args.quick, "workers": args.workers, "batch": batch, "images_per_epoch": n,
           "amp": str(resolve_amp("auto", device)), "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "tf32": torch.backends.cuda.matmul.allow_tf32}
    print(f"# erasenet bench on {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"trainer.amp=auto is {out['amp']}, cudnn.benchmark {out['cudnn_benchmark']}, TF32 {out['tf32']}",
          flush=True)
    start = time.perf_counter()
    out["loader"] = bench_loaders(device, (4096 if gpu else 1024) if args.quick else 10240, 128, args.workers)
    print(f"\nloader, CIFAR-shaped, batch 128: PIL Dataset+DataLoader ({args.workers} workers) "
          f"{out['loader']['pil_images_per_s']:.0f} img/s, TensorLoader {out['loader']['tensor_images_per_s']:.0f}"
          f" img/s, ratio {out['loader']['loader_ratio']:.1f}x", flush=True)
    print(f"\ntraining images/s, CIFAR-shaped, batch {batch}; (a) PIL + {args.workers} workers, fp32, eager; "
          f"(b32) erasenet, amp off; (b) erasenet, trainer defaults; (f) trainer=fast\n\n"
          f"| model | (a) | (b32) | (b) | (f) | b32/a | b/a | f/a |\n"
          f"|---|---|---|---|---|---|---|---|", flush=True)
    out["cifar"] = bench_cifar(names, device, n, batch, args.workers)
    if gpu:
        for r in out["cifar"]:
            print(f"{r['model']}: trainer=fast compiled in {r['f_compile_seconds']:.0f}s"
                  + (f" (failed, eager: {r['f_compile_error']})" if r["f_compile_error"] else ""))
    if gpu:
        print("\nImageNet ResNet-50, batch 256, synthetic\n\n| loop | precision | channels_last | images/s | "
              "peak memory (GiB) |\n|---|---|---|---|---|", flush=True)
        out["resnet50"] = bench_resnet50(device, 10 if args.quick else 30)
    else:
        print("\nImageNet ResNet-50 at batch 256: skipped (GPU only)")
    print("\naten ops of one training step (batch 8)\n\n| model | amp | forward | whole step |\n|---|---|---|---|",
          flush=True)
    out["step_ops"] = count_step_ops(["resnet20"] if args.quick else ["resnet20", "resnet110"], device)
    print("\nImageNet folder loader, one worker (images per CPU second)\n\n| JPEG (quality 90) | transform | full decode | "
          "reduced decode | ratio |\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="erasenet-bench-") as tmp:
        out["folder"] = bench_folder(Path(tmp), 24 if args.quick else 100)
    out["loader_ratio"] = out["loader"]["loader_ratio"]
    out["seconds"] = time.perf_counter() - start
    print(f"\ntotal {out['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
