"""One process at a time per run directory: the ``.lock`` file.

The process that trains a run holds ``RUN_DIR/.lock``: a JSON record of its host, pid, the time it took the lock,
and its Slurm job, created in whole or not at all (written beside, then hard-linked into place, which fails if the
lock exists, also on NFS; on a file system without hard links it is created with ``O_EXCL``). While it holds the
lock, a thread touches the file every ``HEARTBEAT_S`` seconds. A second process on the same run is refused with
the holder's description. A lock whose holder is gone is taken over, with a warning: on the same host, when its
process no longer exists (a pid reused by another process counts as gone: the process's start time is part of
the record); from another host (or another container, or before a reboot), when its heartbeat is older than
``STALE_S``; and in a Slurm job, when it was left by an earlier run of this very job (a requeue). Under DDP rank 0
holds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from .errors import UserError

log = logging.getLogger("erasenet")
LOCK_FILE = ".lock"
HEARTBEAT_S = 60.0
STALE_S = 600.0  # ten missed heartbeats
EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: try again later
RUNNING = "running elsewhere"  # the status of a sweep's run that another process holds


class RunLocked(UserError):
    """Another live process holds the run directory."""

    exit_code = EXIT_CODE

    def __init__(self, message: str, run_dir: Path, holder: dict):
        super().__init__(message)
        self.run_dir, self.holder = run_dir, holder


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is no such process (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...; starttime is field 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """Which pids this process sees (containers on one host, even with one host name, each have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def me() -> dict:
    """This process's record."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()), "boot": _boot_id(),
            "pidns": _pid_namespace(), "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0")}


def describe(holder: dict) -> str:
    """``host H, pid P, since T`` (and its Slurm job)."""
    job = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}{job}"


def gone(holder: dict, heartbeat: float, now: float | None = None) -> str | None:
    """Why the holder of a lock last touched at ``heartbeat`` no longer holds it; None while it may be alive."""
    mine = me()
    if holder.get("slurm_job") and holder.get("slurm_job") == mine["slurm_job"] and \
            holder.get("slurm_restart") != mine["slurm_restart"]:
        return f"an earlier run of Slurm job {holder['slurm_job']} (requeued since)"
    if holder.get("host") == mine["host"] and all(holder.get(k) in (None, mine[k]) for k in ("boot", "pidns")):
        pid = holder.get("pid")  # a process this one can see
        if not isinstance(pid, int):
            return "a record without a process"
        if holder.get("start") is not None and mine["start"] is not None:
            if _start_ticks(pid) != holder["start"]:
                return f"its process {pid} has ended"
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its process {pid} has ended"
        except PermissionError:  # a live process of another user
            pass
        return None
    # another host, or one that shares this host's name: another machine, a container, or this one rebooted
    age = (time.time() if now is None else now) - heartbeat
    return f"no heartbeat for {age / 60:.0f} min" if age > STALE_S else None


def read(run_dir: Path) -> tuple[dict, float] | None:
    """The lock's record and the time of its last heartbeat, None if there is no lock."""
    path = Path(run_dir) / LOCK_FILE
    try:
        heartbeat = path.stat().st_mtime
        holder = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        holder = {}
    return (holder if isinstance(holder, dict) else {}), heartbeat


def live_holder(run_dir: Path) -> dict | None:
    """The record of the live process holding ``run_dir``, if any."""
    found = read(run_dir)
    return None if found is None or gone(*found) else found[0]


class RunLock:
    """The lock of one run directory, taken with ``acquire`` and given up with ``release``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.record: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the folders missing when the lock was made go again on release if nothing was written into them: a run
        # refused after taking its lock (a missing teacher, say) leaves nothing behind
        self._created = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]

    def acquire(self) -> None:
        """Take the lock (taking over one whose holder is gone), or raise :class:`RunLocked`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = me()
        for _ in range(5):  # another process may take or drop it between our steps
            if self._create(record):
                self.record = record
                self._thread = threading.Thread(target=self._beat, name=f"lock {self.run_dir}", daemon=True)
                self._thread.start()
                return
            found = read(self.run_dir)
            if found is None:
                continue
            holder, heartbeat = found
            reason = gone(holder, heartbeat)
            if reason is None:
                raise RunLocked(
                    f"the run directory {self.run_dir} is in use by another process ({describe(holder)}): two "
                    "processes on one run would both train it and write every file twice. Wait for that process "
                    f"to finish, or stop it (its checkpoint lets this command resume). If it is surely gone, delete "
                    f"{self.path} and run the command again.", self.run_dir, holder)
            self._take_over(holder, reason)
        raise RunLocked(f"could not take the lock {self.path}: other processes keep taking it. Run the command "
                        "again once they have finished.", self.run_dir, {})

    def _create(self, record: dict) -> bool:
        text = json.dumps(record) + "\n"
        tmp = self.run_dir / f"{LOCK_FILE}.{socket.gethostname()}.{os.getpid()}.tmp"
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create the lock exclusively, then fill it in
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, holder: dict, reason: str) -> None:
        """Move the abandoned lock aside (only the one judged: another taker may have replaced it) and drop it."""
        aside = self.run_dir / f"{LOCK_FILE}.stale.{socket.gethostname()}.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_file(aside)
        if moved != holder:  # someone replaced it in between: put theirs back, look again
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("taking over the lock of %s: its holder (%s) is gone: %s", self.run_dir, describe(holder),
                        reason)
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the lock was removed by hand, or the disk is unreachable for now
                pass

    def release(self) -> None:
        """Give up the lock (if this process still holds it)."""
        if self.record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if read_file(self.path) == self.record:
            self.path.unlink(missing_ok=True)
        self.record = None
        for folder in self._created:  # deepest first; an emptied folder only
            try:
                folder.rmdir()
            except OSError:
                break


def read_file(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return None
