"""The ReLU count: scalar ReLU/PReLU evaluations of one forward pass, against counts worked out by hand."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from erasenet.erase import EraseReLU, ErasePolicy, apply_erase
from erasenet.models import create_model
from erasenet.erase.rectifiers import count_relus, rectifier_calls


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


# ResNet-20 on 3x32x32: a stem ReLU on 16x32x32, then three stages of 3 blocks with 2 ReLUs each,
# on 16x32x32, 32x16x16 and 64x8x8 maps.
STEM, STAGE = 16 * 32 * 32, (16 * 32 * 32, 32 * 16 * 16, 64 * 8 * 8)
RESNET20 = STEM + sum(3 * 2 * s for s in STAGE)


def test_resnet20_unerased():
    assert RESNET20 == 188_416
    assert count_relus(_meta("resnet20"), (3, 32, 32)) == 188_416


def test_mlp12_on_mnist():
    assert count_relus(_meta("mlp12", in_chans=1), (1, 28, 28)) == 11 * 1000 == 11_000


@pytest.mark.parametrize("location,p,removed", [
    # blocks 1, 3, 5, 7, 9: two of stage 1, one of stage 2, two of stage 3 lose their output ReLU
    ("last", 0.5, 2 * STAGE[0] + STAGE[1] + 2 * STAGE[2]),
    ("last", 1.0, 3 * sum(STAGE)),
    ("first", 0.25, STAGE[0] + STAGE[1] + STAGE[2]),  # blocks 1, 5, 9: one of each stage
    ("all", 1.0, 6 * sum(STAGE)),  # only the stem's ReLU is left
])
def test_resnet20_erased(location, p, removed):
    model = _meta("resnet20")
    apply_erase(model, ErasePolicy(EraseReLU(location, p)))
    assert count_relus(model, (3, 32, 32)) == RESNET20 - removed
    if location == "all":
        assert count_relus(model, (3, 32, 32)) == STEM


def test_mlp12_half_erased():
    model = _meta("mlp12", in_chans=1)
    apply_erase(model, ErasePolicy(EraseReLU("last", 0.5)))  # hidden layers 1, 3, 5, 7, 9, 11
    assert count_relus(model, (1, 28, 28)) == 5 * 1000


def test_prelu_counts_like_the_relu_it_replaces():
    model = _meta("resnet20")
    apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu"))
    assert count_relus(model, (3, 32, 32)) == RESNET20
    assert {c.op.rstrip("_") for c in rectifier_calls(model, (3, 32, 32))} == {"relu", "prelu"}


def test_the_count_follows_the_input_size():
    # every map scales with the image area: 64x64 has four times the ReLUs of 32x32
    assert count_relus(_meta("resnet20"), (3, 64, 64)) == 4 * RESNET20


class EveryWayToCallARelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.prelu = nn.PReLU()
        self.six = nn.ReLU6()

    def forward(self, x):
        a = F.relu(x)  # 2*3*4 = 24 elements each
        b = torch.relu(x)
        c = x.relu()
        d = x.clone().relu_()
        e = F.relu(x.clone(), inplace=True)
        f = self.act(x.clone())
        g = self.prelu(x)
        h = F.prelu(x, torch.tensor([0.1], device=x.device))
        i = self.six(x)  # ReLU6 is not counted
        return a + b + c + d + e + f + g + h + i + x[:, :1].relu()  # one channel: 12 more


def test_functional_and_in_place_calls_count_too():
    model = EveryWayToCallARelu()
    assert count_relus(model, (2, 3, 4)) == 8 * 24 + 12
    calls = rectifier_calls(model, (2, 3, 4))
    assert [c.module for c in calls] == ["", "", "", "", "", "act", "prelu", "", ""]


def test_counting_leaves_a_real_model_as_it_was():
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_relus(model, (3, 32, 32)) == RESNET20
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not p.is_meta for p in model.parameters())
