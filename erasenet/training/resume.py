"""What a run's checkpoint holds, whether a stored run is this one, and restoring a run from its checkpoint."""

from __future__ import annotations

import inspect
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed, phases
from .checkpoint import load_checkpoint, load_latest
from ..common.config import with_schema_defaults
from ..common.errors import UserError
from ..models import builder_options
from .state import Checkpoint, EpochState, Run, Teacher, TrainState

log = logging.getLogger("erasenet")

# The parts of a config that define the experiment: a checkpoint or result.json from a config that differs in
# any of them belongs to another run. Everything else (trainer, paths, name) only says how it is run.
EXPERIMENT_KEYS = ("model", "erase", "distill", "dataset", "schedule", "seed")
NOT_EXPERIMENT = ("dataset.root", "dataset.download")


def experiment_config(config: dict) -> dict:
    """The flattened ``{dotted.key: value}`` of the config keys that define the experiment."""
    flat = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix not in NOT_EXPERIMENT:
            flat[prefix] = node

    for key in EXPERIMENT_KEYS:
        walk(key, config.get(key))
    return flat


def with_defaults(config: dict) -> dict:
    """``config`` with the schema's defaults and its model builder's default arguments where keys are absent
    (a config stored before those keys existed ran with them)."""
    filled = with_schema_defaults(config)
    model = filled.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        try:
            options = builder_options(model["name"])
        except KeyError:  # not a registered model: nothing to fill
            return filled
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
                    if v is not inspect.Parameter.empty and k not in ("num_classes", "in_chans")}
        filled["model"] = {**defaults, **model}
    return filled


def config_differences(a: dict, b: dict) -> list[str]:
    """``key: a -> b`` for every experiment key on which the two configs differ (absent keys count as their
    defaults)."""
    fa, fb = experiment_config(with_defaults(a)), experiment_config(with_defaults(b))
    return [f"{k}: {fa.get(k, '(absent)')!r} -> {fb.get(k, '(absent)')!r}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k, "(absent)") != fb.get(k, "(absent)")]


def finished_result(out_dir: Path, config: dict) -> dict | None:
    """The stored ``result.json`` of ``out_dir`` if the run it records had this config; else None."""
    path = Path(out_dir) / "result.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    differences = config_differences(stored.get("config", {}), config)
    if differences:
        log.warning("%s is from another configuration (%s): training again", path, "; ".join(differences))
        return None
    return stored


def rng_state() -> dict:
    """Every random number generator a run draws from (Python, NumPy, torch CPU and CUDA), as tensors and ints."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"python": {"version": version, "state": list(mt), "gauss": gauss},
            "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None}


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())



def latest_checkpoint(out_dir: Path, config: dict, resume: str, is_main: bool) -> Checkpoint | None:
    """The newest valid checkpoint of ``out_dir`` to continue from (none with ``trainer.resume=never``), found by
    rank 0 and loaded on every rank. A checkpoint of another configuration is refused."""
    if resume == "never":
        return None
    found = load_latest(out_dir) if is_main else None
    path = distributed.broadcast(str(found[1]) if found else None)
    if path is None:
        return None
    ckpt = found[0] if found else load_checkpoint(Path(path))
    differences = config_differences(ckpt["config"], config)
    if differences:
        raise UserError(f"the checkpoint {path} is from another configuration; these keys differ (checkpoint -> "
                        f"now): {'; '.join(differences)}. Run that configuration to continue it, or start this "
                        "one afresh with trainer.resume=never (which replaces the run directory's checkpoints).")
    return ckpt, Path(path)


def train_state(ckpt: dict, is_main: bool) -> TrainState:
    """The progress a checkpoint records; the partial epoch's sums, totals over all ranks, go to rank 0 alone."""
    partial = None
    if ckpt["step"]:
        sums = ckpt["partial"] if is_main else {k: 0 for k in ckpt["partial"]}
        partial = EpochState(ckpt["step"], torch.as_tensor(sums["loss_sum"]).float(),
                             torch.as_tensor(sums["wrong"]).long(), int(sums["count"]),
                             float(ckpt["partial"].get("seconds", 0.0)))
    return TrainState(ckpt["epoch"], partial, ckpt["best"], ckpt["history"], ckpt["seconds"])


def restore(run: Run, checkpoint: Checkpoint | None) -> None:
    """Continue ``run`` from ``checkpoint`` (a fresh run stays as built)."""
    if checkpoint is None:
        return
    ckpt, path = checkpoint
    check_same_teacher(run.teacher, ckpt.get("teacher"), path)
    run.model.load_state_dict(ckpt["model"])
    if run.gates is not None:
        run.gates.load_state_dict(ckpt["gates"])
        phases.enter_phase(run)  # a run resumed in fine-tuning steps with its phase's optimizer, where it has one
    run.state = train_state(ckpt, run.dist.is_main)
    if run.state.partial is not None:
        run.state.partial = run.state.partial.to(run.device)
    log.info("resuming from %s (epoch %d, step %d)", path, ckpt["epoch"], ckpt["step"])
    run.learner.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    run.learner.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.learner.accel.scaler.load_state_dict(ckpt["scaler"])


def check_same_teacher(teacher: Teacher | None, recorded: dict | None, path: Path) -> None:
    """A distilled run continues only with the teacher it started with (the same weights)."""
    if teacher is not None and recorded and recorded.get("sha256") != teacher.sha256:
        raise UserError(f"the checkpoint {path} was trained with the teacher {recorded.get('path')} (sha256 "
                        f"{str(recorded.get('sha256'))[:12]}…), but distill.teacher now gives {teacher.path} with "
                        f"other weights (sha256 {teacher.sha256[:12]}…). Restore that teacher to continue, or start "
                        "afresh with trainer.resume=never.")


def checkpoint_state(run: Run, seconds: float) -> dict:
    """What the run's checkpoint holds; its ``state.partial`` must already hold the totals over all ranks."""
    partial, learner = run.state.partial, run.learner
    return {
        "model": run.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "epoch": run.state.epoch, "step": partial.step if partial else 0,
        "partial": {"loss_sum": partial.loss_sum.detach().cpu(), "wrong": partial.wrong.cpu(),
                    "count": partial.count, "seconds": partial.seconds} if partial else None,
        "best": run.state.best, "history": run.state.history, "seconds": seconds, "rng": rng_state(),
        "config": run.job.config, "erase": run.erased.as_dict(), "world_size": run.dist.world_size,
        "scaler": learner.accel.scaler.state_dict(),
        "teacher": run.teacher.record() if run.teacher is not None else None,
        "gates": run.gates.state_dict() if run.gates is not None else None,
    }
