"""Datasets read from their real on-disk formats, and the loaders that serve them."""

from __future__ import annotations

from omegaconf import DictConfig

from ..errors import UserError
from .loader import TensorLoader
from .splits import Split, Splits

SMALL_DATASETS = ("digits", "cifar10", "cifar100")


def load_splits(dataset: DictConfig) -> Splits:
    """Read the dataset a ``dataset`` config names into memory as uint8 splits."""
    if dataset.name == "digits":
        from .digits import load_digits_splits

        return load_digits_splits(dataset.val_size, dataset.split_seed)
    if dataset.name in ("cifar10", "cifar100"):
        from .cifar import load_cifar_splits

        return load_cifar_splits(dataset.name, dataset.root, dataset.val_size, dataset.split_seed, dataset.download)
    raise UserError(f"dataset.name={dataset.name!r} is unknown. Choose one of {', '.join(SMALL_DATASETS)} "
                    "(dataset=<name> on the command line).")


__all__ = ["Split", "Splits", "TensorLoader", "load_splits", "SMALL_DATASETS"]
