"""ImageNet (or any ``ImageFolder`` tree): the file index, nested per-class subsets, and the held-out splits.

A tree is ``<path>/train/<class>/<image>`` and ``<path>/val/<class>/<image>``. The validation split used for model
selection is held out of ``train/``; ``val/`` (ImageNet's official validation set) is the reported test split.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..common.errors import UserError
from .splits import stratified_holdout

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
INDEX_FILES = ("classes.txt", "train.txt", "val.txt", "test.txt")


@dataclass
class FileList:
    """Images of one split: paths relative to the tree's root and their labels."""

    root: Path
    paths: np.ndarray  # bytes ("S" dtype): one contiguous array, so forked loader workers share it untouched
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "FileList":
        return FileList(self.root, self.paths[index], self.labels[index])

    def relative(self) -> list[str]:
        return [p.decode() for p in self.paths]


@dataclass
class FolderSplits:
    classes: list[str]
    train: FileList
    val: Optional[FileList]
    test: FileList


def how_to_get(path: Path) -> str:
    return (f"erasenet never downloads ImageNet. Expected an ImageFolder tree at {path}: {path}/train/<class>/*.JPEG "
            f"(one folder per class, e.g. n01440764) and {path}/val/<class>/*.JPEG (the official validation images "
            "sorted into the same class folders). Get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php (registration needed), extract the "
            "per-class archives of the training set into train/, sort the validation images into class folders using "
            "the devkit's ground truth, then set dataset.path to the tree (by default <dataset.root>/imagenet; "
            "dataset.root defaults to $ERASENET_DATA, else ~/.cache/erasenet).")


def scan(root: Path, part: str, classes: Optional[list[str]] = None,
         progress: bool = False) -> tuple[list[str], FileList]:
    """Index ``root/part/<class>/<image>``; with ``classes`` given, the labels follow that list."""
    folder = root / part
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist. {how_to_get(root)}")
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        extra = sorted(set(found) - set(classes))
        raise UserError(f"{folder} has class folders that {root / 'train'} lacks: {', '.join(extra[:5])}"
                        f"{' ...' if len(extra) > 5 else ''}. Both parts of the tree need the same class folders.")
    label_of = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for name in tqdm(found, desc=f"indexing {folder}", unit="class", disable=not progress):
        files = sorted(e.name for e in os.scandir(folder / name)
                       if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
        paths += [f"{part}/{name}/{f}" for f in files]
        labels += [label_of[name]] * len(files)
    if not paths:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders. "
                        f"{how_to_get(root)}")
    return classes, FileList(root, np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def nested_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class's samples (at least one), drawn from ``seed``.

    Each class's samples are shuffled by a generator of ``(seed, class)`` and the first ``round(fraction * n)``
    kept, so a smaller fraction is always a prefix of a larger one: the subsets are nested.
    """
    if fraction >= 1.0:
        return np.arange(len(labels))
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.unique(labels))
    chosen = []
    for members in np.split(order, starts[1:]):
        keep = max(1, math.floor(fraction * len(members) + 0.5))
        shuffled = members[np.random.default_rng([seed, int(labels[members[0]])]).permutation(len(members))]
        chosen.append(shuffled[:keep])
    return np.sort(np.concatenate(chosen))


def build_folder_splits(path: Path, *, num_classes: int, val_size: int, split_seed: int, subset: float,
                        progress: bool = False) -> FolderSplits:
    """Index the tree; hold ``val_size`` stratified images out of ``train/``, then keep ``subset`` of the rest."""
    if not path.is_dir():
        raise UserError(f"{path} does not exist. {how_to_get(path)}")
    classes, train = scan(path, "train", progress=progress)
    if len(classes) != num_classes:
        raise UserError(f"{path / 'train'} has {len(classes)} class folders but dataset.num_classes={num_classes}. "
                        f"Set dataset.num_classes={len(classes)}, or point dataset.path at the intended tree.")
    empty = [classes[c] for c in np.flatnonzero(np.bincount(train.labels, minlength=len(classes)) == 0)]
    if empty:
        raise UserError(f"class folders without images in {path / 'train'}: {', '.join(empty[:5])}. Every class "
                        "needs training images; remove the empty folders or complete the copy.")
    _, test = scan(path, "val", classes, progress=progress)
    val = None
    if val_size:
        try:
            kept, held = stratified_holdout(train.labels, val_size, split_seed)
        except ValueError as err:
            raise UserError(f"cannot hold out dataset.val_size={val_size} of the {len(train)} images in "
                            f"{path / 'train'} ({err}). Use at least one per class and fewer than all, or 0.") from None
        train, val = train.subset(kept), train.subset(held)
    train = train.subset(nested_subset(train.labels, subset, split_seed))
    return FolderSplits(classes, train, val, test)


def write_index(folder: Path, splits: FolderSplits) -> None:
    """Save the splits as text files of relative paths (one a line) and the class list, in label order."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [splits.classes, splits.train.relative(), splits.val.relative() if splits.val else [],
             splits.test.relative()]
    for name, lines in zip(INDEX_FILES, parts):
        tmp = folder / f".{name}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(folder / name)


def read_index(folder: Path, path: Path, num_classes: int, progress: bool = False) -> FolderSplits:
    """The splits a run saved with :func:`write_index`, resolved against the tree at ``path``; every file checked."""
    missing = [name for name in INDEX_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"dataset.index={folder} lacks {', '.join(missing)}. Point it at the data_index folder of "
                        "an earlier run, or leave it empty to draw the splits from the tree.")
    classes, *parts = [(folder / name).read_text().splitlines() for name in INDEX_FILES]
    if len(classes) != num_classes:
        raise UserError(f"{folder / 'classes.txt'} lists {len(classes)} classes but dataset.num_classes="
                        f"{num_classes}. Set dataset.num_classes={len(classes)}.")
    label_of = {name: i for i, name in enumerate(classes)}
    lists = []
    for name, lines in zip(INDEX_FILES[1:], parts):
        for line in tqdm(lines, desc=f"checking {name}", unit="file", disable=not progress, mininterval=1.0):
            if not (path / line).is_file():
                raise UserError(f"{path / line}, listed in {folder / name}, does not exist. Point dataset.path at "
                                f"the tree the index was made from. {how_to_get(path)}")
        try:
            labels = [label_of[line.split("/")[1]] for line in lines]
        except (KeyError, IndexError):
            raise UserError(f"{folder / name} lists paths outside the classes of {folder / 'classes.txt'}; it is "
                            "not an index written by erasenet.") from None
        lists.append(FileList(path, np.array(lines, dtype=np.bytes_), np.array(labels, dtype=np.int64)))
    train, val, test = lists
    return FolderSplits(classes, train, val if len(val) else None, test)
