"""Shattered gradients with and without EraseReLU: the EraseReLU paper's Figure 4 (Sec. 3.3), at initialisation.

    python -m erasenet.analysis.shattered [--depths 10,50,100,300] [--points 1000] [--seeds 3] [--out-dir figure4]

A scalar network f: R -> R: a fully-connected layer 1 -> 200, N residual modules ReLU(x + LN(FC(x))) (the paper's
simple residual module with the convolution and BN replaced by a fully-connected layer and LayerNorm) and a
fully-connected layer 200 -> 1; weights and biases He-initialised. EraseReLU erases the ReLU of each module (the
last and only site of the block) through ``erasenet.erase.apply_erase``, after initialisation, so both networks of
one seed share their weights. On 1000 inputs evenly spaced in [-2, 2] it measures:

- df/dx at every input, and their correlation matrix over the grid, C_ij = (g_i - mean)(g_j - mean) / var(g)
  (Balduzzi et al.'s picture). Shattered gradients look like white noise: gradients at nearby inputs decorrelate.
  ``correlation`` is the mean, over lags k with k grid steps <= 0.1, of the Pearson correlation between
  df/dx(x_i) and df/dx(x_i+k) across the grid; ``neighbour_correlation`` the one at adjacent grid points;
- the activation rate of each neuron of the last module (the fraction of inputs where its value before the last
  site is positive); ``bimodality`` is the mean of |2 rate - 1|: 0 when every neuron is active on half the inputs,
  1 when each is always on or always off.

Writes ``shattered.png`` (one row per depth: gradient, correlation matrix and rate histogram, with ReLU and with
EraseReLU, of the first seed) and ``shattered.json`` (every number, and the plotted gradients and rates).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..erase import ErasePolicy, EraseReLU, apply_erase
from ..erase.sites import Block

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VARIANTS = ("ReLU", "EraseReLU")
CORRELATION_DISTANCE = 0.1  # inputs closer than this count as "nearby" for the correlation summary


class ResidualFC(Block):
    """The residual module with a fully-connected layer and LayerNorm: ReLU(x + LN(FC(x)))."""

    sites = ("act_out",)

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.ln = nn.LayerNorm(width)
        self.act_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(x + self.ln(self.fc(x)))


class ScalarResNet(nn.Module):
    """f: R -> R, a fully-connected first and last layer around ``depth`` residual modules."""

    def __init__(self, depth: int, width: int = 200):
        super().__init__()
        self.stem = nn.Linear(1, width)
        self.layers = nn.Sequential(*(ResidualFC(width) for _ in range(depth)))
        self.head = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # He et al.: N(0, 2 / fan_in), for the biases too, as the paper says
                std = math.sqrt(2.0 / m.in_features)
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.normal_(m.bias, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def autocorrelation(g: torch.Tensor, max_lag: int) -> list[float]:
    """Pearson correlation between ``g[i]`` and ``g[i + k]`` over the grid, for lags k = 1..max_lag."""
    return [float(torch.corrcoef(torch.stack([g[:-k], g[k:]]))[0, 1]) for k in range(1, max_lag + 1)]


def measure(depth: int, erase: bool, *, seed: int = 0, points: int = 1000, width: int = 200,
            proportion: float = 1.0) -> dict:
    """Gradients df/dx over the grid and the last module's activation rates of one freshly initialised network."""
    torch.manual_seed(seed)
    model = ScalarResNet(depth, width)
    record = apply_erase(model, ErasePolicy(EraseReLU("last", proportion if erase else 0.0)))
    model.requires_grad_(False)
    x = torch.linspace(-2.0, 2.0, points).unsqueeze(1).requires_grad_()
    last = model.layers[-1]
    captured = {}
    hook = getattr(last, last.sites[-1]).register_forward_pre_hook(lambda m, args: captured.update(h=args[0]))
    (g,) = torch.autograd.grad(model(x).sum(), x)
    hook.remove()
    g = g.squeeze(1).double()
    rates = (captured["h"] > 0).double().mean(0)
    lags = autocorrelation(g, max(1, round(CORRELATION_DISTANCE / (4.0 / (points - 1)))))
    return {"depth": depth, "variant": VARIANTS[erase], "seed": seed, "erased_sites": len(record.sites),
            "correlation": sum(lags) / len(lags), "neighbour_correlation": lags[0],
            "bimodality": float((2 * rates - 1).abs().mean()), "gradients": g.tolist(), "rates": rates.tolist()}


