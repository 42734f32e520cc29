"""DeepReDuce's published CIFAR-100 ResNet-18 models (Jha et al., ICML 2021) as presets: each one's ReLU count,
counted by erasenet on the preset's network, against the count the released model is named for and against the
count worked out here by hand from its definition."""

import pytest
import torch

from erasenet.common.config import check_config
from erasenet.erase.rectifiers import count_relus
from erasenet.training.build import build_model, image_shape

# The released definitions DRD_C100_<K>K: culled stages, thinned, alpha (width), rho (as a stem stride), blocks
RELEASED = {
    230: ([1], False, 1.0, 1, [2, 2, 2, 2]),
    115: ([1], True, 1.0, 1, [2, 2, 2, 2]),
    57: ([1], True, 0.5, 1, [2, 2, 2, 2]),
    49: ([1, 4], True, 0.5, 1, [2, 2, 2, 2]),
    29: ([1], True, 1.0, 2, [2, 2, 2, 2]),
    14: ([1], True, 0.5, 2, [2, 2, 2, 2]),
    12: ([1, 4], True, 0.5, 2, [2, 2, 2, 2]),
    7: ([1], True, 0.5, 2, [2, 1, 1, 1]),
}


def by_hand(cull, thin, alpha, stem_stride, blocks) -> int:
    """Stage s (0-based) has int(64 * 2^s * alpha) channels at (32 / stem_stride / 2^s)^2 pixels; a basic block has
    two ReLUs, one when thinned; a culled stage and the stem have none."""
    total = 0
    for s, count in enumerate(blocks):
        if s + 1 not in cull:
            side = 32 // stem_stride // 2**s
            total += count * (1 if thin else 2) * int(64 * 2**s * alpha) * side * side
    return total


@pytest.mark.parametrize("k", sorted(RELEASED))
def test_each_published_model_has_its_published_count(make_cfg, k):
    cfg = make_cfg(f"experiment=deepreduce2021/resnet18_c100_{k}k")
    check_config(cfg)
    cull, thin, alpha, stem_stride, blocks = RELEASED[k]
    assert (list(cfg.erase.cull_stages), cfg.erase.thin, cfg.erase.fixed_sites) == (cull, thin, True)
    assert (cfg.model.width, cfg.model.stem_stride, list(cfg.model.blocks)) == (alpha, stem_stride, blocks)
    with torch.device("meta"):
        model, _ = build_model(cfg)
    relus = count_relus(model, image_shape(cfg))
    assert relus == by_hand(cull, thin, alpha, stem_stride, blocks)
    # the published count is the model's name, in thousands: erasenet's exact count lies within that 1K
    assert cfg.paper.relus == k * 1000 and abs(relus - cfg.paper.relus) < 1000
    assert f"DRD_C100_{k}K" in cfg.paper.source


def test_the_counts_worked_out_by_hand():
    # 557,056 = stem 65,536 + stages 262,144, 131,072, 65,536, 32,768; the released names round these
    assert by_hand([], False, 1.0, 1, [2, 2, 2, 2]) == 557056 - 65536
    assert {k: by_hand(*v) for k, v in RELEASED.items()} == {
        230: 229376, 115: 114688, 57: 57344, 49: 49152, 29: 28672, 14: 14336, 12: 12288, 7: 7168}


def test_reshaping_scales_the_network(make_cfg):
    cfg = make_cfg("experiment=deepreduce2021/resnet18_c100_7k")
    with torch.device("meta"):
        model, _ = build_model(cfg)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 1, 1, 1]
    assert model.stem.conv.out_channels == 32 and model.stem.conv.stride == (2, 2)
    assert model.head.fc.in_features == 256
