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


def build_loaders(dataset: DictConfig, schedule: DictConfig, *, device, seed: int, rank: int = 0,
                  world_size: int = 1) -> tuple[TensorLoader, dict[str, TensorLoader | None], dict[str, int]]:
    """The training loader, the evaluation loaders by split name (``val`` is None without a validation split),
    and each split's size."""
    splits = load_splits(dataset)
    common = dict(device=device, mean=dataset.mean, std=dataset.std, rank=rank, world_size=world_size)
    train = TensorLoader(splits.train, schedule.batch_size, train=True, crop_padding=dataset.crop_padding,
                         flip=dataset.flip, seed=seed, **common)
    evals = {"val": TensorLoader(splits.val, schedule.eval_batch_size, **common) if splits.val else None,
             "test": TensorLoader(splits.test, schedule.eval_batch_size, **common)}
    sizes = {"train": len(splits.train), "val": len(splits.val) if splits.val else 0, "test": len(splits.test)}
    return train, evals, sizes


__all__ = ["Split", "Splits", "TensorLoader", "build_loaders", "load_splits", "SMALL_DATASETS"]
