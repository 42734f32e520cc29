"""Finding a dataset's files, downloading them where allowed, and the errors when they are missing or broken."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ..common.errors import UserError

Locate = Callable[[Path, str], Optional[Path]]


def plain_file(folder: Path, name: str) -> Optional[Path]:
    path = folder / name
    return path if path.is_file() else None


def require_files(name: str, folder: Path, files: Sequence[str], *, download: Optional[Callable[[], None]],
                  how_to_get: str, locate: Locate = plain_file, variants: Sequence[Path] = ()) -> list[Path]:
    """The paths of ``files``, all from ``folder`` or else from the first of ``variants`` (other folders people
    commonly keep them in) that holds every one; when none does, ``download`` (if given) fills ``folder``.

    ``how_to_get`` is the sentence telling a user where to get the files by hand.
    """
    folders = [folder, *(v for v in variants if v != folder)]
    found = _first_complete(folders, files, locate)
    if found is None and download is not None:
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        try:
            download()
        except Exception as err:  # network errors come in many types (URLError, socket, SSL, HTTP, checksum)
            remove_empty_folders(created)
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            raise UserError(f"{name} is not in {folder} and could not be downloaded ({reason}). {how_to_get} Or "
                            "point dataset.root (or $ERASENET_DATA) at a directory that holds it."
                            f"{_looked_elsewhere(folders, files, locate)}") from None
        found = _first_complete(folders, files, locate)
    if found is None:
        missing = [f for f in files if locate(folder, f) is None]
        raise UserError(f"{name} files are missing from {folder}: {', '.join(missing)}. {how_to_get} Or set "
                        "dataset.download=true where the network allows, or point dataset.root (or $ERASENET_DATA) "
                        f"at the directory that holds them.{_looked_elsewhere(folders, files, locate)}")
    return found


def _first_complete(folders: Sequence[Path], files: Sequence[str], locate: Locate) -> Optional[list[Path]]:
    for folder in folders:
        found = [locate(folder, f) for f in files]
        if None not in found:
            return found  # type: ignore[return-value]
    return None


def _looked_elsewhere(folders: Sequence[Path], files: Sequence[str], locate: Locate) -> str:
    """Where else the files were looked for, and what those folders hold instead (for the error message)."""
    if len(folders) < 2:
        return ""
    seen = []
    for folder in folders:
        if folder.is_dir():
            entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
            have = sum(locate(folder, f) is not None for f in files)
            listing = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
            seen.append(f"{folder} holds {have} of the {len(files)} files ({listing or 'it is empty'})")
    found = "; ".join(seen) if seen else "none of these folders exists"
    return f" Also looked in {', '.join(str(f) for f in folders[1:])}. Found: {found}."


def remove_empty_folders(created: Sequence[Path]) -> None:
    """Remove the folders a failed command created (deepest first), as long as they are empty: no side effects."""
    for path in created:
        try:
            path.rmdir()
        except FileNotFoundError:  # the download never got as deep as this one
            continue
        except OSError:  # not empty: it holds something, and so do the folders above it
            break


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
