"""Hydra entry point: ``python -m erasenet.train [overrides]``.

Only Hydra and the config schema are imported up front, so that a bad command
line is answered in about a second; torch is imported once the config is valid.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import check_config, register_configs
from .errors import UserError
from .hydra_errors import exit_if_config_error, reporting_config_errors
from .preemption import Interrupted

register_configs()
log = logging.getLogger("erasenet")


def run_group(overrides: list[str], excluded: list[str]) -> str:
    """The overrides that define this run's configuration: all but the seed and the excluded keys."""
    skip = set(excluded) | {"seed"}
    return ",".join(sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in skip))


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


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(cfg)
        from .run import train_run  # torch and friends: only once the config is known to be good

        out_dir, overrides, group = job_context()
        result = train_run(cfg, out_dir, overrides=overrides, group=group)
        return result.get("best_val_error")
    except Interrupted as err:  # a checkpoint was written: a clean exit, and the same command resumes
        print(f"\n{err}\n", file=sys.stderr)
        sys.exit(0)
    except UserError as err:
        refuse(err)


def _remove_if_empty(out_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own bookkeeping, so a rejected run leaves no trace."""
    if out_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in out_dir.iterdir()):
        shutil.rmtree(out_dir, ignore_errors=True)
        for parent in out_dir.parents:  # and the directories made only for it (runs/<name>/)
            if parent == Path.cwd() or any(parent.iterdir()):
                break
            parent.rmdir()


def cli() -> None:
    """``python -m erasenet.train``: Hydra's main, with Hydra's configuration errors printed as erasenet's own."""
    import hydra._internal.utils as hydra_internals  # where Hydra reports every error of composing the config

    report = hydra_internals.run_and_report
    if not getattr(report, "erasenet", False):
        hydra_internals.run_and_report = reporting_config_errors(report)
        hydra_internals.run_and_report.erasenet = True
    try:
        main()
    except Exception as err:  # --help composes the config outside Hydra's reporting
        exit_if_config_error(err)
        raise


if __name__ == "__main__":
    cli()
