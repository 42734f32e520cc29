"""EraseReLU on torchvision and timm networks: blocks and sites found from the graph, erasing exactly the chosen
call of a shared module, equivalence with hand-written references, local weights, and a real tiny training run."""

import copy
import json
import logging
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from erasenet.erase import EraseReLU, ErasePolicy, apply_erase, plan_erase, select_blocks
from erasenet.common.errors import UserError
from erasenet.erase.graph_sites import AnalysisError, analyse
from erasenet.models import builder_options, create_model
from erasenet.erase.rectifiers import count_relus

# (library, arch, activation): blocks, sites inside blocks, fixed sites (stem/head), sites per block
FAMILIES = {
    ("torchvision", "resnet18", "relu"): (8, 16, 1, 2),
    ("torchvision", "resnet34", "relu"): (16, 32, 1, 2),
    ("torchvision", "resnet50", "relu"): (16, 48, 1, 3),
    ("torchvision", "resnet101", "relu"): (33, 99, 1, 3),
    ("torchvision", "resnet152", "relu"): (50, 150, 1, 3),
    ("torchvision", "resnext50_32x4d", "relu"): (16, 48, 1, 3),
    ("torchvision", "wide_resnet50_2", "relu"): (16, 48, 1, 3),
    ("torchvision", "vgg16_bn", "relu"): (15, 15, 0, 1),  # no residual unit: one block per ReLU call
    ("torchvision", "mobilenet_v2", "relu6"): (17, 33, 2, None),  # 1 or 2 ReLU6 per inverted residual
    ("timm", "resnet50", "relu"): (16, 48, 1, 3),
    ("timm", "resnet50d", "relu"): (16, 48, 3, 3),  # ResNet-D: a three-convolution stem
    ("timm", "regnetx_002", "relu"): (13, 39, 1, 3),
    ("timm", "regnety_002", "relu"): (13, 52, 1, 4),  # RegNetY adds a squeeze-excitation ReLU
}


def _build(library: str, arch: str, activation: str = "relu", meta: bool = True, **kwargs) -> nn.Module:
    if library == "timm":
        pytest.importorskip("timm")
    with torch.device("meta" if meta else "cpu"):
        return create_model(library, arch=arch, activation=activation, **kwargs)


@pytest.mark.parametrize("family", sorted(FAMILIES), ids=lambda f: f"{f[0]}-{f[1]}")
def test_every_family_builds_analyses_and_erases(family):
    library, arch, activation = family
    blocks, block_sites, fixed, per_block = FAMILIES[family]
    model = _build(library, arch, activation)
    found = analyse(model, model.site_activations)
    assert (len(found.blocks), sum(len(b.sites) for b in found.blocks), len(found.fixed)) == (blocks, block_sites,
                                                                                                fixed)
    assert per_block is None or all(len(b.sites) == per_block for b in found.blocks)
    location = "first" if arch == "mobilenet_v2" else "last"  # MobileNet-V2 has no activation after its sums
    if location == "first":
        with pytest.raises(ValueError, match="no activation right after its residual addition"):
            apply_erase(copy.deepcopy(model), ErasePolicy(EraseReLU("last", 0.5)))
    record = apply_erase(model, ErasePolicy(EraseReLU(location, 0.5)))
    assert record.num_blocks == blocks and len(record.sites) == len(select_blocks(blocks, 0.5))
    after = analyse(model, model.site_activations)
    assert len(after.sites) == block_sites + fixed - len(record.sites)
    assert not set(record.sites) & {s.name for s in after.sites if s.calls == 1}


def test_shared_relu_calls_are_separate_sites_named_by_call():
    model = _build("torchvision", "resnet50")
    found = analyse(model)
    assert found.blocks[0].name == "layer1.0"
    assert found.blocks[0].site_names == ["layer1.0.relu#1", "layer1.0.relu#2", "layer1.0.relu#3"]
    assert found.blocks[-1].name == "layer4.2" and [s.name for s in found.fixed] == ["relu"]
    record = plan_erase(model, ErasePolicy(EraseReLU("last", 1.0)))
    assert record.sites[:2] == ["layer1.0.relu#3", "layer1.1.relu#3"]
    assert type(model.layer1[0]).__name__ == "Bottleneck"  # planning changes nothing


