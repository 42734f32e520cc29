"""Structured configs (the schema Hydra validates against) and ``check_config``.

The schema gives types; the values come from one place each. A key that every option of its group sets
(``conf/<group>/*.yaml``) is ``MISSING`` here; a default here is one that some options leave as it is.

Everything here is import-light (no torch) so that a bad command line fails in
well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .choices import GATED_REPLACEMENTS, GRANULARITIES, LOCATIONS, METHODS, REPLACEMENTS
from .errors import UserError
from .records import drop_metadata

DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "on", "off")
IMAGE_FOLDER_DATASETS = ("imagenet", "imagenet_subset")  # read from an ImageFolder tree through a DataLoader
# The run metrics a published number can be compared with (result.json keys).
PAPER_METRICS = ("test_error", "test_error_at_best_val")
RESUME = ("auto", "never")
SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1: what NumPy and scikit-learn accept, and within torch's range
BACKENDS = ("auto", "nccl", "gloo")
AMP = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("sgd", "adam")  # of a gated run's phases (schedule.gate_phase, schedule.finetune_phase)
PHASE_DECAYS = ("constant", "cosine", "cosine_epoch")
DISTILL_FORMS = ("blended", "added")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Keys of a model config that are not its builder's arguments.
MODEL_META_KEYS = ("name",)
# A model key older runs recorded (the warm-up iterations he2016 read from the model); it lives in the schedule.
LEGACY_MODEL_KEYS = ("warmup_iters",)
# The erase keys of each method: another method's keys are no part of a run's experiment (``with_schema_defaults``
# leaves them out), so a default of one method's knob can change without moving the other methods' stored runs.
METHOD_KEYS = {"erase": ("location", "proportion"),
               "gates": ("budget", "granularity", "gate_epochs", "penalty", "penalty_factor", "penalty_warmup",
                         "threshold", "fill_budget"),
               "cull": ("cull_stages", "thin")}


@dataclass
class EraseConfig:
    location: str = MISSING  # last | first | all | a 1-based site index within each block
    proportion: float = MISSING  # fraction of blocks erased, evenly spread from the first block
    replace: str = MISSING  # identity (erase) | prelu / prelu_channel (a slope per site / channel) | poly / poly_channel
    # (AutoReP's learned quadratic per site / channel)
    fixed_sites: bool = False  # also change the ReLUs outside every block (a stem's, a pre-activation head's)
    method: str = "erase"  # erase (EraseReLU) | gates (SNL) | cull (DeepReDuce)
    budget: Optional[float] = None  # gates: ReLUs per image kept; <= 1 a fraction of the original's count
    granularity: str = "channel"  # gates: one gate per channel or per element of the activation map
    gate_epochs: Optional[int] = None  # gates: most epochs of gate learning before binarising; null: half the epochs
    penalty: float = 1e-5  # gates: initial weight lambda of the L1 penalty lambda * sum |gate|
    penalty_factor: Optional[float] = None  # gates: lambda *= this after an epoch whose count is no new low; null:
    # what lets lambda grow by four decades within half the gate-learning epochs (SNL: 1.1)
    penalty_warmup: int = 0  # gates: epochs of gate learning before lambda may rise (SNL: 5)
    threshold: float = 0.01  # gates: a gate above this counts as alive (and may survive binarisation)
    fill_budget: bool = True  # gates: binarising also keeps gates below the threshold while the budget has room (SNL:
    # false, an undershot budget left unused)
    cull_stages: list[int] = field(default_factory=list)  # cull: 1-based stages whose ReLUs are all erased
    thin: bool = False  # cull: erase every second ReLU site of the other stages


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained network (off while ``teacher`` is null)."""

    teacher: Optional[str] = None  # a finished run, a sweep (its run of this seed) or weights file; {seed}: the seed
    temperature: float = 4.0  # T: both networks' logits are divided by T
    weight: float = 0.9  # alpha: loss = alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * cross-entropy
    # (distill.form=blended); with form=added, cross-entropy + alpha * T^2 * KL
    init_from_teacher: bool = False  # the student starts from the teacher's weights (loaded before erasing)
    form: str = "blended"  # blended: the line above | added (SNL's code): cross-entropy + weight * T^2 * KL


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:ERASENET_DATA,'~/.cache/erasenet'}"
    download: bool = True
    num_classes: int = MISSING
    in_chans: int = MISSING
    image_size: int = MISSING
    val_size: int = MISSING  # images held out of the training split for model selection
    split_seed: int = MISSING  # fixes the train/val (and, for digits, test) split independently of the run seed
    crop_padding: int = 0  # random crop from zero padding of this many pixels (0: no crop)
    flip: bool = MISSING  # random horizontal flip
    mean: list[float] = MISSING  # per-channel, on the [0, 1] scale; empty: no normalisation
    std: list[float] = MISSING
    # ImageFolder datasets (imagenet, imagenet_subset) only:
    path: str = ""  # the tree holding train/<class>/ and val/<class>/
    subset: float = 1.0  # fraction of each class's training images, nested across fractions (drawn with split_seed)
    resize_size: int = 0  # evaluation: resize the short side to this, then centre-crop image_size (0: image_size)
    workers: int = 8  # DataLoader worker processes
    index: str = ""  # a data_index/ folder an earlier run wrote: reuse its exact splits instead of drawing them
    top5: bool = False  # also count top-5 errors in evaluation (on for ImageNet); ignored below 10 classes
    # fb.resnet.torch's colour augmentation of training images (ImageFolder datasets; 0 turns a part off):
    color_jitter: float = 0.0  # brightness, contrast and saturation blend factors from 1 +- this (0.4)
    lighting: float = 0.0  # std of AlexNet's PCA lighting noise (0.1)


