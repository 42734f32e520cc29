"""Registers erasenet's launcher with Hydra (plugins must live in the ``hydra_plugins`` namespace)."""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore


class ErasenetLauncher(BasicLauncher):
    """``hydra/launcher=erasenet`` (the default): the jobs of a sweep one after another in this process, as Hydra's
    basic launcher runs them; erasenet's sweeper checks them all first."""


@dataclass
class ErasenetLauncherConf:
    _target_: str = "hydra_plugins.erasenet_launcher.erasenet_launcher.ErasenetLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="erasenet", node=ErasenetLauncherConf, provider="erasenet")
