"""The erase policy: block selection reproduces the paper, and exactly the chosen sites change."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from erasenet.erase import EraseReLU, ErasePolicy, apply_erase, plan_erase, select_blocks
from erasenet.models import block_sites, create_model
from erasenet.erase.rectifiers import count_relus


def test_paper_examples():
    assert select_blocks(10, 0.5) == [1, 3, 5, 7, 9]
    assert select_blocks(12, 0.25) == [1, 5, 9]
    assert select_blocks(7, 1.0) == list(range(1, 8))
    assert select_blocks(7, 0.0) == []


@pytest.mark.parametrize("n", [1, 3, 9, 18, 54, 200])
@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.75, 0.9, 1.0])
def test_selection_is_evenly_spread(n, p):
    chosen = select_blocks(n, p)
    assert abs(len(chosen) - n * p) < 1  # the realised proportion is as close as whole blocks allow
    assert len(chosen) == math.floor(round(p * (n - 1), 9)) + 1  # as the docs state it
    assert chosen[0] == 1
    gaps = {b - a for a, b in zip(chosen, chosen[1:])}
    assert max(gaps, default=1) - min(gaps, default=1) <= 1  # as even as integers allow
    assert chosen == select_blocks(n, p)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_selection_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        select_blocks(5, bad)


def _kinds(model, sites):
    return {s: type(model.get_submodule(s)).__name__ for s in sites}


@pytest.mark.parametrize("depth,blocks", [(20, 9), (56, 27), (110, 54)])
@pytest.mark.parametrize("location,index", [("last", [-1]), ("first", [0]), ("all", [0, 1]), ("2", [1])])
@pytest.mark.parametrize("p", [0.25, 0.5, 1.0])
def test_apply_erase_changes_exactly_the_chosen_sites(depth, blocks, location, index, p):
    model = create_model(f"resnet{depth}")
    sites = block_sites(model)
    assert len(sites) == blocks and all(s[0].endswith("act1") and s[1].endswith("act_out") for s in sites)
    record = apply_erase(model, ErasePolicy(EraseReLU(location, p)))
    expected = [sites[b - 1][i] for b in select_blocks(blocks, p) for i in index]
    assert record.sites == expected
    assert record.blocks == select_blocks(blocks, p)
    every = [s for block in sites for s in block] + ["stem.act"]
    kinds = _kinds(model, every)
    assert {s for s, k in kinds.items() if k == "Identity"} == set(expected)
    assert {s for s, k in kinds.items() if k == "ReLU"} == set(every) - set(expected)


def test_paper_example_on_resnet():
    record = apply_erase(create_model("resnet56"), ErasePolicy(EraseReLU("last", 0.5)))
    assert record.blocks == list(range(1, 28, 2))
    assert record.sites[:3] == ["layer1.0.act_out", "layer1.2.act_out", "layer1.4.act_out"]


def test_prelu_replacement():
    model = create_model("resnet20")
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu"))
    assert len(record.sites) == 9
    assert all(isinstance(model.get_submodule(s), nn.PReLU) for s in record.sites)
    assert isinstance(model.layer1[0].act1, nn.ReLU)


def test_location_a_block_lacks_is_refused():
    with pytest.raises(ValueError, match="does not exist"):
        apply_erase(create_model("resnet20"), ErasePolicy(EraseReLU("3", 1.0)))


def test_run_directory_names_stay_short_and_distinct():
    from erasenet.common.config import run_dirname

    assert run_dirname("erase.proportion=0.5,seed=1") == "erase.proportion=0.5,seed=1"
    assert run_dirname("") == "defaults"
    assert "/" not in run_dirname("dataset.root=/data/x")
    long_a = ",".join(f"schedule.k{i}={i}" for i in range(30))
    long_b = long_a + ",seed=2"
    assert len(run_dirname(long_a)) <= 120 and run_dirname(long_a) != run_dirname(long_b)


def test_every_replacement_and_method_the_config_accepts_builds():
    from erasenet.common.choices import METHODS, REPLACEMENTS

    for kind in REPLACEMENTS:  # what the config's validation lets through, the erase policy can build
        model = create_model("resnet20", num_classes=10)
        record = apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), kind), input_shape=(3, 8, 8))
        assert len(record.sites) == 9
        assert all(not isinstance(model.get_submodule(s), nn.ReLU) for s in record.sites)
    erase = {"location": "last", "proportion": 0.5, "budget": 0.5, "cull_stages": [1], "thin": True}
    assert [ErasePolicy.from_config({**erase, "method": m}).method.name for m in METHODS] == list(METHODS)


def test_describe_an_architecture_without_training(capsys):
    from erasenet.models.__main__ import main

    assert main(["--arch", "torchvision:resnet18", "--erase", "last", "--proportion", "1"]) == 0
    out = capsys.readouterr().out
    assert "8 blocks, 16 sites in blocks, 1 fixed" in out
    assert "block 1  layer1.0: layer1.0.relu#1, [layer1.0.relu#2]" in out
    assert "8 site(s) -> identity in 8/8 blocks" in out
    assert "per 3x224x224 image: 2,308,096" in out
    assert main(["--arch", "resnet20", "--erase", "first", "--proportion", "0.5", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "block 1  layer1.0: [layer1.0.act1], layer1.0.act_out" in out and "per 3x32x32 image: 188,416" in out


def test_fixed_sites_turn_every_relu_layer_into_a_prelu(make_cfg):
    from erasenet.training.build import build_model
    from erasenet.erase.rectifiers import rectifier_calls

    blocks_only = create_model("resnet20")
    record = apply_erase(blocks_only, ErasePolicy(EraseReLU("all", 1.0), "prelu"))
    assert "stem.act" not in record.sites and len(record.sites) == 18
    assert isinstance(blocks_only.stem.act, nn.ReLU)
    every = create_model("resnet20")
    record = apply_erase(every, ErasePolicy(EraseReLU("all", 1.0), "prelu", fixed_sites=True))
    assert record.sites[0] == "stem.act" and len(record.sites) == 19  # the stem's ReLU first, in forward order
    assert isinstance(every.stem.act, nn.PReLU)
    assert {c.op for c in rectifier_calls(every, (3, 32, 32))} == {"prelu"}  # no ReLU runs at all
    cfg = make_cfg("experiment=dong2017/t1_resnet20_prelu_all", "erase.fixed_sites=true")
    model, erased = build_model(cfg)
    assert erased.as_dict()["fixed_sites"] and isinstance(model.stem.act, nn.PReLU)


def test_prelu_channel_gives_each_site_a_slope_per_channel():
    model = create_model("resnet20")
    record = apply_erase(model, ErasePolicy(EraseReLU("all", 1.0), "prelu_channel", fixed_sites=True),
                         input_shape=(3, 32, 32))
    slopes = {s: model.get_submodule(s) for s in record.sites}
    assert len(slopes) == 19 and all(type(m) is nn.PReLU for m in slopes.values())
    expected = {"stem.act": 16} | {s: 16 * 2 ** (int(s[5]) - 1) for s in record.sites if s.startswith("layer")}
    assert {s: m.weight.shape for s, m in slopes.items()} == {s: (c,) for s, c in expected.items()}
    assert [expected[f"layer{i}.0.act1"] for i in (1, 2, 3)] == [16, 32, 64]
    assert all(torch.equal(m.weight, torch.full_like(m.weight, 0.25)) for m in slopes.values())


def test_prelu_channel_on_torchvision_resnet18_starts_as_the_shared_slope():
    import copy

    import torchvision

    torch.manual_seed(0)
    original = torchvision.models.resnet18(weights=None).eval()
    shared, per_channel = copy.deepcopy(original), copy.deepcopy(original)
    apply_erase(shared, ErasePolicy(EraseReLU("last", 1.0), "prelu"))
    record = apply_erase(per_channel, ErasePolicy(EraseReLU("last", 1.0), "prelu_channel"), input_shape=(3, 224, 224))
    assert record.sites == [f"layer{i}.{j}.relu#2" for i in range(1, 5) for j in range(2)]
    slopes = {n: p.shape for n, p in per_channel.named_parameters() if "relu" in n}
    assert slopes == {f"layer{i}.{j}.relu_call2.weight": (c,) for i, c in zip(range(1, 5), (64, 128, 256, 512))
                      for j in range(2)}
    assert isinstance(per_channel.layer1[0].relu, nn.ReLU)  # the shared module's first call stays a ReLU
    assert count_relus(per_channel, (3, 224, 224)) == count_relus(shared, (3, 224, 224)) == 2_308_096
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(per_channel(x), shared(x))  # every slope starts at 0.25
        assert not torch.equal(per_channel(x), original(x))


def test_prelu_channel_reaches_functional_relus():
    class Unit(nn.Module):
        def __init__(self, c_in: int, c_out: int):
            super().__init__()
            self.conv, self.proj = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_in, c_out, 1)

        def forward(self, x):
            return F.relu(self.conv(x) + self.proj(x))

    model = nn.Sequential(Unit(3, 4), Unit(4, 6))
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu_channel"), input_shape=(3, 5, 5))
    assert record.sites == ["0:relu", "1:relu"]
    assert [m.weight.shape for m in model.modules() if isinstance(m, nn.PReLU)] == [(4,), (6,)]


def test_prelu_channel_needs_the_input_shape():
    model = create_model("resnet20")
    for erase in (apply_erase, plan_erase):
        with pytest.raises(ValueError, match="input_shape"):
            erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu_channel"))
    assert not any(isinstance(m, nn.PReLU) for m in model.modules())
    assert plan_erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu_channel"),
                      input_shape=(3, 32, 32)).sites[0] == \
        "layer1.0.act_out"


def test_the_printed_zoo_table_says_what_its_marks_mean(capsys):
    from erasenet.models.__main__ import main

    assert main(["wrn52_1", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "| n/a | n/a | n/a |" in out and "348,160* |" in out
    legend = " ".join(out.split("<!-- end of zoo table -->")[1].split())
    assert legend.startswith("n/a: erase.location=last is undefined: the blocks are pre-activated")
    assert "*: ReLUs counted with erase.location=first" in legend
    assert main(["resnet20"]) == 0
    assert capsys.readouterr().out.endswith("<!-- end of zoo table -->\n")  # no marks, no legend


def test_describe_previews_culling_and_gates_beside_eraserelu_on_grey_scale_input(capsys):
    from erasenet.models.__main__ import main

    # digits are 1x8x8: ResNet-20's stem 16x8x8 and three stages of 6 ReLUs at 16x8x8, 32x4x4, 64x2x2
    assert main(["--arch", "resnet20", "--input", "1x8x8", "--cull", "2"]) == 0
    out = capsys.readouterr().out
    assert "per 1x8x8 image: 11,776" in out
    assert "after the erase: 8,704 (-3,072; 73.9% kept)" in out  # stage 2's 6 x 512 go
    assert "proportion 0.5: 8,704 (+0)  <- nearest" in out  # culling stage 2 is EraseReLU at 0.5
    assert main(["--arch", "resnet20", "--input", "1x8x8", "--budget", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "a gate on each of 19 site(s)" in out and "keeps at most 5,888 of 11,776" in out
    assert main(["--arch", "resnet20", "--input", "1x8x8", "--budget", "20000"]) == 0
    assert "a budget at or above the network's 11,776 erases nothing" in capsys.readouterr().out
    assert main(["--arch", "resnet18_cifar", "--cull", "1", "--thin", "--fixed-sites"]) == 0
    assert "after the erase: 114,688" in capsys.readouterr().out  # DeepReDuce's 115K model before reshaping
    assert main(["--arch", "resnet20", "--cull", "5"]) == 0
    assert "refused: erase.cull_stages=[5] names stage(s) [5]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--arch", "resnet20", "--cull", "1", "--budget", "100"])


def test_describe_with_slopes_per_channel(capsys):
    from erasenet.models.__main__ import main

    assert main(["--arch", "resnet20", "--erase", "all", "--proportion", "1", "--replace", "prelu_channel"]) == 0
    out = capsys.readouterr().out
    assert "18 site(s) -> prelu_channel in 9/9 blocks" in out
    assert "ReLU/PReLU evaluations after the erase: 188,416 (+0; 100.0% kept)" in out


def test_one_planner_reads_declared_and_found_sites_alike():
    from erasenet.erase import Cull, Gates
    from erasenet.erase.graph_sites import analyse
    from erasenet.erase.policy import plan
    from erasenet.erase.sites import declared

    model = create_model("resnet20", num_classes=10)  # its blocks declare the sites fx also finds
    by_contract, by_graph = declared(model), analyse(model)
    assert [s.name for s in by_contract.forward] == [s.name for s in by_graph.forward]
    stage2 = [f"layer2.{b}.{s}" for b in range(3) for s in ("act1", "act_out")]
    thinned = {k: [f"layer{k}.{b}.act_out" for b in range(3)] for k in (1, 3)}
    cases = [
        (ErasePolicy(EraseReLU("first", 0.5), fixed_sites=True),  # blocks 1, 3, 5, 7, 9; the stem first
         ["stem.act"] + [f"layer{1 + i // 3}.{i % 3}.act1" for i in (0, 2, 4, 6, 8)], [1, 3, 5, 7, 9]),
        (ErasePolicy(Gates(0.5)), ["stem.act"] + [s for b in block_sites(model) for s in b], list(range(1, 10))),
        (ErasePolicy(Cull((2,), thin=True), fixed_sites=True), ["stem.act"] + thinned[1] + stage2 + thinned[3],
         list(range(1, 10))),
    ]
    for policy, sites, blocks in cases:
        records = [plan(found, policy)[0] for found in (by_contract, by_graph)]
        assert [(r.sites, r.blocks, r.num_blocks) for r in records] == [(sites, blocks, 9)] * 2
        assert records[0].as_dict() == records[1].as_dict()
        assert records[0].as_dict()["method"] == policy.method.name