@dataclass
class PhaseConfig:
    """The optimizer and learning-rate schedule of one phase of a gated run (``erase.method=gates``), as SNL's code
    trains each phase with its own (``schedule.gate_phase``, ``schedule.finetune_phase``). A phase without an
    optimizer (null, the default) has none of its own: the run's ``schedule.*`` drives it."""

    optimizer: Optional[str] = None  # sgd | adam | null: none of its own (the keys below are then unused)
    lr: Optional[float] = None  # required
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # never on the gates
    decay: str = "constant"  # constant | cosine: to 0 over the phase, per step | cosine_epoch: the same, stepped
    # once an epoch (torch's CosineAnnealingLR stepped per epoch, as SNL's code)
    epochs: Optional[int] = None  # finetune_phase: its epochs after binarising (the run ends there); null: up to
    # schedule.epochs. The gate phase's most epochs are erase.gate_epochs


@dataclass
class ScheduleConfig:
    epochs: int = MISSING
    batch_size: int = MISSING  # the global batch: split evenly across DDP processes, never per process
    eval_batch_size: int = MISSING  # global as well
    lr: float = MISSING
    lr_scaling: str = MISSING  # none | linear: lr and warmup_lr *= batch_size / base_batch_size (Goyal et al.)
    base_batch_size: int = MISSING  # the batch size lr was tuned for (used by lr_scaling=linear only)
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    milestones: list[int] = MISSING  # epochs at which lr *= gamma
    gamma: float = MISSING
    warmup_iters: int = 0  # iterations trained at warmup_lr before the schedule starts (he2016_warmup: 400)
    warmup_lr: float = MISSING
    warmup: str = MISSING  # constant (He et al.) | linear (from warmup_lr up to lr)
    decay: str = "step"  # step: lr *= gamma at each milestone | cosine: from lr down to 0 over the epochs after warm-up
    prelu_weight_decay: bool = True  # false: no weight decay on PReLU slopes (He et al. 2015)
    # erase.method=gates: each phase's own optimizer and schedule (SNL's code), both or neither; with their
    # optimizer null the keys above drive both phases, one optimizer throughout (erasenet's first reading)
    gate_phase: PhaseConfig = field(default_factory=PhaseConfig)
    finetune_phase: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class TrainerConfig:
    device: str = MISSING  # auto | cpu | cuda
    progress: str = MISSING  # auto: a tqdm bar on a terminal unless $CI is set | on | off
    num_threads: int = MISSING  # CPU threads for torch; 0 keeps torch's default
    deterministic: bool = MISSING  # deterministic algorithms only (torch, cuDNN, cuBLAS; slower on a GPU)
    checkpoint: bool = MISSING  # write checkpoints/ at every epoch end (needed to resume)
    checkpoint_every_min: float = MISSING  # also checkpoint within an epoch every this many minutes (0: off)
    keep_checkpoints: int = MISSING  # newest checkpoints kept; older ones are deleted
    resume: str = MISSING  # auto: continue from the newest valid checkpoint of the run directory | never
    skip_finished: bool = MISSING  # a run whose result.json matches the config is not trained again
    check_every: int = MISSING  # steps between checks for a stop signal or a due checkpoint (a collective under DDP)
    tensorboard: bool = MISSING
    distributed: bool = MISSING  # DDP across the processes torchrun or Slurm started (trainer=ddp)
    backend: str = MISSING  # auto (nccl on GPUs, gloo on CPUs) | nccl | gloo
    sync_batchnorm: bool = MISSING  # convert BatchNorm layers to SyncBatchNorm under DDP
    amp: str = MISSING  # auto (bf16 on a GPU that has it, else fp16; off on the CPU) | bf16 | fp16 | off
    eval_amp: bool = MISSING  # evaluate under trainer.amp too (false: evaluation in fp32)
    channels_last: bool = MISSING  # NHWC memory format for weights and inputs
    compile: bool = MISSING  # torch.compile the model (compiled up front, eager fallback on failure)
    compile_backend: str = MISSING
    compile_mode: str = MISSING  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs


