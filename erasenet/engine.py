"""The one train/eval loop: SGD, the learning-rate schedule, and error counting."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from .errors import UserError


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


def build_optimizer(model: nn.Module, schedule: DictConfig) -> torch.optim.SGD:
    """SGD with momentum (Nesterov optional) and weight decay on every parameter, as the papers train."""
    return torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                           nesterov=schedule.nesterov and schedule.momentum > 0, weight_decay=schedule.weight_decay)


def lr_factor(schedule: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``schedule.lr`` at each global step: warm-up, then steps of ``gamma`` at the milestones."""
    milestones = [m * steps_per_epoch for m in schedule.milestones]
    warmup_start = schedule.warmup_lr / schedule.lr

    def factor(step: int) -> float:
        if step < schedule.warmup_iters:
            if schedule.warmup == "linear":
                return warmup_start + (1.0 - warmup_start) * step / schedule.warmup_iters
            return warmup_start
        return schedule.gamma ** sum(step >= m for m in milestones)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: DictConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state is one step counter, so it resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, steps_per_epoch))


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, epoch: int, progress: bool = False,
                    check_every: int = 50) -> dict:
    """One pass over ``loader``; loss and error (%) summed on the device and read once at the end."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    start = time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}", leave=False, disable=not progress, unit="batch")
    for step, (x, y) in enumerate(loader):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        wrong += (logits.detach().argmax(1) != y).sum()
        count += len(y)
        bar.update()
        if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum):
            bar.close()
            raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}, "
                                f"between steps {step + 2 - check_every} and {step + 1}")
    bar.close()
    loss_mean = loss_sum.item() / max(count, 1)
    if not math.isfinite(loss_mean):
        raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}")
    seconds = time.perf_counter() - start
    return {"loss": loss_mean, "error": 100.0 * wrong.item() / max(count, 1), "images": count,
            "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Loss and error (%) over every sample of ``loader``; ``reduce`` sums the counts across ranks."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, wrong, count
    for x, y in loader:
        logits = model(x)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) != y).sum()
        sums[2] += len(y)
    return sums_to_metrics(reduce(sums) if reduce else sums)


def sums_to_metrics(sums: torch.Tensor) -> dict:
    loss_sum, wrong, count = sums.tolist()
    if count == 0:
        return {"loss": float("nan"), "error": float("nan"), "count": 0}
    return {"loss": loss_sum / count, "error": 100.0 * wrong / count, "count": int(count)}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but PyTorch sees no CUDA GPU on this machine. Run with "
                        "trainer.device=cpu (or auto), or install a CUDA build of torch on a machine with a GPU.")
    return torch.device(name)
