"""The experiment presets (``erasenet/conf/experiment/``): their names, the closest ones to a misspelt name, and
``python -m erasenet.presets [WORD ...]``, which lists them (those whose name contains every WORD), each with the
first sentence of its header. Import-light: no torch.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

LIST_COMMAND = "python -m erasenet.presets"


def _walk(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    found = []
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif entry.is_file() and entry.name.endswith(".yaml"):
            found.append((f"{prefix}{entry.name[:-5]}", entry))
    return found


def preset_files() -> dict[str, Traversable]:
    """``{preset name as given to experiment=: its yaml file}``, sorted by name (``dong2017/t2_resnet110_c10_er``)."""
    return dict(sorted(_walk(files("erasenet.conf") / "experiment")))


def preset_names() -> list[str]:
    """Every preset's name, as ``experiment=`` takes it, sorted."""
    return list(preset_files())


def summary(preset: Traversable) -> str:
    """The first sentence of a preset's header comment (what it reproduces), or '' when it has none."""
    words = []
    for line in preset.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            words.append(text)
    header = " ".join(" ".join(words).split())
    end = re.search(r"[.;](\s|$)", header)
    return header[:end.start()] + "." if end else header


def closest_presets(name: str, names: list[str], n: int = 3) -> list[str]:
    """The presets closest to ``name``: those equal to it but for letter case first (the whole name, then the name
    without its ``paper/`` folder), then the most similar ones (in lower case, by either)."""
    wanted = name.lower().strip("/")
    base = wanted.rpartition("/")[2]
    equal = [p for p in names if p.lower() == wanted] + [p for p in names if p.lower() != wanted and
                                                         p.lower().rpartition("/")[2] == base]
    scores = {p: max(difflib.SequenceMatcher(None, wanted, p.lower()).ratio(),
                     difflib.SequenceMatcher(None, base, p.lower().rpartition("/")[2]).ratio()) for p in names}
    similar = sorted((p for p in names if scores[p] >= 0.6 and p not in equal), key=lambda p: (-scores[p], p))
    return (equal + similar)[:n]


def unknown_preset_message(name: str) -> str:
    """The one paragraph for ``experiment=<name>`` when no preset has that name."""
    names = preset_names()
    close = closest_presets(name, names)
    hint = (" Did you mean " + (f"{', '.join(close[:-1])} or {close[-1]}" if len(close) > 1 else close[0]) + "?"
            if close else "")
    folder = name.strip("/")
    if not close and any(p.startswith(f"{folder}/") for p in names):
        hint = f" {folder}/ is a folder of presets: name one of them, e.g. experiment={folder}/<name>."
    return (f"experiment={name}: there is no preset {name!r} (preset names are case-sensitive), so nothing was run."
            f"{hint} `{LIST_COMMAND}` lists every preset, with what it reproduces.")


def main(argv: list[str] | None = None) -> None:
    """``python -m erasenet.presets [WORD ...]``: the presets, one per line, with the first sentence of each header."""
    parser = argparse.ArgumentParser(prog="python -m erasenet.presets",
                                     description="List erasenet's experiment presets (experiment=<name>).")
    parser.add_argument("words", nargs="*", help="list only the presets whose name contains every WORD (any case)")
    words = [w.lower() for w in parser.parse_args(argv).words]
    presets = {name: preset for name, preset in preset_files().items() if all(w in name.lower() for w in words)}
    if not presets:
        print(f"no preset name contains {' and '.join(map(repr, words))}; {LIST_COMMAND} lists them all",
              file=sys.stderr)
        sys.exit(1)
    width = max(len(name) for name in presets) + 2
    try:
        for name, preset in presets.items():
            print(f"{name.ljust(width)}{summary(preset)}".rstrip())
        sys.stdout.flush()
    except BrokenPipeError:  # the list piped into head and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
