"""``python -m erasenet.results DIR``: (re)write a sweep's summary (``summary.md``, ``summary.csv``) and plots by
hand (also to take in the ``pi_cost.json`` files ``python -m erasenet.pi`` writes after a sweep), and the Hydra
callback that records a job that raised and writes the summary when a multirun ends.

The aggregation itself is ``erasenet.reports.summary``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .common.atomic import atomic_write
from .common.records import FAILURE_FILE
from .reports.summary import console_summary, find_incomplete, find_results


def write_failure(run_dir: Path, job_return: JobReturn) -> None:
    """Record why a job raised in its run directory (``failure.json``), so the summary can say; a later
    successful attempt removes the record."""
    path = Path(run_dir) / FAILURE_FILE
    if job_return.status == JobStatus.COMPLETED:
        path.unlink(missing_ok=True)
    elif job_return.status == JobStatus.FAILED and not (Path(run_dir) / "result.json").exists():
        err = job_return._return_value
        reason = f"{type(err).__name__}: {err}".strip().rstrip(":")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record = {"status": "failed", "failure": reason, "overrides": list(job_return.overrides or [])}
        atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))


class SummaryCallback(Callback):
    """Hydra callback: record a job that raised; when a multirun ends, summarise its sweep directory and print
    the table and the files written."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        if output_dir and Path(output_dir).is_dir():
            write_failure(Path(output_dir), job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        if root.is_dir():
            print("\n" + console_summary(root))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m erasenet.results DIR\n\nAggregate every run (result.json) below DIR into "
              "DIR/summary.md and DIR/summary.csv (mean ± std over seeds per configuration, the difference from "
              "the same configuration at erase.proportion=0 with Welch's test, the published value and the "
              "difference where a run's config has one, failed runs with their reasons) and draw DIR/curves.png "
              "(and DIR/proportion.png and DIR/pareto.png for a sweep over erase.proportion; a sweep across "
              "erase.method also gets DIR/methods.csv, Welch's test at equal ReLU budget with Holm's adjustment, and "
              "a Pareto plot with one series per method; published values show there as hollow markers). Runs "
              "measured by python -m erasenet.pi (pi_cost.json) add their communication and latency estimates, "
              "DIR/pareto_communication.png and DIR/communication_relus.png with the fit of bytes against ReLUs; "
              "run this again after measuring.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"error: {root} is not a directory. Give the sweep directory of a multirun, e.g. multirun/quickstart.",
              file=sys.stderr)
        return 2
    if not find_results(root) and not find_incomplete(root):
        print(f"error: no result.json below {root}: no run there has finished yet.", file=sys.stderr)
        return 1
    print(console_summary(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
