"""The full model zoo: exact sizes against hand-derived formulas and the published figures, torchvision
compatibility, erase-site selection and PReLU on every family, stochastic depth, the generated table,
and a tiny real training run of every CIFAR family, erased and not."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from erasenet.training.build import build_model
from erasenet.erase import EraseReLU, ErasePolicy, apply_erase, select_blocks
from erasenet.common.errors import UserError
from erasenet.models import block_sites, builder_options, create_model, iter_blocks, list_models
from erasenet.models.residual import BasicBlock
from erasenet.models.zoo import measure, render_table, splice_table
from erasenet.training.run import train_run

REPO = Path(__file__).resolve().parents[1]


# --- parameter counts, derived by hand from each architecture -----------------------------------------------

def conv(cin: int, cout: int, k: int = 3, groups: int = 1) -> int:
    return cin // groups * cout * k * k


def bn(c: int) -> int:
    return 2 * c


def fc(cin: int, classes: int) -> int:
    return cin * classes + classes


def bottleneck(cin: int, width: int, out: int, groups: int, project: bool, pre: bool) -> int:
    """A bottleneck block; a pre-activation block normalises its input and projects without BN."""
    total = conv(cin, width, 1) + conv(width, width, 3, groups) + conv(width, out, 1)
    total += bn(cin) + 2 * bn(width) if pre else 2 * bn(width) + bn(out)
    return total + (conv(cin, out, 1) + (0 if pre else bn(out)) if project else 0)


def basic(cin: int, c: int, project: bool, pre: bool) -> int:
    """A basic block; ``project``: a 1x1 projection shortcut (option B), otherwise identity or option A."""
    total = conv(cin, c) + conv(c, c) + (bn(cin) + bn(c) if pre else 2 * bn(c))
    return total + (conv(cin, c, 1) + (0 if pre else bn(c)) if project else 0)


def cifar_bottleneck_net(n: int, pre: bool, classes: int = 10) -> int:
    total, cin = conv(3, 16) + (0 if pre else bn(16)), 16
    for p in (16, 32, 64):
        for j in range(n):
            total += bottleneck(cin, p, 4 * p, 1, j == 0, pre)
            cin = 4 * p
    return total + (bn(256) if pre else 0) + fc(256, classes)


def preact_basic_net(n: int, widths=(16, 32, 64), project: bool = False, classes: int = 10) -> int:
    """Pre-act basic-block trunk: stem conv 16, final BN; ``project``: 1x1 shortcuts where shapes change (WRN)."""
    total, cin = conv(3, 16), 16
    for c in widths:
        for j in range(n):
            total += basic(cin, c, project and (j == 0 and (cin != c or c != widths[0])), pre=True)
            cin = c
    return total + bn(cin) + fc(cin, classes)


def resnext29(cardinality: int, classes: int = 10) -> int:
    total, cin = conv(3, 64) + bn(64), 64
    for i, out in enumerate((256, 512, 1024)):
        for j in range(3):
            total += bottleneck(cin, cardinality * 64 * 2**i, out, cardinality, j == 0, pre=False)
            cin = out
    return total + fc(1024, classes)


def resnet18_cifar(classes: int = 100) -> int:
    """kuangliu's CIFAR ResNet-18: 3x3 stem, two post-activation basic blocks per stage, 1x1+BN projections."""
    total, cin = conv(3, 64) + bn(64), 64
    for c in (64, 128, 256, 512):
        for j in range(2):
            total += basic(cin, c, project=cin != c, pre=False)
            cin = c
    return total + fc(512, classes)


