"""DeepReDuce's culling and thinning (erase.method=cull): stages, the sites chosen, the exact count, a real run."""

import pytest
import torch

from erasenet.common.config import check_config
from erasenet.erase.cull import stages
from erasenet.erase import Cull, EraseReLU, ErasePolicy, apply_erase
from erasenet.common.errors import UserError
from erasenet.models import create_model
from erasenet.erase.rectifiers import count_relus
from erasenet.training.run import train_run


def test_stages_are_runs_of_blocks_with_one_parent():
    assert stages(["layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer3.1"]) == [[0, 1], [2], [3, 4]]
    assert stages(["layers.0", "layers.1"]) == [[0, 1]]


def test_culling_and_thinning_a_zoo_resnet_by_hand():
    # ResNet-20 at 32x32: stem 16x32x32, then 3 stages of 3 blocks with 2 ReLUs each at 16x32x32, 32x16x16, 64x8x8
    model = create_model("resnet20", num_classes=10)
    assert count_relus(model, (3, 32, 32)) == 16384 + 6 * 16384 + 6 * 8192 + 6 * 4096
    record = apply_erase(model, ErasePolicy(Cull(stages=(1,), thin=True)))
    assert record.sites[:6] == [f"layer1.{b}.{s}" for b in range(3) for s in ("act1", "act_out")]
    assert record.sites[6:] == [f"layer{k}.{b}.act_out" for k in (2, 3) for b in range(3)]  # every second ReLU
    assert record.blocks == list(range(1, 10)) and record.as_dict()["cull_stages"] == [1]
    assert count_relus(model, (3, 32, 32)) == 16384 + 3 * 8192 + 3 * 4096
    stem = create_model("resnet20", num_classes=10)
    apply_erase(stem, ErasePolicy(Cull(stages=(2, 3)), fixed_sites=True))
    assert count_relus(stem, (3, 32, 32)) == 6 * 16384


def test_thinning_a_post_activation_resnet_erases_each_blocks_last_relu():
    torch.manual_seed(0)
    thinned = create_model("resnet20", num_classes=10)
    last = create_model("resnet20", num_classes=10)
    last.load_state_dict(thinned.state_dict())
    a = apply_erase(thinned, ErasePolicy(Cull(thin=True)))
    b = apply_erase(last, ErasePolicy(EraseReLU("last", 1.0)))
    assert a.sites == b.sites
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(thinned.eval()(x), last.eval()(x))


def test_culling_a_torchvision_resnet18_by_hand():
    # at 64x64: stem 64x32x32, then layer1..4 of 4 ReLU calls at 64x16x16, 128x8x8, 256x4x4, 512x2x2
    model = create_model("torchvision", arch="resnet18", num_classes=10)
    assert count_relus(model, (3, 64, 64)) == 65536 + 4 * 16384 + 4 * 8192 + 4 * 4096 + 4 * 2048
    record = apply_erase(model, ErasePolicy(Cull(stages=(1, 4), thin=True)))
    assert "layer2.0.relu#2" in record.sites and "layer2.0.relu#1" not in record.sites
    assert count_relus(model, (3, 64, 64)) == 65536 + 2 * 8192 + 2 * 4096
    with pytest.raises(ValueError, match=r"stage\(s\) \[5\].*4 stage\(s\) are 1: layer1, 2: layer2"):
        apply_erase(create_model("torchvision", arch="resnet18"), ErasePolicy(Cull(stages=(5,))))


def test_config_checks(make_cfg):
    with pytest.raises(UserError, match="changes nothing"):
        check_config(make_cfg("erase=cull"))
    with pytest.raises(UserError, match="distinct 1-based stages"):
        check_config(make_cfg("erase=cull", "erase.cull_stages=[0]"))
    with pytest.raises(UserError, match="apply to erase.method=cull"):
        check_config(make_cfg("erase=last", "erase.thin=true"))
    with pytest.raises(UserError, match="erase.method='prune' is unknown"):
        check_config(make_cfg("erase.method=prune"))
    check_config(make_cfg("erase=cull", "erase.cull_stages=[1,2]", "erase.thin=true"))


def test_a_culled_run_records_its_count_and_the_original(tmp_path, make_cfg):
    cfg = make_cfg("dataset=digits", "schedule=quick", "schedule.epochs=1", "model=resnet20", "erase=cull",
                   "erase.cull_stages=[1]", "trainer.num_threads=1", "trainer.tensorboard=false")
    result = train_run(cfg, tmp_path)
    # digits are 1x8x8: stem 16x8x8, stages of 6 ReLUs at 16x8x8, 32x4x4, 64x2x2; stage 1 culled
    assert result["relus_original"] == 1024 + 6 * 1024 + 6 * 512 + 6 * 256
    assert result["relus"] == 1024 + 6 * 512 + 6 * 256
    assert result["erase"]["method"] == "cull" and len(result["erased"]) == 6
