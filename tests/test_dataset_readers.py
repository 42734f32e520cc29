"""CIFAR, digits, MNIST and SVHN read from their real on-disk formats: readers, splits, errors, training."""

import gzip
import pickle

import pytest
import torch

from conftest import write_cifar
from dataset_formats import write_mnist, write_svhn
from erasenet.data import build_loaders, load_splits
from erasenet.common.errors import UserError
from erasenet.training.run import train_run


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


def _rows(images: torch.Tensor) -> set:
    return {bytes(x.numpy()) for x in images}


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader(tmp_path, make_cfg, gz):
    arrays = write_mnist(tmp_path, n_train=100, n_test=30, gz=gz)
    cfg = make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=20", "dataset.download=false")
    splits = load_splits(cfg.dataset)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (1, 28, 28)
    assert splits.train.labels.dtype == torch.int64 and set(splits.train.labels.tolist()) == set(range(10))
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [2] * 10  # stratified
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(splits.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    train, val, test = _rows(splits.train.images), _rows(splits.val.images), _rows(splits.test.images)
    assert not train & val and not train & test and not val & test


def test_mnist_loader_normalises_with_the_config(tmp_path, make_cfg):
    write_mnist(tmp_path, n_train=60, n_test=20)
    cfg = make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=10", "schedule.eval_batch_size=8")
    splits = load_splits(cfg.dataset)
    _, evals, sizes = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0)
    assert sizes == {"train": 50, "val": 10, "test": 20}
    x, y = next(iter(evals["test"]))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)
    expected = (splits.test.images[:8].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, splits.test.labels[:8])


def test_svhn_reader_layout_labels_and_plain_scaling(tmp_path, make_cfg):
    mats = write_svhn(tmp_path, n_train=100, n_test=30)
    cfg = make_cfg("dataset=svhn", f"dataset.root={tmp_path}", "dataset.val_size=20", "dataset.download=false",
                   "schedule.batch_size=100")
    splits = load_splits(cfg.dataset)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert splits.test.images.shape == (30, 3, 32, 32) and splits.test.images.dtype == torch.uint8
    # pixel (row h, column w, channel c) of image i is X[h, w, c, i]; label 10 is the digit 0
    x_test = mats["test"]["X"]
    assert int(splits.test.images[7, 2, 5, 9]) == int(x_test[5, 9, 2, 7])
    assert torch.equal(splits.test.images, torch.from_numpy(x_test.transpose(3, 2, 0, 1).copy()))
    assert splits.test.labels.tolist() == [(i + 1) % 10 for i in range(30)]
    assert int(splits.train.labels.min()) == 0 and int(splits.train.labels.max()) == 9
    assert not _rows(splits.train.images) & _rows(splits.val.images)
    # pixel values divided by 255, nothing else: no mean/std, no crop, no flip, even in training
    train, _, _ = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0)
    x, y = next(iter(train))
    assert len(x) == 80 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert _rows((x * 255).round().to(torch.uint8)) == _rows(splits.train.images)


@pytest.mark.parametrize("dataset,writer,missing", [
    ("mnist", write_mnist, "train-images-idx3-ubyte"),
    ("svhn", write_svhn, "test_32x32.mat"),
])
def test_missing_files_are_named(tmp_path, make_cfg, dataset, writer, missing):
    writer(tmp_path)
    victim = next(p for p in tmp_path.rglob(f"{missing}*"))
    victim.unlink()
    cfg = make_cfg(f"dataset={dataset}", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError) as err:
        load_splits(cfg.dataset)
    message = str(err.value)
    assert missing in message and str(victim.parent) in message and "\n" not in message


@pytest.mark.parametrize("dataset,corrupt", [
    ("mnist", lambda root: (root / "MNIST/raw/train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40))),  # header promises more than the file holds
    ("mnist", lambda root: (root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")),
    ("svhn", lambda root: (root / "svhn/train_32x32.mat").write_bytes(b"MATLAB 5.0 truncated")),
])
def test_corrupt_files_are_named_and_kept(tmp_path, make_cfg, dataset, corrupt):
    if dataset == "mnist":
        write_mnist(tmp_path, gz=True)
    else:
        write_svhn(tmp_path)
    corrupt(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = make_cfg(f"dataset={dataset}", f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_size=10")
    with pytest.raises(UserError, match="is unreadable or not a") as err:
        load_splits(cfg.dataset)
    assert any(str(tmp_path / p) in str(err.value) for p in before)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing deleted


def test_mnist_format_training(tmp_path, make_cfg):
    write_mnist(tmp_path / "data", n_train=120, n_test=40, gz=True)
    cfg = make_cfg("dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=20", "model=mlp",
                   "model.depth=2", "model.width=32", "schedule=quick", "schedule.epochs=2", "schedule.batch_size=25",
                   "trainer.tensorboard=false", "trainer.checkpoint=false")
    result = train_run(cfg, tmp_path / "run")
    assert result["status"] == "ok" and result["splits"] == {"train": 100, "val": 20, "test": 40}
    assert result["split_sources"]["test"] == "the official test set"
    assert "20 images held out of the training set" in result["split_sources"]["val"]
    assert result["best_epoch"] in (1, 2) and result["epochs"] == 2
    wrong = result["test_error"] / 100 * 40  # an error over the 40 test images is a whole count of them
    assert wrong == pytest.approx(round(wrong), abs=1e-9) and 0 <= round(wrong) <= 40
