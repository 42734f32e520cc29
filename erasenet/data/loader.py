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
        channels = self.images.shape[1]
        mean_t = torch.tensor(list(mean) or [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(list(std) or [1.0] * channels, dtype=torch.float32)
        # x_normalised = uint8 * scale + shift, one fused multiply-add per pixel
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self.shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` (0-based)."""
        self.epoch = epoch

    def _shard(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=self._generator(0))
            per_rank = n // self.world_size  # equal step counts on every rank; the last few images wait an epoch
            return order[self.rank * per_rank:(self.rank + 1) * per_rank]
        return torch.arange(self.rank, n, self.world_size)  # evaluation: every sample exactly once over all ranks

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 8 + stream)

    def __len__(self) -> int:
        n = len(self.labels)
        n = n // self.world_size if self.train else len(range(self.rank, n, self.world_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = self._shard()
        if self.drop_last:
            index = index[: len(index) // self.batch_size * self.batch_size]
        if self.crop_padding or self.flip:
            aug = self._generator(1)
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


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of ``x`` (N x C x H x W) at ``offsets`` (N x 2, rows then columns) from zero padding."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    # every crop window as a view (N x C x rows x cols x H x W); indexing picks one per image, whole rows at a time
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(n, device=x.device), :, offsets[:, 0], offsets[:, 1]]
