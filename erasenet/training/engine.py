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

from . import distributed
from .accel import Accel
from ..common.errors import UserError
from ..erase.gates import mask_names
from ..erase.polynomial import coefficient_names
from .state import EpochState, Learner


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


def prelu_slope_names(model: nn.Module) -> set[str]:
    """The parameter names of every ``nn.PReLU``'s slopes in ``model``."""
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, nn.PReLU)}


def build_optimizer(model: nn.Module, schedule: DictConfig) -> torch.optim.SGD:
    """SGD with momentum (Nesterov optional) and weight decay on every parameter, as the papers train.

    With ``schedule.prelu_weight_decay=false`` the PReLU slopes form a second group without weight decay, as He
    et al. 2015 train them; SNL gates (``erasenet.erase.gates``) are always in it.
    """
    return torch.optim.SGD(parameter_groups(model, schedule), lr=schedule.lr, momentum=schedule.momentum,
                           nesterov=schedule.nesterov and schedule.momentum > 0, weight_decay=schedule.weight_decay)


def parameter_groups(model: nn.Module, schedule: DictConfig) -> list[dict]:
    """The optimizer's parameter groups: every parameter, and a second group without weight decay for the SNL
    gates (their L1 penalty is their regulariser), the polynomials' coefficients and, with
    ``schedule.prelu_weight_decay=false``, PReLU slopes."""
    named = list(model.named_parameters())
    slopes = set() if schedule.get("prelu_weight_decay", True) else prelu_slope_names(model)
    slopes |= mask_names(model) | coefficient_names(model)
    groups = [{"params": [p for n, p in named if n not in slopes]}]
    if any(n in slopes for n, _ in named):
        groups.append({"params": [p for n, p in named if n in slopes], "weight_decay": 0.0})
    return groups


def lr_factor(schedule: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``schedule.lr`` at each global step: warm-up, then steps of ``gamma`` at the milestones
    (or, with ``decay: cosine``, a half cosine from 1 down to 0 at the last step)."""
    milestones = [m * steps_per_epoch for m in schedule.milestones]
    warmup_start = schedule.warmup_lr / schedule.lr
    cosine = schedule.get("decay", "step") == "cosine"
    cosine_steps = max(1, schedule.epochs * steps_per_epoch - schedule.warmup_iters) if cosine else 1

    def factor(step: int) -> float:
        if step < schedule.warmup_iters:
            if schedule.warmup == "linear":
                return warmup_start + (1.0 - warmup_start) * step / schedule.warmup_iters
            return warmup_start
        if cosine:
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - schedule.warmup_iters) / cosine_steps)))
        return schedule.gamma ** sum(step >= m for m in milestones)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: DictConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state is one step counter, so it resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, steps_per_epoch))


Reduce = Callable[[torch.Tensor], torch.Tensor]
FINITE_CHECK_EVERY = 50  # steps between checks that the loss is finite (a read back from the device)


def mean_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch."""
    return F.cross_entropy(logits, y, reduction="none").mean()


def train_one_epoch(learner: Learner, loader: Iterable, *, epoch: int, state: EpochState | None = None,
                    after_step: Callable[[EpochState], bool] | None = None,
                    penalty: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> dict | None:
    """One pass over ``loader``; loss and error (%) summed on the device and read once at the end.

    ``state`` continues a partly trained epoch (the loader must start at ``state.step``). ``after_step(state)``
    runs after every step; when it returns True the epoch stops there and None is returned. Under DDP the sums
    are totalled over the ranks, so every rank sees the same totals and stops on a non-finite loss at the same
    step. ``penalty()``, when given, is a term computed from the model's own parameters (SNL's gate penalty) added
    to the loss each step; the loss recorded is the task's alone.
    """
    model, optimizer, scheduler, accel = learner.module, learner.optimizer, learner.scheduler, learner.accel
    reduce = distributed.all_reduce_sum if torch.distributed.is_initialized() else None
    model.train()
    device = next(model.parameters()).device
    state = state or EpochState.fresh(device)
    start = time.perf_counter() - state.seconds
    bar = tqdm(total=len(loader), initial=state.step, desc=f"epoch {epoch + 1}", leave=False,
               disable=not progress, unit="batch")
    for x, y in loader:
        with accel.autocast():
            inputs = accel.inputs(x)
            logits = model(inputs)
            loss = mean_loss(logits, y) if learner.loss_fn is None else learner.loss_fn(inputs, logits, y)
        optimizer.zero_grad(set_to_none=True)
        accel.backward_and_step(loss + penalty() if penalty is not None else loss, optimizer)
        scheduler.step()
        state.loss_sum = state.loss_sum + loss.detach().float() * y.shape[0]
        state.wrong = state.wrong + (logits.detach().argmax(-1) != y).sum()
        state.count += y.shape[0]
        state.step += 1
        state.seconds = time.perf_counter() - start
        bar.update()
        if state.step % FINITE_CHECK_EVERY == 0:
            loss_sum = reduce(state.loss_sum.clone()) if reduce else state.loss_sum
            if not torch.isfinite(loss_sum).all():
                bar.close()
                raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}, "
                                    f"between steps {state.step + 1 - FINITE_CHECK_EVERY} and {state.step}")
        if after_step is not None and after_step(state):
            bar.close()
            return None
    bar.close()
    if reduce:
        loss_sum, wrong, total = reduce(state.sums())
        count = int(total.item())
    else:
        loss_sum, wrong, count = state.loss_sum.double(), state.wrong.double(), state.count
    if not torch.isfinite(loss_sum).all():
        raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1} "
                            f"(between its steps {state.step // FINITE_CHECK_EVERY * FINITE_CHECK_EVERY + 1} and "
                            f"{state.step})")
    # the whole epoch, earlier sessions included: an epoch resumed at its last step still shows its real pace
    seconds = state.seconds = time.perf_counter() - start
    return {"loss": (loss_sum / max(count, 1)).tolist(), "error": (100.0 * wrong / max(count, 1)).tolist(),
            "images": count, "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, reduce: Reduce | None = None, accel: Accel | None = None,
             top5: bool = False) -> dict:
    """Loss and error (%) over every sample of ``loader``, and top-5 error with ``top5``; ``reduce`` sums the
    counts across ranks."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4 if top5 else 3, device=device, dtype=torch.float64)  # loss sum, wrong, count[, top-5 wrong]
    accel = accel or Accel(device)
    for x, y in loader:
        with accel.autocast(train=False):
            logits = model(accel.inputs(x)).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) != y).sum()
        sums[2] += len(y)
        if top5:
            sums[3] += (logits.topk(5, 1).indices != y[:, None]).all(1).sum()
    return sums_to_metrics(reduce(sums) if reduce else sums)


def sums_to_metrics(sums: torch.Tensor) -> dict:
    """Loss sum, wrong, count[, top-5 wrong] -> mean loss, error (%)[, top-5 error (%)], count."""
    loss_sum, wrong, count, *top5_wrong = sums.tolist()
    if count == 0:
        metrics = {"loss": float("nan"), "error": float("nan"), "count": 0}
        return {**metrics, "top5_error": float("nan")} if top5_wrong else metrics
    metrics = {"loss": loss_sum / count, "error": 100.0 * wrong / count, "count": int(count)}
    return {**metrics, "top5_error": 100.0 * top5_wrong[0] / count} if top5_wrong else metrics


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but PyTorch sees no CUDA GPU on this machine. Run with "
                        "trainer.device=cpu (or auto), or install a CUDA build of torch on a machine with a GPU.")
    return torch.device(name)
