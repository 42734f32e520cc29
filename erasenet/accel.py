"""Speed knobs of the training loop: mixed precision, channels_last and torch.compile.

An :class:`Accel` is what the loop in ``engine.py`` asks for an autocast context,
the memory format of its inputs and the backward/optimizer step (with a
GradScaler for fp16). :func:`compile_model` wraps a model in ``torch.compile``,
compiles it up front on a dummy batch so the compile time is measured apart
from training, and falls back to the eager model if compilation fails.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import UserError

log = logging.getLogger("erasenet")


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.amp`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on a CUDA GPU that supports it, fp16 on an older one, and
    off on the CPU, where bf16 autocast runs but is rarely faster.
    """
    cuda = device.type == "cuda"
    if setting == "off" or (setting == "auto" and not cuda):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise UserError("trainer.amp=bf16 but this GPU does not support bfloat16. Use trainer.amp=fp16 "
                            "(or auto, which picks fp16 with loss scaling here).")
        return torch.bfloat16
    if not cuda:
        raise UserError("trainer.amp=fp16 needs a CUDA GPU (fp16 with loss scaling). On the CPU use "
                        "trainer.amp=bf16 or trainer.amp=off.")
    return torch.float16


@dataclass
class Accel:
    """How the loop runs a step: autocast dtype, input memory format, loss scaling."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: Any = field(init=False)

    def __post_init__(self) -> None:
        # fp16 needs loss scaling against gradient underflow; a disabled scaler is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format the model's weights use."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def describe(self) -> str:
        amp = "off" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")
        return f"amp {amp}, channels_last {'on' if self.channels_last else 'off'}"


def build_accel(trainer: Any, device: torch.device) -> Accel:
    """The :class:`Accel` a ``trainer`` config asks for on ``device``."""
    return Accel(device, resolve_amp(trainer.amp, device), bool(trainer.channels_last))


def to_channels_last(model: nn.Module, accel: Accel) -> nn.Module:
    """Convert the model's 4-d weights to channels_last when ``accel`` asks for it (in place)."""
    return model.to(memory_format=torch.channels_last) if accel.channels_last else model


@dataclass
class Compiled:
    """The module to train with (compiled or, after a failure, the eager one) and what compiling cost."""

    module: nn.Module
    compiled: bool
    seconds: float = 0.0
    error: str | None = None


def compile_model(model: nn.Module, accel: Accel, samples: list[tuple[tuple[int, ...], bool]], *,
                  backend: str | Callable = "inductor", mode: str = "default") -> Compiled:
    """``torch.compile`` ``model`` and compile it now, on zero batches of each ``(shape, train)`` in ``samples``.

    The warm-up runs a training step's forward and backward (or an evaluation
    forward) and then restores the model's parameters, buffers and gradients,
    so compiling changes no result. Any failure leaves the eager model.
    """
    start = time.perf_counter()
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    try:
        compiled = torch.compile(model, backend=backend, mode=None if mode == "default" else mode, dynamic=False)
        for shape, train in samples:
            x = accel.inputs(torch.zeros(shape, device=accel.device))
            model.train(train)
            with accel.autocast(), torch.set_grad_enabled(train):
                out = compiled(x)
            if train:
                out.float().sum().backward()
    except Exception as err:  # noqa: BLE001 - any compiler failure means: train eagerly
        message = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        log.warning("torch.compile failed (%s); training the eager model instead.", message)
        return Compiled(_restore(model, state, was_training), False, time.perf_counter() - start, message)
    _restore(model, state, was_training)
    return Compiled(compiled, True, time.perf_counter() - start)


def _restore(model: nn.Module, state: dict, training: bool) -> nn.Module:
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    model.train(training)
    return model


def prepare_model(model: nn.Module, trainer: Any, accel: Accel,
                  samples: list[tuple[tuple[int, ...], bool]]) -> Compiled:
    """Apply ``trainer.channels_last`` and ``trainer.compile`` to ``model`` (already on its device)."""
    to_channels_last(model, accel)
    if not trainer.compile:
        return Compiled(model, False)
    result = compile_model(model, accel, samples, backend=trainer.compile_backend, mode=trainer.compile_mode)
    if result.compiled:
        log.info("torch.compile (%s, mode %s): %.1fs, not counted in the epochs' times", trainer.compile_backend,
                 trainer.compile_mode, result.seconds)
    return result


def sample_shapes(d: Any, s: Any) -> list[tuple[tuple[int, ...], bool]]:
    """The batch shapes a run (``dataset``, one process's ``schedule``) trains and evaluates on, for compiling
    ahead of the first epoch."""
    image = (d.in_chans, d.image_size, d.image_size)
    return [((s.batch_size, *image), True), ((s.eval_batch_size, *image), False)]


def accel_record(accel: Accel, net: Compiled) -> dict:
    """Which speed knobs were in effect, for ``result.json``."""
    return {"amp": accel.describe().split(",")[0].removeprefix("amp "), "channels_last": accel.channels_last,
            "compiled": net.compiled, "compile_seconds": round(net.seconds, 3), "compile_error": net.error}
