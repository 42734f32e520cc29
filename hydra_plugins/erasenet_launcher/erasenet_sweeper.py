"""Registers erasenet's sweeper with Hydra: the basic sweeper, but every job is checked before any trains."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from erasenet.cli.job import note_sweep_job
from erasenet.cli.sweep_check import check_sweep


class ErasenetSweeper(BasicSweeper):
    """``hydra/sweeper=erasenet`` (the default): composes and checks every job of the sweep before launching,
    whatever the launcher (erasenet, parallel, slurm), and notes which folders of each job's directory exist."""

    def sweep(self, arguments: List[str]) -> Any:
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(self._parse_config() + arguments)
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        def compose(job: List[str]) -> Any:
            config = loader.load_sweep_config(self.config, job)
            note_sweep_job(config)  # before the launcher creates it: a refused job removes only what it made
            return config

        check_sweep(compose, jobs)
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Any) -> None:
        """Every job was composed and checked by ``sweep`` already."""


@dataclass
class ErasenetSweeperConf:
    _target_: str = "hydra_plugins.erasenet_launcher.erasenet_sweeper.ErasenetSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="erasenet", node=ErasenetSweeperConf, provider="erasenet")
