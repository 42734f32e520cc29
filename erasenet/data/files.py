"""Finding a dataset's files, downloading them where allowed, and the errors when they are missing or broken."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import UserError

Locate = Callable[[Path, str], Optional[Path]]


def plain_file(folder: Path, name: str) -> Optional[Path]:
    path = folder / name
    return path if path.is_file() else None


def require_files(name: str, folder: Path, files: Sequence[str], *, download: Optional[Callable[[], None]],
                  how_to_get: str, locate: Locate = plain_file) -> list[Path]:
    """The paths of ``files`` in ``folder``; missing ones are downloaded first when ``download`` is given.

    ``how_to_get`` is the sentence telling a user where to get the files by hand.
    """
    found = [locate(folder, f) for f in files]
    if None in found and download is not None:
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        try:
            download()
        except Exception as err:  # network errors come in many types (URLError, socket, SSL, HTTP, checksum)
            for path in created:  # a failed download leaves no empty folders behind
                try:
                    path.rmdir()
                except OSError:
                    break
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            raise UserError(f"{name} is not in {folder} and could not be downloaded ({reason}). {how_to_get} Or "
                            "point dataset.root (or $ERASENET_DATA) at a directory that holds it.") from None
        found = [locate(folder, f) for f in files]
    missing = [f for f, path in zip(files, found) if path is None]
    if missing:
        raise UserError(f"{name} files are missing from {folder}: {', '.join(missing)}. {how_to_get} Or set "
                        "dataset.download=true where the network allows, or point dataset.root (or $ERASENET_DATA) "
                        "at the directory that holds them.")
    return found  # type: ignore[return-value]


def unreadable(name: str, path: Path, err: BaseException, how_to_get: str = "") -> UserError:
    """The error for a file that exists but cannot be read as part of ``name`` (nothing is deleted).

    Without ``how_to_get`` the dataset is not downloadable and the file can only be replaced by hand.
    """
    reason = " ".join(f"{type(err).__name__}: {err}".split())
    if not how_to_get:
        return UserError(f"{path} is unreadable or not a {name} file ({reason}). Replace it with an intact copy, "
                         "or remove it from the tree.")
    return UserError(f"{path} is unreadable or not a {name} file ({reason}). Remove it (or its folder "
                     f"{path.parent}) yourself and let erasenet download it again (dataset.download=true), or "
                     f"replace it with an intact copy. {how_to_get}")
