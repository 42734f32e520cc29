"""Datasets read from their real on-disk formats, and the loaders that serve them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from ..common.config import IMAGE_FOLDER_DATASETS
from ..common.errors import UserError
from .loader import TensorLoader
from .splits import Split, Splits

if TYPE_CHECKING:  # imported lazily at run time: it needs torchvision
    from .folder_loader import FolderLoader

SMALL_DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn")
INDEX_FOLDER = "data_index"  # where an ImageFolder run saves its exact splits, inside the run directory


def load_splits(dataset: DictConfig) -> Splits:
    """Read the small dataset a ``dataset`` config names into memory as uint8 splits."""
    args = (dataset.root, dataset.val_size, dataset.split_seed, dataset.download)
    if dataset.name == "digits":
        from .digits import load_digits_splits

        return load_digits_splits(dataset.val_size, dataset.split_seed)
    if dataset.name == "mnist":
        from .mnist import load_mnist_splits

        return load_mnist_splits(*args)
    if dataset.name == "svhn":
        from .svhn import load_svhn_splits

        return load_svhn_splits(*args)
    if dataset.name in ("cifar10", "cifar100"):
        from .cifar import load_cifar_splits

        return load_cifar_splits(dataset.name, *args)
    raise UserError(f"dataset.name={dataset.name!r} is unknown. Choose one of "
                    f"{', '.join(SMALL_DATASETS + IMAGE_FOLDER_DATASETS)} (dataset=<name> on the command line).")


def describe_splits(dataset: DictConfig) -> dict[str, str]:
    """Where each split of ``dataset`` comes from, in words (for ``result.json``)."""
    held = (f"{dataset.val_size} images held out of the training set (stratified, split_seed={dataset.split_seed})"
            if dataset.val_size else "none")
    if dataset.name in IMAGE_FOLDER_DATASETS:
        kept = f"{dataset.subset:.0%} of each class's remaining images (nested, split_seed={dataset.split_seed})"
        sources = {"train": f"train/ less val, {kept}" if dataset.subset < 1 else "train/ less val",
                   "val": held.replace("the training set", "train/"), "test": "val/ (the official validation set)"}
        return {k: f"{v}, as listed in {dataset.index}/{k}.txt" for k, v in sources.items()} if dataset.index \
            else sources
    test = (f"360 images held out of all 1,797 (stratified, split_seed={dataset.split_seed})"
            if dataset.name == "digits" else "the official test set")
    return {"train": "the training set less val", "val": held, "test": test}


def build_loaders(dataset: DictConfig, schedule: DictConfig, *, device, seed: int, rank: int = 0,
                  world_size: int = 1, out_dir: Optional[Path] = None,
                  progress: bool = False) -> tuple[TensorLoader | FolderLoader,
                                                   dict[str, TensorLoader | FolderLoader | None], dict[str, int]]:
    """The training loader, the evaluation loaders by split name (``val`` is None without a validation split),
    and each split's size. Both loader kinds offer ``set_epoch``, ``len`` and normalised ``(x, y)`` device
    batches. ImageFolder datasets save their exact splits into ``out_dir/data_index``."""
    if dataset.name in IMAGE_FOLDER_DATASETS:
        return _build_folder_loaders(dataset, schedule, device=device, seed=seed, rank=rank, world_size=world_size,
                                     out_dir=out_dir, progress=progress)
    splits = load_splits(dataset)
    common = dict(device=device, mean=dataset.mean, std=dataset.std, rank=rank, world_size=world_size)
    train = TensorLoader(splits.train, schedule.batch_size, train=True, crop_padding=dataset.crop_padding,
                         flip=dataset.flip, seed=seed, **common)
    evals = {"val": TensorLoader(splits.val, schedule.eval_batch_size, **common) if splits.val else None,
             "test": TensorLoader(splits.test, schedule.eval_batch_size, **common)}
    return train, evals, _sizes(splits)


def _build_folder_loaders(dataset: DictConfig, schedule: DictConfig, *, device, seed: int, rank: int,
                          world_size: int, out_dir: Optional[Path], progress: bool):
    from .color import color_augment
    from .folder_loader import FolderDataset, FolderLoader, folder_transform
    from .imagefolder import build_folder_splits, read_index, write_index

    path = Path(dataset.path).expanduser()
    if dataset.index:
        splits = read_index(Path(dataset.index).expanduser(), path, dataset.num_classes, progress=progress)
    else:
        splits = build_folder_splits(path, num_classes=dataset.num_classes, val_size=dataset.val_size,
                                     split_seed=dataset.split_seed, subset=dataset.subset, progress=progress)
    if out_dir is not None and rank == 0:
        write_index(Path(out_dir) / INDEX_FOLDER, splits)
    common = dict(device=device, mean=dataset.mean, std=dataset.std, rank=rank, world_size=world_size,
                  workers=dataset.workers)
    size, resize = dataset.image_size, dataset.resize_size or dataset.image_size

    def files(split, train: bool) -> FolderDataset:
        color = color_augment(dataset.color_jitter, dataset.lighting) if train else None
        return FolderDataset(split, folder_transform(train, size, resize, dataset.flip), color)

    train = FolderLoader(files(splits.train, True), schedule.batch_size, train=True, seed=seed, **common)
    evals = {name: FolderLoader(files(split, False), schedule.eval_batch_size, **common) if split else None
             for name, split in (("val", splits.val), ("test", splits.test))}
    return train, evals, _sizes(splits)


def _sizes(splits) -> dict[str, int]:
    return {"train": len(splits.train), "val": len(splits.val) if splits.val else 0, "test": len(splits.test)}


__all__ = ["Split", "Splits", "TensorLoader", "build_loaders", "describe_splits", "load_splits", "SMALL_DATASETS"]
