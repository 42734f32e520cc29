"""A sweep's jobs composed and checked before any of them trains, every bad one reported at once.

Hydra's sweeper hands a launcher the jobs' overrides, and each job composes its own config when it starts, so a
bad value in the last job of a sweep used to surface only after the others had trained. ``check_sweep`` runs first.
"""

from __future__ import annotations

from typing import Callable, Sequence

from omegaconf import DictConfig

from ..common.config import check_config
from ..common.errors import UserError
from .hydra_errors import explain, paragraph


def check_sweep(compose: Callable[[list[str]], DictConfig], jobs: Sequence[Sequence[str]]) -> None:
    """Compose (``compose(overrides)``) and ``check_config`` every job; raise one UserError naming every problem.

    Jobs that share a problem (the seeds of one bad configuration) are reported once, with a count.
    """
    problems: dict[str, list[str]] = {}
    for overrides in jobs:
        try:
            check_config(compose(list(overrides)))
        except Exception as err:
            message = explain(err)
            if message is None:
                raise
            problems.setdefault(message, []).append(" ".join(overrides) or "(no overrides)")
    if not problems:
        return
    bad = sum(len(members) for members in problems.values())
    lines = [f"{bad} of the sweep's {len(jobs)} jobs have a bad config, so none was started:"]
    for message, members in problems.items():
        which = members[0] if len(members) == 1 else f"{members[0]} and {len(members) - 1} more"
        lines.append("\n- " + paragraph(message, 2).replace("\n", "\n  ") + f"\n  (jobs: {which})")
    raise UserError("\n".join(lines))
