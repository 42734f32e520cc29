"""The one train/eval loop: SGD, the learning-rate schedule, and error counting."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from .accel import Accel
from ..common.errors import UserError
from ..erase.gates import mask_names


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


def prelu_slope_names(model: nn.Module) -> set[str]:
    """The parameter names of every ``nn.PReLU``'s slopes in ``model``."""
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, nn.PReLU)}


def build_optimizer(model: nn.Module, schedule: DictConfig,
                    parameters: Iterable[tuple[str, nn.Parameter]] | None = None) -> torch.optim.SGD:
    """SGD with momentum (Nesterov optional) and weight decay on every parameter, as the papers train.

    With ``schedule.prelu_weight_decay=false`` the PReLU slopes form a second group without weight decay, as He
    et al. 2015 train them; SNL gates (``erasenet.erase.gates``) are always in it. ``parameters``: what the optimizer
    steps, named as ``model`` names its own (a stack's stacked tensors); by default ``model.named_parameters()``.
    """
    named = list(model.named_parameters() if parameters is None else parameters)
    slopes = set() if schedule.get("prelu_weight_decay", True) else prelu_slope_names(model)
    slopes |= mask_names(model)  # SNL gates: their L1 penalty is their regulariser
    groups = [{"params": [p for n, p in named if n not in slopes]}]
    if any(n in slopes for n, _ in named):
        groups.append({"params": [p for n, p in named if n in slopes], "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum,
                           nesterov=schedule.nesterov and schedule.momentum > 0, weight_decay=schedule.weight_decay)


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


@dataclass
class EpochState:
    """Where a training epoch stands: steps taken and the running sums (on the device), so it can resume.

    The sums are scalars, or one per member when a stack of K models trains (``erasenet.training.concurrent``).
    """

    step: int
    loss_sum: torch.Tensor
    wrong: torch.Tensor
    count: int  # samples seen (per member)
    seconds: float = 0.0  # training time of the epoch so far, over all sessions

    @classmethod
    def fresh(cls, device: torch.device) -> "EpochState":
        return cls(0, torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0)

    def sums(self) -> torch.Tensor:
        """Loss sum, wrong, count as one float64 tensor (what ranks sum up)."""
        count = torch.full_like(self.loss_sum, float(self.count), dtype=torch.float64)
        return torch.stack([self.loss_sum.double(), self.wrong.double(), count])

    def to(self, device: torch.device) -> "EpochState":
        return EpochState(self.step, self.loss_sum.to(device), self.wrong.to(device), self.count, self.seconds)

    def member(self, k: int) -> "EpochState":
        """Member ``k``'s part of a stack's epoch (the epoch itself when the sums are scalars)."""
        if self.loss_sum.dim() == 0:
            return self
        return EpochState(self.step, self.loss_sum[k], self.wrong[k], self.count, self.seconds)

    @classmethod
    def stacked(cls, members: list["EpochState"]) -> "EpochState":
        """The epoch of a stack from its members' (all at one step); a single member's stays scalar."""
        if len(members) == 1:
            return members[0]
        first = members[0]
        return cls(first.step, torch.stack([m.loss_sum for m in members]), torch.stack([m.wrong for m in members]),
                   first.count, first.seconds)


Reduce = Callable[[torch.Tensor], torch.Tensor]
# (inputs, logits, labels) -> the loss of each member (a scalar for one model): a training loss other than the
# cross-entropy, e.g. distillation's (erasenet.training.distill)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the last batch dimension: a scalar, or one per member of a stack of models."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(-1)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, epoch: int, progress: bool = False,
                    finite_check_every: int = 50, state: EpochState | None = None,
                    after_step: Callable[[EpochState], bool] | None = None,
                    reduce: Reduce | None = None, accel: Accel | None = None,
                    loss_fn: LossFn | None = None,
                    penalty: Callable[[], torch.Tensor] | None = None) -> dict | None:
    """One pass over ``loader``; loss and error (%) summed on the device and read once at the end.

    ``state`` continues a partly trained epoch (the loader must start at ``state.step``). ``after_step(state)``
    runs after every step; when it returns True the epoch stops there and None is returned. ``reduce`` sums
    tensors across ranks, so every rank sees the same totals and stops on a non-finite loss at the same step.
    A stack of K models takes K x B batches and gives one loss and error per member; their summed loss gives
    each member exactly its own gradient. ``loss_fn(inputs, logits, labels)`` gives the losses instead of the
    cross-entropy (distillation: ``erasenet.training.distill``). ``penalty()``, when given, is a term computed from
    the model's own parameters (SNL's gate penalty) added to the loss each step; the loss recorded is the task's
    alone.
    """
    model.train()
    device = next(model.parameters()).device
    accel = accel or Accel(device)
    state = state or EpochState.fresh(device)
    start = time.perf_counter() - state.seconds
    bar = tqdm(total=len(loader), initial=state.step, desc=f"epoch {epoch + 1}", leave=False,
               disable=not progress, unit="batch")
    for x, y in loader:
        with accel.autocast():
            inputs = accel.inputs(x)
            logits = model(inputs)
            losses = member_losses(logits, y) if loss_fn is None else loss_fn(inputs, logits, y)
        optimizer.zero_grad(set_to_none=True)
        accel.backward_and_step(losses.sum() + penalty() if penalty is not None else losses.sum(), optimizer)
        scheduler.step()
        state.loss_sum = state.loss_sum + losses.detach().float() * y.shape[-1]
        state.wrong = state.wrong + (logits.detach().argmax(-1) != y).sum(-1)
        state.count += y.shape[-1]
        state.step += 1
        state.seconds = time.perf_counter() - start
        bar.update()
        if state.step % finite_check_every == 0:
            loss_sum = reduce(state.loss_sum.clone()) if reduce else state.loss_sum
            if not torch.isfinite(loss_sum).all():
                bar.close()
                raise NonFiniteLoss(f"the training loss became non-finite in epoch {epoch + 1}, "
                                    f"between steps {state.step + 1 - finite_check_every} and {state.step}")
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
                            f"(between its steps {state.step // finite_check_every * finite_check_every + 1} and "
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
