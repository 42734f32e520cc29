"""A ``DataLoader`` over image files with the interface of :class:`~erasenet.data.loader.TensorLoader`.

Worker processes decode (PIL) and crop each image to uint8; the main process copies whole batches to the training
device (pinned, non-blocking) and normalises them there. The epoch's order comes from ``(seed, epoch)`` as in the
tensor loader, and each image's augmentation from a seed drawn per ``(seed, epoch, image)``, so the batches are
the same whatever the number of workers or ranks, and a run can resume at any epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from .files import unreadable
from .imagefolder import FileList
from .loader import epoch_generator, epoch_order, normaliser, shard_positions, shard_size


def folder_transform(train: bool, image_size: int, resize_size: int, flip: bool):
    """Training: random-resized crop and flip. Evaluation: resize the short side, then a centre crop."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(image_size, antialias=True)] + ([v2.RandomHorizontalFlip()] if flip else [])
    else:
        steps = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps)


def read_rgb(path: Path) -> torch.Tensor:
    """A JPEG or PNG file as a uint8 3 x H x W tensor (grayscale and CMYK converted to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise unreadable("JPEG or PNG image", path, err) from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


class FolderDataset(Dataset):
    """Items are ``(index, augmentation seed)`` pairs; each gives a uint8 3 x S x S image and its label."""

    def __init__(self, files: FileList, transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        path = self.files.root / self.files.paths[index].decode()
        image = read_rgb(path)
        with torch.random.fork_rng(devices=[]):  # the transforms draw from torch's global generator
            torch.manual_seed(seed)
            return self.transform(image), int(self.files.labels[index])


class EpochSampler(Sampler):
    """This rank's ``(index, seed)`` pairs of one epoch, ordered and sharded as the tensor loader does it."""

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world_size, self.epoch, self.start = rank, world_size, 0, 0

    def __len__(self) -> int:
        return shard_size(self.n, train=self.train, rank=self.rank, world_size=self.world_size) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        positions = shard_positions(self.n, self.batch_size, train=self.train, rank=self.rank,
                                    world_size=self.world_size)[self.start:]
        index = epoch_order(self.n, train=self.train, seed=self.seed, epoch=self.epoch)[positions]
        if not self.train:
            return ((i, 0) for i in index.tolist())
        # one seed per image of the whole split, so an image's augmentation does not depend on the sharding
        seeds = torch.randint(0, 2**62, (self.n,), generator=epoch_generator(self.seed, self.epoch, 1))
        return zip(index.tolist(), seeds[index].tolist())


class FolderLoader:
    """Serve normalised float batches of image files on ``device``; ``set_epoch``, ``len`` and iteration as
    :class:`~erasenet.data.loader.TensorLoader`."""

    def __init__(self, dataset: FolderDataset, batch_size: int, *, device: torch.device | str = "cpu",
                 train: bool = False, mean: Sequence[float] = (), std: Sequence[float] = (), seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, drop_last: bool = False):
        self.device = torch.device(device)
        self.sampler = EpochSampler(len(dataset), batch_size, train=train, seed=seed, rank=rank,
                                    world_size=world_size)
        self.loader = DataLoader(dataset, batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                 drop_last=drop_last, prefetch_factor=4 if workers else None)
        self.scale, self.shift = normaliser(mean, std, 3, self.device)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the order and augmentation of ``epoch`` (0-based), starting at batch ``start_batch``."""
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.sampler.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True)
                yield x.float() * self.scale + self.shift, y.to(self.device, non_blocking=True)
        except UserError as err:  # from a worker, the message arrives behind the worker's traceback
            raise UserError(str(err).rsplit("UserError: ", 1)[-1].strip()) from None
