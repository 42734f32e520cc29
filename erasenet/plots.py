"""Plots of a sweep, written next to its summary (PNG, matplotlib's Agg canvas: no display needed).

- ``curves.png``: error and loss against epoch, one colour per configuration, a band of mean ± std over its
  seeds; train solid, val dotted, test dashed (the EraseReLU paper's Figure 5/6 style).
- ``proportion.png``: test accuracy against ``erase.proportion``, mean ± std over seeds, one line per family of
  runs that differ only in proportion (the paper's Figure 3 style); only for sweeps over the proportion.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from .results import family_of, mean_std, proportion_of

STYLES = (("train", "-"), ("val", ":"), ("test", "--"))


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's per-epoch records in epoch order; a repeated epoch (a resumed run) keeps its last record."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def epoch_band(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs where any run has ``key``, with the mean and sample std (0 for one run) over those runs."""
    values: dict[int, list[float]] = {}
    for records in runs:
        for m in records:
            if m.get(key) is not None:
                values.setdefault(m["epoch"], []).append(m[key])
    epochs = sorted(values)
    means = [statistics.fmean(values[e]) for e in epochs]
    stds = [statistics.stdev(values[e]) if len(values[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def plot_curves(groups: dict[str, list[list[dict]]], path: Path) -> None:
    """Error and loss against epoch for every configuration (label -> the metrics of each of its seeds)."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(groups))]
    for (label, runs), colour in zip(groups.items(), colours):
        for split, style in STYLES:
            for ax, metric in zip(axes, ("error", "loss")):
                epochs, means, stds = epoch_band(runs, f"{split}_{metric}")
                if not epochs:
                    continue
                ax.plot(epochs, means, style, color=colour, label=f"{label} ({split}, n={len(runs)})")
                ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=colour, alpha=0.2, linewidth=0)
    for ax, metric in zip(axes, ("error (%)", "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_title("mean ± std over seeds; train solid, val dotted, test dashed")
    axes[1].legend(fontsize="x-small", loc="upper right")
    fig.savefig(path, dpi=100)


def plot_proportions(results: list[dict], path: Path) -> None:
    """Test accuracy (100 - test error) against erase.proportion, one line per family, mean ± std over seeds."""
    families: dict[str, dict[float, list[float]]] = {}
    for r in results:
        if r.get("test_error") is not None:
            families.setdefault(family_of(r), {}).setdefault(proportion_of(r), []).append(100.0 - r["test_error"])
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, by_p in sorted(families.items()):
        ps = sorted(by_p)
        stats = [mean_std(by_p[p]) for p in ps]
        ax.errorbar(ps, [m for m, _ in stats], yerr=[0.0 if math.isnan(s) else s for _, s in stats], marker="o",
                    capsize=3, label=f"{label} (n={max(len(v) for v in by_p.values())})")
    ax.set_xlabel("erase.proportion (fraction of blocks with the ReLU erased)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against proportion, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)


def write_plots(root: Path, results: list[dict]) -> list[Path]:
    """Draw the sweep's plots into ``root`` from its finished runs; return the files written."""
    root, written = Path(root), []
    ok = [r for r in results if r.get("status", "ok") == "ok"]
    groups: dict[str, list[list[dict]]] = {}
    for r in sorted(ok, key=lambda r: r.get("group", "")):
        records = read_metrics(r["_dir"])
        if records:
            groups.setdefault(r.get("group") or "(defaults)", []).append(records)
    if groups:
        plot_curves(groups, root / "curves.png")
        written.append(root / "curves.png")
    if len({proportion_of(r) for r in ok if proportion_of(r) is not None}) > 1:
        plot_proportions(ok, root / "proportion.png")
        written.append(root / "proportion.png")
    return written
