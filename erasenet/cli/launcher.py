"""A Hydra launcher that trains the seeds of each configuration of a sweep together (``trainer.concurrent``).

``python -m erasenet.train -m model=resnet20 seed=0,1,2,3,4 trainer.concurrent=5`` composes five jobs as
usual; this launcher groups the jobs whose overrides differ only in ``seed`` into batches of up to
``trainer.concurrent`` and trains each batch as one group of runs (``erasenet.training.run.train_runs``). Every
job still gets its ordinary run directory (``.hydra/``, ``result.json``, ...) and the sweep its summary. With
``trainer.concurrent=1`` (the default) it launches jobs one by one, like Hydra's basic launcher.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from ..common.config import check_config
from ..common.errors import UserError
from ..training.preemption import Interrupted
from ..common.records import override_key

log = logging.getLogger(__name__)


def plan_batches(job_overrides: Sequence[Sequence[str]], concurrent: Sequence[int]) -> list[list[int]]:
    """Job indices grouped by their overrides without ``seed``, in sweep order, cut into batches of at most
    that group's ``trainer.concurrent``."""
    groups: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        key = tuple(o for o in overrides if override_key(o) != "seed")
        groups.setdefault(key, []).append(i)
    batches = []
    for members in groups.values():
        size = max(1, concurrent[members[0]])
        batches += [members[i:i + size] for i in range(0, len(members), size)]
    return batches


class ConcurrentLauncher(BasicLauncher):
    """Hydra's basic launcher, but seeds of one configuration train together (``erasenet.training.run.train_runs``)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            configs.append(cfg)
        batches = plan_batches(job_overrides, [int(c.trainer.concurrent) for c in configs])
        log.info(f"Launching {len(job_overrides)} jobs locally in {len(batches)} batches")
        returns: list[JobReturn | None] = [None] * len(configs)
        for batch in batches:
            for i in batch:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            if len(batch) == 1:
                returns[batch[0]] = self._run(configs[batch[0]], self.task_function)
            else:
                for i, ret in zip(batch, self._run_together([configs[i] for i in batch])):
                    returns[i] = ret
        return returns

    def _run(self, cfg: DictConfig, task, configure_logging: bool = True) -> JobReturn:
        return run_job(hydra_context=self.hydra_context, task_function=task, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                       configure_logging=configure_logging)

    def _run_together(self, configs: list[DictConfig]) -> list[JobReturn]:
        from .job import job_context, refuse

        prepared = []

        def prepare(cfg: DictConfig) -> None:  # a job's directory and .hydra/ record, without training it
            try:
                check_config(cfg)
            except UserError as err:
                refuse(err)
            prepared.append((cfg, *job_context()))

        returns = [self._run(cfg, prepare, configure_logging=False) for cfg in configs]
        for ret in returns:
            if ret.status == JobStatus.FAILED:
                raise ret._return_value
        # The job's console log format; each member writes its own train.log.
        configure_log(configs[0].hydra.job_logging, configs[0].hydra.verbose)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        from ..training.run import train_runs

        try:
            cfgs, out_dirs, overrides, groups = map(list, zip(*prepared))
            results = train_runs(cfgs, out_dirs, overrides, groups, log_files=True, skip_locked=True)
        except Interrupted as err:  # checkpoints are written and the line saying so logged, as in train.main
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("\ninterrupted by a second Ctrl-C: stopped at once; run the same command again to resume from "
                  "the last checkpoints", file=sys.stderr)
            sys.exit(130)
        except UserError as err:
            refuse(err, [out for _, out, _, _ in prepared])
        for ret, result in zip(returns, results):
            ret.return_value = result.get("best_val_error")
        return returns
