"""Named fault points, for testing what a run survives: a process killed, or a disk that fills, at a chosen place.

A fault point is a place in the code where a run may be cut short (``point("train.step")``) and a file a run
writes through ``wrap`` (``checkpoint.write``, ``metrics.append``, ...) has one at each of its writes. Nothing
happens unless a fault is armed: ``ERASENET_FAULT=NAME:N:ACTION`` in the environment of a process (or ``arm`` in
it) fires at the N-th time (1-based) the process reaches point NAME. ACTION ``kill`` ends the process with
SIGKILL, as a power cut or the OOM killer would; ``enospc`` raises ``OSError(ENOSPC)``, as a full disk does. At a
file write the fault fires half-way through the bytes: the first half is written (and flushed), the rest never.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any, BinaryIO

ACTIONS = ("kill", "enospc")
_armed: tuple[str, int, str] | None = None  # (point, occurrence, action)
_seen = 0


def arm(name: str | None, occurrence: int = 1, action: str = "kill") -> None:
    """Fire ``action`` at the ``occurrence``-th time this process reaches point ``name`` (None: disarm)."""
    global _armed, _seen
    if action not in ACTIONS or occurrence < 1:
        raise ValueError(f"a fault is NAME:N:ACTION with N >= 1 and ACTION one of {ACTIONS}")
    _armed, _seen = (None if name is None else (name, occurrence, action)), 0


def _from_env() -> None:
    spec = os.environ.get("ERASENET_FAULT")
    if spec:
        name, occurrence, action = spec.rsplit(":", 2)
        arm(name, int(occurrence), action)


def _due(name: str) -> bool:
    global _seen
    if _armed is None or _armed[0] != name:
        return False
    _seen += 1
    return _seen == _armed[1]


def _fire() -> None:
    if _armed[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def point(name: str) -> None:
    """A place where the armed fault may fire; nothing otherwise."""
    if _armed is not None and _due(name):
        _fire()


def wrap(f: BinaryIO, name: str) -> Any:
    """``f`` itself, or, while a fault is armed at ``name``, ``f`` with a fault point at each ``write``."""
    return f if _armed is None or _armed[0] != name else _FaultyFile(f, name)


class _FaultyFile:
    def __init__(self, f: BinaryIO, name: str):
        self._f, self._name = f, name

    def write(self, data: Any) -> int:
        if not _due(self._name):
            return self._f.write(data)
        view = memoryview(data).cast("B")
        self._f.write(view[:len(view) // 2])
        self._f.flush()
        _fire()
        return 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._f, attr)


_from_env()
