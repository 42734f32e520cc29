"""AutoReP's polynomial replacement: its output, its count, under gates and culling, through a real run, and in
the private-inference export and a real two-party inference."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn

from erasenet.common.errors import UserError
from erasenet.common.config import check_config
from erasenet.erase import ErasePolicy, apply_erase
from erasenet.erase.cull import Cull
from erasenet.erase.gates import Gate, Gates, gates_of
from erasenet.erase.policy import EraseReLU
from erasenet.erase.polynomial import INIT, Polynomial, count_polys, polys_per_site
from erasenet.erase.rectifiers import count_relus
from erasenet.models import create_model
from erasenet.pi.export import export_model
from erasenet.reports.summary import write_summary
from erasenet.training.run import train_run
from test_method_reports import TINY, compose_cfg
from test_pi import measured, needs_spu

SHAPE = (1, 8, 8)


def resnet8() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet", depth=8, num_classes=10, in_chans=1)


def set_coefficients(p: Polynomial, c) -> None:
    """Set ``p``'s (c2, c1, c0) (rows; a column per channel where it has them): its parameter holds c2 scaled."""
    c = torch.as_tensor(c, dtype=torch.float32)
    c = c.reshape(3, *([1] * (p.coefficients.dim() - 1))) if c.dim() == 1 else c
    with torch.no_grad():
        p.coefficients.copy_(c / p.scale.reshape(3, *([1] * (c.dim() - 1))))
    assert torch.allclose(p.effective_coefficients().expand_as(p.coefficients), c.expand_as(p.coefficients))


@pytest.mark.parametrize("replace", ["poly", "poly_channel"])
def test_a_polynomial_at_0_1_0_is_the_identity(replace):
    erased, poly = resnet8(), resnet8()
    apply_erase(erased, ErasePolicy(EraseReLU("last", 1.0), "identity"), input_shape=SHAPE)
    apply_erase(poly, ErasePolicy(EraseReLU("last", 1.0), replace), input_shape=SHAPE)
    for m in poly.modules():
        if isinstance(m, Polynomial):
            set_coefficients(m, (0.0, 1.0, 0.0))
    x = torch.randn(4, *SHAPE)
    assert torch.equal(erased.eval()(x), poly.eval()(x))


def test_the_polynomial_computes_its_quadratic_per_channel():
    p = Polynomial(per_channel=True)
    p.shape_from((2, 3, 3))
    assert p.coefficients.shape == (3, 2)
    assert torch.allclose(p.effective_coefficients()[:, 0], torch.tensor(INIT))
    set_coefficients(p, [[1.0, 0.0], [0.0, 2.0], [0.5, -1.0]])
    x = torch.randn(5, 2, 3, 3)
    assert torch.allclose(p(x)[:, 0], x[:, 0] ** 2 + 0.5) and torch.allclose(p(x)[:, 1], 2 * x[:, 1] - 1)


@pytest.mark.parametrize("replace, coefficients", [("poly", [(3,)] * 3),
                                                   ("poly_channel", [(3, 16), (3, 32), (3, 64)])])
def test_the_count_leaves_the_polynomials_out_of_the_relus_and_counts_them(replace, coefficients):
    """ResNet-8 on 1x8x8: 4,608 ReLUs, of which the blocks' last ReLUs (16x8x8, 32x4x4, 64x2x2) cover 1,792."""
    model = resnet8()
    assert count_relus(model, SHAPE) == 4608 and count_polys(model, SHAPE) == 0
    record = apply_erase(model, ErasePolicy(EraseReLU("last", 1.0), replace), input_shape=SHAPE)
    assert count_relus(model, SHAPE) == 4608 - 1792 and count_polys(model, SHAPE) == 1792
    assert [m.coefficients.shape for m in model.modules() if isinstance(m, Polynomial)] == coefficients
    assert [(s["site"], s["polys"]) for s in polys_per_site(model, SHAPE)] == [
        (site, n) for site, n in zip(record.sites, (1024, 512, 256))]


def test_gates_choose_between_the_relu_and_the_polynomial():
    model = resnet8()
    apply_erase(model, ErasePolicy(Gates(0.5, "element"), "poly"), input_shape=SHAPE)
    gates = [g for _, g in gates_of(model)]
    assert all(isinstance(g.other, Polynomial) for g in gates)
    with torch.no_grad():
        for g in gates:
            g.mask.zero_()
        gates[0].mask.view(-1)[:10] = 1.0
    assert count_relus(model, SHAPE) == 10 and count_polys(model, SHAPE) == 4608 - 10
    x = torch.randn(3, 1024)
    g = gates[1]  # every entry 0: the polynomial alone
    assert torch.allclose(g(x.view(3, 16, 8, 8)), g.other(x.view(3, 16, 8, 8)))
    plain = Gate("element")
    plain.shape_from((16, 8, 8))
    with torch.no_grad():
        plain.mask.zero_()
    assert torch.equal(plain(x.view(3, 16, 8, 8)), x.view(3, 16, 8, 8))
    assert count_polys(nn.Sequential(plain), (16, 8, 8)) == 0


