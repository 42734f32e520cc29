"""Registers erasenet's launcher with Hydra (plugins must live in the ``hydra_plugins`` namespace)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from erasenet.cli.launcher import ConcurrentLauncher


class ErasenetLauncher(ConcurrentLauncher):
    """``hydra/launcher=erasenet``: trains the seeds of a configuration together when trainer.concurrent > 1."""


@dataclass
class ErasenetLauncherConf:
    _target_: str = "hydra_plugins.erasenet_launcher.erasenet_launcher.ErasenetLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="erasenet", node=ErasenetLauncherConf, provider="erasenet")
