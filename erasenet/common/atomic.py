"""Files that appear whole or not at all: written beside their place, then renamed into it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import faults
from .filemode import new_file_mode


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], kind: str = "file") -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place. ``kind`` names
    its fault points (``KIND.write``, ``KIND.rename``; see erasenet.common.faults)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the renamed file must read like any other the user writes
        with os.fdopen(fd, "wb") as f:
            write(faults.wrap(f, f"{kind}.write"))
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"{kind}.rename")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, obj: Any, kind: str = "file") -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()), kind)