def test_culling_puts_the_polynomial_in_the_culled_stages():
    model = resnet8()
    record = apply_erase(model, ErasePolicy(Cull(stages=(1,)), "poly_channel"), input_shape=SHAPE)
    assert record.sites and count_polys(model, SHAPE) == sum(s["polys"] for s in polys_per_site(model, SHAPE)) > 0
    assert count_relus(model, SHAPE) + count_polys(model, SHAPE) == 4608


def test_gates_take_identity_or_a_polynomial_only(make_cfg):
    check_config(make_cfg("dataset=digits", "erase=gates", "erase.budget=0.5", "erase.replace=poly_channel"))
    with pytest.raises(UserError, match="erase.replace=prelu does not apply to erase.method=gates"):
        check_config(make_cfg("dataset=digits", "erase=gates", "erase.budget=0.5", "erase.replace=prelu"))


def test_a_run_with_polynomials_records_them_and_the_summary_shows_them(tmp_path):
    """A real (tiny) training: result.json's polys and its sites; the coefficients learn, without weight decay."""
    groups = {"erase.proportion=1": ("erase.replace=poly_channel",), "erase.proportion=0": ()}
    for group, extra in groups.items():
        cfg = compose_cfg(*TINY, "model.depth=3", "erase=last", group, *extra, "seed=0")
        result = train_run(cfg, tmp_path / f"{group},seed=0", overrides=[group, "seed=0"], group=group)
        assert result["status"] == "ok"
        if extra:
            assert result["polys"] == sum(s["polys"] for s in result["polys_per_site"]) == 64
            assert result["relus"] == result["relus_original"] - 64
            assert [s["site"] for s in result["polys_per_site"]] == result["erased"]
        else:
            assert result["polys"] == 0 and "polys_per_site" not in result
    write_summary(tmp_path)
    rows = {r["config"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert float(rows["erase.proportion=1"]["polys"]) == 64 and float(rows["erase.proportion=0"]["polys"]) == 0
    assert "polynomials" in (tmp_path / "summary.md").read_text()


def test_the_export_carries_the_polynomials_and_their_count(tmp_path):
    """The export checks itself against the numpy reference; the gate's polynomial covers its zeroed elements."""
    model = resnet8()
    apply_erase(model, ErasePolicy(Gates(0.5, "element"), "poly_channel"), input_shape=SHAPE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, gate in gates_of(model):
            gate.mask.copy_((torch.rand(gate.mask.shape, generator=g) < 0.5).float())
            gate.other.coefficients.add_(torch.randn(gate.other.coefficients.shape, generator=g) * 0.1)
            gate.other.coefficients[0] *= 10  # a square term large enough to matter (c2 about 0.05)
    export_model(model.eval(), torch.randn(SHAPE), tmp_path, onnx=False)
    graph = json.loads((tmp_path / "network.json").read_text())
    assert graph["polys"] == count_polys(model, SHAPE) > 0 and graph["relus"] == count_relus(model, SHAPE)
    assert all(op["polynomial"] for op in graph["ops"] if op["op"] == "relu" and 0 < op["kept"] < op["elements"])


def poly_mlp(kept: int, polynomial: bool, width: int = 256) -> nn.Module:
    """Linear - element gate keeping ``kept`` of ``width`` ReLUs, the rest the identity or a polynomial - Linear."""
    torch.manual_seed(0)
    gate = Gate("element", Polynomial() if polynomial else None)
    gate.shape_from((width,))
    with torch.no_grad():
        gate.mask.zero_()[torch.randperm(width)[:kept]] = 1.0
    if polynomial:
        set_coefficients(gate.other, (0.1, 0.9, 0.05))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), gate, nn.Linear(width, 10)).eval()


@needs_spu
def test_cheetah_evaluates_the_polynomial_and_pays_multiplications_for_it(tmp_path):
    identity = measured(poly_mlp(64, False), tmp_path / "identity")
    poly = measured(poly_mlp(64, True), tmp_path / "poly")
    for r in (identity, poly):
        assert r["check"]["passed"], r["check"]
    assert poly["polys"] == 192 and identity["polys"] == 0
    square = "multiplication_polynomial"
    assert poly["by_kind"][square]["bytes"] > identity["by_kind"][square]["bytes"]
    assert poly["total"]["bytes"] > identity["total"]["bytes"]
