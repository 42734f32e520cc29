"""The real MNIST idx files, end to end: read, split, train a small MLP for one epoch through the CLI.

Runs only where the real files lie beside the repository (``../shared/data/mnist``); a user's clone has none.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, train_cli
from erasenet.data import load_splits

REAL_MNIST = REPO.parent / "shared" / "data" / "mnist"
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
# Class counts of MNIST's official test set, as published with the data set.
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

pytestmark = pytest.mark.skipif(not all((REAL_MNIST / f).is_file() for f in FILES),
                                reason=f"the real MNIST files are not in {REAL_MNIST} (only a development checkout "
                                       "has them beside it)")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        shutil.copy(REAL_MNIST / name, raw / name)
    return root


def test_real_mnist_reads_and_splits(make_cfg, mnist_root):
    cfg = make_cfg("dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false")
    splits = load_splits(cfg.dataset)
    assert (len(splits.train.labels), len(splits.val.labels), len(splits.test.labels)) == (55000, 5000, 10000)
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    # The held-out split is stratified: every class keeps about a tenth of its share of 5,000.
    assert torch.bincount(splits.val.labels, minlength=10).min() >= 400
    pixels = torch.cat([splits.train.images, splits.val.images]).float() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=5e-4)  # the normalisation constants in conf/dataset
    assert pixels.std().item() == pytest.approx(0.3081, abs=5e-4)


@pytest.mark.slow
def test_real_mnist_trains_through_the_cli(tmp_path, mnist_root):
    proc = train_cli("dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false", "model=mlp",
                     "model.depth=2", "model.width=64", "schedule=quick", "schedule.epochs=1", "schedule.lr=0.1",
                     "schedule.batch_size=256", "trainer.num_threads=2", "trainer.tensorboard=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    # One epoch of a small MLP on real digits lands near 5% test error; shuffled labels or garbled pixels give ~90%.
    assert result["test_error"] < 12.0