# --- equivalence with forward passes written by hand ---------------------------------------------------------

def reference_resnet(model, x: torch.Tensor, erased: dict[int, set[int]]) -> torch.Tensor:
    """torchvision's ResNet forward, written out; ``erased[block]`` holds the 1-based ReLU calls left out."""
    x = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
    index = 0
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            index += 1
            skip = erased.get(index, set())
            act = [(lambda t: t) if call in skip else torch.relu for call in (1, 2, 3)]
            shortcut = x if block.downsample is None else block.downsample(x)
            out = act[0](block.bn1(block.conv1(x)))
            if hasattr(block, "conv3"):
                out = act[1](block.bn2(block.conv2(out)))
                x = act[2](block.bn3(block.conv3(out)) + shortcut)
            else:
                x = act[1](block.bn2(block.conv2(out)) + shortcut)
    return model.fc(torch.flatten(model.avgpool(x), 1))


@pytest.fixture(scope="module")
def torchvision_resnets():
    """ResNet-18 and ResNet-50 with non-trivial BN statistics, so that a misplaced ReLU shows in the output."""
    torch.manual_seed(0)
    models = {}
    for arch in ("resnet18", "resnet50"):
        model = create_model("torchvision", num_classes=10, arch=arch).eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.data.uniform_(-0.5, 0.5)
        models[arch] = model
    return models


# (arch, ReLU calls per block, location, proportion); forward passes of ResNet-50 cost seconds here, so it
# gets the case the paper uses and the one-call-of-a-shared-module case, ResNet-18 the rest.
CASES = [("resnet18", 2, "last", 0.5), ("resnet18", 2, "first", 0.5), ("resnet18", 2, "last", 0.0),
         ("resnet18", 2, "2", 0.25), ("resnet50", 3, "last", 0.5), ("resnet50", 3, "2", 1.0)]


@pytest.mark.parametrize("arch,calls,location,p", CASES)
def test_erased_torchvision_resnet_equals_a_hand_written_reference(torchvision_resnets, arch, calls, location, p):
    original = torchvision_resnets[arch]
    model = copy.deepcopy(original)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    record = apply_erase(model, ErasePolicy(EraseReLU(location, p)))
    call = {"last": calls, "first": 1, "2": 2}[location]
    erased = {b: {call} for b in record.blocks}
    assert record.sites == [f"{name}.relu#{call}" for name in _block_names(original, record.blocks)]
    with torch.no_grad():
        expected = reference_resnet(original, x, erased)
        torch.testing.assert_close(model(x), expected)
        if p == 0:  # the analysis leaves an unerased network as it was: torchvision's own forward, same output
            assert record.sites == [] and type(model.layer1[0]) is type(original.layer1[0])
            torch.testing.assert_close(original(x), expected)
        else:
            assert not torch.allclose(original(x), expected)  # the erase changed the function
    assert model.state_dict().keys() == original.state_dict().keys()


def _block_names(model, indices):
    names = [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(model, f"layer{i}")))]
    return [names[i - 1] for i in indices]


def test_prelu_on_one_call_of_a_shared_relu(torchvision_resnets):
    original = torchvision_resnets["resnet18"]
    model = copy.deepcopy(original)
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), "prelu"))
    assert len(record.sites) == 8
    new = set(model.state_dict()) - set(original.state_dict())
    assert new == {f"layer{i}.{j}.relu_call2.weight" for i in range(1, 5) for j in range(2)}
    slope = model.layer1[0].relu_call2
    assert isinstance(slope, nn.PReLU) and isinstance(model.layer1[0].relu, nn.ReLU)  # call 1 is still a ReLU
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.fill_(1.0)  # a slope of 1 is the identity: the erased reference
        torch.testing.assert_close(model(x), reference_resnet(original, x, {b: {2} for b in range(1, 9)}))


