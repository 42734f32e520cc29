"""Knowledge distillation from a trained network (Hinton et al. 2015), as SNL and DeepReDuce train their students.

``distill.teacher`` names a finished run directory (its final weights: the newest checkpoint, at the last epoch),
a sweep directory (its finished run of the student's seed; where it holds several, its original network's:
``erase.proportion=0`` and no teacher of its own) or a weights file (an erasenet checkpoint, or a state dict);
``{seed}`` in it becomes the student's seed, so each seed of a sweep learns from the teacher of the same seed.
The teacher is any network trained on the student's data split (the same classes and inputs): logit distillation
needs no more, so its network (``model.*``, e.g. the full ResNet-18 teaching DeepReDuce's narrowed one) and its
erase settings may differ. A weights file without a recorded config is taken to hold the student's network,
unerased.

The teacher is frozen: evaluation mode (batch-norm running statistics, no dropout), ``requires_grad`` off, called
under ``torch.no_grad``, and never given to the optimizer. Each DDP process holds its own copy on the training
device.

The loss of a batch (``distill.form``) is *blended*, ``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) *
cross-entropy``, or *added*, ``cross-entropy + alpha * T^2 * KL`` (SNL's code, with alpha 1: its ``train_kd`` and
``mask_train_kd_unstructured`` add the two terms), the probabilities taken at temperature T and the KL averaged over
the batch (``F.kl_div(..., reduction="batchmean")``, SNL's and DeepReDuce's code).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .checkpoint import list_checkpoints, load_checkpoint
from .engine import mean_loss
from ..common.errors import UserError
from ..common.records import method_of
from .resume import with_defaults
from .state import LossFn, Teacher

# Dataset keys that fix which images a network trained, validated and was tested on, and how they were
# normalised: a teacher trained on another split has seen the student's validation or test images.
SPLIT_KEYS = ("name", "num_classes", "in_chans", "image_size", "val_size", "split_seed", "subset", "mean", "std")


def teacher_path(cfg: DictConfig) -> Path | None:
    """``distill.teacher`` for this run's seed, or None when distillation is off."""
    teacher = cfg.distill.teacher
    return None if teacher is None else Path(teacher.replace("{seed}", str(cfg.seed))).expanduser()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values, in name order (independent of the file)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TeacherSource:
    """Where a teacher's weights are and the config that builds its network."""

    weights_file: Path
    state: dict
    cfg: DictConfig


def find_teacher(cfg: DictConfig, out_dir: Path | None = None) -> TeacherSource | None:
    """The teacher of the run ``cfg`` (its weights and config), or None without ``distill.teacher``.

    Raises ``UserError`` when the teacher is missing, unfinished, unreadable, or of another data split.
    """
    path = teacher_path(cfg)
    if path is None:
        return None
    if out_dir is not None and path.resolve() == Path(out_dir).resolve():
        raise UserError(f"distill.teacher={cfg.distill.teacher} is this run's own directory. Name the run of the "
                        "trained (e.g. unerased) network that should teach this one.")
    if path.is_dir():
        if not _is_run_dir(path):
            path = _run_of_seed(path, cfg, out_dir)
        weights_file, state, config = _finished_run(path)
    elif path.is_file():
        weights_file, (state, config) = path, _weights_file(path)
    else:
        raise UserError(f"the teacher {path} (distill.teacher={cfg.distill.teacher}) does not exist. Train the "
                        "teacher first (it must finish), or give the path of its run directory or weights file"
                        + (" ({seed} is replaced by this run's seed)." if "{seed}" in cfg.distill.teacher else "."))
    return TeacherSource(weights_file=weights_file, state=state, cfg=_teacher_config(cfg, config, path))


def frozen_teacher(model: nn.Module, source: TeacherSource, device: torch.device) -> Teacher:
    """``model`` (built from ``source.cfg``) with the teacher's weights, in evaluation mode, without gradients."""
    try:
        model.load_state_dict(source.state)
    except RuntimeError as err:
        raise UserError(f"the teacher's weights in {source.weights_file} do not fit the network "
                        f"{source.cfg.model.name} they were taken for: {_first_lines(err)}. Give a teacher of this "
                        "network (model.*).") from None
    model.to(device).eval().requires_grad_(False)
    return Teacher(model=model, path=source.weights_file.resolve(), sha256=weights_digest(model.state_dict()))


def _first_lines(err: Exception, n: int = 3) -> str:
    return " ".join(str(err).strip().splitlines()[:n])[:600]


def _is_run_dir(path: Path) -> bool:
    """Whether ``path`` is one run's directory (finished or not), rather than a sweep's."""
    return any((path / name).exists() for name in ("result.json", "checkpoints", ".hydra", "metrics.jsonl"))


def _is_original(result: dict) -> bool:
    """Whether a run trained the original network: EraseReLU's rule at proportion 0, without a teacher."""
    config = result.get("config") or {}
    return (method_of(result) == "erase" and (result.get("erase") or {}).get("proportion") == 0
            and not (config.get("distill") or {}).get("teacher"))


