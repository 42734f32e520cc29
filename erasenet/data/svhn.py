"""SVHN's official ``train_32x32.mat`` and ``test_32x32.mat`` (the format-2 cropped digits, no ``extra``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import require_files, unreadable
from .splits import Split, Splits, hold_out_validation

FILES = ["train_32x32.mat", "test_32x32.mat"]


def _read_mat(path: Path, how_to_get: str) -> Split:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise ValueError(f"X has shape {x.shape} and y {len(y)} labels; expected 32x32x3xN and N")
        if len(y) and (y.min() < 1 or y.max() > 10):
            raise ValueError(f"labels run from {y.min()} to {y.max()}; expected 1..10 (10 for the digit 0)")
    except Exception as err:  # scipy raises ValueError, MatReadError, OSError, ... for broken files
        raise unreadable("SVHN .mat", path, err, how_to_get) from None
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)  # H x W x C x N -> N x C x H x W
    labels = (y.astype(np.int64) % 10)  # the digit 0 is stored as label 10
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def load_svhn_splits(root: str, val_size: int, split_seed: int, download: bool) -> Splits:
    """SVHN's 73,257 training images (less ``val_size`` held out) and 26,032 test images, 3 x 32 x 32 uint8."""
    root_path = Path(root).expanduser()
    folder = root_path / "svhn"
    how_to_get = f"Download {' and '.join(FILES)} from http://ufldl.stanford.edu/housenumbers/ into {folder}."

    def fetch() -> None:
        from torchvision.datasets import SVHN

        for split in ("train", "test"):
            if not (folder / f"{split}_32x32.mat").is_file():
                SVHN(str(folder), split=split, download=True)  # checks the file's MD5

    paths = require_files("SVHN", folder, FILES, download=fetch if download else None, how_to_get=how_to_get,
                          variants=[root_path / "SVHN", root_path])  # root itself: torchvision's own layout
    train, val = hold_out_validation(_read_mat(paths[0], how_to_get), val_size, split_seed)
    return Splits(train=train, val=val, test=_read_mat(paths[1], how_to_get), num_classes=10)
