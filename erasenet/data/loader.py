"""A loader that keeps a whole small split on the training device as uint8, and the epoch sharding both loaders use.

Random crop, horizontal flip and normalisation run as batched tensor ops on that
device. Each epoch's order and augmentation are drawn on the CPU from
``(seed, epoch)`` alone, so a run is reproducible on any device and resumable
at any batch of any epoch; under DDP each rank takes its part of every global
batch.
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
        self.seed, self.rank, self.world_size, self.epoch, self.start_batch = seed, rank, world_size, 0, 0
        self.scale, self.shift = normaliser(mean, std, self.images.shape[1], self.device)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the order and augmentation of ``epoch`` (0-based); iteration starts at batch ``start_batch``
        (to resume an epoch that was interrupted)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = shard_size(len(self.labels), self.batch_size, train=self.train, rank=self.rank,
                       world_size=self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        positions = shard_positions(n, self.batch_size, train=self.train, rank=self.rank, world_size=self.world_size)
        if self.drop_last:
            positions = positions[: len(positions) // self.batch_size * self.batch_size]
        index = epoch_order(n, train=self.train, seed=self.seed, epoch=self.epoch)[positions]
        if self.crop_padding or self.flip:
            # drawn for the whole epoch, then indexed: an image gets the same crop and flip whatever the world
            # size or the batch an epoch resumes at
            aug = epoch_generator(self.seed, self.epoch, 1)
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=aug)[positions]
            flips = (torch.rand(n, generator=aug) < 0.5)[positions]
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        index = index.to(self.device)
        for start in range(self.start_batch * self.batch_size, len(index), self.batch_size):
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


def epoch_order(n: int, *, train: bool, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` samples in one epoch: a permutation drawn from ``(seed, epoch)`` for training."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch, 0)) if train else torch.arange(n)


def train_positions(n: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Positions in an epoch's order of ``n`` images that this rank trains on, batch by batch.

    Global batch k is positions [k*B, (k+1)*B) with B = batch_size * world_size, whatever the world size, and each
    rank takes its contiguous share of it: N processes train on exactly the batches one process would. The last
    ``n % world_size`` positions are left out, so every rank takes the same number of steps. So is a last batch of
    one image per rank, because BatchNorm cannot train on a single image (it is another image every epoch); this
    is the one case where N processes train on one batch fewer than one process.
    """
    share = train_share(n, batch_size, world_size)
    full = share // batch_size * batch_size * world_size  # the positions of the full global batches
    tail = share % batch_size  # this rank's part of a last, smaller global batch
    positions = torch.arange(full + tail * world_size)
    return torch.cat([positions[:full].view(-1, world_size, batch_size)[:, rank].reshape(-1),
                      positions[full + rank * tail:full + (rank + 1) * tail]])


def train_share(n: int, batch_size: int, world_size: int = 1) -> int:
    """Images one rank trains on in an epoch: its equal share of ``n``, less a last batch of a single image."""
    share = n // world_size
    return share - 1 if batch_size > 1 and share % batch_size == 1 else share


def shard_positions(n: int, batch_size: int, *, train: bool, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's positions in the epoch order: its part of every global batch when training; for evaluation,
    interleaved, every sample exactly once over all ranks, no padding."""
    if train:
        return train_positions(n, batch_size, rank=rank, world_size=world_size)
    return torch.arange(rank, n, world_size)


def shard_size(n: int, batch_size: int, *, train: bool, rank: int = 0, world_size: int = 1) -> int:
    """``len(shard_positions(n, batch_size, ...))`` without building it."""
    return train_share(n, batch_size, world_size) if train else len(range(rank, n, world_size))


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
    # every crop window as a view (N x C x rows x cols x H x W); indexing picks one per image, whole rows at a time
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(n, device=x.device), :, offsets[:, 0], offsets[:, 1]]
