"""Every experiment preset composes, passes validation and builds its model with the intended erase policy."""

from pathlib import Path

import pytest
import torch

from erasenet.build import build_model
from erasenet.config import check_config

CONF = Path(__file__).resolve().parents[1] / "erasenet" / "conf" / "experiment"
PRESETS = sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.rglob("*.yaml"))


def test_every_paper_has_presets():
    assert sum(p.startswith("dong2017/") for p in PRESETS) >= 100
    assert sum(p.startswith("zhao2017/") for p in PRESETS) >= 15


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_builds(make_cfg, preset):
    cfg = make_cfg(f"experiment={preset}")
    check_config(cfg)
    with torch.device("meta"):
        model, record = build_model(cfg)
    assert record.num_blocks > 0
    if cfg.erase.proportion > 0:
        assert record.sites, "a preset that erases must change some site"
    else:
        assert not record.sites
    if cfg.paper.test_error is not None:
        assert cfg.paper.source and cfg.paper.proportion is not None
        assert cfg.paper.proportion == cfg.erase.proportion or cfg.paper.proportion == 0.0
    if cfg.erase.proportion > 0 and "form" in cfg.model and cfg.erase.location == "last":
        assert cfg.model.form == "post"  # EraseReLU erases the last ReLU of after-activation blocks


def test_table_rows_match_the_paper(make_cfg):
    er = make_cfg("experiment=dong2017/t2_resnet110_c10_er")
    assert (er.model.name, er.dataset.name, er.erase.location, er.erase.proportion) == ("resnet110", "cifar10",
                                                                                         "last", 1.0)
    assert (er.schedule.epochs, er.schedule.milestones, er.schedule.warmup_iters) == (164, [82, 123], 400)
    assert (er.paper.test_error, er.paper.test_error_std) == (5.78, 0.10)
    inception = make_cfg("experiment=dong2017/t2_inception_v2_cifar_c100_er")
    assert inception.erase.proportion == 0.5 and inception.schedule.gamma == 0.2
    wrn_svhn = make_cfg("experiment=dong2017/t2_wrn52_1_d_svhn_er")
    assert (wrn_svhn.model.dropout, wrn_svhn.schedule.lr, wrn_svhn.dataset.name) == (0.4, 0.01, "svhn")
    zhao = make_cfg("experiment=zhao2017/preact110_c100_first_removed")
    assert (zhao.model.form, zhao.erase.location, zhao.schedule.batch_size) == ("pre", "first", 64)
    assert zhao.paper.test_error == pytest.approx(100 - 73.41)
