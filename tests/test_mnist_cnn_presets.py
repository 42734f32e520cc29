"""The CNN comparison on real MNIST (experiment=relu_budget/mnist_cnn): each arm, at each level and tuning trial
its driver (scripts/relu_budget_mnist_cnn.py) sets, plans the count the preset's header gives and trains in
miniature on MNIST's idx files, the distilled arms from a miniature run of the original."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dataset_formats import write_mnist
from erasenet.common.config import check_config
from erasenet.erase.gates import gate_schedule
from erasenet.erase.rectifiers import count_relus
from erasenet.training.build import build_model, image_shape
from erasenet.training.run import train_run
from test_budget_presets import CONF, miniature, run_dir

# experiment=relu_budget/mnist_cnn: its arms (erase=mnist_cnn/<arm>), at the counts its header plans
CNN_ARMS = {"original": 7808, "eraserelu_p05": 5728, "eraserelu_p1": 4688, "cull_stage1": 4672, "thin": 4688,
            "gates": None, "poly": None}  # the gated arms: at most erase.budget
CNN_DRIVER = Path(__file__).resolve().parents[1] / "scripts" / "relu_budget_mnist_cnn.py"


@functools.cache
def cnn_driver():
    spec = importlib.util.spec_from_file_location("relu_budget_mnist_cnn", CNN_DRIVER)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cnn_original(tmp_path_factory):
    """MNIST's idx files in miniature, and the original's run of seed 0 in the comparison's sweep."""
    root = tmp_path_factory.mktemp("mnist_cnn")
    write_mnist(root / "data", n_train=40, n_test=16)
    cfg = miniature("relu_budget/mnist_cnn", ["erase=mnist_cnn/original"], root)
    assert train_run(cfg, run_dir(root, cfg, ["erase=mnist_cnn/original"]))["status"] == "ok"
    return root


def test_the_mnist_cnn_comparison_has_every_arm_its_driver_runs():
    arms = {p.stem for p in (CONF.parent / "erase" / "mnist_cnn").glob("*.yaml")}
    driver = cnn_driver()
    named = {arm.split("/")[1] for arm, _, _ in driver.TRIALS.values()}
    named |= {a.split("/")[1] for overrides in driver.FINALS.values() for a in overrides[0].split("=")[1].split(",")}
    assert arms == set(CNN_ARMS) == named | {"original"}


@pytest.mark.parametrize("arm", sorted(CNN_ARMS))
def test_each_arm_of_the_mnist_cnn_comparison_plans_its_count_and_trains(cnn_original, arm):
    """Each arm at each level the driver sets and with each tuning trial is checked and built at the planned
    count; the arm then trains in miniature, from and distilled from the miniature original where it learns."""
    driver = cnn_driver()
    method = next((m for m, (a, _, _) in driver.TRIALS.items() if a == f"mnist_cnn/{arm}"), None)
    variants = [[]]
    if arm in ("gates", "poly"):
        variants = [[f"erase.budget={level}"] for level in driver.LEVELS]
    if method is not None:
        _, knob, values = driver.TRIALS[method]
        variants = [v + [f"{knob}={value}"] for v in variants for value in values]
    for variant in variants:
        cfg = miniature("relu_budget/mnist_cnn", [f"erase=mnist_cnn/{arm}", *variant], cnn_original)
        check_config(cfg)
        with torch.device("meta"):
            model, _ = build_model(cfg)
            gate_schedule(model, OmegaConf.to_container(cfg.erase), image_shape(cfg), cfg.schedule.epochs)
        counted = count_relus(model, image_shape(cfg))
        assert counted == (CNN_ARMS[arm] or CNN_ARMS["original"]), (variant, counted)
    overrides = [f"erase=mnist_cnn/{arm}", *variants[-1]]
    cfg = miniature("relu_budget/mnist_cnn", overrides, cnn_original)
    result = train_run(cfg, run_dir(cnn_original, cfg, overrides))
    assert result["status"] == "ok", result.get("failure")
    assert result["relus"] == CNN_ARMS[arm] if CNN_ARMS[arm] else result["relus"] <= cfg.erase.budget
    assert (result["polys"] > 0) == (arm == "poly")
    assert bool(cfg.distill.teacher) == (arm in ("cull_stage1", "thin", "gates", "poly"))
