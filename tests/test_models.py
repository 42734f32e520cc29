"""The model zoo: the ReLU-site contract for every registered model, shapes, exact sizes."""

import pytest
import torch

from erasenet.models import create_model, declared_sites, list_models
from erasenet.models.zoo import measure, relu_call_order


@pytest.mark.parametrize("name", list_models())
def test_relu_site_contract(name):
    """Every nn.ReLU the forward pass calls is a declared site, called once, in declared order.

    Measured on the meta device (one forward pass with hooks), so even ResNet-1202 is cheap; a ReLU
    module shared under two names gets two hooks and shows up twice.
    """
    stats = measure(name)
    assert stats.relu_calls == stats.declared_sites
    assert len(set(stats.relu_calls)) == len(stats.relu_calls)
    assert stats.blocks >= 1 and all(len(sites) >= 1 for sites in stats.block_sites)


def test_contract_catches_a_shared_relu():
    model, x = create_model("resnet20"), torch.randn(2, 3, 32, 32)
    assert relu_call_order(model, x) == declared_sites(model)
    model.layer1[0].act_out = model.layer1[0].act1  # one module called twice
    assert relu_call_order(model, x) != declared_sites(model)


def cifar_resnet_params(n: int, in_chans: int = 3, classes: int = 10) -> int:
    """Parameters of a 6n+2 CIFAR ResNet with option-A shortcuts, counted by hand from the architecture."""
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731  3x3, no bias
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_chans, 16) + bn(16)
    for cin, c in ((16, 16), (16, 32), (32, 64)):
        total += conv(cin, c) + (2 * n - 1) * conv(c, c) + 2 * n * bn(c)
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth,published", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7),
                                             (1202, 19.4)])
def test_cifar_resnet_parameter_counts(depth, published):
    expected = cifar_resnet_params((depth - 2) // 6)
    with torch.device("meta"):
        model = create_model(f"resnet{depth}")
    assert sum(p.numel() for p in model.parameters()) == expected
    digits = len(str(published).split(".")[1])
    assert round(expected / 1e6, digits) == published


def test_exact_resnet20_count():
    assert sum(p.numel() for p in create_model("resnet20").parameters()) == 269_722


def test_option_b_projection_adds_parameters():
    a = sum(p.numel() for p in create_model("resnet20", shortcut="A").parameters())
    b = sum(p.numel() for p in create_model("resnet20", shortcut="B").parameters())
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("name,shape,classes", [("resnet20", (3, 32, 32), 100), ("resnet20", (1, 8, 8), 10),
                                                ("resnet32", (3, 32, 32), 10)])
def test_forward_shapes(name, shape, classes):
    model = create_model(name, num_classes=classes, in_chans=shape[0])
    assert model(torch.randn(4, *shape)).shape == (4, classes)


def test_unknown_model_lists_choices():
    with pytest.raises(KeyError, match="resnet20"):
        create_model("resnet21")


# --- shared pieces and options of the families ------------------------------------------------------------------

def test_head_mean_equals_adaptive_average_pooling():
    from erasenet.models.base import Head

    torch.manual_seed(0)
    head, x = Head(8, 5), torch.randn(3, 8, 5, 7)
    expected = head.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("form", ["pre", "post"])
def test_bottleneck_stride_moves_the_stride_only(form):
    torch.manual_seed(0)
    nets = {s: create_model("preact_resnet", depth=11, block="bottleneck", shortcut="B", form=form,
                            bottleneck_stride=s) for s in ("3x3", "1x1")}
    first = {s: net.layer2[0] for s, net in nets.items()}
    assert (first["3x3"].conv1.stride, first["3x3"].conv2.stride) == ((1, 1), (2, 2))
    assert (first["1x1"].conv1.stride, first["1x1"].conv2.stride) == ((2, 2), (1, 1))
    assert nets["1x1"].layer1[0].conv1.stride == (1, 1)  # blocks that keep the resolution do not stride
    counts = {s: sum(p.numel() for p in net.parameters()) for s, net in nets.items()}
    assert counts["3x3"] == counts["1x1"]
    x = torch.randn(2, 3, 32, 32)
    assert nets["1x1"](x).shape == nets["3x3"](x).shape == (2, 10)
    with pytest.raises(ValueError, match="bottleneck_stride"):
        create_model("preact_resnet164", bottleneck_stride="2x2")


def test_dfn_mr_depth_counts_both_branches():
    from erasenet.models.dfn import merge_run_blocks

    assert merge_run_blocks(110) == 9 and merge_run_blocks(14) == 1
    with pytest.raises(ValueError, match="12n\\+2"):
        create_model("dfn_mr", depth=56)
    with torch.device("meta"):
        b, a = create_model("dfn_mr"), create_model("dfn_mr", shortcut="A")
    projections = 2 * (16 * 32 + 2 * 32) + 2 * (32 * 64 + 2 * 64)  # one 1x1 conv-BN per path, two transitions
    assert sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters()) == projections


def test_plain_split_gives_later_stages_the_remainder():
    from erasenet.models.plain import split_depth

    assert [split_depth(d) for d in (38, 62, 84, 85)] == [[12, 12, 12], [20, 20, 20], [27, 27, 28], [27, 28, 28]]