def imagenet_resnet(layers, pre: bool = False, groups: int = 1, width_per_group: int = 64) -> int:
    total, cin = conv(3, 64, 7) + (0 if pre else bn(64)), 64
    for i, count in enumerate(layers):
        planes = 64 * 2**i
        for j in range(count):
            total += bottleneck(cin, planes * width_per_group // 64 * groups, 4 * planes, groups, j == 0, pre)
            cin = 4 * planes
    return total + (bn(2048) if pre else 0) + fc(2048, 1000)


def module_stack(counts, residual: bool = False) -> int:
    """Stem conv-BN 16 and one conv-BN per module, widths 16/32/64 (residual modules add no parameters)."""
    total, cin = conv(3, 16) + bn(16), 16
    for count, c in zip(counts, (16, 32, 64)):
        total += conv(cin, c) + bn(c) + (count - 1) * (conv(c, c) + bn(c))
        cin = c
    return total + fc(64, 10)


def inception(modules: int = 10, bases=(16, 32, 64)) -> int:
    total, cin = conv(3, 64) + bn(64), 64
    for base in bases:
        for _ in range(modules):
            total += conv(cin, base, 1) + bn(base)  # 1x1 branch
            total += conv(cin, 4 * base, 1) + bn(4 * base) + conv(4 * base, 8 * base) + bn(8 * base)
            total += conv(cin, base, 1) + bn(base) + conv(base, 2 * base) + bn(2 * base)
            total += conv(2 * base, 2 * base) + bn(2 * base) + conv(cin, base, 1) + bn(base)
            cin = 12 * base
    return total + fc(cin, 10)


def dfn_mr(n: int, width: int = 16) -> int:
    """n merge-and-run blocks per stage; where a stage widens, each path has its own 1x1 conv-BN projection."""
    total, cin = conv(3, width) + bn(width), width
    for i in range(3):
        c = width * 2**i
        total += 2 * (conv(cin, c) + conv(c, c) + 2 * bn(c)) + (n - 1) * 2 * (2 * conv(c, c) + 2 * bn(c))
        total += 2 * (conv(cin, c, 1) + bn(c)) if cin != c else 0
        cin = c
    return total + fc(cin, 10)


def mlp12(inputs: int = 784) -> int:
    return inputs * 1000 + 10 * 1000 * 1000 + 11 * bn(1000) + fc(1000, 10)


def without_bn(model_name: str) -> int:
    model = _meta(model_name)
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=builder_options(name)["num_classes"], **kwargs)