@dataclass
class PaperConfig:
    """A published result a preset should land near; summaries print it and the difference."""

    source: str = ""  # where it is published, e.g. "EraseReLU Table 2, ResNet-110 + ER, CIFAR-10"
    test_error: Optional[float] = None  # published test error (%), mean over the paper's runs
    test_error_std: Optional[float] = None  # published std, where the paper gives one
    metric: str = "test_error"  # the run's metric it is compared with (one of PAPER_METRICS)
    proportion: Optional[float] = None  # the erase.proportion it was measured at; None: every proportion
    test_top5_error: Optional[float] = None  # published top-5 test error (%), where the paper gives one
    train_error: Optional[float] = None  # published final training error (%), where the paper gives one
    train_error_std: Optional[float] = None
    relus: Optional[int] = None  # the published ReLU count per image of the model, where the source gives one


@dataclass
class Config:
    model: Any = MISSING  # {name: <registry name>, **builder arguments}
    erase: EraseConfig = field(default_factory=EraseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = MISSING
    name: str = MISSING  # groups output directories: runs/<name>/..., multirun/<name>/...
    paper: PaperConfig = field(default_factory=PaperConfig)  # the published number a preset should land near


def with_schema_defaults(config: dict) -> dict:
    """A run's stored config with the schema's default for every ``erase``, ``dataset`` and ``schedule`` key it
    lacks, and without the keys that do not shape it: the erase keys of other methods than its own, and
    ``model.warmup_iters`` (recorded before it moved to the schedule, which holds the value that ran).

    A knob added to the schema defaults to the behaviour from before it existed, so a run recorded earlier ran
    with that default: filled in, its config still matches, and the run is neither trained again nor refused
    a resume after an upgrade.
    """
    filled = dict(config)
    if "distill" not in filled and isinstance(filled.get("model"), dict):  # a run from before distillation existed
        filled["distill"] = {}
    for section, schema in (("erase", EraseConfig), ("dataset", DatasetConfig), ("schedule", ScheduleConfig),
                            ("distill", DistillConfig)):
        if isinstance(filled.get(section), dict):
            filled[section] = {**_schema_defaults(schema), **filled[section]}
    if isinstance(filled.get("erase"), dict):
        erase = filled["erase"]
        others = {k for method, keys in METHOD_KEYS.items() if method != erase.get("method") for k in keys}
        mine = set(METHOD_KEYS.get(erase.get("method"), ()))
        filled["erase"] = {k: v for k, v in erase.items() if k not in others - mine}
    if isinstance(filled.get("model"), dict):
        filled["model"] = {k: v for k, v in filled["model"].items() if k not in LEGACY_MODEL_KEYS}
    return filled


def _schema_defaults(schema: type) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(schema)
                if f.default is not dataclasses.MISSING and f.default != MISSING
                and not (isinstance(f.default, str) and "${" in f.default)}  # an interpolation says where, not what
    defaults.update({f.name: _plain(f.default_factory()) for f in dataclasses.fields(schema)
                     if f.default_factory is not dataclasses.MISSING})
    return defaults


