"""Checkpoints: written atomically, loaded without unpickling arbitrary objects, found again to resume a run."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..common import faults
from ..common.atomic import atomic_write

log = logging.getLogger("erasenet")


def save_checkpoint(path: Path, state: dict) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda f: torch.save(state, f), "checkpoint")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only``: no arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# Resumable runs: a run directory keeps its newest checkpoints under checkpoints/, named so that names sort in
# training order: epoch0003.pt after three epochs, epoch0003_step000120.pt 120 steps into the fourth.

UNREADABLE_DIR = "unreadable_checkpoints"
CHECKPOINT_DIR = "checkpoints"
FORMAT = 1
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
    faults.point("checkpoint.prune")
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
            log.warning("skipping unreadable checkpoint %s (%s), kept as %s; trying the previous one", path,
                        why_unreadable(err), kept)
    return None


def why_unreadable(err: BaseException, limit: int = 200) -> str:
    """``err`` on one line for the log, in whole sentences: its first, and as many more as fit in ``limit``."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())  # torch's messages carry terminal colours
    sentences = re.split(r"(?<=[.!?])\s+", text) if text else []
    kept = sentences[:1]
    for sentence in sentences[1:]:
        if len(" ".join(kept + [sentence])) > limit:
            break
        kept.append(sentence)
    name = type(err).__name__
    return f"{name}: {' '.join(kept)}" if kept else f"{name}, with no message"
