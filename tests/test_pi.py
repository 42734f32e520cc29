"""Private inference: the export's graph computes the model's logits, names what it cannot translate, records the
kept ReLUs; under SPU's Cheetah (when its environment exists) the private logits equal the plaintext ones and
the comparison traffic follows the kept ReLUs. The SPU tests need ``python -m erasenet.pi setup`` (CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO
from erasenet.common.errors import UserError
from erasenet.erase import ErasePolicy, apply_erase
from erasenet.erase.gates import Gate, Gates, gates_of
from erasenet.erase.rectifiers import count_relus
from erasenet.models import create_model
from erasenet.pi import cost, measure, reference
from erasenet.pi.export import UnsupportedOperation, export_model, translate
from erasenet.training.delivered import load_model
from erasenet.training.run import train_run


def spu_interpreter():
    try:
        return measure.spu_python()
    except UserError:
        return None


SPU = spu_interpreter()
needs_spu = pytest.mark.skipif(SPU is None, reason="no SPU environment (python -m erasenet.pi setup)")


class TinyCNN(nn.Module):
    """Every op kind the translator knows, at 8x8: conv-BN-ReLU, max pool, a residual add, PReLU, an unfolded
    BN (after an addition), a strided slice and zero pad (option-A shortcut), concat, avg pool, mean, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.bn3, self.prelu = nn.BatchNorm2d(4), nn.PReLU(4)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        y = self.prelu(self.bn3(x + self.bn2(self.conv2(x))))
        s = F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 0, 2))
        z = torch.cat([self.avg(y), s[:, :2]], dim=1)
        return self.fc(torch.flatten(torch.cat([z.mean((2, 3)), F.relu(z).mean((-2, -1))[:, :4]], 1), 1))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def gated_resnet(kept_fraction: float, seed: int = 0) -> nn.Module:
    """The zoo's ResNet-8 on 1x8x8 with an element gate on every site, binarised at random."""
    torch.manual_seed(seed)
    model = create_model("resnet", depth=8, num_classes=10, in_chans=1)
    apply_erase(model, ErasePolicy(Gates(budget=0.5, granularity="element")), input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gate in gates_of(model):
            gate.mask.copy_((torch.rand(gate.mask.shape, generator=g) < kept_fraction).float())
    return randomise_bn(model, seed)


def test_export_computes_the_models_logits(tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(TinyCNN())
    image = torch.randn(1, 8, 8)
    graph = export_model(model, image, tmp_path, onnx=False)
    ops = [op["op"] for op in graph["ops"]]
    assert {"conv2d", "relu", "max_pool2d", "add", "affine", "prelu", "slice", "pad", "concat", "avg_pool2d",
            "global_avg_pool", "reshape", "linear"} <= set(ops)
    assert ops.count("affine") == 1  # bn1 and bn2 fold into their convolutions; bn3 follows an addition
    loaded, arrays = reference.load(tmp_path)
    ours = reference.forward(loaded, arrays, image[None].double().numpy())
    with torch.no_grad():
        theirs = model(image[None]).double().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_gates_become_element_masks_with_their_counts(tmp_path):
    model = gated_resnet(0.5)
    graph = export_model(model, torch.randn(1, 8, 8), tmp_path, onnx=False)
    arrays = reference.load(tmp_path)[1]
    relus = [op for op in graph["ops"] if op["op"] == "relu"]
    gates = dict(gates_of(model))
    assert [op["site"] for op in relus] == list(gates)  # the names the erase record and the log use
    for op, gate in zip(relus, gates.values()):
        assert op["kept"] == int(gate.mask.sum()) == int(reference.kept_mask(op, arrays).sum())
        assert op["elements"] == gate.elements and 0 < op["kept"] < op["elements"]
    assert graph["relus"] == count_relus(model, (1, 8, 8)) == sum(op["kept"] for op in relus)


def test_torchvision_resnet_with_gates_on_shared_relus(tmp_path):
    """torchvision's BasicBlock calls one ReLU module twice; the gates replace each call, and the export names
    the sites as the erase record does (layer1.0.relu#1), with their state-dict modules kept apart."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    record = apply_erase(model, ErasePolicy(Gates(budget=0.5, granularity="channel")),
                         input_shape=(3, 32, 32))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, gate in gates_of(model):
            gate.mask.copy_((torch.rand(gate.mask.shape, generator=g) < 0.5).float())
    randomise_bn(model)
    image = torch.randn(3, 32, 32)
    graph = export_model(model, image, tmp_path, onnx=False)
    assert sorted(s["site"] for s in graph["sites"]) == sorted(record.sites)
    assert "layer1.0.relu#2" in record.sites and graph["relus"] == count_relus(model, (3, 32, 32))
    loaded, arrays = reference.load(tmp_path)
    with torch.no_grad():
        np.testing.assert_allclose(reference.forward(loaded, arrays, image[None].numpy()), model(image[None]).numpy(),
                                   atol=1e-4, rtol=0)


def test_onnx_carries_the_kept_relu_count(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = gated_resnet(0.4)
    graph = export_model(model, torch.randn(1, 8, 8), tmp_path)
    assert graph["onnx"] == "model.onnx", graph.get("onnx_skipped")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert int(meta["erasenet.relus"]) == graph["relus"] == count_relus(model, (1, 8, 8))
    assert json.loads(meta["erasenet.relu_sites"]) == graph["sites"]
    # the reason the count must travel in the metadata: every gated site is a full Relu node in the graph
    assert sum(n.op_type == "Relu" for n in proto.graph.node) == len(graph["sites"])


def test_unsupported_operations_fail_naming_them():
    class Sigmoidal(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return torch.sigmoid(self.fc(x.flatten(1)))

    with pytest.raises(UnsupportedOperation, match="the function sigmoid .*never approximates"):
        translate(Sigmoidal(), torch.randn(1, 8, 8))
    with pytest.raises(UnsupportedOperation, match="module torch.nn.modules.activation.SiLU"):
        translate(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.SiLU()), torch.randn(1, 8, 8))
    model = gated_resnet(0.5)
    with torch.no_grad():
        gates_of(model)[0][1].mask.fill_(0.5)
    with pytest.raises(UnsupportedOperation, match="is not binarised"):
        translate(model, torch.randn(1, 8, 8))


class Quadratic(nn.Module):
    """A polynomial activation as the export knows it: ``polynomial_coefficients`` rows c2, c1, c0 per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.coefficients = nn.Parameter(torch.randn(3, channels) * 0.3)

    @property
    def polynomial_coefficients(self) -> torch.Tensor:
        return self.coefficients

    def forward(self, x):
        c = self.coefficients.view(3, 1, -1, *([1] * (x.dim() - 2)))
        return c[0] * x * x + c[1] * x + c[2]


def test_polynomial_activations_carry_their_coefficients(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), Quadratic(3), nn.Flatten(), nn.Linear(108, 10)).eval()
    image = torch.randn(1, 8, 8)
    graph = export_model(model, image, tmp_path, onnx=False)
    poly = next(op for op in graph["ops"] if op["op"] == "polynomial")
    assert poly["per_channel"] and graph["relus"] == 0
    graph, arrays = reference.load(tmp_path)
    np.testing.assert_array_equal(arrays[poly["coefficients"]], model[1].coefficients.detach().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(reference.forward(graph, arrays, image[None].numpy()), model(image[None]).numpy(),
                                   atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    """A real gated MLP run on the 8x8 digits: trained, binarised, fine-tuned."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "dataset=digits", "model=mlp", "model.depth=2", "model.width=32", "erase=gates", "erase.budget=0.5",
            "erase.granularity=element", "erase.gate_epochs=1", "schedule=quick", "schedule.epochs=2",
            "trainer.tensorboard=false"])
    run_dir = tmp_path_factory.mktemp("pi") / "run"
    result = train_run(cfg, run_dir)
    assert result["status"] == "ok"
    return run_dir, result


def test_load_model_rebuilds_the_delivered_network(gated_run):
    run_dir, result = gated_run
    delivered = load_model(run_dir)
    assert not delivered.model.training and delivered.input_shape == (1, 8, 8)
    assert count_relus(delivered.model, delivered.input_shape) == result["relus"] == 16
    image, label = measure.test_image(delivered)
    assert image.shape == (1, 8, 8) and 0 <= label < 10


def test_the_format_loads_without_erasenet_or_torch(tmp_path):
    """reference.py, run on its own (isolated mode, no erasenet on the path) in an interpreter without torch."""
    python = SPU or pytest.skip("no interpreter without torch (the SPU environment)")
    model = gated_resnet(0.3)
    image = torch.randn(1, 8, 8)
    export_model(model, image, tmp_path / "net", onnx=False)
    np.save(tmp_path / "image.npy", image.numpy())
    copy = tmp_path / "alone" / "reference.py"
    copy.parent.mkdir()
    copy.write_text((REPO / "erasenet" / "pi" / "reference.py").read_text())
    out = subprocess.run([str(python), "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import runpy; "
                          "sys.argv = sys.argv[1:]; assert 'torch' not in sys.modules; "
                          "runpy.run_path(sys.argv[0] + '/reference.py', run_name='__main__')",
                          str(copy.parent), str(tmp_path / "net"), str(tmp_path / "image.npy")],
                         capture_output=True, text=True, check=True)
    with torch.no_grad():
        np.testing.assert_allclose(json.loads(out.stdout), model(image[None])[0].numpy(), atol=1e-5, rtol=0)


# --- under SPU's Cheetah ------------------------------------------------------------------------------------------

def masked_mlp(kept: int, width: int = 512) -> nn.Module:
    """Linear - element gate with ``kept`` of ``width`` entries at 1 - Linear, on a flattened 8x8 image."""
    torch.manual_seed(0)
    gate = Gate("element")
    gate.shape_from((width,))
    with torch.no_grad():
        gate.mask.zero_()[torch.randperm(width)[:kept]] = 1.0
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), gate, nn.Linear(width, 10)).eval()


def measured(model: nn.Module, where, image=None) -> dict:
    image = torch.randn(1, 8, 8) if image is None else image
    export_model(model, image, where, onnx=False)
    np.save(where / measure.IMAGE_FILE, image.numpy())
    return measure.measure_export(where, SPU)


@needs_spu
def test_cheetah_inference_of_a_trained_run_matches_plaintext(gated_run):
    """The command a user types, on a real run: python -m erasenet.pi SWEEP_DIR (here a sweep of that one run)."""
    run_dir, result = gated_run
    env = {**os.environ, "ERASENET_PI_PYTHON": str(SPU), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "erasenet.pi", str(run_dir.parent)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "conv/matmul" in done.stdout and "WAN s*" in done.stdout
    cost_file = json.loads((run_dir / measure.COST_FILE).read_text())
    check = cost_file["check"]
    assert check["passed"] and check["max_abs_difference"] <= check["tolerance"]
    assert check["private_class"] == check["plaintext_class"]
    assert cost_file["protocol"] == "CHEETAH" and cost_file["ring"] == "FM64" and cost_file["fraction_bits"] == 18
    assert cost_file["relus"] == result["relus"]
    kinds = cost_file["by_kind"]
    assert sum(k["bytes"] for k in kinds.values()) == cost_file["total"]["bytes"] > 0
    assert kinds["conv_matmul"]["bytes"] > 0 and kinds["comparison_relu"]["bytes"] > 0
    lan, wan = (cost_file["latency"]["settings"][s]["seconds"] for s in ("LAN", "WAN"))
    assert cost_file["latency"]["estimate"] and cost_file["total"]["seconds"] < lan < wan


@needs_spu
def test_comparison_traffic_follows_the_kept_relus(tmp_path):
    """Each kept ReLU adds the same comparison traffic (a run's first comparison also pays a fixed OT set-up), so
    halving the kept ReLUs halves the traffic above that set-up; a network with none compares nothing."""
    runs = {k: measured(masked_mlp(k), tmp_path / str(k)) for k in (512, 256, 128, 0)}
    for r in runs.values():
        assert r["check"]["passed"], r["check"]
    compare = {k: r["by_kind"]["comparison_relu"]["bytes"] for k, r in runs.items()}
    top, bottom = compare[512] - compare[256], compare[256] - compare[128]
    assert 1.8 < top / bottom < 2.2, compare
    assert compare[0] == 0 and runs[0]["by_kind"]["comparison_relu"]["kernels"] == [], compare
    assert runs[0]["total"]["bytes"] < runs[128]["total"]["bytes"]
    # the linear layers cost the same whatever the mask
    assert runs[512]["by_kind"]["conv_matmul"]["bytes"] == pytest.approx(runs[0]["by_kind"]["conv_matmul"]["bytes"],
                                                                         rel=0.01)


@needs_spu
def test_cheetah_evaluates_every_op_kind(tmp_path):
    torch.manual_seed(1)
    model = randomise_bn(TinyCNN())
    r = measured(model, tmp_path)
    assert r["check"]["passed"], r["check"]
    assert r["relus"] == count_relus(model, (1, 8, 8))


def test_kernel_kinds():
    assert [cost.kind_of(k) for k in ("mmul_aa", "conv2d_aa", "msb_a2b", "mul_a1b", "mul_aa", "square_a",
                                      "trunc_a", "reshape")] == \
        ["conv_matmul", "conv_matmul", "comparison_relu", "comparison_relu", "multiplication_polynomial",
         "multiplication_polynomial", "truncation", "rest"]
