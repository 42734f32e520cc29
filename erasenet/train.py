"""Hydra entry point: ``python -m erasenet.train [overrides]``.

Only Hydra and the config schema are imported up front, so that a bad command
line is answered in about a second; torch is imported once the config is valid.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from .cli.help import register_help_resolver
from .cli.hydra_errors import exit_if_config_error, reporting_config_errors
from .cli.job import in_sweep, job_context, refuse
from .common.config import check_config, register_configs
from .common.errors import UserError
from .training.preemption import Interrupted

register_configs()
register_help_resolver()
log = logging.getLogger("erasenet")


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(cfg)
        from .training.run import train_run  # torch and friends: only once the config is known to be good

        out_dir, overrides, group = job_context()
        # in a sweep a run that another process is training is skipped (and listed so in the summary)
        result = train_run(cfg, out_dir, overrides=overrides, group=group, skip_locked=in_sweep())
        return result.get("best_val_error")
    except Interrupted as err:  # a checkpoint was written and the one line saying so logged
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted (a second Ctrl-C, or one before training began): stopped at once; run the same "
              "command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except UserError as err:
        refuse(err)


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
