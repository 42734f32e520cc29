"""Small datasets written in their real on-disk formats: MNIST idx files, SVHN .mat files, an ImageFolder tree."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic 0x00000803-style header, big-endian dimensions, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 100, n_test: int = 30, gz: bool = False, seed: int = 0) -> dict:
    """MNIST's four idx files under ``root/MNIST/raw`` (gzip-compressed if ``gz``); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{part}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{part}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return arrays


def write_svhn(root: Path, n_train: int = 100, n_test: int = 30, seed: int = 0) -> dict:
    """``train_32x32.mat`` and ``test_32x32.mat`` under ``root/svhn`` in the official layout.

    ``X`` is 32 x 32 x 3 x N uint8 and ``y`` N x 1 with labels 1..10, 10 standing for the digit 0.
    """
    import scipy.io

    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, n in (("train", n_train), ("test", n_test)):
        mat = {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
               "y": (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)}
        scipy.io.savemat(str(folder / f"{part}_32x32.mat"), mat)
        written[part] = mat
    return written


def write_image_folder(path: Path, classes: int = 3, train_per_class: int = 10, val_per_class: int = 3,
                       seed: int = 0) -> Path:
    """An ImageFolder tree ``path/{train,val}/<class>/`` of noise images, JPEG and PNG, of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = path / part / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] = 255 - 40 * c  # a class-dependent colour, so a tiny model can learn it
                image = Image.fromarray(pixels if i % 4 else pixels[..., 0])  # every fourth grayscale
                if i % 2:
                    image.save(folder / f"{part}_{c}_{i}.png")
                else:
                    image.save(folder / f"{part}_{c}_{i}.JPEG", quality=90)
    return path
