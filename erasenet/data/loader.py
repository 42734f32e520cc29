"""A loader that keeps a whole small split on the training device as uint8.

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
        channels = self.images.shape[1]
        mean_t = torch.tensor(list(mean) or [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(list(std) or [1.0] * channels, dtype=torch.float32)
        # x_normalised = uint8 * scale + shift, one fused multiply-add per pixel
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self.shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the order and augmentation of ``epoch`` (0-based); iteration starts at batch ``start_batch``
        (to resume an epoch that was interrupted)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 8 + stream)

    def __len__(self) -> int:
        n = len(self.labels)
        if not self.train:
            return math.ceil(len(range(self.rank, n, self.world_size)) / self.batch_size)
        per_rank = n // self.world_size
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            positions = train_positions(n, self.batch_size, rank=self.rank, world_size=self.world_size)
        else:  # evaluation: every sample exactly once over all ranks, no padding
            positions = torch.arange(self.rank, n, self.world_size)
        if self.drop_last:
            positions = positions[: len(positions) // self.batch_size * self.batch_size]
        # order and augmentation are drawn for the whole epoch, then indexed: the same image gets the same crop
        # and flip whatever the world size or the batch an epoch resumes at
        order = torch.randperm(n, generator=self._generator(0)) if self.train else torch.arange(n)
        index = order[positions]
        if self.crop_padding or self.flip:
            aug = self._generator(1)
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


def train_positions(n: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Positions in an epoch's order of ``n`` images that this rank trains on, batch by batch.

    Global batch k is positions [k*B, (k+1)*B) with B = batch_size * world_size, whatever the world size, and each
    rank takes its contiguous share of it: N processes train on exactly the batches one process would. The last
    ``n % world_size`` positions are left out, so every rank takes the same number of steps.
    """
    usable = n // world_size * world_size
    global_batch = batch_size * world_size
    full = usable // global_batch * global_batch
    positions = torch.arange(usable)
    tail = positions[full:]  # a last, smaller global batch (its size divides world_size): split evenly too
    per_rank = len(tail) // world_size
    return torch.cat([positions[:full].view(-1, world_size, batch_size)[:, rank].reshape(-1),
                      tail[rank * per_rank:(rank + 1) * per_rank]])


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of ``x`` (N x C x H x W) at ``offsets`` (N x 2, rows then columns) from zero padding."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]
