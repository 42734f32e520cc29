"""Training throughput of erasenet against the pipeline a typical user writes, measured in one process.

    python scripts/bench.py                                 # GPU if there is one: ResNet-20/56/110, ResNet-50
    python scripts/bench.py --device cpu --quick --json bench.json

Measured, each after a warm-up, with synchronized timing, on synthetic uint8 data of the real shapes:

- loader: images/s of torchvision's PIL pipeline (Dataset + RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor +
  Normalize, DataLoader) against erasenet's TensorLoader with the same augmentation, CIFAR-shaped;
- CIFAR ResNets, training images/s: (a) that PIL pipeline with an fp32 eager model and a plain loop;
  (b) erasenet's default path (TensorLoader, engine.train_one_epoch, trainer defaults);
  (c) five seeds trained together (erasenet.concurrent), per-seed throughput summed;
- the quickstart's model (ResNet-20 on 8x8 digits, batch 64): five seeds together against five one after another;
- ImageNet ResNet-50 at batch 256 on synthetic data, images/s and peak memory (GPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omegaconf import OmegaConf  # noqa: E402

from erasenet.accel import Accel, resolve_amp  # noqa: E402
from erasenet.concurrent import StackedLoader, StackedModels, with_seed  # noqa: E402
from erasenet.data import TensorLoader  # noqa: E402
from erasenet.data.splits import Split  # noqa: E402
from erasenet.engine import build_optimizer, build_scheduler, train_one_epoch  # noqa: E402
from erasenet.models import create_model  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SCHEDULE = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "milestones": [],
                             "gamma": 0.1, "warmup_iters": 0, "warmup_lr": 0.01, "warmup": "constant"})
K = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cifar(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


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
    split = synthetic_cifar(n)
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


def model(name: str, device: torch.device, seed: int = 0, in_chans: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=in_chans).to(device)


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


def train_erasenet(make_model, loader, accel: Accel, device: torch.device, members: int = 1) -> float:
    """(b) and (c): the engine's loop over a TensorLoader (or K stacked ones); summed images/s of all members."""
    net = make_model()
    opt = build_optimizer(net, SCHEDULE)
    sched = build_scheduler(opt, SCHEDULE, len(loader))

    def run(epoch):
        loader.set_epoch(epoch)
        train_one_epoch(net, loader, opt, sched, epoch=epoch, accel=accel)
    return members * timed_epochs(run, device, len(loader) * loader_batch(loader))


def loader_batch(loader) -> int:
    return (loader.loaders[0] if isinstance(loader, StackedLoader) else loader).batch_size


def bench_cifar(names: list[str], device: torch.device, n: int, batch: int, workers: int) -> list[dict]:
    split = synthetic_cifar(n)
    accel = Accel(device, resolve_amp("auto", device))
    rows = []
    for name in names:
        a = train_baseline(name, split, batch, workers, device)
        b = train_erasenet(lambda: model(name, device), tensor_loader(split, batch, device), accel, device)
        base = tensor_loader(split, batch, device)
        stacked = StackedLoader([base] + [with_seed(base, s) for s in range(1, K)])
        c = train_erasenet(lambda: StackedModels([model(name, device, s) for s in range(K)]), stacked, accel,
                           device, members=K)
        rows.append({"model": name, "a_pil_fp32_eager": a, "b_erasenet": b, f"c_{K}_concurrent": c,
                     "b_over_a": b / a, "c_over_5b": c / b})
        print_row(rows[-1])
    return rows


def bench_quickstart(device: torch.device, repeats: int = 3) -> dict:
    """The quickstart's model and data: five seeds together against five seeds one after another."""
    from erasenet.data.digits import load_digits_splits

    train = load_digits_splits(180, 0).train
    accel = Accel(device, resolve_amp("auto", device))
    mean, std = (0.3059,), (0.3765,)

    def digits(seed, batch=64):
        return TensorLoader(train, batch, device=device, train=True, crop_padding=1, mean=mean, std=std, seed=seed)

    def one_after_another():
        rates = [train_erasenet(lambda: model("resnet20", device, s, in_chans=1), digits(s), accel, device)
                 for s in range(K)]
        return K / sum(1 / r for r in rates)  # images/s of the five runs back to back

    def stacked():
        base = digits(0)
        return train_erasenet(lambda: StackedModels([model("resnet20", device, s, in_chans=1) for s in range(K)]),
                              StackedLoader([base] + [with_seed(base, s) for s in range(1, K)]), accel, device,
                              members=K)

    # Alternated and the best of three kept, so that other load on a shared machine hits both sides alike.
    pairs = [(one_after_another(), stacked()) for _ in range(repeats)]
    seq, together = max(p[0] for p in pairs), max(p[1] for p in pairs)
    # The most any fusion of the five could reach here: one model taking all five batches at once.
    ceiling = train_erasenet(lambda: model("resnet20", device, 0, in_chans=1), digits(0, 64 * K), accel, device)
    return {"sequential_images_per_s": seq, "concurrent_images_per_s": together, "concurrent_ratio": together / seq,
            "pairs": pairs,
            "one_model_batch_320_images_per_s": ceiling, "ceiling_ratio": ceiling / seq}


