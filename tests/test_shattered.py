"""The EraseReLU paper's Figure 4: gradients shatter with ReLU, not with EraseReLU (small grid for speed)."""

import json

import pytest
import torch

from erasenet.analysis.shattered import ScalarResNet, main, measure
from erasenet.models import block_sites, declared_sites


@pytest.fixture(autouse=True)
def one_thread():
    """Matrices of 200x200 gain nothing from threads and lose much on a busy CPU (as the CLI does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_scalar_network_follows_the_site_contract_and_erases_through_the_policy():
    model = ScalarResNet(depth=4, width=8)
    assert declared_sites(model) == [f"layers.{i}.act_out" for i in range(4)]
    assert block_sites(model)[0] == ["layers.0.act_out"]
    assert measure(4, erase=True, points=50, width=8)["erased_sites"] == 4
    assert measure(4, erase=True, points=50, width=8, proportion=0.5)["erased_sites"] == 2
    assert measure(4, erase=False, points=50, width=8)["erased_sites"] == 0


@pytest.mark.parametrize("depth", [50, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_gradients_decorrelate_and_activations_turn_bimodal(depth, seed):
    relu = measure(depth, erase=False, seed=seed, points=200)
    erased = measure(depth, erase=True, seed=seed, points=200)
    assert relu["correlation"] < erased["correlation"]
    assert relu["neighbour_correlation"] < erased["neighbour_correlation"]
    assert relu["bimodality"] > erased["bimodality"]


def test_cli_writes_the_figure_and_its_numbers(tmp_path):
    from PIL import Image

    assert main(["--depths", "2,50", "--points", "100", "--seeds", "2", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "shattered.json").read_text())
    assert [(s["depth"], s["variant"]) for s in data["summary"]] == [
        (2, "ReLU"), (2, "EraseReLU"), (50, "ReLU"), (50, "EraseReLU")]
    assert len(data["runs"]) == 8 and len(data["runs"][0]["gradients"]) == 100 and len(data["runs"][0]["rates"]) == 200
    mean = sum(r["correlation"] for r in data["runs"] if r["depth"] == 50 and r["variant"] == "ReLU") / 2
    assert data["summary"][2]["correlation"] == pytest.approx(mean)
    with Image.open(tmp_path / "shattered.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_figure_panels_have_axis_labels_and_colorbars(tmp_path):
    from erasenet.analysis.shattered import plot, run

    fig = plot(run([2, 8], seeds=1, points=60, width=16), tmp_path / "shattered.png", "test machine")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 2 * 6 and len(colorbars) == 2 * 2  # one per correlation map
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in panels)
    assert all(ax.get_ylabel() for ax in colorbars)
    assert {ax.get_ylabel() for ax in panels} >= {"df/dx", "input x_i", "neurons (last module)"}