def test_counts_follow_the_erase():
    # ResNet-18 at 224x224: stem 64x112x112, then 2 blocks x 2 ReLUs on 64x56x56, 128x28x28, 256x14x14, 512x7x7
    stage = [64 * 56 * 56, 128 * 28 * 28, 256 * 14 * 14, 512 * 7 * 7]
    full = 64 * 112 * 112 + sum(4 * s for s in stage)
    model = _build("torchvision", "resnet18")
    assert count_relus(model, (3, 224, 224)) == full == 2_308_096
    apply_erase(model, ErasePolicy(EraseReLU("last", 0.5)))  # blocks 1, 3, 5, 7: the first block of each stage
    assert count_relus(model, (3, 224, 224)) == full - sum(stage)


# --- networks of one's own: functional ReLUs, plain stacks, what cannot be analysed ----------------------------

class FunctionalUnit(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.units = nn.Sequential(FunctionalUnit(), FunctionalUnit(), FunctionalUnit())
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.units(self.stem(x).relu()).mean((2, 3)))


def test_functional_relus_are_sites_and_are_erased_exactly():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    original = copy.deepcopy(model)
    found = analyse(model)
    assert [b.site_names for b in found.blocks][0] == ["units.0:relu#1", "units.0:relu#2"]
    assert [s.name for s in found.fixed] == [":relu"]
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 0.5)))
    assert record.sites == ["units.0:relu#2", "units.2:relu#2"]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        h = original.stem(x).relu()
        for i, unit in enumerate(original.units):
            h = unit.conv2(torch.relu(unit.conv1(h))) + h
            h = h if i in (0, 2) else torch.relu(h)
        torch.testing.assert_close(model(x), original.head(h.mean((2, 3))))


def test_a_plain_stack_has_one_block_per_relu_call():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    found = analyse(model)
    assert not found.residual and [b.site_names for b in found.blocks] == [["1"], ["3"]]
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 0.5)))
    assert record.sites == ["1"] and isinstance(model[1], nn.Identity) and isinstance(model[3], nn.ReLU)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 3, 1), nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.relu(y) if y.sum() > 0 else y


def test_data_dependent_control_flow_is_a_clear_error_and_nothing_changes():
    model = DataDependent()
    with pytest.raises(AnalysisError, match="control flow"):
        apply_erase(model, ErasePolicy(EraseReLU("last", 1.0)))
    assert isinstance(model.relu, nn.ReLU)


class ModeDependent(FunctionalUnit):
    def forward(self, x):
        out = self.conv2(self.conv1(x)) + x
        return torch.relu(out) if self.training else out


def test_a_forward_that_runs_other_activations_in_training_is_refused():
    with pytest.raises(AnalysisError, match="training and in evaluation mode"):
        analyse(nn.Sequential(ModeDependent()))


def test_other_activation_classes_can_be_named():
    model = nn.Sequential(nn.Linear(3, 3), nn.SiLU(), nn.Linear(3, 3), nn.ReLU())
    record = apply_erase(model, ErasePolicy(EraseReLU("all", 1.0)), activations=["torch.nn.SiLU"])
    assert record.sites == ["1"] and isinstance(model[3], nn.ReLU)
    with pytest.raises(ValueError, match="unknown activation"):
        apply_erase(model, ErasePolicy(EraseReLU("all", 1.0)), activations="swish")


# --- weights, configs, missing timm ------------------------------------------------------------------------------

