"""The Hydra job a run belongs to: its directory, overrides and group, and refusing it on bad input."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..common.errors import UserError
from ..common.records import run_group


def job_context() -> tuple[Path, list[str], str]:
    """The current Hydra job's output directory, its overrides and its group (see ``run_group``)."""
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    excluded = list(hc.job.config.override_dirname.exclude_keys)
    return Path(hc.runtime.output_dir), overrides, run_group(overrides, excluded)


# What Hydra writes into every job's directory before erasenet sees the job's config.
BOOKKEEPING = (".hydra", "train.log")
SWEEP_BOOKKEEPING = "multirun.yaml"  # and into a sweep's directory
# {absolute path: whether it existed} for a job's directory, Hydra's bookkeeping in it and every folder above it,
# noted before Hydra creates them; the first note of a path wins. A rejected run removes only what was noted new.
_EXISTED: dict[str, bool] = {}


def note_directory(path: str | Path) -> None:
    """Note, before anything creates ``path``, whether it, Hydra's bookkeeping in it and each folder above exist."""
    current = os.path.abspath(path)
    for name in BOOKKEEPING:
        _EXISTED.setdefault(os.path.join(current, name), os.path.lexists(os.path.join(current, name)))
    while True:
        _EXISTED.setdefault(current, os.path.lexists(current))
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def planned_directory(config: DictConfig, key: str) -> Optional[str]:
    """The directory ``config`` gives at ``key`` (``hydra.run.dir``...), resolved as Hydra will resolve it when it
    creates the directory; None when it cannot be resolved yet (e.g. it uses ``hydra.job.num``)."""
    hydra_config = HydraConfig.instance()
    previous, read_only = hydra_config.cfg, config.hydra._get_node_flag("readonly")  # as omegaconf.read_write
    try:
        hydra_config.set_config(config)  # ${hydra:...} interpolations read it
        return str(OmegaConf.select(config, key, throw_on_missing=True))
    except Exception:  # noqa: BLE001 - an unresolvable directory is simply not noted
        return None
    finally:
        hydra_config.cfg = previous
        OmegaConf.set_readonly(config.hydra, read_only)


def note_sweep_job(config: DictConfig) -> None:
    """Note the folders of one sweep job's directory (``hydra.sweep.dir``/``hydra.sweep.subdir``) before any exists."""
    sweep, subdir = planned_directory(config, "hydra.sweep.dir"), planned_directory(config, "hydra.sweep.subdir")
    if sweep is not None and subdir is not None:
        note_directory(os.path.join(sweep, subdir))


class DirectoryNotes(Callback):
    """Hydra callback: note which folders of a single run's directory exist before Hydra creates it (a sweep's
    directories are noted by erasenet's sweeper)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        planned = planned_directory(config, "hydra.run.dir")
        if planned is not None:
            note_directory(planned)


def refuse(err: UserError, out_dirs: list[Path] | None = None) -> None:
    """Print the problem's one paragraph, remove the rejected run's directory (or each of ``out_dirs``, runs
    trained together, outside any one Hydra job) where this process created it, exit with status 2. An error that
    stopped a run under way (one with an ``exit_code``: a full disk, another process on the run) leaves its files
    as they are and exits with that status (``stop``)."""
    if hasattr(err, "exit_code"):
        stop(err)
    print(f"\nerror: {err}\n", file=sys.stderr)
    for out_dir in out_dirs if out_dirs is not None else [HydraConfig.get().runtime.output_dir]:
        remove_created(out_dir)
    sys.exit(2)


def stop(err: UserError) -> None:
    """Print the one paragraph of an error that stopped a run (a full disk, a run held by another process) and
    exit with its status (``err.exit_code``); the run's files stay as they are."""
    print(f"\nerror: {err}\n", file=sys.stderr)
    sys.exit(err.exit_code)


def in_sweep() -> bool:
    """Whether the current Hydra job is one of a multirun's."""
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _created(path: str) -> bool:
    """Whether this process created ``path``: noted as absent before, and not a mount point."""
    return _EXISTED.get(path) is False and not os.path.ismount(path)


def remove_created(out_dir: str | Path) -> None:
    """Remove a run directory that this process created and that holds nothing but Hydra's own bookkeeping, and
    then each folder above it that this process created and that is empty (but for a sweep's multirun.yaml), so a
    rejected run leaves no trace.

    A folder that existed before (or was never noted) is kept, and so is everything above it: in a run directory
    that existed, only the bookkeeping this run added goes. Clean-up never raises: what cannot be removed stays.
    """
    try:
        current = os.path.abspath(out_dir)
        if not os.path.isdir(current):
            return
        if not _created(current):
            for added in (os.path.join(current, name) for name in BOOKKEEPING):
                if _created(added):
                    shutil.rmtree(added, ignore_errors=True) if os.path.isdir(added) else os.remove(added)
            return
        if any(name not in BOOKKEEPING for name in os.listdir(current)):
            return
        shutil.rmtree(current, ignore_errors=True)
        while not os.path.exists(current):
            current = os.path.dirname(current)
            if not _created(current) or any(name != SWEEP_BOOKKEEPING for name in os.listdir(current)):
                return
            shutil.rmtree(current, ignore_errors=True)
    except OSError:
        return
