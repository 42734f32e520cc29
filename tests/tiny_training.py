"""Tiny training pieces the speed and training tests share: digits loaders, small ResNets, one epoch."""

import pytest
import torch

from erasenet.data import TensorLoader
from erasenet.data.digits import load_digits_splits
from erasenet.training.accel import Accel
from erasenet.training.engine import build_optimizer, build_scheduler, train_one_epoch
from erasenet.training.state import Learner
from erasenet.models import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(180, 0)


@pytest.fixture
def schedule(make_cfg):
    return make_cfg("schedule=quick").schedule


def small_loader(digits, seed=0, n=128, batch=32):
    return TensorLoader(digits.train.subset(range(n)), batch, train=True, crop_padding=1, mean=[0.3], std=[0.4],
                        seed=seed)


def resnet(seed, dtype=torch.float32, depth=20, **options):
    torch.manual_seed(seed)
    return create_model("resnet", depth=depth, num_classes=10, in_chans=1, **options).to(dtype)


def train(model, loader, schedule, accel=None, epochs=1):
    opt = build_optimizer(model, schedule)
    sched = build_scheduler(opt, schedule, len(loader))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        learner = Learner(model, opt, sched, accel or Accel(next(model.parameters()).device))
        out = train_one_epoch(learner, loader, epoch=epoch)
    return out, opt


def assert_same_weights(a, b, atol):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=atol, rtol=0), name


def double_batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return ListLoader((x.double(), y) for x, y in loader)


class ListLoader(list):
    """Fixed batches with the loader interface ``train_one_epoch`` uses."""

    def set_epoch(self, epoch):
        pass