def _run_of_seed(sweep: Path, cfg: DictConfig, out_dir: Path | None) -> Path:
    """The finished run of ``cfg.seed`` below the sweep directory ``sweep`` (the original network's, where there
    are several)."""
    found = []
    for path in sorted(sweep.rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("seed") == cfg.seed and (out_dir is None or path.parent.resolve() != Path(out_dir).resolve()):
            found.append((path.parent, result))
    if len(found) > 1:
        found = [(d, r) for d, r in found if _is_original(r)] or found
    if not found:
        raise UserError(f"the teacher sweep {sweep} (distill.teacher={cfg.distill.teacher}) holds no finished run of "
                        f"seed {cfg.seed}. Train the teacher of this seed there first, or name its run directory.")
    if len(found) > 1:
        listed = "; ".join(str(d) for d, _ in found[:4]) + ("; ..." if len(found) > 4 else "")
        raise UserError(f"the teacher sweep {sweep} holds {len(found)} finished runs of seed {cfg.seed} that could "
                        f"teach ({listed}). Name the teacher's run directory (with {{seed}} for the seed), or keep "
                        "the teachers in a sweep of their own (name=...).")
    return found[0][0]


def _finished_run(run_dir: Path) -> tuple[Path, dict, dict]:
    """(checkpoint file, weights, config) of the last epoch of the finished run in ``run_dir``."""
    result_file = run_dir / "result.json"
    try:
        result = json.loads(result_file.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"the teacher run {run_dir} has not finished (no readable result.json). Let it finish "
                        "(run its command again to resume it), or name another teacher.") from None
    if result.get("status") != "ok":
        raise UserError(f"the teacher run {run_dir} did not finish training (status {result.get('status')!r}: "
                        f"{result.get('failure')}). Fix and rerun it, or name another teacher.")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise UserError(f"the teacher run {run_dir} kept no checkpoint, so its weights are gone (it ran with "
                        "trainer.checkpoint=false?). Train the teacher again with trainer.checkpoint=true, or give "
                        "its weights file.")
    newest = checkpoints[-1]
    try:
        ckpt = load_checkpoint(newest)
    except Exception as err:  # a damaged file fails in many ways; each is the same refusal
        raise UserError(f"the teacher's checkpoint {newest} does not load ({type(err).__name__}). Train the "
                        "teacher again, or give its weights file.") from None
    if ckpt.get("epoch") != result.get("epochs") or ckpt.get("step"):
        raise UserError(f"the newest checkpoint of the teacher run {run_dir} ({newest.name}) is not its final one "
                        f"(epoch {result.get('epochs')}). Its directory was changed after it finished: train the "
                        "teacher again, or give its weights file.")
    return newest, ckpt["model"], ckpt["config"]


def _weights_file(path: Path) -> tuple[dict, dict | None]:
    """(weights, recorded config or None) of a weights file: an erasenet checkpoint or a state dict."""
    try:
        loaded = load_checkpoint(path)
    except Exception as err:
        raise UserError(f"the teacher's weights file {path} does not load as a PyTorch state dict "
                        f"({type(err).__name__}: {_first_lines(err, 1)}). Give an erasenet checkpoint, a "
                        "state_dict saved with torch.save, or a finished run directory.") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        return loaded["model"], loaded.get("config")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise UserError(f"the teacher's weights file {path} holds no state dict (a mapping of names to tensors). "
                        "Save one with torch.save(model.state_dict(), path).")
    # weights saved from a DDP or DataParallel wrapper carry a 'module.' prefix
    return {k.removeprefix("module."): v for k, v in loaded.items()}, None


def _teacher_config(cfg: DictConfig, recorded: dict | None, path: Path) -> DictConfig:
    """The config to build the teacher from: its recorded one, checked against the student's data split; without
    one, the student's network unerased."""
    student = OmegaConf.to_container(cfg, resolve=True)
    if recorded is None:
        erase = dict(student["erase"], proportion=0.0)
        erase.update({k: v for k, v in (("method", "erase"), ("budget", None)) if k in erase})
        return OmegaConf.create({**student, "erase": erase})
    mine, theirs = with_defaults(student), with_defaults(recorded)
    differences = [f"dataset.{k}: {theirs['dataset'].get(k)!r} (teacher) vs {mine['dataset'].get(k)!r}"
                   for k in SPLIT_KEYS if mine["dataset"].get(k) != theirs["dataset"].get(k)]
    if differences:
        raise UserError(f"the teacher {path} was trained on another data split than this run: "
                        f"{'; '.join(differences)}. Distil from a network trained on the same split "
                        "(e.g. the same sweep's erase.proportion=0 run with the same seed).")
    return OmegaConf.create({**theirs, "dataset": mine["dataset"]})


def load_init(model: nn.Module, teacher: Teacher) -> None:
    """``distill.init_from_teacher``: copy the teacher's weights into the student before it is erased."""
    try:
        model.load_state_dict(copy.deepcopy(teacher.model.state_dict()))
    except RuntimeError as err:
        raise UserError(f"distill.init_from_teacher: the teacher {teacher.path} has parameters the unerased "
                        f"student lacks or the other way round ({_first_lines(err)}). Start from a teacher "
                        "without PReLUs or gates (e.g. an unerased run), or set distill.init_from_teacher=false.") \
            from None


def distill_losses(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                   weight: float, form: str = "blended") -> torch.Tensor:
    """Mean distillation loss of a batch: ``form`` blended (the label term weighted ``1 - weight``) or added (the
    label term whole, as SNL's code)."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean(-1)
    labels_weight = 1.0 if form == "added" else 1.0 - weight
    return weight * t * t * kl + labels_weight * mean_loss(student, labels)


def distill_loss_fn(teacher: Teacher, distill: DictConfig) -> LossFn:
    """The training loss of a run distilled from ``teacher``."""

    def loss(inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.model(inputs)
        return distill_losses(logits, target, labels, distill.temperature, distill.weight,
                              distill.get("form", "blended"))

    return loss
