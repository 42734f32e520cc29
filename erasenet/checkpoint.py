"""Checkpoints: written atomically, loaded without unpickling arbitrary objects, found again to resume a run."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .filemode import new_file_mode

log = logging.getLogger("erasenet")


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the renamed file must read like any other the user writes
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only``: no arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# Resumable runs: a run directory keeps its newest checkpoints under checkpoints/, named so that names sort in
# training order: epoch0003.pt after three epochs, epoch0003_step000120.pt 120 steps into the fourth.

UNREADABLE_DIR = "unreadable_checkpoints"
CHECKPOINT_DIR = "checkpoints"
FORMAT = 1
# The parts of a config that define the experiment: a checkpoint or result.json from a config that differs in
# any of them belongs to another run. Everything else (trainer, paths, name) only says how it is run.
EXPERIMENT_KEYS = ("model", "erase", "dataset", "schedule", "seed")
NOT_EXPERIMENT = ("dataset.root", "dataset.download")
_NAME = re.compile(r"epoch(\d{4,})(?:_step(\d+))?\.pt$")


def checkpoint_path(run_dir: Path, epoch: int, step: int = 0) -> Path:
    """Where the checkpoint after ``epoch`` full epochs and ``step`` more steps goes."""
    name = f"epoch{epoch:04d}" + (f"_step{step:06d}" if step else "") + ".pt"
    return Path(run_dir) / CHECKPOINT_DIR / name


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(m, p) for p in folder.glob("epoch*.pt") if (m := _NAME.match(p.name))] if folder.is_dir() else []
    return [p for m, p in sorted(found, key=lambda mp: (int(mp[0][1]), int(mp[0][2] or 0)))]


def save_run_checkpoint(run_dir: Path, state: dict, keep: int) -> Path:
    """Write ``state`` as the run's newest checkpoint and delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, state["epoch"], state["step"])
    save_checkpoint(path, {"format": FORMAT, **state})
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
    """The newest checkpoint that loads; truncated or corrupt ones are skipped with a warning and moved, unchanged,
    to ``unreadable_checkpoints/`` (kept for inspection, out of the way of the run's own checkpoints)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError("not a checkpoint of this format")
            return state, path
        except Exception as err:  # a half-written or damaged file can fail in many ways; any is a skip
            kept = Path(run_dir) / UNREADABLE_DIR / path.name
            kept.parent.mkdir(exist_ok=True)
            os.replace(path, kept)
            log.warning("skipping unreadable checkpoint %s (%s: %s), kept as %s; trying the previous one", path,
                        type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", kept)
    return None


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


def config_differences(a: dict, b: dict) -> list[str]:
    """``key: a -> b`` for every experiment key on which the two configs differ."""
    fa, fb = experiment_config(a), experiment_config(b)
    return [f"{k}: {fa.get(k, '(absent)')!r} -> {fb.get(k, '(absent)')!r}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k, "(absent)") != fb.get(k, "(absent)")]


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Fail now, not hours from now, if ``run_dir`` cannot take a file or lacks ``need_bytes`` of free space."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / ".write_test", lambda f: f.write(b"ok"))
        (run_dir / ".write_test").unlink()
    except OSError as err:
        raise UserError(f"cannot write to the run directory {run_dir} ({err.strerror or err}). Make it writable, "
                        "or put runs elsewhere with hydra.run.dir=... (hydra.sweep.dir=... for -m).") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise UserError(f"the disk of {run_dir} has {free / 2**20:.0f} MiB free but this run needs about "
                        f"{need_bytes / 2**20:.0f} MiB (checkpoints, logs). Free some space, lower "
                        "trainer.keep_checkpoints, or put runs on another disk with hydra.run.dir=...")


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
