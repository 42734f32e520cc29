"""In-memory image splits: uint8 NCHW tensors and int64 labels, plus the held-out validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..common.errors import UserError


@dataclass
class Split:
    """One split of a small dataset, fully in memory."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 NxCxHxW, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "Split":
        index_t = torch.as_tensor(index, dtype=torch.long)
        return Split(self.images[index_t].contiguous(), self.labels[index_t].contiguous())


@dataclass
class Splits:
    """Train, validation (possibly absent) and test splits of one dataset."""

    train: Split
    val: Optional[Split]
    test: Split
    num_classes: int


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)`` with ``size`` held out, class proportions preserved, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if size == 0:
        return index, index[:0]
    if size >= len(labels):
        raise ValueError(f"cannot hold out {size} of {len(labels)} images")
    kept, held = train_test_split(index, test_size=size, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(held)


def hold_out_validation(train: Split, val_size: int, seed: int) -> tuple[Split, Optional[Split]]:
    """Split ``val_size`` stratified images off ``train``; ``(train, None)`` when ``val_size`` is 0."""
    if val_size == 0:
        return train, None
    try:
        kept, held = stratified_holdout(train.labels.numpy(), val_size, seed)
    except ValueError as err:  # too large, or too small to hold out every class
        raise UserError(f"cannot hold out dataset.val_size={val_size} of {len(train)} training images ({err}). "
                        "Choose a val_size between the number of classes and the training set's size, or 0 for no "
                        "validation split.") from None
    return train.subset(kept), train.subset(held)
