"""The in-memory tensor loader: crops, flips, normalisation, order as a function of (seed, epoch), eval sharding."""

import torch

from erasenet.data import Split, TensorLoader
from erasenet.data.loader import random_crop


def _ramp(n=4, c=2, h=5, w=6):
    return torch.arange(n * c * h * w, dtype=torch.uint8).view(n, c, h, w)


def test_random_crop_matches_padded_slices():
    x = _ramp()
    offsets = torch.tensor([[0, 0], [2, 2], [4, 1], [1, 3]])
    out = random_crop(x, offsets, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r:r + 5, c:c + 6])
    assert torch.equal(random_crop(x, torch.full((4, 2), 2), 2), x)  # centre offset = identity


def test_loader_flip_crop_and_normalise():
    images, labels = _ramp(n=64), torch.arange(64)
    loader = TensorLoader(Split(images, labels), 64, train=True, flip=True, mean=[0.5, 0.5], std=[0.25, 0.25], seed=3)
    x, y = next(iter(loader))
    raw = images[y].float() / 255
    flipped = raw.flip(3)
    restored = x * 0.25 + 0.5
    is_plain = torch.isclose(restored, raw, atol=1e-5).flatten(1).all(1)
    is_flipped = torch.isclose(restored, flipped, atol=1e-5).flatten(1).all(1)
    assert bool((is_plain | is_flipped).all())
    assert 10 < int(is_flipped.sum()) < 54  # about half flipped


def test_loader_is_a_function_of_seed_and_epoch():
    split = Split(_ramp(n=50), torch.arange(50))

    def epoch_batches(seed, epoch):
        loader = TensorLoader(split, 16, train=True, crop_padding=2, flip=True, seed=seed)
        loader.set_epoch(epoch)
        return [x for x, _ in loader]

    a, b, c, d = epoch_batches(0, 1), epoch_batches(0, 1), epoch_batches(0, 2), epoch_batches(1, 1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    assert sum(len(x) for x in a) == 50


def test_eval_loader_serves_every_sample_once_across_ranks():
    split = Split(_ramp(n=23), torch.arange(23))
    seen = [y for rank in range(3) for _, y in TensorLoader(split, 4, rank=rank, world_size=3)]
    assert sorted(torch.cat(seen).tolist()) == list(range(23))


def test_training_never_serves_a_batch_of_one_image_per_rank():
    # BatchNorm cannot train on one image: such a last batch is left out (another image each epoch)
    split = Split(_ramp(n=33), torch.arange(33))
    for batch, world, expected in [(8, 1, [8, 8, 8, 8]), (4, 2, [4, 4, 4, 4]), (5, 1, [5] * 6 + [3]),
                                   (1, 1, [1] * 33), (16, 2, [16])]:
        sizes = {rank: [len(y) for _, y in TensorLoader(split, batch, train=True, rank=rank, world_size=world)]
                 for rank in range(world)}
        assert all(s == expected for s in sizes.values()), (batch, world, sizes)
        assert all(len(TensorLoader(split, batch, train=True, rank=r, world_size=world)) == len(expected)
                   for r in range(world))
    loader = TensorLoader(split, 8, train=True)
    left_out = set()
    for epoch in range(6):
        loader.set_epoch(epoch)
        served = torch.cat([y for _, y in loader]).tolist()
        assert len(served) == len(set(served)) == 32
        left_out |= set(range(33)) - set(served)
    assert len(left_out) > 1
