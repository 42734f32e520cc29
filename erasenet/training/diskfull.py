"""A disk that fills up in the middle of a run: recognising it, and saying so in one paragraph.

The run stops; what it wrote before stays as it was (every checkpoint is written beside its place and renamed in
whole, a metrics line that did not fit is taken back), and running the same command once there is room resumes
from the newest checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from ..common.atomic import atomic_write
from .checkpoint import list_checkpoints
from ..common.errors import UserError
from ..common.records import FAILURE_FILE

log = logging.getLogger("erasenet")
FULL = (errno.ENOSPC, errno.EDQUOT)
EXIT_CODE = 74  # EX_IOERR of sysexits.h: an input/output error


class DiskFull(UserError):
    """The disk of a run directory filled up during the run (its one paragraph says which, and what to do)."""

    exit_code = EXIT_CODE


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is, or was raised while handling, a full disk or an exhausted quota (``torch.save`` reports
    one as a ``RuntimeError`` raised while handling the ``OSError``)."""
    return any(isinstance(e, OSError) and e.errno in FULL for e in _chain(err))


def mount_of(path: Path) -> tuple[Path, str]:
    """The mount point holding ``path`` and what is mounted there (``ext4 file system /dev/sda1``)."""
    path, device = Path(os.path.realpath(path)), "file system"
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path):
                device = f"{fields[2]} file system {fields[0]}"
    except OSError:  # not Linux: the mount point alone names the disk
        pass
    return path, device


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def stopping_on_full_disk(run_dir: Path, overrides: Sequence[str] = ()) -> Iterator[None]:
    """Turn a full disk met inside the block into :class:`DiskFull` (and the run's ``failure.json``)."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise disk_full(run_dir, err, overrides) from None


def disk_full(run_dir: Path, err: BaseException, overrides: Sequence[str] = ()) -> DiskFull:
    """The error to stop with when ``err`` (a full disk) hit the run in ``run_dir``; the run directory also gets a
    ``failure.json`` saying so (where even that small file still fits)."""
    logging.raiseExceptions = False  # log files on the full disk fail too: no traceback for each line
    run_dir = Path(run_dir)
    mount, device = mount_of(run_dir)
    free = free_bytes(run_dir)
    found = list_checkpoints(run_dir)
    kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint had been written yet"
    message = (f"disk full: the disk holding {run_dir} (the {device} mounted at {mount}) has "
               f"{'an unknown amount of' if free is None else f'{free / 2**20:.1f} MiB'} free space left, and a "
               f"write failed ({_reason(err)}). What the run wrote before is intact: "
               f"{kept}. Free some space on {mount} (or lower trainer.keep_checkpoints, or move the run "
               "directory to a larger disk), then run the same command again: it resumes from the last good "
               "checkpoint.")
    record = {"status": "failed", "failure": message, "overrides": list(overrides)}
    try:
        atomic_write(run_dir / FAILURE_FILE, lambda f: f.write(json.dumps(record, indent=1).encode()))
    except OSError:
        log.warning("could not write %s either (the disk is full)", run_dir / FAILURE_FILE)
    return DiskFull(message)


def _chain(err: BaseException) -> list[BaseException]:
    found = []
    while err is not None and err not in found:
        found.append(err)
        err = err.__cause__ or err.__context__
    return found


def _reason(err: BaseException) -> str:
    full = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in FULL), err)
    return f"{errno.errorcode.get(full.errno, 'ENOSPC')}: {full.strerror}" if isinstance(full, OSError) else str(full)
