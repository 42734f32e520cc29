"""Speed knobs of the training loop: mixed precision, channels_last, torch.compile, and torch's global settings.

An :class:`Accel` is what the loop in ``engine.py`` asks for an autocast context
(training, and evaluation, which runs in fp32 unless ``trainer.eval_amp``), the
memory format of its inputs and the backward/optimizer step (with a GradScaler
for fp16). :func:`compile_model` wraps a model in ``torch.compile``, compiles it
up front on a dummy batch so the compile time is measured apart from training,
and falls back to the eager model if compilation fails; with CUDA graphs
(``compile_mode=reduce-overhead``) it captures one static training shape.
:func:`apply_torch_settings` sets what every run (and the benchmark) shares:
cuDNN autotuning, TF32, and deterministic algorithms when asked for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..common.errors import UserError

log = logging.getLogger("erasenet")


# Ampere (8.0) and newer GPUs have bf16 tensor cores; torch.cuda.is_bf16_supported() also says yes on older ones,
# where bf16 is emulated and slower than fp16.
NATIVE_BF16_CAPABILITY = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively (compute capability 8.0 or newer)."""
    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16_CAPABILITY


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.amp`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on a GPU with native bf16 (compute capability 8.0 or newer), fp16 (with loss scaling) on an
    older one, and off on the CPU, where bf16 autocast runs but is rarely faster.
    """
    cuda = device.type == "cuda"
    if setting == "off" or (setting == "auto" and not cuda):
        return None
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if setting == "bf16":
        if cuda and not native_bf16(device):
            major, minor = torch.cuda.get_device_capability(device)
            if not torch.cuda.is_bf16_supported():
                raise UserError("trainer.amp=bf16 but this GPU does not support bfloat16. Use trainer.amp=fp16 "
                                "(or auto, which picks fp16 with loss scaling here).")
            log.warning("trainer.amp=bf16 on a GPU of compute capability %d.%d, which emulates bf16 (slower than "
                        "fp16); trainer.amp=auto picks fp16 with loss scaling here.", major, minor)
        return torch.bfloat16
    if not cuda:
        raise UserError("trainer.amp=fp16 needs a CUDA GPU (fp16 with loss scaling). On the CPU use "
                        "trainer.amp=bf16 or trainer.amp=off.")
    return torch.float16


# cuBLAS needs a fixed workspace to be deterministic; it reads this variable when it first starts in a process.
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def apply_torch_settings(deterministic: bool) -> None:
    """torch's process-wide settings for training: cuDNN autotuning and TF32 matmuls, or, with ``deterministic``,
    deterministic algorithms only (an op without one raises an error rather than silently differing)."""
    if deterministic:
        os.environ.setdefault(*CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    # TF32 (fp32 range, 10-bit mantissa) on tensor cores; PyTorch already uses it for convolutions by default
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


@dataclass
class Accel:
    """How the loop runs a step: autocast dtype, input memory format, loss scaling.

    Evaluation runs in fp32 unless ``eval_amp``, so that the error rates compared with published numbers never
    come from reduced-precision logits.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    eval_amp: bool = False
    scaler: Any = field(init=False)

    def __post_init__(self) -> None:
        # fp16 needs loss scaling against gradient underflow; a disabled scaler is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self, train: bool = True) -> contextlib.AbstractContextManager:
        """Autocast for a training step, or for evaluation (``train=False``: fp32 unless ``eval_amp``)."""
        if self.amp_dtype is None or not (train or self.eval_amp):
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
        evaluation = amp if self.eval_amp else "fp32"
        return f"amp {amp}, evaluation {evaluation}, channels_last {'on' if self.channels_last else 'off'}"


def build_accel(trainer: Any, device: torch.device) -> Accel:
    """The :class:`Accel` a ``trainer`` config asks for on ``device``."""
    return Accel(device, resolve_amp(trainer.amp, device), bool(trainer.channels_last), bool(trainer.eval_amp))


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
    mode: str = "default"  # the compile mode in effect (a CUDA-graph mode falls back off CUDA)


# torch.compile modes that capture CUDA graphs, and the same mode without them
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode_for(mode: str, model: nn.Module, device: torch.device) -> tuple[str, str | None]:
    """The compile mode to use for ``model`` on ``device``, and why it is not ``mode`` when it is not.

    CUDA graphs need a CUDA device, and they are not used under DDP (untried there: its gradient all-reduce runs
    between the graphs). The answer depends on the config alone, so every rank of a run makes the same choice.
    """
    if mode not in CUDA_GRAPH_MODES:
        return mode, None
    without = CUDA_GRAPH_MODES[mode]
    if device.type != "cuda":
        return without, (f"compile_mode={mode} captures CUDA graphs, which need a CUDA device; compiling with "
                         f"mode {without} on the {device.type}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return without, f"compile_mode={mode}: CUDA graphs are not used under DDP; compiling with mode {without}"
    return mode, None


class CudaGraphTraining(nn.Module):
    """Training steps of one batch shape replay the compiled model's CUDA graphs; any other batch (an epoch's
    last, smaller one) and evaluation run the eager model, so nothing is compiled or captured twice."""

    def __init__(self, compiled: nn.Module, eager: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.compiled = compiled
        self.__dict__["eager"] = eager  # the same parameters as `compiled`; not a second submodule
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or tuple(x.shape) != self.shape:
            return self.eager(x)
        # a new training step: the graphs may reuse the previous step's output memory (read by then)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def cudagraph_skips() -> int:
    """How often inductor has declined to capture a CUDA graph in this process (it logs why under
    TORCH_LOGS=perf_hints); 0 where this torch does not count it."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    except (ImportError, KeyError, TypeError, ValueError):
        return 0


def compile_model(model: nn.Module, accel: Accel, samples: list[tuple[tuple[int, ...], bool]], *,
                  backend: str | Callable = "inductor", mode: str = "default") -> Compiled:
    """``torch.compile`` ``model`` and compile it now, on zero batches of each ``(shape, train)`` in ``samples``.

    The warm-up runs a training step's forward and backward (or an evaluation
    forward) and then restores the model's parameters, buffers and gradients,
    so compiling changes no result. Any failure leaves the eager model. With a
    CUDA-graph mode only the first training shape is compiled and captured
    (:class:`CudaGraphTraining`).
    """
    start = time.perf_counter()
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    graphs = mode in CUDA_GRAPH_MODES
    if graphs:
        samples = [next((shape, train) for shape, train in samples if train)]
    skips = cudagraph_skips()
    try:
        compiled = torch.compile(model, backend=backend, mode=None if mode == "default" else mode, dynamic=False)
        for shape, train in samples:
            x = accel.inputs(torch.zeros(shape, device=accel.device))
            model.train(train)
            torch.compiler.cudagraph_mark_step_begin()
            with accel.autocast(train), torch.set_grad_enabled(train):
                out = compiled(x)
            if train:
                out.float().sum().backward()
    except Exception as err:  # noqa: BLE001 - any compiler failure means: train eagerly
        message = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        log.warning("torch.compile failed (%s); training the eager model instead.", message)
        return Compiled(_restore(model, state, was_training), False, time.perf_counter() - start, message, mode)
    _restore(model, state, was_training)
    if graphs and cudagraph_skips() > skips:
        log.warning("torch.compile (mode %s) did not capture CUDA graphs for all of the model, which then runs "
                    "without them in part; TORCH_LOGS=perf_hints shows why.", mode)
    module = CudaGraphTraining(compiled, model, samples[0][0]) if graphs else compiled
    return Compiled(module, True, time.perf_counter() - start, mode=mode)


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
    mode, why = compile_mode_for(trainer.compile_mode, model, accel.device)
    if why:
        log.info("%s.", why)
    result = compile_model(model, accel, samples, backend=trainer.compile_backend, mode=mode)
    if result.compiled:
        log.info("torch.compile (%s, mode %s): %.1fs, not counted in the epochs' times", trainer.compile_backend,
                 mode, result.seconds)
    return result


def sample_shapes(d: Any, s: Any) -> list[tuple[tuple[int, ...], bool]]:
    """The batch shapes a run (``dataset``, one process's ``schedule``) trains and evaluates on, for compiling
    ahead of the first epoch."""
    image = (d.in_chans, d.image_size, d.image_size)
    return [((s.batch_size, *image), True), ((s.eval_batch_size, *image), False)]


def accel_record(accel: Accel, net: Compiled) -> dict:
    """Which speed knobs were in effect, for ``result.json``."""
    return {"amp": accel.describe().split(",")[0].removeprefix("amp "), "eval_amp": accel.eval_amp,
            "channels_last": accel.channels_last,
            "compiled": net.compiled, "compile_mode": net.mode if net.compiled else None,
            "compile_seconds": round(net.seconds, 3), "compile_error": net.error}
