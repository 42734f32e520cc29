"""MNIST, SVHN and ImageFolder datasets from files in their real formats: readers, splits, loaders, errors, training."""

import gzip
import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import run_cli
from dataset_formats import write_image_folder, write_mnist, write_svhn
from erasenet.config import check_config
from erasenet.data import build_loaders, load_splits
from erasenet.data.imagefolder import build_folder_splits, nested_subset, read_index
from erasenet.errors import UserError
from erasenet.run import train_run


def _rows(images: torch.Tensor) -> set:
    return {bytes(x.numpy()) for x in images}


def _folder_cfg(make_cfg, path, *extra, dataset="imagenet"):
    return make_cfg(f"dataset={dataset}", f"dataset.path={path}", "dataset.num_classes=3", "dataset.val_size=6",
                    "dataset.image_size=32", "dataset.resize_size=36", "dataset.workers=0", *extra)


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


def test_nested_subsets_are_nested_stratified_and_deterministic():
    labels = np.repeat(np.arange(7), [40, 35, 50, 12, 9, 100, 41])
    subsets = {f: nested_subset(labels, f, seed=3) for f in (0.1, 0.2, 0.3)}
    assert set(subsets[0.1]) < set(subsets[0.2]) < set(subsets[0.3])
    counts = np.bincount(labels)
    for f, index in subsets.items():
        assert np.bincount(labels[index], minlength=7).tolist() == [max(1, int(np.floor(f * n + 0.5))) for n in counts]
        assert np.array_equal(index, nested_subset(labels, f, seed=3))
    assert not np.array_equal(subsets[0.3], nested_subset(labels, 0.3, seed=4))


def test_image_folder_splits(tmp_path):
    path = write_image_folder(tmp_path / "tree", classes=3, train_per_class=20, val_per_class=4)
    full = build_folder_splits(path, num_classes=3, val_size=6, split_seed=0, subset=1.0)
    assert full.classes == ["n00000000", "n00000001", "n00000002"]
    assert (len(full.train), len(full.val), len(full.test)) == (54, 6, 12)
    assert np.bincount(full.val.labels).tolist() == [2, 2, 2]
    train, val, test = (set(s.relative()) for s in (full.train, full.val, full.test))
    assert not train & val and not (train | val) & test
    assert all(p.startswith("val/") for p in test) and all(p.startswith("train/") for p in train | val)
    half = build_folder_splits(path, num_classes=3, val_size=6, split_seed=0, subset=0.5)
    assert set(half.val.relative()) == val  # the validation split does not depend on the fraction
    assert set(half.train.relative()) < train and np.bincount(half.train.labels).tolist() == [9, 9, 9]


def test_image_folder_loader_shapes_and_exact_eval_sharding(tmp_path, make_cfg):
    path = write_image_folder(tmp_path / "tree", classes=3, train_per_class=8, val_per_class=5)
    cfg = _folder_cfg(make_cfg, path, "schedule.eval_batch_size=4", "schedule.batch_size=5")
    check_config(cfg)
    train, evals, sizes = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0)
    assert sizes == {"train": 18, "val": 6, "test": 15} and len(train) == 4 and len(evals["test"]) == 4
    x, y = next(iter(train))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) <= 2
    # normalised with ImageNet's mean and std: the uint8 grid comes back exactly
    pixels = (x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406])
              .view(1, 3, 1, 1)) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and float(pixels.min()) > -1e-3
    single = Counter(bytes(img.numpy()) for b, _ in evals["test"] for img in b)
    for world in (2, 3):
        seen = Counter()
        for rank in range(world):
            _, shard_evals, _ = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0, rank=rank,
                                              world_size=world)
            seen.update(bytes(img.numpy()) for b, _ in shard_evals["test"] for img in b)
        assert seen == single and sum(seen.values()) == 15  # every test image exactly once, no padding


def test_image_folder_augmentation_is_a_function_of_seed_and_epoch(tmp_path, make_cfg):
    path = write_image_folder(tmp_path / "tree", classes=2, train_per_class=6, val_per_class=1)
    cfg = make_cfg("dataset=imagenet", f"dataset.path={path}", "dataset.num_classes=2", "dataset.val_size=0",
                   "dataset.image_size=16", "dataset.resize_size=16", "schedule.batch_size=4")

    def batches(workers, epoch, seed=0):
        cfg.dataset.workers = workers
        train, _, _ = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=seed)
        train.set_epoch(epoch)
        return torch.cat([x for x, _ in train])

    a = batches(0, 1)
    assert torch.equal(a, batches(2, 1))  # worker processes change nothing
    assert not torch.equal(a, batches(0, 2)) and not torch.equal(a, batches(0, 1, seed=1))


