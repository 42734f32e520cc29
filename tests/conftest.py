"""Shared fixtures: composed configs (through Hydra's compose API) and tiny CIFAR-format data."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from erasenet.common.config import register_configs

torch.set_num_threads(2)
register_configs()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_cfg():
    """``make_cfg(*overrides)``: the composed, validated config a command line would give."""

    def make(*overrides: str):
        with initialize_config_module(config_module="erasenet.conf", version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return make


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """Write a small dataset in the real CIFAR python-pickle layout under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    classes, label_key = (10, "labels") if name == "cifar10" else (100, "fine_labels")
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_files = ["test_batch"] if name == "cifar10" else ["test"]

    def dump(path: Path, n: int) -> None:
        labels = (np.arange(n) % classes).tolist()
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: labels,
                 "batch_label": "synthetic", "filenames": [f"img{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [c // 5 for c in labels]
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    for f in train_files:
        dump(folder / f, n_train // len(train_files))
    for f in test_files:
        dump(folder / f, n_test)
    return root


def run_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m erasenet.train ARGS`` as a user would, in ``cwd``."""
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "erasenet.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
