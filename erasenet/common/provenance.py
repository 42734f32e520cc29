"""Where a result came from: the erasenet version, the command line, and the git commit of a checkout."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from .. import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(directory: Path = PACKAGE_DIR) -> dict:
    """The commit and whether tracked files differ from it, for a package imported from a git checkout.

    Both are None when erasenet was installed from a wheel or sdist, or when git is not available.
    """
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # A site-packages directory that happens to lie inside some other repository is not erasenet's checkout.
    if top is None or not (Path(top) / "erasenet" / "__init__.py").is_file():
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def provenance(overrides: list[str] | None = None) -> dict:
    """The record stored in result.json under ``provenance``: ``command`` is the command line that trains this run
    alone (the run's own overrides, whichever launcher or sweep started it); without ``overrides``, this process's."""
    if overrides is None:
        argv = sys.argv
        command = " ".join(["python -m erasenet.train" if argv[0].endswith("train.py") else argv[0], *argv[1:]])
    else:
        command = " ".join(["python -m erasenet.train", *overrides])
    return {"erasenet": __version__, "command": command, **git_state()}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows; '' when nothing does. CPUs of
    different types run different vector kernels, so it is one of the things a CPU result depends on."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
