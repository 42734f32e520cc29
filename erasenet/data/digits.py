"""scikit-learn's bundled 8x8 digits: the dataset that runs anywhere, offline."""

from __future__ import annotations

import numpy as np
import torch

from .splits import Split, Splits, hold_out_validation, stratified_holdout

TEST_SIZE = 360


def load_digits_splits(val_size: int, split_seed: int) -> Splits:
    """1,797 images (pixel values 0..16 rescaled to 0..255), a fixed stratified test split of 360."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    full = Split(torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)))
    train_idx, test_idx = stratified_holdout(bunch.target, TEST_SIZE, split_seed)
    train, val = hold_out_validation(full.subset(train_idx), val_size, split_seed)
    return Splits(train=train, val=val, test=full.subset(test_idx), num_classes=10)
