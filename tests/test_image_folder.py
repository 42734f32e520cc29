"""ImageFolder (ImageNet-style) trees: nested subsets, splits, the folder loader, errors, training, saved indexes."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import train_cli
from dataset_formats import write_image_folder
from erasenet.common.config import check_config
from erasenet.data import build_loaders
from erasenet.data.imagefolder import build_folder_splits, nested_subset, read_index
from erasenet.common.errors import UserError
from erasenet.training.run import train_run


def _folder_cfg(make_cfg, path, *extra, dataset="imagenet"):
    return make_cfg(f"dataset={dataset}", f"dataset.path={path}", "dataset.num_classes=3", "dataset.val_size=6",
                    "dataset.image_size=32", "dataset.resize_size=36", "dataset.workers=0", *extra)


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
    proc = train_cli("dataset=imagenet", f"dataset.root={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert f"{tmp_path}/imagenet" in proc.stderr and "image-net.org" in proc.stderr


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
