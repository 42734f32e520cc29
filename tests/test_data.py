"""Datasets from their real on-disk formats, and the tensor loader's augmentation."""

import pickle

import pytest
import torch

from conftest import write_cifar
from erasenet.data import Split, TensorLoader, load_splits
from erasenet.data.loader import random_crop
from erasenet.errors import UserError


def test_cifar10_reader(tmp_path, make_cfg):
    write_cifar(tmp_path, "cifar10", n_train=100, n_test=40)
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.val_size=20")
    splits = load_splits(cfg.dataset)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 40)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.num_classes == 10 and int(splits.train.labels.max()) <= 9
    # the validation split is stratified: 2 per class from 10 per class
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [2] * 10
    # pixels land where the pickle put them: row-major 3x32x32 per image
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(splits.test.images[5], torch.from_numpy(raw["data"][5].reshape(3, 32, 32)))


def test_train_and_val_are_disjoint_and_fixed(tmp_path, make_cfg):
    write_cifar(tmp_path, "cifar10", n_train=100, n_test=10)
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.val_size=30")
    a, b = load_splits(cfg.dataset), load_splits(cfg.dataset)
    assert torch.equal(a.val.images, b.val.images)
    train_rows = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val.images)
    assert len(a.train) + len(a.val) == 100


def test_cifar100_reader_uses_fine_labels(tmp_path, make_cfg):
    write_cifar(tmp_path, "cifar100", n_train=200, n_test=100)
    cfg = make_cfg("dataset=cifar100", f"dataset.root={tmp_path}", "dataset.val_size=0")
    splits = load_splits(cfg.dataset)
    assert splits.val is None and splits.num_classes == 100
    assert int(splits.train.labels.max()) == 99


def test_missing_cifar_offline_is_a_clear_error(tmp_path, make_cfg):
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_splits(cfg.dataset)


def test_corrupt_cifar_batch_is_a_clear_error(tmp_path, make_cfg):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError, match="data_batch_3"):
        load_splits(cfg.dataset)


def test_digits_split(make_cfg):
    splits = load_splits(make_cfg("dataset=digits").dataset)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    assert splits.train.images.shape[1:] == (1, 8, 8) and int(splits.train.images.max()) == 255


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