def test_local_weights_load_strictly_before_erasing(tmp_path, make_cfg, caplog):
    from erasenet.training.build import build_model

    torch.manual_seed(1)
    source = create_model("torchvision", num_classes=10, in_chans=1, arch="resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    cfg = make_cfg("model=torchvision", "model.arch=resnet18", f"model.weights={path}", "dataset=digits",
                   "erase=last", "erase.proportion=1")
    with caplog.at_level(logging.INFO, logger="erasenet"):
        model, record = build_model(cfg)
    assert "loaded weights for torchvision:resnet18" in caplog.text and "strict" in caplog.text
    assert len(record.sites) == 8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())

    with pytest.raises(UserError, match="does not fit"):
        build_model(make_cfg("model=torchvision", "model.arch=resnet18", f"model.weights={path}", "dataset=cifar10"))
    with pytest.raises(UserError, match="never downloads"):
        build_model(make_cfg("model=torchvision", "model.weights=IMAGENET1K_V1", "dataset=digits"))
    with pytest.raises(UserError, match="not a torchvision classification network"):
        build_model(make_cfg("model=torchvision", "model.arch=resnet19", "dataset=digits"))


def test_external_configs_name_every_builder_option():
    import yaml

    from erasenet.models.registry import list_models
    from tests.test_zoo import REPO

    for name in ("torchvision", "timm"):
        assert name in list_models(external=True) and name not in list_models()
        cfg = yaml.safe_load((REPO / "erasenet" / "conf" / "model" / f"{name}.yaml").read_text())
        assert set(cfg) - {"name"} == set(builder_options(name)) - {"num_classes", "in_chans"}


def test_without_timm_the_error_says_how_to_install_it(monkeypatch, make_cfg):
    from erasenet.training.build import build_model

    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm gives on import
    with pytest.raises(UserError, match=r"pip install 'erasenet\[timm\]'"):
        build_model(make_cfg("model=timm", "dataset=digits"))


def test_finetune_schedule_decays_by_cosine(make_cfg):
    from erasenet.training.engine import lr_factor

    schedule = make_cfg("schedule=finetune").schedule
    assert schedule.decay == "cosine" and schedule.lr < 0.1 and schedule.epochs <= 20
    factor = lr_factor(schedule, steps_per_epoch=10)
    total = schedule.epochs * 10
    assert factor(0) == 1.0 and factor(total // 2) == pytest.approx(0.5) and factor(total) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(total))


# --- a real tiny training run --------------------------------------------------------------------------------------

# lr 0.01: torchvision's ResNet-18 (11M parameters) diverges on 1,257 digits at the quick schedule's 0.1
TRAIN = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "schedule.lr=0.01", "schedule.milestones=[]",
         "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.checkpoint=false", "trainer.progress=off",
         "model=torchvision", "model.arch=resnet18", "erase=last")


def test_torchvision_resnet18_trains_on_digits_erased_and_not(make_cfg, tmp_path):
    from erasenet.reports.summary import write_summary
    from erasenet.training.run import train_run

    threads = torch.get_num_threads()
    try:
        results = {p: train_run(make_cfg(*TRAIN, f"erase.proportion={p}"), tmp_path / f"p{p}") for p in (0.0, 1.0)}
    finally:
        torch.set_num_threads(threads)
    assert results[0.0]["erased"] == [] and len(results[1.0]["erased"]) == 8
    assert results[1.0]["erased"][0] == "layer1.0.relu#2"
    for p, r in results.items():
        lines = (tmp_path / f"p{p}" / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["train_loss"] for line in lines]
        assert r["status"] == "ok" and r["macs"] > 0 and losses[-1] < losses[0], (p, losses)
        assert r["test_error"] < 75.0, r  # ten classes: chance is 90% error
    saved = json.loads((tmp_path / "p1.0" / "result.json").read_text())
    assert saved["erased"] == results[1.0]["erased"]
    write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "model=torchvision" in summary or "torchvision" in summary


def test_safetensors_weights_load_too(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    source = create_model("torchvision", num_classes=10, arch="resnet18")
    path = tmp_path / "model.safetensors"
    safetensors.save_file(source.state_dict(), path)
    loaded = create_model("torchvision", num_classes=10, arch="resnet18", weights=str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