# name -> (parameters by formula, published millions or None, counting convention of the published figure)
EXPECTED = {
    "resnet164": (cifar_bottleneck_net(18, pre=False), 1.7, "all"),
    "preact_resnet110": (preact_basic_net(18), 1.7, "all"),
    "preact_resnet62": (preact_basic_net(10), None, "all"),
    "preact_resnet164": (cifar_bottleneck_net(18, pre=True), 1.7, "all"),
    "preact_resnet1001": (cifar_bottleneck_net(111, pre=True), 10.2, "without BN"),
    "wrn40_4": (preact_basic_net(6, (64, 128, 256), project=True), 8.9, "all"),
    "wrn28_10": (preact_basic_net(4, (160, 320, 640), project=True), 36.5, "all"),
    "wrn52_1": (preact_basic_net(8, (16, 32, 64), project=True), None, "all"),
    "resnext29_8x64d": (resnext29(8), 34.4, "all"),
    "resnext29_16x64d": (resnext29(16), 68.1, "without BN"),
    "resnet50": (imagenet_resnet((3, 4, 6, 3)), 25.6, "all"),
    "resnet101": (imagenet_resnet((3, 4, 23, 3)), 44.5, "all"),
    "resnet152": (imagenet_resnet((3, 8, 36, 3)), 60.2, "all"),
    "resnet200": (imagenet_resnet((3, 24, 36, 3)), None, "all"),
    "resnext152_32x4d": (imagenet_resnet((3, 8, 36, 3), groups=32, width_per_group=4), None, "all"),
    "preact_resnet200": (imagenet_resnet((3, 24, 36, 3), pre=True), None, "all"),
    "vgg31": (module_stack((10, 10, 10)), None, "all"),
    "residual31": (module_stack((10, 10, 10), residual=True), None, "all"),
    "plain84": (module_stack((27, 27, 28)), None, "all"),
    "inception_v2_cifar": (inception(), None, "all"),
    "dfn_mr": (dfn_mr(9), 1.7, "all"),  # DFN-MR1, depth 110: (110 - 2) / 12 = 9 blocks per stage
    "mlp12": (mlp12(), None, "all"),
    "resnet18_cifar": (resnet18_cifar(), 11.2, "all"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_parameter_counts(name):
    formula, published, convention = EXPECTED[name]
    assert measure(name).params == formula
    if published is not None:
        counted = formula if convention == "all" else without_bn(name)
        assert round(counted / 1e6, 1) == published


def test_every_model_has_a_config_with_every_option():
    import yaml

    for name in list_models():
        cfg = yaml.safe_load((REPO / "erasenet" / "conf" / "model" / f"{name}.yaml").read_text())
        options = set(builder_options(name)) - {"num_classes", "in_chans"}
        # every option, so that model.<option>=... works on the command line (Hydra refuses a key the node lacks)
        assert cfg["name"] == name and set(cfg) - {"name"} == options, name
        for key, default in builder_options(name).items():
            if key in cfg and not str(cfg[key]).startswith("$"):
                assert cfg[key] == default, (name, key)


def test_every_model_classifies_its_input():
    for name in list_models():
        s = measure(name)
        assert s.output_shape == (1, s.num_classes), name


def test_resnet50_loads_torchvision_weights_and_computes_the_same():
    torch.manual_seed(0)
    theirs = torchvision.models.resnet50().eval()
    ours = create_model("resnet50", num_classes=1000).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    assert all(sum(p.numel() for p in m.parameters()) == 0 for m in ours.modules() if isinstance(m, nn.ReLU))


@pytest.mark.parametrize("depth", [101, 152])
def test_imagenet_resnets_match_torchvision_in_shape(depth):
    with torch.device("meta"):
        theirs = getattr(torchvision.models, f"resnet{depth}")()
    shapes = {k: v.shape for k, v in _meta(f"resnet{depth}").state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}


# --- small members of every family: erase sites, PReLU, forward shapes ----------------------------------------

# (registry name, options, erase location EraseReLU uses on it)
SMALL = {
    "resnet": ("resnet", dict(depth=8), "last"),
    "resnet_bottleneck": ("resnet", dict(depth=11, block="bottleneck", shortcut="B"), "last"),
    "preact": ("preact_resnet", dict(depth=8), "first"),
    "preact_post": ("preact_resnet", dict(depth=8, form="post"), "last"),
    "preact_bottleneck": ("preact_resnet", dict(depth=11, block="bottleneck", shortcut="B"), "first"),
    "wrn": ("wrn", dict(depth=10, width=1, dropout=0.3), "first"),
    "wrn_post": ("wrn", dict(depth=10, width=1, form="post"), "last"),
    "resnext": ("resnext29", dict(cardinality=2, base_width=4, blocks=1, out_width=32), "last"),
    "inception": ("inception_v2_cifar", dict(modules_per_stage=1, base_width=4), "last"),
    "vgg": ("plain", dict(depth=8), "last"),
    "residual": ("plain", dict(depth=8, residual=True), "last"),
    "dfn_mr": ("dfn_mr", dict(depth=14, width=8), "last"),
    "mlp": ("mlp", dict(depth=5, width=32, dropout=0.1, image_size=8), "last"),
}


def _small(family: str, in_chans: int = 3) -> nn.Module:
    name, options, _ = SMALL[family]
    return create_model(name, num_classes=10, in_chans=in_chans, **options)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_erase_selects_exactly_the_chosen_sites(family):
    reference = block_sites(_small(family))
    every = [s for sites in reference for s in sites]
    for location in ("first", "last", "all", "1"):
        for p in (0.25, 0.5, 1.0):
            model = _small(family)
            if location == "last" and not all(b.ends_with_site for b in _blocks(model)):
                with pytest.raises(ValueError, match="form=post"):
                    apply_erase(model, ErasePolicy(EraseReLU(location, p)))
                continue
            record = apply_erase(model, ErasePolicy(EraseReLU(location, p)))
            pick = {"first": [0], "last": [-1], "all": None, "1": [0]}[location]
            expected = [s for b in select_blocks(len(reference), p)
                        for s in (reference[b - 1] if pick is None else [reference[b - 1][i] for i in pick])]
            assert record.sites == expected
            kinds = {s: type(model.get_submodule(s)) for s in every}
            assert {s for s, k in kinds.items() if k is nn.Identity} == set(expected)
            assert {s for s, k in kinds.items() if k is nn.ReLU} == set(every) - set(expected)


def _blocks(model):
    return [b for _, b in iter_blocks(model)]


@pytest.mark.parametrize("family", sorted(SMALL))
def test_prelu_everywhere_and_forward_shape(family):
    shape = (1, 8, 8) if family == "mlp" else (3, 32, 32)
    model = _small(family, in_chans=shape[0])
    record = apply_erase(model, ErasePolicy(EraseReLU("all", 1.0), "prelu"))
    assert len(record.sites) == sum(len(s) for s in block_sites(model))
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == len(record.sites)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_inception_sites_and_erase_at_half():
    model = create_model("inception_v2_cifar", modules_per_stage=2, base_width=2)
    assert block_sites(model)[0] == ["stages.0.0.b3.act", "stages.0.0.b5.act1", "stages.0.0.b5.act2",
                                     "stages.0.0.act_out"]
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 0.5)))
    assert record.sites == ["stages.0.0.act_out", "stages.1.0.act_out", "stages.2.0.act_out"]


