"""Structured configs (the schema Hydra validates against) and ``check_config``.

Everything here is import-light (no torch) so that a bad command line fails in
well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from .errors import UserError

LOCATIONS = ("last", "first", "all")
REPLACEMENTS = ("identity", "prelu")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "on", "off")
AMP = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Keys of a model config that describe the model's recipe rather than its builder's arguments.
MODEL_META_KEYS = ("name", "warmup_iters")


@dataclass
class EraseConfig:
    location: str = "last"  # last | first | all | a 1-based site index within each block
    proportion: float = 0.0  # fraction of blocks erased, evenly spread from the first block
    replace: str = "identity"  # identity (erase) | prelu


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:ERASENET_DATA,'~/.cache/erasenet'}"
    download: bool = True
    num_classes: int = MISSING
    in_chans: int = MISSING
    image_size: int = MISSING
    val_size: int = 0  # images held out of the training split for model selection
    split_seed: int = 0  # fixes the train/val (and, for digits, test) split independently of the run seed
    crop_padding: int = 0  # random crop from zero padding of this many pixels (0: no crop)
    flip: bool = False  # random horizontal flip
    mean: list[float] = field(default_factory=list)  # per-channel, on the [0, 1] scale; empty: no normalisation
    std: list[float] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    epochs: int = 164
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [82, 123])  # epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_iters: int = 0  # iterations trained at warmup_lr before the schedule starts
    warmup_lr: float = 0.01
    warmup: str = "constant"  # constant (He et al.) | linear (from warmup_lr up to lr)


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    progress: str = "auto"  # auto: a tqdm bar on a terminal unless $CI is set | on | off
    num_threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    deterministic: bool = False  # cuDNN deterministic algorithms (slower)
    checkpoint: bool = True  # write a checkpoint at the end of the run
    tensorboard: bool = True
    amp: str = "auto"  # auto (bf16 on a GPU that has it, else fp16; off on the CPU) | bf16 | fp16 | off
    channels_last: bool = False  # NHWC memory format for weights and inputs
    compile: bool = False  # torch.compile the model (compiled up front, eager fallback on failure)
    compile_backend: str = "inductor"
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    concurrent: int = 1  # in a multirun, train up to this many seeds of one configuration together


@dataclass
class Config:
    model: Any = MISSING  # {name: <registry name>, warmup_iters: int, **builder arguments}
    erase: EraseConfig = field(default_factory=EraseConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    name: str = "default"  # groups output directories: runs/<name>/..., multirun/<name>/...
    paper: Optional[Any] = None  # published numbers a preset should land near


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``base_config`` in the defaults list)."""
    ConfigStore.instance().store(name="base_config", node=Config)


def _fail(problem: str, fix: str) -> None:
    raise UserError(f"{problem} {fix}")


def check_config(cfg: DictConfig) -> None:
    """Every invariant the types alone cannot express; raises ``UserError`` on the first broken one."""
    e, s, d, t = cfg.erase, cfg.schedule, cfg.dataset, cfg.trainer
    if not 0.0 <= e.proportion <= 1.0:
        _fail(f"erase.proportion={e.proportion} is outside [0, 1].",
              "It is the fraction of blocks whose ReLU is erased: use e.g. erase.proportion=0.5.")
    if e.location not in LOCATIONS and not (e.location.isdigit() and int(e.location) >= 1):
        _fail(f"erase.location={e.location!r} is not a site location.",
              f"Use one of {', '.join(LOCATIONS)}, or a 1-based site index within each block such as erase.location=2.")
    if e.replace not in REPLACEMENTS:
        _fail(f"erase.replace={e.replace!r} is unknown.", f"Use one of {', '.join(REPLACEMENTS)}.")
    if not isinstance(cfg.model, DictConfig) or "name" not in cfg.model:
        _fail("the model config has no 'name'.", "Pick a model with model=<name>, e.g. model=resnet20.")
    if s.epochs < 1 or s.batch_size < 1 or s.eval_batch_size < 1:
        _fail(f"schedule.epochs={s.epochs}, schedule.batch_size={s.batch_size} and schedule.eval_batch_size="
              f"{s.eval_batch_size} must all be at least 1.", "Set them to positive integers.")
    if s.lr <= 0 or s.weight_decay < 0 or not 0 <= s.momentum < 1 or not 0 < s.gamma <= 1:
        _fail(f"schedule has lr={s.lr}, weight_decay={s.weight_decay}, momentum={s.momentum}, gamma={s.gamma}.",
              "Use lr > 0, weight_decay >= 0, 0 <= momentum < 1 and 0 < gamma <= 1.")
    if list(s.milestones) != sorted(set(s.milestones)) or any(m < 1 for m in s.milestones):
        _fail(f"schedule.milestones={list(s.milestones)} must be strictly increasing positive epochs.",
              "Fix the list, e.g. schedule.milestones=[82,123] for 164 epochs, or schedule.milestones=[] for none.")
    if s.warmup_iters < 0 or s.warmup not in ("constant", "linear"):
        _fail(f"schedule.warmup_iters={s.warmup_iters}, schedule.warmup={s.warmup!r}.",
              "warmup_iters must be >= 0 and warmup one of constant, linear.")
    if t.device not in DEVICES:
        _fail(f"trainer.device={t.device!r} is unknown.", f"Use one of {', '.join(DEVICES)}.")
    if t.progress not in PROGRESS:
        _fail(f"trainer.progress={t.progress!r} is unknown.", f"Use one of {', '.join(PROGRESS)}.")
    if t.amp not in AMP:
        _fail(f"trainer.amp={t.amp!r} is unknown.", f"Use one of {', '.join(AMP)}.")
    if t.compile_mode not in COMPILE_MODES:
        _fail(f"trainer.compile_mode={t.compile_mode!r} is unknown.", f"Use one of {', '.join(COMPILE_MODES)}.")
    if t.concurrent < 1:
        _fail(f"trainer.concurrent={t.concurrent} is below 1.",
              "It is how many seeds of one configuration a multirun trains together: use 1 (one at a time) or more.")
    if d.val_size < 0:
        _fail(f"dataset.val_size={d.val_size} is negative.", "Use 0 (no validation split) or a positive count.")
    if len(d.mean) != len(d.std) or (d.mean and len(d.mean) != d.in_chans) or any(x <= 0 for x in d.std):
        _fail(f"dataset.mean={list(d.mean)} and dataset.std={list(d.std)} do not match in_chans={d.in_chans}.",
              "Give one positive std and one mean per channel, or leave both empty.")
    if d.crop_padding < 0:
        _fail(f"dataset.crop_padding={d.crop_padding} is negative.", "Use 0 (no crop) or a pixel count.")
