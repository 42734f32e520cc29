"""``--help``'s list of config groups: every option of every group, wrapped to the console width."""

from __future__ import annotations

import textwrap
from importlib.resources import files

from omegaconf import OmegaConf

WIDTH = 100
LISTED_HYDRA_GROUPS = ("hydra/launcher",)  # erasenet's own launchers; Hydra's other groups are in --hydra-help


def config_groups(conf=None, prefix: str = "") -> dict[str, list[str]]:
    """``{group: sorted options}`` from the yaml files of ``erasenet/conf/`` (nested groups such as
    ``experiment/dong2017`` on their own)."""
    conf = conf or files("erasenet.conf")
    groups: dict[str, list[str]] = {}
    for entry in sorted(conf.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            group = f"{prefix}{entry.name}"
            options = sorted(e.name[:-5] for e in entry.iterdir() if e.is_file() and e.name.endswith(".yaml"))
            if options and (not group.startswith("hydra") or group in LISTED_HYDRA_GROUPS):
                groups[group] = options
            groups.update(config_groups(entry, f"{group}/"))
    return groups


def config_groups_text(width: int = WIDTH) -> str:
    """The groups, one per paragraph: ``group: a, b, c`` wrapped with a hanging indent."""
    groups = config_groups()
    indent = max(len(g) for g in groups) + 2
    return "\n".join(textwrap.fill(", ".join(options), width, initial_indent=f"{group}:".ljust(indent),
                                   subsequent_indent=" " * indent, break_on_hyphens=False)
                     for group, options in groups.items())


def register_help_resolver() -> None:
    """``${erasenet.config_groups:}``, which the root config's help template (``--help``) expands."""
    if not OmegaConf.has_resolver("erasenet.config_groups"):
        OmegaConf.register_new_resolver("erasenet.config_groups", config_groups_text)
