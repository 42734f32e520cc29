"""A loader that keeps a whole small split on the training device as uint8.

Random crop, horizontal flip and normalisation run as batched tensor ops on that
device. Each epoch's order and augmentation are drawn on the CPU from
``(seed, epoch)`` alone, so a run is reproducible on any device and resumable
at any epoch; under DDP each rank takes its own interleaved shard.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from .splits import Split


class TensorLoader:
    """Serve ``(images, labels)`` batches of a :class:`Split` that lives on ``device``."""

    def __init__(self, split: Split, batch_size: int, *, device: torch.device | str = "cpu", train: bool = False,
                 crop_padding: int = 0, flip: bool = False, mean: Sequence[float] = (), std: Sequence[float] = (),
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size, self.train, self.drop_last = batch_size, train, drop_last
        self.crop_padding, self.flip = (crop_padding, flip) if train else (0, False)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.scale, self.shift = normaliser(mean, std, self.images.shape[1], self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` (0-based)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = shard_size(len(self.labels), train=self.train, rank=self.rank, world_size=self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = shard(len(self.labels), train=self.train, seed=self.seed, epoch=self.epoch, rank=self.rank,
                      world_size=self.world_size)
        if self.drop_last:
            index = index[: len(index) // self.batch_size * self.batch_size]
        if self.crop_padding or self.flip:
            aug = epoch_generator(self.seed, self.epoch, 1)
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (len(index), 2), generator=aug)
            flips = torch.rand(len(index), generator=aug) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        index = index.to(self.device)
        for start in range(0, len(index), self.batch_size):
            batch = index[start:start + self.batch_size]
            x = self.images[batch]
            if self.crop_padding:
                x = random_crop(x, offsets[start:start + len(batch)], self.crop_padding)
            if self.flip:
                x = torch.where(flips[start:start + len(batch)].view(-1, 1, 1, 1), x.flip(3), x)
            yield x.float() * self.scale + self.shift, self.labels[batch]


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch, stream)`` alone (stream 0: order, 1: augmentation)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 8 + stream)


def shard(n: int, *, train: bool, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's indices of ``n`` samples for one epoch.

    Training: a permutation drawn from ``(seed, epoch)``, cut into ``world_size`` equal shards so every rank takes
    the same number of steps (the last ``n % world_size`` images of the permutation wait an epoch). Evaluation:
    interleaved, every sample exactly once over all ranks, no padding.
    """
    if train:
        order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0))
        per_rank = n // world_size
        return order[rank * per_rank:(rank + 1) * per_rank]
    return torch.arange(rank, n, world_size)


def shard_size(n: int, *, train: bool, rank: int = 0, world_size: int = 1) -> int:
    """``len(shard(n, ...))`` without drawing it."""
    return n // world_size if train else len(range(rank, n, world_size))


def normaliser(mean: Sequence[float], std: Sequence[float], channels: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``uint8 * scale + shift == (x / 255 - mean) / std``: one fused multiply-add per pixel.

    Empty ``mean`` and ``std`` give ``x / 255``.
    """
    mean_t = torch.tensor(list(mean) or [0.0] * channels, dtype=torch.float32)
    std_t = torch.tensor(list(std) or [1.0] * channels, dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
    return scale, (-mean_t / std_t).view(1, -1, 1, 1).to(device)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of ``x`` (N x C x H x W) at ``offsets`` (N x 2, rows then columns) from zero padding."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]
