"""fb.resnet.torch's colour augmentation: the arithmetic against its definition, the draws, and the folder loader."""

import pytest
import torch

from dataset_formats import write_image_folder
from erasenet.common.config import check_config
from erasenet.data import build_loaders
from erasenet.data.color import PCA_EIGVAL, PCA_EIGVEC, ColorAugment, color_augment
from erasenet.common.errors import UserError
from erasenet.training.run import train_run


def _fb_reference(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """One image through fb.resnet.torch's steps, written out one at a time, the jitters in a random order."""
    def gray(img):
        g = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        return g.expand(3, *g.shape)

    img, factors, weights = image.clone(), params[:3], params[3:]
    for k in torch.randperm(3).tolist():
        towards = {0: torch.zeros_like(img), 1: torch.full_like(img, float(gray(img)[0].mean())), 2: gray(img)}[k]
        img = img * factors[k] + (1 - factors[k]) * towards
    eigvec, eigval = torch.tensor(PCA_EIGVEC), torch.tensor(PCA_EIGVAL)
    return img + (eigvec * weights.view(1, 3) * eigval.view(1, 3)).sum(1).view(3, 1, 1)


def test_batched_augmentation_equals_fb_resnet_torch_image_by_image():
    torch.manual_seed(0)
    augment = ColorAugment(0.4, 0.1)
    x = torch.rand(16, 3, 7, 9)
    params = torch.stack([augment.draw() for _ in range(16)])
    for _ in range(3):  # each time every image's jitters run in another random order
        expected = torch.stack([_fb_reference(img, p) for img, p in zip(x, params)])
        assert torch.allclose(augment.apply(x, params), expected, atol=1e-6)


def test_each_part_by_hand():
    x = torch.rand(1, 3, 4, 5)
    only = lambda b, c, s, w=(0.0, 0.0, 0.0): torch.tensor([[b, c, s, *w]])  # noqa: E731
    jitter = ColorAugment(0.4, 0.0)
    assert torch.allclose(jitter.apply(x, only(1.25, 1, 1)), 1.25 * x)
    gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    assert torch.allclose(jitter.apply(x, only(1, 1, 0.7)), 0.7 * x + 0.3 * gray)
    assert torch.allclose(jitter.apply(x, only(1, 0.0, 1)), gray.mean().expand_as(x))  # contrast 0: flat gray
    lighting = ColorAugment(0.0, 0.1)
    shifted = lighting.apply(x, only(1, 1, 1, w=(1.0, 0.0, 0.0)))
    assert torch.allclose(shifted - x, 0.2175 * torch.tensor([-0.5675, -0.5808, -0.5836]).view(1, 3, 1, 1))
    assert color_augment(0, 0) is None and color_augment(0.4, 0) == ColorAugment(0.4, 0.0)


def test_draws_follow_the_recipe():
    torch.manual_seed(1)
    params = torch.stack([ColorAugment(0.4, 0.1).draw() for _ in range(4000)])
    factors, weights = params[:, :3], params[:, 3:]
    assert float(factors.min()) >= 0.6 and float(factors.max()) <= 1.4
    assert abs(float(factors.mean()) - 1.0) < 0.01
    assert abs(float(weights.std()) - 0.1) < 0.005 and abs(float(weights.mean())) < 0.005


def _cfg(make_cfg, path, *extra):
    return make_cfg("dataset=imagenet", f"dataset.path={path}", "dataset.num_classes=2", "dataset.val_size=2",
                    "dataset.image_size=16", "dataset.resize_size=16", "schedule.batch_size=4", "dataset.workers=0",
                    *extra)


def _images(loader, epoch=1) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    return [img for x, _ in loader for img in x]


def test_folder_loader_colour_is_per_image_and_independent_of_workers_and_ranks(tmp_path, make_cfg):
    path = write_image_folder(tmp_path / "tree", classes=2, train_per_class=7, val_per_class=2)
    plain = _cfg(make_cfg, path)
    color = _cfg(make_cfg, path, "dataset.color_jitter=0.4", "dataset.lighting=0.1")
    check_config(color)
    train_plain, evals_plain, _ = build_loaders(plain.dataset, plain.schedule, device="cpu", seed=0)
    train, evals, _ = build_loaders(color.dataset, color.schedule, device="cpu", seed=0)
    augmented = _images(train)
    assert len(augmented) == 12 and all(not torch.equal(a, b) for a, b in zip(augmented, _images(train_plain)))
    for part in ("val", "test"):  # evaluation is never augmented
        assert all(torch.equal(a, b) for a, b in zip(_images(evals[part]), _images(evals_plain[part])))
    color.dataset.workers = 2
    with_workers, _, _ = build_loaders(color.dataset, color.schedule, device="cpu", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(augmented, _images(with_workers)))
    single = sorted(bytes(img.numpy()) for img in augmented)
    sharded = []
    for rank in range(2):
        shard, _, _ = build_loaders(color.dataset, color.schedule, device="cpu", seed=0, rank=rank, world_size=2)
        sharded += [bytes(img.numpy()) for img in _images(shard)]
    assert sorted(sharded) == single  # each image gets the same colour whichever rank loads it


def test_colour_knobs_are_checked_and_train(tmp_path, make_cfg):
    for args, expected in [(("dataset=imagenet", "dataset.color_jitter=1.5"), "color_jitter must lie in"),
                           (("dataset=imagenet", "dataset.lighting=-0.1"), "lighting must be >= 0"),
                           (("dataset=cifar10", "dataset.lighting=0.1"), "apply to ImageFolder datasets")]:
        with pytest.raises(UserError, match=expected):
            check_config(make_cfg(*args))
    path = write_image_folder(tmp_path / "tree", classes=2, train_per_class=6, val_per_class=2)
    cfg = _cfg(make_cfg, path, "dataset.color_jitter=0.4", "dataset.lighting=0.1", "model=mlp", "model.depth=2",
               "model.width=16", "schedule=quick", "schedule.epochs=1", "trainer.tensorboard=false",
               "trainer.checkpoint=false")
    result = train_run(cfg, tmp_path / "run")
    assert result["status"] == "ok" and result["splits"]["train"] == 10