def test_preact_with_last_is_a_clear_error(make_cfg):
    cfg = make_cfg("model=preact_resnet110", "erase=last", "dataset=digits")
    with pytest.raises(UserError, match="form=post"):
        build_model(cfg)
    cfg = make_cfg("model=preact_resnet110", "model.form=post", "erase=last", "dataset=digits")
    assert len(build_model(cfg)[1].sites) == 54
    cfg = make_cfg("model=preact_resnet164", "erase.location=3", "erase.proportion=1", "dataset=digits")
    assert build_model(cfg)[1].sites[0] == "layer1.0.act3"  # Zhao et al.'s Type 3, named by index


# --- stochastic depth ------------------------------------------------------------------------------------------

def test_survival_decays_linearly_to_the_last_block():
    model = _meta("resnet110", survival_prob=0.5)
    survival = [b.survival for b in _blocks(model)]
    assert len(survival) == 54 and survival[-1] == pytest.approx(0.5)
    assert survival == pytest.approx([1 - l / 54 * 0.5 for l in range(1, 55)])
    assert all(b.survival == 1.0 for b in _blocks(_meta("resnet110")))
    with pytest.raises(ValueError, match="survival_prob"):
        create_model("resnet20", survival_prob=0.0)


def test_stochastic_depth_drops_in_training_and_scales_at_eval():
    torch.manual_seed(0)
    block = BasicBlock(4, 4)
    block.survival = 0.7
    relu_calls = []
    block.act_out.register_forward_hook(lambda *a: relu_calls.append(1))
    x = torch.randn(3, 4, 6, 6)
    block.eval()
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(x + 0.7 * branch))
    block.train()
    outs = [block(x.clone().requires_grad_()) for _ in range(40)]
    dropped = [torch.equal(o, torch.relu(x)) for o in outs]
    assert 0 < sum(dropped) < 40  # some mini-batches skip the branch, some keep it
    assert len(relu_calls) == 41  # the ReLU after the addition runs either way
    sum(o.sum() for o in outs).backward()  # dropped blocks keep the graph valid (no in-place write into inputs)


# --- the generated table ---------------------------------------------------------------------------------------

def test_zoo_doc_is_in_sync():
    doc = (REPO / "docs" / "model_zoo.md").read_text()
    assert splice_table(doc, render_table()) == doc, "regenerate: python -m erasenet.models --write docs/model_zoo.md"


def test_table_shows_erase_counts():
    table = render_table(["resnet110", "preact_resnet110"])
    assert "| `resnet110` | 3x32x32 | 1.73M | 1,727,962 |" in table
    assert table.count("| 14 | 27 | 54 |") == 1 and "| n/a | n/a | n/a |" in table


# --- every CIFAR family trains on digits, erased and not -------------------------------------------------------

# One thread: these models are too small to gain from two, and one thread stays fast on a busy machine.
TRAIN = ("dataset=digits", "schedule=quick", "schedule.epochs=3", "schedule.milestones=[]", "trainer.num_threads=1",
         "trainer.tensorboard=false", "trainer.checkpoint=false", "trainer.progress=off")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_family_trains_erased_and_not(family, make_cfg, tmp_path, keep_threads):
    name, options, location = SMALL[family]
    overrides = [f"model={name}"] + [f"model.{k}={v}" for k, v in options.items() if k != "image_size"]
    results = {}
    for p in (0.0, 1.0):
        cfg = make_cfg(*TRAIN, *overrides, f"erase.location={location}", f"erase.proportion={p}")
        results[p] = train_run(cfg, tmp_path / str(p))
    assert results[0.0]["erased"] == [] and len(results[1.0]["erased"]) == results[1.0]["erase"]["num_blocks"] * (
        1 if location in ("first", "last") else 0)
    for p, r in results.items():
        lines = (tmp_path / str(p) / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["train_loss"] for line in lines]
        assert r["status"] == "ok" and losses == sorted(losses, reverse=True), (p, losses)
        assert r["test_error"] < 75.0, r  # ten classes: chance is 90% error