def test_image_folder_errors_read_well(tmp_path, make_cfg):
    cfg = _folder_cfg(make_cfg, tmp_path / "nowhere")
    with pytest.raises(UserError, match="never downloads ImageNet") as err:
        build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0)
    assert str(tmp_path / "nowhere" / "train") in str(err.value)
    path = write_image_folder(tmp_path / "tree", classes=3, train_per_class=4, val_per_class=2)
    with pytest.raises(UserError, match="dataset.num_classes=3"):
        build_loaders(_folder_cfg(make_cfg, path, "dataset.num_classes=5").dataset, cfg.schedule, device="cpu",
                      seed=0)
    broken = path / "val" / "n00000001" / "val_1_0.JPEG"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = _folder_cfg(make_cfg, path, "dataset.workers=1", "dataset.val_size=0")
    _, evals, _ = build_loaders(cfg.dataset, cfg.schedule, device="cpu", seed=0)
    with pytest.raises(UserError) as err:
        list(evals["test"])
    message = str(err.value)
    assert message.startswith(str(broken)) and "Traceback" not in message and broken.is_file()


def test_new_dataset_knobs_are_checked(make_cfg):
    for args, expected in [(("dataset=imagenet_subset", "dataset.subset=0"), "outside (0, 1]"),
                           (("dataset=cifar10", "dataset.subset=0.5"), "apply to ImageFolder datasets"),
                           (("dataset=imagenet", "dataset.resize_size=100"), "resize_size"),
                           (("dataset=imagenet", "dataset.path="), "dataset.path is empty")]:
        with pytest.raises(UserError, match=expected.replace("(", r"\(").replace("]", r"\]")):
            check_config(make_cfg(*args))
    cfg = make_cfg("dataset=imagenet_subset", "dataset.root=/data")
    assert (cfg.dataset.path, cfg.dataset.subset, cfg.dataset.image_size, cfg.dataset.resize_size) == \
        ("/data/imagenet", 0.1, 224, 256)


def test_missing_imagenet_on_the_command_line(tmp_path):
    proc = run_cli("dataset=imagenet", f"dataset.root={tmp_path}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert f"{tmp_path}/imagenet" in proc.stderr and "image-net.org" in proc.stderr


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


def test_image_folder_training_saves_a_reusable_index(tmp_path, make_cfg):
    path = write_image_folder(tmp_path / "tree", classes=3, train_per_class=12, val_per_class=3)
    tiny = ("dataset.subset=0.5", "model=mlp", "model.depth=2", "model.width=32", "schedule=quick",
            "schedule.epochs=2", "schedule.batch_size=6", "trainer.tensorboard=false", "trainer.checkpoint=false")
    result = train_run(_folder_cfg(make_cfg, path, *tiny, dataset="imagenet_subset"), tmp_path / "run")
    assert result["status"] == "ok" and result["dataset"] == "imagenet_subset"
    assert result["splits"] == {"train": 15, "val": 6, "test": 9}
    assert result["split_sources"]["test"] == "val/ (the official validation set)"
    assert "50%" in result["split_sources"]["train"] and "train/" in result["split_sources"]["val"]
    index = tmp_path / "run" / "data_index"
    lines = {name: (index / f"{name}.txt").read_text().splitlines() for name in ("classes", "train", "val", "test")}
    assert [len(v) for v in lines.values()] == [3, 15, 6, 9]
    again = read_index(index, path, num_classes=3)
    drawn = build_folder_splits(path, num_classes=3, val_size=6, split_seed=0, subset=0.5)
    for part in ("train", "val", "test"):
        assert getattr(again, part).relative() == getattr(drawn, part).relative() == lines[part]
        assert np.array_equal(getattr(again, part).labels, getattr(drawn, part).labels)
    reused = train_run(_folder_cfg(make_cfg, path, *tiny, f"dataset.index={index}", dataset="imagenet_subset"),
                       tmp_path / "again")
    assert reused["splits"] == result["splits"]
    assert reused["split_sources"]["val"].endswith(f"as listed in {index}/val.txt")
    assert json.loads((tmp_path / "again" / "result.json").read_text())["test_error"] == result["test_error"]


def test_eval_transform_is_an_exact_centre_crop(tmp_path):
    from PIL import Image

    from erasenet.data.folder_loader import folder_transform, read_rgb

    pixels = np.random.default_rng(0).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[..., 1]).save(tmp_path / "gray.png")
    image = read_rgb(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    out = folder_transform(False, 32, 36, flip=False)(image)  # resize to the same size: a no-op
    assert torch.equal(out, image[:, 2:34, 2:34])
    gray = read_rgb(tmp_path / "gray.png")
    assert gray.shape == (3, 36, 36) and torch.equal(gray[0], gray[2])
    assert folder_transform(True, 24, 36, flip=True)(image).shape == (3, 24, 24)
