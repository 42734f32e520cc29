"""A ``DataLoader`` over image files with the interface of :class:`~erasenet.data.loader.TensorLoader`.

Worker processes decode (PIL, at a reduced size where the crop allows) and crop each image to uint8; the main
process copies whole batches to the training device (pinned, non-blocking), applies the optional colour
augmentation (:mod:`erasenet.data.color`) and normalises them there. The epoch's order comes from ``(seed, epoch)``
as in the tensor loader, and each image's augmentation from a seed drawn per ``(seed, epoch, image)``, so the
batches are the same whatever the number of workers or ranks, and a run can resume at any epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..common.errors import UserError
from .color import ColorAugment
from .files import unreadable
from .imagefolder import FileList
from .loader import epoch_generator, epoch_order, normaliser, shard_positions, shard_size


# RandomResizedCrop's defaults: the crop covers 8-100% of the image, with an aspect ratio from 3/4 to 4/3
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
JPEG_SCALES = (8, 4, 2)  # the reductions a JPEG decoder can apply while decoding (PIL's draft)


class ImageTransform:
    """What one image goes through: training takes a random-resized crop and a flip; evaluation resizes the short
    side to ``resize_size`` and takes the centre crop.

    :meth:`load` decodes a JPEG at 1/2, 1/4 or 1/8 of its size (PIL's ``draft``) when the crop it will take still
    has at least the output's pixels at that size, so no pixel the output needs is lost: only work the resize would
    throw away is skipped. The crop box is then rounded to the reduced image's pixels (an equally random crop, at
    most half a reduced pixel away). Calling the transform on a decoded uint8 tensor applies the same steps.
    """

    def __init__(self, train: bool, image_size: int, resize_size: int, flip: bool, reduced_decode: bool = True):
        self.train, self.image_size, self.resize_size = train, image_size, resize_size
        self.flip, self.reduced_decode = flip and train, reduced_decode

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        return self._finish(pixels, self._crop_box(width, height), width, height)

    def load(self, path: Path) -> torch.Tensor:
        """Decode the image file at ``path`` (as small as the crop allows) and transform it."""
        from PIL import Image

        try:
            with Image.open(path) as image:
                width, height = image.size
                box = self._crop_box(width, height)
                reduction = self.decode_reduction(box, width, height)
                if self.reduced_decode and reduction > 1 and image.format == "JPEG":
                    image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
                pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise unreadable("JPEG or PNG image", path, err) from None
        return self._finish(pixels, box, width, height)

    def decode_reduction(self, box: tuple[int, int, int, int] | None, width: int, height: int) -> int:
        """The largest JPEG reduction that leaves the crop ``box`` (or, in evaluation, the short side) at least
        the size it is resized to; 1 when none does."""
        if self.train:
            top, left, crop_h, crop_w = box
            room = min(crop_h, crop_w) / self.image_size
        else:
            room = min(width, height) / self.resize_size
        return next((r for r in JPEG_SCALES if room >= r), 1)

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """Training: the random-resized crop (top, left, height, width) in the full image, drawn from torch's
        generator before anything is decoded."""
        if not self.train:
            return None
        from torchvision.transforms import RandomResizedCrop

        return tuple(RandomResizedCrop.get_params(torch.empty(0, height, width), CROP_SCALE, CROP_RATIO))

    def _finish(self, pixels: torch.Tensor, box, width: int, height: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if not self.train:
            return F.center_crop(F.resize(pixels, self.resize_size, antialias=True), self.image_size)
        # the box in the decoded image's pixels (a reduced decode scales them all)
        sy, sx = pixels.shape[-2] / height, pixels.shape[-1] / width
        top, left, crop_h, crop_w = box
        out = F.resized_crop(pixels, round(top * sy), round(left * sx), max(1, round(crop_h * sy)),
                             max(1, round(crop_w * sx)), [self.image_size, self.image_size], antialias=True)
        if self.flip and torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        return out


def folder_transform(train: bool, image_size: int, resize_size: int, flip: bool,
                     reduced_decode: bool = True) -> ImageTransform:
    """Training: random-resized crop and flip. Evaluation: resize the short side, then a centre crop."""
    return ImageTransform(train, image_size, resize_size, flip, reduced_decode)


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
    """Items are ``(index, augmentation seed)`` pairs; each gives a uint8 3 x S x S image and its label, and with
    ``color`` the image's colour-augmentation parameters as well."""

    def __init__(self, files: FileList, transform: ImageTransform, color: ColorAugment | None = None):
        self.files, self.transform, self.color = files, transform, color

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple:
        index, seed = item
        path = self.files.root / self.files.paths[index].decode()
        with torch.random.fork_rng(devices=[]):  # the crop, flip and colour draw from torch's global generator
            torch.manual_seed(seed)
            image = self.transform.load(path)
            if self.color is None:
                return image, int(self.files.labels[index])
            return image, int(self.files.labels[index]), self.color.draw()


class EpochSampler(Sampler):
    """This rank's ``(index, seed)`` pairs of one epoch, ordered and sharded as the tensor loader does it."""

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world_size, self.epoch, self.start = rank, world_size, 0, 0

    def __len__(self) -> int:
        return shard_size(self.n, self.batch_size, train=self.train, rank=self.rank,
                          world_size=self.world_size) - self.start

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
        self.color = dataset.color

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the order and augmentation of ``epoch`` (0-based), starting at batch ``start_batch``."""
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.sampler.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y, *color in self.loader:
                x = x.to(self.device, non_blocking=True).float()
                if color:
                    x = self.color.apply(x / 255.0, color[0].to(self.device, non_blocking=True)) * 255.0
                yield x * self.scale + self.shift, y.to(self.device, non_blocking=True)
        except UserError as err:  # from a worker, the message arrives behind the worker's traceback
            raise UserError(str(err).rsplit("UserError: ", 1)[-1].strip()) from None
