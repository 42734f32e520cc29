"""CIFAR-10/100 read from torchvision's on-disk format (python pickle batches)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .files import require_files, unreadable
from .splits import Split, Splits, hold_out_validation

LAYOUT = {
    # name: (folder, train files, test files, label key, classes, torchvision class name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, "CIFAR100"),
}


def _how_to_get(name: str, root: Path) -> str:
    return (f"Download the python version of {name.upper()} from https://www.cs.toronto.edu/~kriz/cifar.html and "
            f"extract it under {root}.")


def _read_batches(name: str, paths: list[Path], label_key: str, how_to_get: str) -> Split:
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise unreadable(f"{name} batch", path, err, how_to_get) from None
        images.append(data)
        labels.append(target)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar_splits(name: str, root: str, val_size: int, split_seed: int, download: bool) -> Splits:
    """Train/val/test splits of CIFAR-10 or CIFAR-100 under ``root``; downloads on first use if allowed."""
    folder_name, train_files, test_files, label_key, classes, tv_class = LAYOUT[name]
    root_path = Path(root).expanduser()
    how_to_get = _how_to_get(name, root_path)

    def fetch() -> None:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(str(root_path), train=True, download=True)  # checks the archive's MD5

    # root itself: dataset.root pointed at the extracted folder; root/cifar10/...: one folder per dataset
    variants = [root_path, root_path / name / folder_name, root_path / name, root_path / name.upper() / folder_name]
    paths = require_files(name, root_path / folder_name, train_files + test_files,
                          download=fetch if download else None, how_to_get=how_to_get, variants=variants)
    full_train = _read_batches(name, paths[:len(train_files)], label_key, how_to_get)
    train, val = hold_out_validation(full_train, val_size, split_seed)
    test = _read_batches(name, paths[len(train_files):], label_key, how_to_get)
    return Splits(train=train, val=val, test=test, num_classes=classes)
