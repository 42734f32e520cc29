"""CIFAR-10/100 read from torchvision's on-disk format (python pickle batches)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .splits import Split, Splits, hold_out_validation

LAYOUT = {
    # name: (folder, train files, test files, label key, classes, torchvision class name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, "CIFAR100"),
}


def _read_batches(folder: Path, files: list[str], label_key: str) -> Split:
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise UserError(f"{path} is unreadable or not a CIFAR batch ({type(err).__name__}: {err}). Delete the "
                            f"folder {folder} and let erasenet download it again (dataset.download=true), or copy "
                            "the original python-version archive there.") from None
        images.append(data)
        labels.append(target)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        getattr(tvd, LAYOUT[name][5])(str(root), train=True, download=True)
    except Exception as err:  # network errors come in many types (URLError, socket, SSL, HTTP)
        folder = root / LAYOUT[name][0]
        raise UserError(f"{name} is not in {folder} and could not be downloaded ({type(err).__name__}: {err}). "
                        f"Download the python version of {name.upper()} from https://www.cs.toronto.edu/~kriz/cifar.html, "
                        f"extract it so that {folder} exists, and run again, or point dataset.root (or $ERASENET_DATA) "
                        "at a directory that holds it.") from None


def load_cifar_splits(name: str, root: str, val_size: int, split_seed: int, download: bool) -> Splits:
    """Train/val/test splits of CIFAR-10 or CIFAR-100 under ``root``; downloads on first use if allowed."""
    folder_name, train_files, test_files, label_key, classes, _ = LAYOUT[name]
    root_path = Path(root).expanduser()
    folder = root_path / folder_name
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and download:
        _download(name, root_path)
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{name} files are missing from {folder}: {', '.join(missing)}. Download the python version "
                        f"from https://www.cs.toronto.edu/~kriz/cifar.html and extract it under {root_path}, or set "
                        "dataset.download=true where the network allows, or point dataset.root (or $ERASENET_DATA) "
                        "at the directory that holds it.")
    train, val = hold_out_validation(_read_batches(folder, train_files, label_key), val_size, split_seed)
    test = _read_batches(folder, test_files, label_key)
    return Splits(train=train, val=val, test=test, num_classes=classes)
