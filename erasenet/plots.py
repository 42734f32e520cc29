"""Plots of a sweep, written next to its summary (PNG, matplotlib's Agg canvas: no display needed).

- ``curves.png``: error and loss against epoch, one colour per configuration, a band of mean ± std over its
  seeds; train solid, val dotted, test dashed (the EraseReLU paper's Figure 5/6 style).
- ``proportion.png``: test accuracy against ``erase.proportion``, mean ± std over seeds, one line per family of
  runs that differ only in proportion (the paper's Figure 3 style); only for sweeps over the proportion.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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


def short_labels(configs: list[str]) -> tuple[list[str], str]:
    """Each config's overrides that not every config shares, and the shared ones (for the title)."""
    split = [re.split(r",(?=[\w.+~-]+=)", c) for c in configs]
    common = [item for item in split[0] if all(item in items for items in split)] if split else []
    labels = [",".join(i for i in items if i not in common) or "(all runs)" for items in split]
    return labels, ",".join(common)


def _caption(fig: Figure, text: str, common: str) -> None:
    width = int(fig.get_figwidth() * 12)  # characters of a 9-point title per inch
    fig.suptitle("\n".join(textwrap.wrap(text + (f"; all runs: {common}" if common else ""), width)), fontsize=9)


def epoch_band(runs: list[list[dict]], key: str, log: bool = False) -> tuple[list[int], list[float], list[float]]:
    """Epochs where any run has ``key``, with the mean and sample std (0 for one run) over those runs (of the
    values' log10 with ``log``, where only positive finite values count)."""
    values: dict[int, list[float]] = {}
    for records in runs:
        for m in records:
            v = m.get(key)
            if v is not None and (not log or 0 < v < math.inf):
                values.setdefault(m["epoch"], []).append(math.log10(v) if log else v)
    epochs = sorted(values)
    means = [statistics.fmean(values[e]) for e in epochs]
    stds = [statistics.stdev(values[e]) if len(values[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def plot_curves(groups: dict[str, list[list[dict]]], path: Path) -> None:
    """Error and loss against epoch for every configuration (label -> the metrics of each of its seeds)."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    axes = fig.subplots(1, 2)
    labels, common = short_labels(list(groups))
    for i, (label, runs) in enumerate(zip(labels, groups.values())):
        colour = f"C{i % 10}"
        for split, style in STYLES:
            for ax, metric in zip(axes, ("error", "loss")):
                # losses span decades (early evaluations of a fresh BN net): their band is mean ± std of log10
                log = metric == "loss"
                epochs, means, stds = epoch_band(runs, f"{split}_{metric}", log=log)
                if not epochs:
                    continue
                low, high = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
                if log:
                    means, low, high = ([10 ** v for v in vs] for vs in (means, low, high))
                first = ax is axes[0] and split == "train"
                ax.plot(epochs, means, style, color=colour, label=f"{label} (n={len(runs)})" if first else None)
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
    axes[1].set_yscale("log")
    for ax, metric in zip(axes, ("error (%)", "loss (geometric mean × ÷ std)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _caption(fig, "mean ± std over seeds; train solid, val dotted, test dashed", common)
    fig.legend(loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")
    fig.savefig(path, dpi=100)


def plot_proportions(results: list[dict], path: Path) -> None:
    """Test accuracy (100 - test error) against erase.proportion, one line per family, mean ± std over seeds."""
    families: dict[str, dict[float, list[float]]] = {}
    for r in results:
        if r.get("test_error") is not None:
            families.setdefault(family_of(r), {}).setdefault(proportion_of(r), []).append(100.0 - r["test_error"])
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    labels, common = short_labels(sorted(families))
    for label, (_, by_p) in zip(labels, sorted(families.items())):
        ps = sorted(by_p)
        stats = [mean_std(by_p[p]) for p in ps]
        ax.errorbar(ps, [m for m, _ in stats], yerr=[0.0 if math.isnan(s) else s for _, s in stats], marker="o",
                    capsize=3, label=f"{label} (n={max(len(v) for v in by_p.values())})")
    ax.set_xlabel("erase.proportion (fraction of blocks with the ReLU erased)")
    ax.set_ylabel("test accuracy (%)")
    _caption(fig, "test accuracy against proportion, mean ± std over seeds", common)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")
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
