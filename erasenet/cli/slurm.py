"""Sweeps on Slurm through submitit (``hydra/launcher=slurm``, ``slurm_ddp``): what erasenet adds to Hydra's
submitit launcher.

- **Job states without accounting.** submitit asks ``sacct`` for the state of its jobs. A cluster without an
  accounting database (slurmdbd), such as ``scripts/slurm_local.sh``'s, answers every call with an error: submitit
  warns on each poll, and never learns that a job ended without writing its result (killed, out of memory, an
  error before Python started), so the sweep would wait forever. There the states come from
  ``squeue --states=all``, which lists a finished job for MinJobAge seconds (300 by default; polled at least every
  30 s).
- **A failed job does not hide the others.** The sweep waits for every job. A job that fails gets a
  ``result.json`` with ``status: failed`` and the reason (the run's own one-paragraph error, or the last line of
  its traceback, or Slurm's state), the sweep's summary is written, and the command exits with status 1.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from omegaconf import OmegaConf
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from ..common.records import override_key, override_value, run_group

log = logging.getLogger(__name__)


def accounting_enabled() -> bool:
    """Whether this cluster keeps job accounting, so that ``sacct`` answers (AccountingStorageType is not none)."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # nothing known: leave submitit as it is
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config, re.MULTILINE)
    return not (match and match.group(1).endswith("/none"))


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher, reading ``squeue`` where there is no ``sacct``."""

    def _make_command(self) -> list[str] | None:
        ids = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
        if not ids:
            return None
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", "--jobs=" + ",".join(ids)]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        return super().read_info("JobID|State|NodeList\n" + text)  # the columns of the sacct table it parses




def failure_reason(job: SlurmJob) -> str | None:
    """Why ``job`` failed, in one line or paragraph; None if it succeeded."""
    error = job.exception()
    if error is None:
        return None
    stderr = job.stderr() or ""
    refused = re.findall(r"^error: (.+?)(?:\n\s*\n|\Z)", stderr, re.MULTILINE | re.DOTALL)
    if refused:  # erasenet's own one-paragraph error (bad input)
        return " ".join(refused[-1].split())
    raised = [line for line in str(error).splitlines() if re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line)]
    if raised:
        return raised[-1].strip()
    return f"Slurm job {job.job_id} ended in state {job.state} without a result"


def run_dir(launcher: Any, overrides: Sequence[str]) -> Path:
    """The run directory Hydra gives the job with these overrides (as in the job itself)."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    HydraConfig.instance().set_config(cfg)  # the directory's name interpolates ${hydra:job.override_dirname}
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def write_failure(launcher: Any, overrides: Sequence[str], reason: str, job_id: str) -> Path:
    """A ``result.json`` with ``status: failed`` and the reason in the job's run directory; its path."""
    directory = run_dir(launcher, overrides)
    seeds = [override_value(o) for o in overrides if override_key(o) == "seed"]
    excluded = list(launcher.config.hydra.job.config.override_dirname.exclude_keys)
    record = {"status": "failed", "failure": reason, "seed": int(seeds[0]) if seeds else launcher.config.seed,
              "group": run_group(overrides, excluded), "overrides": list(overrides), "slurm_job": job_id}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return directory


def wait_all(jobs: Sequence[SlurmJob], watcher: SqueueWatcher | None) -> None:
    """Wait until every job has a result or has left the queue. ``squeue`` is asked every 2 s at first, then less
    often (every 30 s after five minutes), so that a job that died is noticed soon; ``sacct`` keeps submitit's pace."""
    start = time.monotonic()
    while True:
        if watcher is not None:
            watcher.update()
        if all(job.done() for job in jobs):
            return
        time.sleep(1 if watcher is None else min(30.0, max(2.0, (time.monotonic() - start) / 10)))


def clear_failure(launcher: Any, overrides: Sequence[str]) -> None:
    """Remove the failure record an earlier submission of this run left (``write_failure``), so it trains again."""
    path = run_dir(launcher, overrides) / "result.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if record.get("status") == "failed" and "slurm_job" in record and "config" not in record:
        path.unlink()


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Submit one Slurm job per run (a job array), wait for all of them, and report the failed ones."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    from ..results import SummaryCallback

    setup_globals()
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    generic = set(OmegaConf.structured(BaseQueueConf).keys())  # options submitit takes without the slurm_ prefix
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Submitting {len(job_overrides)} Slurm jobs; their logs go to {sweep_dir / '.submitit'}")
    numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
    for number, overrides in zip(numbers, job_overrides):
        log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        clear_failure(launcher, overrides)
    n = len(job_overrides)
    jobs = executor.map_array(launcher, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * n, list(numbers),
                              [f"job_id_for_{i}" for i in numbers], [Singleton.get_state()] * n)
    watcher = None if accounting_enabled() else SqueueWatcher(delay_s=30)
    for job in jobs:
        job.watcher = watcher or job.watcher  # instead of the class-wide sacct watcher
    wait_all(jobs, watcher)
    returns, failed = [], []
    for job, overrides in zip(jobs, job_overrides):
        reason = failure_reason(job)
        if reason is None:
            returns.append(job.results()[0])  # rank 0's, under slurm_ddp
        else:
            where = write_failure(launcher, overrides, reason, job.job_id)
            failed.append(f"{' '.join(filter_overrides(overrides))} (Slurm job {job.job_id}, {where}): "
                          + reason.rstrip("."))
    if failed:
        SummaryCallback().on_multirun_end(config=launcher.config)
        print(f"\nerror: {len(failed)} of {n} jobs of the sweep failed: " + "; ".join(failed)
              + f". Their run directories hold result.json with status failed and the reason; the jobs' logs are "
              f"under {sweep_dir / '.submitit'}. Fix the cause and run the same command again: finished runs are "
              "skipped.\n", file=sys.stderr)
        sys.exit(1)
    return returns