def _plain(value: Any) -> Any:
    """A default as a stored config holds it: a nested section (``schedule.gate_phase``) as a dict."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def run_dirname(overrides: str, limit: int = 120) -> str:
    """A run directory's name from its overrides: as written when short, else a prefix and a hash of the whole.

    File systems cap a name at 255 bytes, and a dozen overrides pass that. Metadata (``paper.*``) is left out:
    it never changes which run a directory holds.
    """
    name = drop_metadata(overrides).replace("/", "%") or "defaults"
    if len(name) <= limit:
        return name
    return f"{name[:limit - 12]}..{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``base_config`` in the defaults list) and the dirname resolver."""
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("erasenet.dirname"):
        OmegaConf.register_new_resolver("erasenet.dirname", run_dirname)


# Keys that erasenet had and removed: what to do instead. A run recorded with one still resumes and is still
# recognised as finished (only the experiment's keys are compared), but a command line may not set one.
REMOVED_KEYS = {
    "trainer.concurrent": "trainer.concurrent was removed: erasenet no longer trains the seeds of one configuration "
                          "stacked in one process, and a sweep's seeds now train one after another, as every other "
                          "job does. Drop it from the command. To train the runs of a sweep in parallel on this "
                          "machine, add hydra/launcher=parallel hydra.launcher.n_jobs=N (one process per run); on a "
                          "cluster, hydra/launcher=slurm (one job per run).",
}


def _fail(problem: str, fix: str) -> None:
    raise UserError(f"{problem} {fix}")


