"""Finding a dataset's files: common variant layouts load, and a failed look-up leaves nothing behind."""

from __future__ import annotations

import shutil

import pytest

from conftest import write_cifar
from dataset_formats import write_mnist, write_svhn
from erasenet.data import load_splits
from erasenet.data.files import require_files
from erasenet.common.errors import UserError


def load(make_cfg, dataset, root):
    return load_splits(make_cfg(f"dataset={dataset}", f"dataset.root={root}", "dataset.download=false",
                                "dataset.val_size=10").dataset)


def test_cifar_found_when_root_is_the_extracted_folder_or_a_per_dataset_folder(tmp_path, make_cfg):
    write_cifar(tmp_path / "a")
    assert len(load(make_cfg, "cifar10", tmp_path / "a" / "cifar-10-batches-py").test) == 40
    write_cifar(tmp_path / "b" / "cifar10")
    assert len(load(make_cfg, "cifar10", tmp_path / "b").test) == 40


def test_mnist_found_under_dotted_names_in_a_lowercase_folder(tmp_path, make_cfg):
    write_mnist(tmp_path, n_train=50, n_test=20)
    (tmp_path / "MNIST" / "raw").rename(tmp_path / "mnist")
    shutil.rmtree(tmp_path / "MNIST")
    for path in (tmp_path / "mnist").iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))  # train-images.idx3-ubyte
    splits = load(make_cfg, "mnist", tmp_path)
    assert (len(splits.train), len(splits.test)) == (40, 20)


def test_svhn_found_directly_under_the_root(tmp_path, make_cfg):
    write_svhn(tmp_path)
    for path in (tmp_path / "svhn").iterdir():
        path.rename(tmp_path / path.name)
    assert len(load(make_cfg, "svhn", tmp_path).test) == 30


def test_the_error_lists_where_it_looked_and_what_it_found(tmp_path, make_cfg):
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for path in folder.glob("data_batch_*"):
        path.rename(path.with_name(path.name + ".bak"))
    with pytest.raises(UserError) as err:
        load(make_cfg, "cifar10", tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"missing from {folder}: data_batch_1, data_batch_2" in message
    assert f"Also looked in {tmp_path}, {tmp_path / 'cifar10' / 'cifar-10-batches-py'}" in message
    assert f"{folder} holds 1 of the 6 files (data_batch_1.bak, data_batch_2.bak" in message


def test_a_failed_download_leaves_no_folders_behind(tmp_path):
    from torchvision.datasets.utils import download_url

    root = tmp_path / "not" / "there"

    def download() -> None:  # like torchvision's dataset downloaders: make the root, then fetch (refused here)
        download_url("http://127.0.0.1:9/cifar-10-python.tar.gz", str(root))

    with pytest.raises(UserError, match="could not be downloaded"):
        require_files("cifar10", root / "cifar-10-batches-py", ["test_batch"], download=download, how_to_get="")
    assert list(tmp_path.iterdir()) == []
