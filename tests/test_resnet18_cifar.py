"""The CIFAR ResNet-18 of SNL and DeepReDuce: their ReLU count, the usual parameter count, torchvision's
BasicBlock ResNet-18 with a 3x3 stem and no max pool, computed the same."""

import torch
import torch.nn as nn
import torchvision

from erasenet.models import create_model
from erasenet.erase.rectifiers import count_relus


def test_counts_557056_relus_at_32x32_like_snl_and_deepreduce():
    with torch.device("meta"):
        model = create_model("resnet18_cifar", num_classes=100)
    # stem 64x32x32; four ReLUs per stage of two blocks at 64x32x32, 128x16x16, 256x8x8, 512x4x4
    by_hand = 64 * 32 * 32 + 4 * (64 * 32 * 32 + 128 * 16 * 16 + 256 * 8 * 8 + 512 * 4 * 4)
    assert count_relus(model, (3, 32, 32)) == by_hand == 557_056


def test_has_the_usual_11220132_parameters_for_100_classes():
    assert sum(p.numel() for p in create_model("resnet18_cifar", num_classes=100).parameters()) == 11_220_132


def test_is_torchvision_resnet18_with_a_3x3_stem_and_no_max_pool():
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=100)
    theirs.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = nn.Identity()
    ours = create_model("resnet18_cifar", num_classes=100)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in other.values()]  # same tensors, in forward order
    ours.load_state_dict(dict(zip(mine, other.values())))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)
