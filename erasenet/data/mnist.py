"""MNIST read from the idx files in torchvision's layout (``<root>/MNIST/raw``, raw or gzip-compressed)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .files import require_files, unreadable
from .splits import Split, Splits, hold_out_validation

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _raw_or_gz(folder: Path, name: str) -> Optional[Path]:
    """``name`` in ``folder``, extracted or ``.gz``, also under the dotted name some mirrors use
    (``train-images.idx3-ubyte``)."""
    dotted = name.replace("-idx", ".idx")
    for base in (name, dotted):
        for path in (folder / base, folder / f"{base}.gz"):
            if path.is_file():
                return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (the only type MNIST uses) as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("no idx header of unsigned bytes (magic 0x00 0x00 0x08)")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"header says {shape} but the file holds {len(data) - offset} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _read_pair(images_path: Path, labels_path: Path, how_to_get: str) -> Split:
    arrays = []
    for path, ndim in ((images_path, 3), (labels_path, 1)):
        try:
            array = read_idx(path)
            if array.ndim != ndim:
                raise ValueError(f"expected {ndim} dimensions, found shape {array.shape}")
        except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError
            raise unreadable("MNIST idx", path, err, how_to_get) from None
        arrays.append(array)
    images, labels = arrays
    if len(images) != len(labels) or labels.max(initial=0) > 9:
        raise unreadable("MNIST idx", labels_path, ValueError(f"{len(labels)} labels in 0..{labels.max()} for "
                                                               f"{len(images)} images"), how_to_get)
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_mnist_splits(root: str, val_size: int, split_seed: int, download: bool) -> Splits:
    """MNIST's 60,000 training images (less ``val_size`` held out) and 10,000 test images, 1 x 28 x 28 uint8."""
    root_path = Path(root).expanduser()
    folder = root_path / "MNIST" / "raw"
    how_to_get = (f"Download the four idx files (.gz or extracted) from https://yann.lecun.com/exdb/mnist/ (or a "
                  f"mirror such as https://ossci-datasets.s3.amazonaws.com/mnist/) into {folder}.")

    def fetch() -> None:
        from torchvision.datasets import MNIST

        MNIST(str(root_path), train=True, download=True)  # checks each archive's MD5

    variants = [root_path / "MNIST", root_path / "mnist" / "raw", root_path / "mnist", root_path]
    paths = require_files("MNIST", folder, FILES, download=fetch if download else None, how_to_get=how_to_get,
                          locate=_raw_or_gz, variants=variants)
    train, val = hold_out_validation(_read_pair(paths[0], paths[1], how_to_get), val_size, split_seed)
    return Splits(train=train, val=val, test=_read_pair(paths[2], paths[3], how_to_get), num_classes=10)