def _one_of(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        _fail(f"{key}={value!r} is unknown.", f"Use one of {', '.join(choices)}.")


def check_config(cfg: DictConfig) -> None:
    """Every invariant the types alone cannot express; raises ``UserError`` on the first broken one."""
    e, s, d, t = cfg.erase, cfg.schedule, cfg.dataset, cfg.trainer
    for key, message in REMOVED_KEYS.items():  # added with +key=value, which the schema lets through
        section, _, name = key.partition(".")
        if name in cfg.get(section, {}):
            raise UserError(message)
    for key, seed, what in (("seed", cfg.seed, "initialisation, data order and augmentation"),
                            ("dataset.split_seed", d.split_seed, "which training images are held out or kept")):
        if not 0 <= seed < SEED_LIMIT:
            _fail(f"{key}={seed} is not a seed.", f"{key} chooses {what}; it takes an integer from 0 to "
                  f"{SEED_LIMIT - 1} (2**32 - 1), e.g. {key}=0.")
    if not 0.0 <= e.proportion <= 1.0:
        _fail(f"erase.proportion={e.proportion} is outside [0, 1].",
              "It is the fraction of blocks whose ReLU is erased: use e.g. erase.proportion=0.5.")
    if e.location not in LOCATIONS and not (e.location.isdigit() and int(e.location) >= 1):
        _fail(f"erase.location={e.location!r} is not a site location.",
              f"Use one of {', '.join(LOCATIONS)}, or a 1-based site index within each block such as erase.location=2.")
    if e.replace not in REPLACEMENTS:
        _fail(f"erase.replace={e.replace!r} is unknown.",
              "Use " + ", ".join(f"{name} ({meaning})" for name, meaning in REPLACEMENTS.items()) + ".")
    check_method(cfg)
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
    if s.decay not in ("step", "cosine"):
        _fail(f"schedule.decay={s.decay!r} is unknown.", "Use step (milestones) or cosine.")
    if s.warmup_iters < 0 or s.warmup not in ("constant", "linear"):
        _fail(f"schedule.warmup_iters={s.warmup_iters}, schedule.warmup={s.warmup!r}.",
              "warmup_iters must be >= 0 and warmup one of constant, linear.")
    _one_of("trainer.device", t.device, DEVICES)
    _one_of("trainer.progress", t.progress, PROGRESS)
    if s.lr_scaling not in ("none", "linear") or s.base_batch_size < 1:
        _fail(f"schedule.lr_scaling={s.lr_scaling!r}, schedule.base_batch_size={s.base_batch_size}.",
              "lr_scaling must be none or linear, and base_batch_size a positive batch size.")
    _one_of("trainer.resume", t.resume, RESUME)
    _one_of("trainer.backend", t.backend, BACKENDS)
    if t.keep_checkpoints < 1 or t.check_every < 1 or t.checkpoint_every_min < 0:
        _fail(f"trainer.keep_checkpoints={t.keep_checkpoints}, trainer.check_every={t.check_every}, "
              f"trainer.checkpoint_every_min={t.checkpoint_every_min}.",
              "keep_checkpoints and check_every must be at least 1, checkpoint_every_min at least 0.")
    _one_of("trainer.amp", t.amp, AMP)
    _one_of("trainer.compile_mode", t.compile_mode, COMPILE_MODES)
    if d.val_size < 0:
        _fail(f"dataset.val_size={d.val_size} is negative.", "Use 0 (no validation split) or a positive count.")
    if len(d.mean) != len(d.std) or (d.mean and len(d.mean) != d.in_chans) or any(x <= 0 for x in d.std):
        _fail(f"dataset.mean={list(d.mean)} and dataset.std={list(d.std)} do not match in_chans={d.in_chans}.",
              "Give one positive std and one mean per channel, or leave both empty.")
    if d.crop_padding < 0:
        _fail(f"dataset.crop_padding={d.crop_padding} is negative.", "Use 0 (no crop) or a pixel count.")
    if not 0.0 < d.subset <= 1.0:
        _fail(f"dataset.subset={d.subset} is outside (0, 1].", "It is the fraction of training images kept per "
              "class: use e.g. dataset.subset=0.1 for ImageNet-10%, or 1.0 for all.")
    folder = d.name in IMAGE_FOLDER_DATASETS
    if (d.subset < 1.0 or d.index) and not folder:
        _fail(f"dataset.subset and dataset.index apply to ImageFolder datasets, not dataset={d.name}.",
              f"Use them with one of {', '.join(IMAGE_FOLDER_DATASETS)}, or leave them at 1.0 and empty.")
    if not (0.0 <= d.color_jitter <= 1.0 and d.lighting >= 0.0):
        _fail(f"dataset.color_jitter={d.color_jitter}, dataset.lighting={d.lighting}.",
              "color_jitter must lie in [0, 1] (fb.resnet.torch uses 0.4) and lighting must be >= 0 (it uses 0.1); "
              "0 turns either off.")
    if (d.color_jitter or d.lighting) and not folder:
        _fail(f"dataset.color_jitter and dataset.lighting apply to ImageFolder datasets, not dataset={d.name}.",
              f"Use them with one of {', '.join(IMAGE_FOLDER_DATASETS)}, or leave both at 0.")
    if folder and not d.path:
        _fail("dataset.path is empty.", "Point it at the ImageFolder tree (train/ and val/), e.g. dataset.path="
              "/data/imagenet.")
    if d.workers < 0 or d.resize_size < 0 or (d.resize_size and d.resize_size < d.image_size):
        _fail(f"dataset.workers={d.workers}, dataset.resize_size={d.resize_size} (image_size={d.image_size}).",
              "workers must be >= 0 and resize_size 0 or at least image_size (e.g. 256 for 224 crops).")
    check_distill(cfg.distill)
    check_paper(cfg.paper)


def check_distill(distill: DictConfig) -> None:
    """Distillation: a teacher (no placeholder but ``{seed}``) for ``init_from_teacher``, T > 0, alpha in [0, 1], a
    known form."""
    if distill.get("form", "blended") not in DISTILL_FORMS:
        _fail(f"distill.form={distill.form!r} is unknown.",
              "Use blended ((1 - weight) * cross-entropy + weight * T^2 * KL) or added (cross-entropy + weight * T^2 * "
              "KL, SNL's code with weight 1).")
    if distill.teacher is None:
        if distill.init_from_teacher:
            _fail("distill.init_from_teacher=true needs a teacher, but distill.teacher is null.",
                  "Name the trained network, e.g. distill.teacher=runs/default/defaults (a run directory) or a "
                  "weights file, or leave init_from_teacher=false.")
        return
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(distill.teacher) if name is not None]
    except ValueError:  # an unbalanced brace
        fields = ["{"]
    if not distill.teacher.strip() or any(name != "seed" for name in fields):
        _fail(f"distill.teacher={distill.teacher!r} is not a path (the only placeholder it may hold is {{seed}}).",
              "Give a finished run directory or a weights file; {seed} becomes the run's seed, e.g. "
              "'distill.teacher=\"multirun/teachers/seed={seed}\"' (quoted on the command line).")
    if not distill.temperature > 0 or not 0.0 <= distill.weight <= 1.0:
        _fail(f"distill.temperature={distill.temperature}, distill.weight={distill.weight}.",
              "The temperature must be positive (SNL and DeepReDuce use 4) and the weight of the distillation term "
              "lie in [0, 1] (0.9 is usual; 0 trains on the labels alone).")

