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

from .accel import Accel
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


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the last batch dimension: a scalar, or one per member of a stack of models."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(-1)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, epoch: int, progress: bool = False,
                    check_every: int = 50, accel: Accel | None = None) -> dict:
    """One pass over ``loader``; loss and error (%) summed on the device and read once at the end.

    A stack of K models (``erasenet.concurrent``) takes K x B batches and gives one loss and error per member;
    their summed loss gives each member exactly its own gradient.
    """
    model.train()
    device = next(model.parameters()).device
    accel = accel or Accel(device)
    loss_sum, wrong, count = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}", leave=False, disable=not progress, unit="batch")
    for step, (x, y) in enumerate(loader):
        with accel.autocast():
            logits = model(accel.inputs(x))
            losses = member_losses(logits, y)
        optimizer.zero_grad(set_to_none=True)
        accel.backward_and_step(losses.sum(), optimizer)
        scheduler.step()
        loss_sum = loss_sum + losses.detach().float() * y.shape[-1]
        wrong = wrong + (logits.detach().argmax(-1) != y).sum(-1)
        count += y.shape[-1]
        bar.update()
        if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum).all():
            bar.close()
            raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}, "
                                f"between steps {step + 2 - check_every} and {step + 1}")
    bar.close()
    loss_mean = (torch.as_tensor(loss_sum) / max(count, 1)).tolist()  # a float, or one per member
    if not all(map(math.isfinite, loss_mean if isinstance(loss_mean, list) else [loss_mean])):
        raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}")
    error = (100.0 * torch.as_tensor(wrong, dtype=torch.float64) / max(count, 1)).tolist()
    seconds = time.perf_counter() - start
    return {"loss": loss_mean, "error": error, "images": count,
            "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, accel: Accel | None = None) -> dict:
    """Loss and error (%) over every sample of ``loader``; ``reduce`` sums the counts across ranks."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, wrong, count
    accel = accel or Accel(device)
    for x, y in loader:
        with accel.autocast():
            logits = model(accel.inputs(x)).float()
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