def bench_resnet50(device: torch.device, steps: int) -> dict:
    from erasenet.models import list_models

    if "resnet50" in list_models():
        net = create_model("resnet50", num_classes=1000, in_chans=3)
    else:
        import torchvision

        net = torchvision.models.resnet50()
    net = net.to(device).to(memory_format=torch.channels_last)
    accel = Accel(device, resolve_amp("auto", device), channels_last=True)
    opt = build_optimizer(net, SCHEDULE)
    x = torch.randn(256, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (256,), device=device)
    torch.cuda.reset_peak_memory_stats(device)

    def step():
        with accel.autocast():
            loss = F.cross_entropy(net(accel.inputs(x)), y)
        opt.zero_grad(set_to_none=True)
        accel.backward_and_step(loss, opt)

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return {"images_per_s": 256 * steps / (time.perf_counter() - start),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def print_row(r: dict) -> None:
    print(f"| {r['model']} | {r['a_pil_fp32_eager']:.0f} | {r['b_erasenet']:.0f} | {r[f'c_{K}_concurrent']:.0f} | "
          f"{r['b_over_a']:.2f} | {r['c_over_5b']:.2f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small sizes: ResNet-20 only, few steps (CI, CPU)")
    p.add_argument("--json", type=Path, help="write every measured figure to this file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL baseline")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    if args.quick:
        names, n, batch = ["resnet20"], (4096 if gpu else 256), (128 if gpu else 64)
    else:
        names, n, batch = ["resnet20", "resnet56", "resnet110"], (25600 if gpu else 1024), 128
    machine = torch.cuda.get_device_name(device) if gpu else f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    out = {"machine": machine, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "quick": args.quick, "workers": args.workers, "batch": batch, "images_per_epoch": n,
           "amp": str(resolve_amp("auto", device))}
    print(f"# erasenet bench on {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"amp {out['amp']}", flush=True)
    start = time.perf_counter()
    out["loader"] = bench_loaders(device, 4096 if args.quick else 10240, 128, args.workers)
    print(f"\nloader, CIFAR-shaped, batch 128: PIL Dataset+DataLoader ({args.workers} workers) "
          f"{out['loader']['pil_images_per_s']:.0f} img/s, TensorLoader {out['loader']['tensor_images_per_s']:.0f}"
          f" img/s, ratio {out['loader']['loader_ratio']:.1f}x", flush=True)
    print(f"\ntraining images/s, CIFAR-shaped, batch {batch}\n\n| model | (a) PIL, fp32, eager | (b) erasenet | "
          f"(c) {K} seeds together | b/a | c/(5 sequential b) |\n|---|---|---|---|---|---|", flush=True)
    out["cifar"] = bench_cifar(names, device, n, batch, args.workers)
    out["quickstart"] = bench_quickstart(device)
    q = out["quickstart"]
    print(f"\nquickstart model (ResNet-20, 8x8 digits, batch 64): {K} sequential runs "
          f"{q['sequential_images_per_s']:.0f} img/s, {K} together {q['concurrent_images_per_s']:.0f} img/s, "
          f"ratio {q['concurrent_ratio']:.2f}x; one model at batch {64 * K} {q['one_model_batch_320_images_per_s']:.0f}"
          f" img/s ({q['ceiling_ratio']:.2f}x, the ceiling of any fusion)", flush=True)
    if gpu:
        out["resnet50"] = bench_resnet50(device, 10 if args.quick else 30)
        print(f"\nImageNet ResNet-50, batch 256, synthetic: {out['resnet50']['images_per_s']:.0f} img/s, peak memory "
              f"{out['resnet50']['peak_memory_gib']:.1f} GiB")
    else:
        print("\nImageNet ResNet-50 at batch 256: skipped (GPU only)")
    out["loader_ratio"] = out["loader"]["loader_ratio"]
    out["concurrent_ratio"] = q["concurrent_ratio"]
    out["seconds"] = time.perf_counter() - start
    print(f"\ntotal {out['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