def run(depths: list[int], *, seeds: int = 3, points: int = 1000, width: int = 200, proportion: float = 1.0) -> dict:
    """Every (depth, variant, seed); the per-seed numbers, their means, and the first seed's curves."""
    runs = [measure(d, erase, seed=s, points=points, width=width, proportion=proportion)
            for d in depths for erase in (False, True) for s in range(seeds)]
    summary = []
    for d in depths:
        for variant in VARIANTS:
            mine = [r for r in runs if r["depth"] == d and r["variant"] == variant]
            summary.append({"depth": d, "variant": variant, **{k: sum(r[k] for r in mine) / len(mine) for k in
                                                               ("correlation", "neighbour_correlation", "bimodality")}})
    return {"settings": {"depths": depths, "seeds": seeds, "points": points, "width": width, "proportion": proportion,
                         "correlation_distance": CORRELATION_DISTANCE},
            "summary": summary, "runs": runs}


def plot(data: dict, path: Path, machine: str) -> Figure:
    """One row per depth: for ReLU, then EraseReLU, df/dx over x, the correlation matrix, the rate histogram."""
    from matplotlib.figure import Figure

    depths = data["settings"]["depths"]
    fig = Figure(figsize=(17, 2.9 * len(depths) + 0.8), layout="constrained")
    axes = fig.subplots(len(depths), 6, squeeze=False)
    x = torch.linspace(-2.0, 2.0, data["settings"]["points"]).tolist()
    for row, depth in zip(axes, depths):
        for col, variant in zip((0, 3), VARIANTS):
            r = next(r for r in data["runs"] if r["depth"] == depth and r["variant"] == variant and r["seed"] == 0)
            g = torch.tensor(r["gradients"])
            z = ((g - g.mean()) / g.std(unbiased=False).clamp_min(1e-30))[::max(1, len(g) // 250)]  # screen pixels
            row[col].plot(x, r["gradients"], linewidth=0.6)
            row[col].set_title(f"{variant}, {depth} modules: gradient", fontsize=9)
            row[col].set(xlabel="input x", ylabel="df/dx")
            image = row[col + 1].imshow(torch.outer(z, z).numpy(), cmap="RdBu_r", vmin=-2, vmax=2,
                                        extent=(-2, 2, 2, -2))
            row[col + 1].set_title(f"correlation of df/dx (nearby {r['correlation']:.3f})", fontsize=9)
            row[col + 1].set(xlabel="input x_j", ylabel="input x_i")
            fig.colorbar(image, ax=row[col + 1], shrink=0.9).set_label("normalised product", fontsize=7)
            row[col + 2].hist(r["rates"], bins=20, range=(0, 1))
            row[col + 2].set_title(f"activation rates (bimodality {r['bimodality']:.2f})", fontsize=9)
            row[col + 2].set(xlabel="share of inputs a neuron is on", ylabel="neurons (last module)")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    fig.suptitle("EraseReLU Figure 4 at initialisation, f: R -> R: ReLU (left three panels), EraseReLU (right three); "
                 "one row per depth. Correlation maps: (g_i - mean)(g_j - mean) / var of the gradients g at inputs "
                 "x_i, x_j.\nSeed 0; numbers in the titles are this seed's; " + machine, fontsize=10)
    fig.savefig(path, dpi=80)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m erasenet.analysis.shattered",
                                     description="Reproduce the EraseReLU paper's Figure 4 (shattered gradients).")
    parser.add_argument("--depths", default="10,50,100,300", help="numbers of residual modules (default %(default)s)")
    parser.add_argument("--points", type=int, default=1000, help="inputs in [-2, 2] (default %(default)s)")
    parser.add_argument("--width", type=int, default=200, help="rectifier units per module (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="networks per depth and variant (default %(default)s)")
    parser.add_argument("--proportion", type=float, default=1.0, help="EraseReLU's proportion (default %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("figure4"), help="where to write (default %(default)s)")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    if min(depths) < 1 or args.points < 3 or args.width < 2 or args.seeds < 1 or not 0 <= args.proportion <= 1:
        parser.error("depths >= 1, points >= 3, width >= 2, seeds >= 1 and 0 <= proportion <= 1 are needed")
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # 1000x200 matrices are too small to gain from threads, and lose badly on a busy CPU
    try:
        data = run(depths, seeds=args.seeds, points=args.points, width=args.width, proportion=args.proportion)
    finally:
        torch.set_num_threads(threads)
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, 1 thread used, torch {torch.__version__}"
    data["machine"], data["seconds"] = machine, round(time.perf_counter() - start, 2)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(data, args.out_dir / "shattered.png", machine)
    (args.out_dir / "shattered.json").write_text(json.dumps(data) + "\n")
    print(f"depth  variant    correlation (|dx|<={CORRELATION_DISTANCE})  neighbours  bimodality   "
          f"(mean of {args.seeds} seed(s))")
    for s in data["summary"]:
        print(f"{s['depth']:5d}  {s['variant']:9s}  {s['correlation']:25.4f}  {s['neighbour_correlation']:10.4f}  "
              f"{s['bimodality']:10.3f}")
    print(f"measured in {data['seconds']:.1f}s on {machine}; written {args.out_dir / 'shattered.png'} and "
          f"{args.out_dir / 'shattered.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
