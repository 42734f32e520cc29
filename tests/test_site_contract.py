"""The ReLU-site contract sees every rectifier that runs, however it is called."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from erasenet.models import Block, declared_sites, list_models
from erasenet.models.zoo import measure
from erasenet.erase.rectifiers import contract_violations, rectifier_calls


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_keeps_the_contract(name):
    assert measure(name).contract == (), name


class TinyBlock(Block):
    """conv-ReLU-conv, shortcut, ReLU: its second ReLU is called in one of several ways."""

    sites = ("act1", "act_out")

    def __init__(self, how: str = "module"):
        super().__init__()
        self.how = how
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.act1, self.act_out = nn.ReLU(), nn.ReLU(inplace=how == "module_inplace")

    def forward(self, x):
        out = self.conv2(self.act1(self.conv1(x))) + x
        if self.how == "F.relu":
            return F.relu(out)
        if self.how == "F.relu_inplace":
            return F.relu(out, inplace=True)
        if self.how == "torch.relu":
            return torch.relu(out)
        if self.how == "Tensor.relu":
            return out.relu()
        if self.how == "Tensor.relu_":
            return out.relu_()
        if self.how == "shared":
            return self.act1(out)
        if self.how == "undeclared":
            return self.act_out(torch.relu(out) - 1)
        return self.act_out(out)


class TinyNet(nn.Module):
    def __init__(self, how: str = "module"):
        super().__init__()
        self.blocks = nn.Sequential(TinyBlock(), TinyBlock(how))

    def forward(self, x):
        return self.blocks(x).mean((1, 2, 3))


def _violations(model):
    return contract_violations(rectifier_calls(model, (2, 6, 6)), declared_sites(model))


@pytest.mark.parametrize("how", ["module", "module_inplace"])
def test_a_model_that_keeps_it_passes(how):
    assert _violations(TinyNet(how)) == []


@pytest.mark.parametrize("how", ["F.relu", "F.relu_inplace", "torch.relu", "Tensor.relu", "Tensor.relu_"])
def test_a_functional_relu_breaks_it(how):
    problems = _violations(TinyNet(how))
    assert len(problems) >= 1
    assert "blocks.1 (TinyBlock)" in problems[0] and "functional ReLU" in problems[0]


def test_a_shared_relu_module_breaks_it():
    problems = _violations(TinyNet("shared"))
    assert problems == ["ReLU module(s) called more than once: blocks.1.act1"]


def test_an_undeclared_extra_relu_breaks_it():
    assert _violations(TinyNet("undeclared"))  # a torch.relu inside the block, before its declared act_out


def test_a_site_that_never_runs_breaks_it():
    model = TinyNet()
    model.blocks[1].sites = ("act1", "act_out", "act_missing")
    model.blocks[1].act_missing = nn.ReLU()
    assert _violations(model) == ["the ReLUs that ran differ from the declared sites; never ran: blocks.1.act_missing"]