def check_method(cfg: DictConfig) -> None:
    """``erase.method`` and the keys that belong to it (budget and gate schedule, culled stages)."""
    e = cfg.erase
    if e.method not in METHODS:
        _fail(f"erase.method={e.method!r} is unknown.",
              "Use " + ", ".join(f"{name} ({meaning})" for name, meaning in METHODS.items()) + ".")
    if e.method != "erase" and e.proportion != 0:
        _fail(f"erase.proportion={e.proportion} applies to erase.method=erase, not {e.method}.",
              f"Leave erase.proportion at 0 with erase={e.method}, or pick erase=last (or another) for EraseReLU.")
    if e.method != "gates" and e.budget is not None:
        _fail(f"erase.budget={e.budget} applies to erase.method=gates, not {e.method}.",
              "Use erase=gates erase.budget=..., or leave erase.budget at null.")
    if e.method != "cull" and (list(e.cull_stages) or e.thin):
        _fail(f"erase.cull_stages={list(e.cull_stages)} and erase.thin={e.thin} apply to erase.method=cull, not "
              f"{e.method}.", "Use erase=cull erase.cull_stages=[...], or leave them at [] and false.")
    if e.method == "gates":
        if e.budget is None or e.budget <= 0:
            _fail(f"erase.method=gates needs a positive erase.budget, got {e.budget}.",
                  "Give the ReLUs per image to keep (erase.budget=50000) or a fraction of the original's "
                  "(erase.budget=0.1).")
        if e.granularity not in GRANULARITIES:
            _fail(f"erase.granularity={e.granularity!r} is unknown.", "Use channel or element.")
        if e.replace not in GATED_REPLACEMENTS:
            _fail(f"erase.replace={e.replace} does not apply to erase.method=gates: a gate chooses between the ReLU "
                  f"and the identity (SNL) or a polynomial (AutoReP).",
                  f"Use erase.replace={' or '.join(GATED_REPLACEMENTS)}.")
        if not 1 <= (cfg.schedule.epochs // 2 if e.gate_epochs is None else e.gate_epochs) < cfg.schedule.epochs:
            _fail(f"erase.gate_epochs={e.gate_epochs} with schedule.epochs={cfg.schedule.epochs}: gate learning "
                  f"needs at least one epoch and the binarised network at least one epoch of fine-tuning.",
                  "Use 1 <= erase.gate_epochs < schedule.epochs, e.g. erase.gate_epochs=null (half of the "
                  "epochs), with schedule.epochs of 2 or more.")
        if e.penalty <= 0 or (e.penalty_factor is not None and e.penalty_factor < 1) or e.penalty_warmup < 0 or \
                not 0 <= e.threshold < 1:
            _fail(f"erase.penalty={e.penalty}, erase.penalty_factor={e.penalty_factor}, erase.penalty_warmup="
                  f"{e.penalty_warmup}, erase.threshold={e.threshold}.",
                  "Use penalty > 0, penalty_factor >= 1, penalty_warmup >= 0 and 0 <= threshold < 1 (SNL: 1e-5, "
                  "1.1, 5, 0.01).")
        if cfg.trainer.distributed:
            _fail("erase.method=gates does not run under DDP (trainer=ddp): binarising freezes the gates in the "
                  "middle of the run, which DDP's gradient buckets do not allow.",
                  "Train gated runs in one process (trainer=default); sweeps run their seeds one at a time.")
    check_phases(cfg)
    if e.method == "cull":
        stages = list(e.cull_stages)
        if any(s < 1 for s in stages) or len(set(stages)) != len(stages):
            _fail(f"erase.cull_stages={stages} must list distinct 1-based stages.", "E.g. erase.cull_stages=[1,2].")
        if not stages and not e.thin and not e.fixed_sites:
            _fail("erase.method=cull with no culled stage, no thinning and no fixed sites changes nothing.",
                  "Name stages (erase.cull_stages=[1]), set erase.thin=true, or use erase=none.")


def check_phases(cfg: DictConfig) -> None:
    """``schedule.gate_phase`` and ``schedule.finetune_phase``: both or neither, with a gated run; each a known
    optimizer and decay at a positive lr; a fine-tuning of fixed length that fits ``schedule.epochs``."""
    s, e = cfg.schedule, cfg.erase
    gate, finetune = s.get("gate_phase"), s.get("finetune_phase")
    own = [key for key, phase in (("gate_phase", gate), ("finetune_phase", finetune))
           if phase is not None and phase.optimizer is not None]
    if not own:
        return
    if e.method != "gates":
        _fail(f"schedule.{own[0]}.optimizer={s[own[0]].optimizer} applies to erase.method=gates, not {e.method}.",
              f"Leave schedule.{own[0]}.optimizer at null, or use erase=gates.")
    if len(own) == 1:
        other = "finetune_phase" if own[0] == "gate_phase" else "gate_phase"
        _fail(f"schedule.{own[0]} has an optimizer but schedule.{other}.optimizer is null.",
              "Give both phases their optimizer (as experiment=snl2022/resnet18_c100_gates does), or neither for one "
              "optimizer and schedule (schedule.*) throughout.")
    for key, phase in (("gate_phase", gate), ("finetune_phase", finetune)):
        if phase.optimizer not in OPTIMIZERS:
            _fail(f"schedule.{key}.optimizer={phase.optimizer!r} is unknown.", f"Use one of {', '.join(OPTIMIZERS)}.")
        if phase.decay not in PHASE_DECAYS:
            _fail(f"schedule.{key}.decay={phase.decay!r} is unknown.", f"Use one of {', '.join(PHASE_DECAYS)}.")
        if phase.lr is None or phase.lr <= 0 or phase.weight_decay < 0 or not 0 <= phase.momentum < 1:
            _fail(f"schedule.{key} has lr={phase.lr}, weight_decay={phase.weight_decay}, momentum={phase.momentum}.",
                  f"Give schedule.{key}.lr > 0 (SNL: 1e-3 in both phases), weight_decay >= 0 and 0 <= momentum < 1.")
    if gate.epochs is not None:
        _fail(f"schedule.gate_phase.epochs={gate.epochs}: the gate phase ends when the count fits the budget.",
              "Leave it at null and cap the phase with erase.gate_epochs (SNL: 2000).")
    if finetune.epochs is None:
        return
    if finetune.epochs < 1 or e.gate_epochs is None or s.epochs != e.gate_epochs + finetune.epochs:
        _fail(f"schedule.finetune_phase.epochs={finetune.epochs} with erase.gate_epochs={e.gate_epochs} and "
              f"schedule.epochs={s.epochs}: a run that fine-tunes a fixed number of epochs lasts at most the gate "
              "phase's cap plus those epochs, and ends once they are done.",
              "Give erase.gate_epochs a number and set schedule.epochs to its sum with schedule.finetune_phase.epochs "
              "(e.g. erase.gate_epochs=2000 schedule.finetune_phase.epochs=100 schedule.epochs=2100), or leave "
              "schedule.finetune_phase.epochs at null (fine-tune up to schedule.epochs).")


def check_paper(paper: DictConfig) -> None:
    """The published-result record (empty, or a source with an error in [0, 100], a metric, a proportion)."""
    relus = paper.get("relus")
    if relus is not None and (not paper.source or relus < 0):
        _fail(f"paper.relus={relus} needs a paper.source and a count of at least 0.",
              'Give the published ReLU count per image with where it is published, e.g. paper.source="..."')
    if paper.test_error is None and (not paper.source or relus is not None):
        return
    if not paper.source or paper.test_error is None:
        _fail(f"paper.source={paper.source!r} and paper.test_error={paper.test_error} must be given together.",
              'Give both, e.g. paper.source="EraseReLU Table 2, ResNet-110 + ER, CIFAR-10" paper.test_error=5.78.')
    if not 0.0 <= paper.test_error <= 100.0 or (paper.test_error_std is not None and paper.test_error_std < 0):
        _fail(f"paper.test_error={paper.test_error} (std {paper.test_error_std}) is not an error in percent.",
              "Give the published test error in % (0-100; accuracy a -> error 100 - a) and a non-negative std.")
    for key in ("test_top5_error", "train_error", "train_error_std"):
        value = paper.get(key)
        if value is not None and not 0.0 <= value <= 100.0:
            _fail(f"paper.{key}={value} is not an error in percent.", "Give it in % (0-100), or leave it out.")
    if paper.metric not in PAPER_METRICS:
        _fail(f"paper.metric={paper.metric!r} is not a metric of a run.", f"Use one of {', '.join(PAPER_METRICS)}.")
    if paper.proportion is not None and not 0.0 <= paper.proportion <= 1.0:
        _fail(f"paper.proportion={paper.proportion} is outside [0, 1].",
              "It is the erase.proportion the published number was measured at, e.g. paper.proportion=1.0.")
