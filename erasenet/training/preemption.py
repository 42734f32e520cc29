"""Stop signals: Ctrl-C (SIGINT), SIGTERM, SIGUSR1 and SIGUSR2 (Slurm preemption, a time limit, ``kill``) ask the
run to stop.

The handler only records the signal; the training loop checks between steps, writes a checkpoint and stops, and
the process exits with status 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), never 0. A second
Ctrl-C stops at once. A handler that was installed before (submitit's, which requeues the job) is called after
the checkpoint is written, so a cluster sweep is requeued with its state saved.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; running the same command again resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by the signal: 128 + its number."""
        return 128 + self.signum


class StopSignals:
    """Context manager that turns the stop signals into a flag (``received``) for the time it is active."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without waiting for the checkpoint
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def pass_on(self) -> None:
        """Give the received signal to the handler that was there before ours (e.g. submitit's requeue).

        Python's own Ctrl-C handler is not called: it would raise KeyboardInterrupt after the clean stop.
        """
        previous = self._previous.get(self.received)
        self.__exit__()
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)
