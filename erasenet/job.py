"""The Hydra job a run belongs to: its directory, overrides and group, and refusing it on bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from .errors import UserError
from .records import run_group


def job_context() -> tuple[Path, list[str], str]:
    """The current Hydra job's output directory, its overrides and its group (see ``run_group``)."""
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    return Path(hc.runtime.output_dir), overrides, run_group(overrides, list(hc.job.config.override_dirname.exclude_keys))


def refuse(err: UserError) -> None:
    """Print the problem's one paragraph, remove the rejected run's directory, exit with status 2."""
    print(f"\nerror: {err}\n", file=sys.stderr)
    _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
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


def _remove_if_empty(out_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own bookkeeping, so a rejected run leaves no trace."""
    if out_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in out_dir.iterdir()):
        shutil.rmtree(out_dir, ignore_errors=True)
        for parent in out_dir.parents:  # and the directories made only for it (runs/<name>/)
            if parent == Path.cwd() or any(parent.iterdir()):
                break
            parent.rmdir()
