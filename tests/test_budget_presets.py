"""Every ReLU-budget preset (deepreduce2021, snl2022, autorep2023, relu_budget) builds its network at each of its
budgets and trains in miniature: each swept configuration is checked and built, and the first trains for a few steps
on small data in the real file formats (CIFAR-100's pickles, MNIST's idx files, the digits), distilled from a
miniature run of the preset's own teacher where the preset distils. No preset may be refused at any of its budgets."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import write_cifar
from dataset_formats import write_mnist
from erasenet.common.config import check_config
from erasenet.erase.gates import gate_schedule
from erasenet.erase.rectifiers import count_relus
from erasenet.training.build import build_model, image_shape
from erasenet.training.run import train_run

CONF = Path(__file__).resolve().parents[1] / "erasenet" / "conf" / "experiment"
FAMILIES = ("deepreduce2021", "snl2022", "autorep2023", "relu_budget")
PRESETS = sorted(str(p.relative_to(CONF).with_suffix("")) for family in FAMILIES
                 for p in (CONF / family).glob("*.yaml"))
# The teachers' presets train first: the others distil from (or start from) their runs
TEACHERS = ("snl2022/resnet18_c100_original", "deepreduce2021/resnet18_c100_original",
            "relu_budget/mnist_mlp6_original")
MINIATURE = ("dataset.download=false", "schedule.batch_size=25", "schedule.base_batch_size=25",
             "schedule.eval_batch_size=200", "trainer.num_threads=1", "trainer.tensorboard=false",
             "trainer.progress=off")


def split_values(text: str) -> list[str]:
    """A sweep's comma-separated values, commas inside brackets kept (``[1],[1,2]``)."""
    values, depth, current = [], 0, ""
    for char in str(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return values + [current]


def swept(preset: str) -> list[list[str]]:
    """The overrides of each configuration the preset's sweep trains, seeds aside."""
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = {k: split_values(v) for k, v in (cfg.hydra.sweeper.params or {}).items() if k != "seed"}
    return [[f"{k}={v}" for k, v in zip(params, combo)] for combo in itertools.product(*params.values())]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Small data in the real formats, and a place for the sweeps (the teachers' runs among them)."""
    root = tmp_path_factory.mktemp("budget_presets")
    write_cifar(root / "data", "cifar100", n_train=200, n_test=20)  # two images of each class
    write_mnist(root / "data", n_train=40, n_test=16)
    return root


def miniature(preset: str, overrides: list[str], root: Path):
    """The preset's config at ``overrides``, shrunk to a few steps on ``root``'s data, its teacher (a sweep below
    the command's folder) looked up below ``root`` instead."""
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}", *overrides, *MINIATURE,
                                                       f"dataset.root={root / 'data'}", "seed=0"])
    cfg.dataset.val_size = cfg.dataset.num_classes  # the smallest stratified hold-out: one image of each class
    epochs = 2 if cfg.erase.method == "gates" else 1  # gate learning and at least one epoch of fine-tuning
    cfg.schedule.epochs, cfg.schedule.milestones = epochs, []
    if cfg.erase.method == "gates":
        cfg.erase.gate_epochs = 1
        if cfg.schedule.finetune_phase.epochs is not None:  # SNL's fixed fine-tuning: one epoch after the gates'
            cfg.schedule.finetune_phase.epochs = 1
    if cfg.distill.teacher:
        cfg.distill.teacher = str(root / OmegaConf.to_container(cfg.distill, resolve=True)["teacher"])
    return cfg


def run_dir(root: Path, cfg, overrides: list[str]) -> Path:
    return root / "multirun" / cfg.name / (",".join(overrides).replace("/", "%") + ",seed=0")


@pytest.fixture(scope="module")
def teachers(workspace):
    for preset in TEACHERS:
        for overrides in swept(preset):
            cfg = miniature(preset, overrides, workspace)
            assert train_run(cfg, run_dir(workspace, cfg, overrides))["status"] == "ok"
    return workspace


def test_the_presets_are_found():
    assert {"deepreduce2021/resnet18_c100_7k", "deepreduce2021/resnet18_c100_criticality",
            "relu_budget/digits_resnet20_methods", "relu_budget/mnist_mlp6_gates_v3"} <= set(PRESETS)


# snl2022/resnet18_c100_<N>k: the gates preset at one budget, each with its published value; built, not trained
ONE_BUDGET = [p for p in PRESETS if re.fullmatch(r"snl2022/resnet18_c100_\d+k", p)]


@pytest.mark.parametrize("preset", ONE_BUDGET)
def test_each_snl_budget_preset_builds_at_its_budget_and_joins_the_sweep(preset):
    (overrides,) = swept(preset)
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"])
    check_config(cfg)
    assert overrides == [f"erase.budget={cfg.erase.budget:g}"] and cfg.name == "snl2022_resnet18_c100_gates"
    assert cfg.paper.relus == cfg.erase.budget and 20 < cfg.paper.test_error < 35 and "snl series" in cfg.paper.source
    with torch.device("meta"):
        model, _ = build_model(cfg)
        schedule = gate_schedule(model, OmegaConf.to_container(cfg.erase), image_shape(cfg), cfg.schedule.epochs)
    assert schedule is not None and count_relus(model, image_shape(cfg)) == 491_520


@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in TEACHERS and p not in ONE_BUDGET])
def test_each_budget_preset_builds_at_every_budget_and_trains_in_miniature(teachers, preset):
    """Every swept configuration is checked and built, with the count it plans; the sweep's first trains (the
    build is where a budget is refused, and the training code does not depend on the budget's value)."""
    root = teachers
    planned = {}
    for overrides in swept(preset):
        cfg = miniature(preset, overrides, root)
        check_config(cfg)
        with torch.device("meta"):
            model, record = build_model(cfg)
            # what refuses a budget at start-up (below the ungated ReLUs, at or above the network's count)
            gate_schedule(model, OmegaConf.to_container(cfg.erase), image_shape(cfg), cfg.schedule.epochs)
        planned[tuple(overrides)] = count_relus(model, image_shape(cfg))
    overrides = swept(preset)[0]
    cfg = miniature(preset, overrides, root)
    result = train_run(cfg, run_dir(root, cfg, overrides))
    assert result["status"] == "ok", (overrides, result.get("failure"))
    assert result["relus"] <= result["relus_original"]
    if cfg.erase.method == "gates":  # the count after binarising fits the budget
        assert result["relus"] <= float(cfg.erase.budget) or cfg.erase.budget <= 1
    else:
        assert result["relus"] == planned[tuple(overrides)]
    if cfg.distill.teacher:
        assert result["provenance"]["teacher"]["path"].startswith(str(root))

