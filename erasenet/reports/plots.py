"""Plots of a sweep, written next to its summary (PNG, matplotlib's Agg canvas: no display needed).

- ``curves.png``: error and loss against epoch, one colour per configuration, a band of mean ± std over its
  seeds; train solid, val dotted, test dashed (the EraseReLU paper's Figure 5/6 style). Error and loss are on log
  axes, and a third panel zooms into the test error of the last epochs, where configurations differ.
- ``proportion.png``: test error against ``erase.proportion``, mean ± std over seeds, one line per family of
  runs that differ only in proportion (the paper's Figure 3 style); only for sweeps over the proportion.
- ``pareto.png``: test error against the ReLU count of one forward pass (the cost metric of ReLU-reduction
  work), one line per family; only for sweeps over the proportion whose runs record ``relus``. A sweep with a
  budgeted method (``erase.method`` gates or cull) draws it across methods instead: one series per method, log
  ReLU axis (``plot_methods``). In both, points of several series at one count stand side by side, and a published
  value (``paper.*``) is a hollow marker of its series beside the configuration it is for.
- ``pareto_communication.png``: the Pareto plot's second view, test error against the communication of one
  private inference measured by ``python -m erasenet.pi`` (``pi_cost.json``), one series per method, drawn as the
  plot across methods is; only where runs of two configurations or more were measured.
- ``communication_relus.png``: each measured run's bytes (all, and its comparisons') against its kept ReLUs, with
  the least-squares lines (``picost.cost_fits``); only where the measured runs keep two ReLU counts or more.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path

from typing import Callable, Hashable

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from .methods import EQUAL_BUDGET, has_methods, point_label, series_key, series_labels
from .picost import MB, cost_fits, measured, points
from ..common.records import (family_of, finite, group_of, is_ok, mean_std, proportion_of, published_error,
                              read_metrics, split_overrides)

STYLES = (("train", "-"), ("val", ":"), ("test", "--"))
MANY_CONFIGS = 6  # above this, the overview panels draw test curves only, without bands
ZOOM_FRACTION = 0.25  # the zoomed panel shows this last fraction of the epochs
ZOOM_KEEP = 2.0  # the zoomed panel leaves out configurations whose final test error is above this × the best + 1
SIDE_STEP = 0.025  # points of several series at one ReLU count are set this fraction of the x range apart
MARKERS = "os^Dvp<>"  # one per series, beside its colour


def short_labels(configs: list[str]) -> tuple[list[str], str]:
    """Each config's overrides that not every config shares (empty where nothing differs), and the shared ones."""
    split = [split_overrides(c) for c in configs]
    common = [item for item in split[0] if all(item in items for items in split)] if split else []
    labels = [",".join(i for i in items if i not in common) for items in split]
    return labels, ",".join(common)


def describe(result: dict) -> str:
    """What a run trains, for a label when no override tells runs apart: ``resnet110 on cifar10``."""
    model, dataset = result.get("model"), result.get("dataset")
    return f"{model} on {dataset}" if model and dataset else "every run"


def _caption(fig: Figure, text: str, common: str) -> None:
    width = int(fig.get_figwidth() * 12)  # characters of a 9-point title per inch
    shared = ", ".join(split_overrides(common))  # a space after each item lets the lines break between items
    fig.suptitle("\n".join(textwrap.wrap(text + (f"; every run: {shared}" if common else ""), width,
                                          break_long_words=False)), fontsize=9)


def _colour(i: int, n: int) -> str | tuple:
    if n <= 10:
        return f"C{i}"
    from matplotlib import colormaps

    return colormaps["viridis"](i / max(n - 1, 1))


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


def _draw(ax, runs: list[list[dict]], key: str, style: str, colour, log: bool, band: bool, label: str | None,
          first_epoch: int = 0) -> None:
    epochs, means, stds = epoch_band(runs, key, log=log)
    kept = [i for i, e in enumerate(epochs) if e >= first_epoch]
    if not kept:
        return
    epochs, means, stds = [epochs[i] for i in kept], [means[i] for i in kept], [stds[i] for i in kept]
    low, high = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
    if log:  # the band is mean ± std of log10: a geometric mean ×÷ geometric std, never below zero
        means, low, high = ([10 ** v for v in vs] for vs in (means, low, high))
    ax.plot(epochs, means, style, color=colour, label=label)
    if band:
        ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)


def plot_curves(groups: dict[str, list[list[dict]]], path: Path, fallback: str = "every run") -> Figure:
    """Error and loss against epoch for every configuration (label -> the metrics of each of its seeds), and the
    test error of the last epochs."""
    fig = Figure(figsize=(16, 5.5), layout="constrained")
    overview_error, zoom, overview_loss = fig.subplots(1, 3)
    labels, common = short_labels(list(groups))
    many = len(groups) > MANY_CONFIGS
    last = max((m["epoch"] for runs in groups.values() for records in runs for m in records), default=0)
    first_zoomed = max(0, last - max(1, math.ceil(ZOOM_FRACTION * (last + 1))) + 1)
    finals = {label: epoch_band(runs, "test_error")[1][-1:] for label, runs in zip(labels, groups.values())}
    best = min((f[0] for f in finals.values() if f), default=0.0)
    left_out = sorted(label or fallback for label, f in finals.items() if f and f[0] > ZOOM_KEEP * best + 1)
    for i, (label, runs) in enumerate(zip(labels, groups.values())):
        colour = _colour(i, len(groups))
        legend = f"{label or fallback} (n={len(runs)})"
        for split, style in STYLES:
            if many and split != "test":
                continue
            for ax, metric in ((overview_error, "error"), (overview_loss, "loss")):
                _draw(ax, runs, f"{split}_{metric}", style, colour, log=True, band=not many,
                      label=legend if ax is overview_error and style == STYLES[-1][1] else None)
        if (label or fallback) not in left_out:
            _draw(zoom, runs, "test_error", "--", colour, log=False, band=True, label=None, first_epoch=first_zoomed)
    for ax in (overview_error, overview_loss):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # label the minor ticks 2 and 5 of each decade only: all nine crowd into each other
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else ""))
    overview_error.tick_params(axis="y", which="minor", labelsize=7)
    titles = (("error (%, log scale)", "all epochs"),
              ("test error (%)", f"last epochs ({first_zoomed}-{last}), linear scale"
               + (f"; not shown (far above): {', '.join(left_out)}" if left_out else "")),
              ("loss (log scale; band: geometric mean ×÷ std)", "all epochs"))
    for ax, (ylabel, title) in zip((overview_error, zoom, overview_loss), titles):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both" if ax is not zoom else "major")
    splits = "test dashed" if many else "train solid, val dotted, test dashed"
    _caption(fig, f"mean ± std over seeds; {splits}", common)
    fig.legend(loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    fig.savefig(path, dpi=100)
    return fig


def _families(results: list[dict]) -> tuple[dict[str, list[dict]], list[str], str]:
    families: dict[str, list[dict]] = {}
    for r in results:
        if r.get("test_error") is not None and proportion_of(r) is not None:
            families.setdefault(family_of(r), []).append(r)
    names = sorted(families)
    labels, common = short_labels([n if n != "(defaults)" else "" for n in names])
    fallback = describe(next(iter(families.values()))[0]) if families else "every run"
    return {label or fallback: families[n] for label, n in zip(labels, names)}, names, common


def _error_bars(values: list[float]) -> tuple[float, float, float]:
    """Mean and the lower and upper bar of ± one std, clipped to the possible range of an error, [0, 100]."""
    mean, std = mean_std(values)
    std = 0.0 if math.isnan(std) else std
    return mean, min(std, mean), min(std, 100.0 - mean)


def _swept(results: list[dict]) -> str:
    return ", ".join(f"{p:g}" for p in sorted({proportion_of(r) for r in results if proportion_of(r) is not None}))


def plot_proportions(results: list[dict], path: Path) -> Figure:
    """Test error against erase.proportion, one line per family, mean ± std over seeds."""
    families, _, common = _families(results)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, runs in families.items():
        by_p: dict[float, list[float]] = {}
        for r in runs:
            by_p.setdefault(proportion_of(r), []).append(r["test_error"])
        ps = sorted(by_p)
        bars = [_error_bars(by_p[p]) for p in ps]
        ax.errorbar(ps, [m for m, _, _ in bars], yerr=[[lo for _, lo, _ in bars], [hi for _, _, hi in bars]],
                    marker="o", capsize=3, label=f"{label} (n={max(len(v) for v in by_p.values())} per point)")
    ax.set_xlabel("erase.proportion (fraction of blocks whose ReLU is erased)")
    ax.set_ylabel("test error (%)")
    _caption(fig, f"Test error against erase.proportion (swept: {_swept(results)}), mean ± std over seeds", common)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(3, len(families)), fontsize="small")
    fig.savefig(path, dpi=100)
    return fig


def plot_pareto(results: list[dict], path: Path) -> Figure:
    """Test error against the ReLU count of one forward pass, one line per family, each point labelled with its
    proportion: the trade a ReLU-reduction paper plots; the published values as hollow markers."""
    families, _, common = _families([r for r in results if r.get("relus") is not None])
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    series = {label: [(statistics.fmean(finite(r["relus"] for r in rs)), f"p={p:g}", rs)
                      for p, rs in sorted(_by_proportion(runs).items())] for label, runs in families.items()}
    notes = _draw_points(ax, series, log=False)
    ax.set_xlabel("ReLU elements in one forward pass on one image")
    ax.set_ylabel("test error (%)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _caption(fig, "Test error against ReLU count (erase.proportion labelled), mean ± std over seeds" + notes, common)
    ax.grid(alpha=0.3)
    _legend(fig, ax, 3)
    fig.savefig(path, dpi=100)
    return fig


def _legend(fig: Figure, ax, columns: int) -> None:
    """The series' legend below the axes, in up to ``columns`` columns where the labels fit the figure's width,
    long labels wrapped between overrides."""
    width = int(fig.get_figwidth() * 14)  # characters of a small legend label per inch
    handles, labels = ax.get_legend_handles_labels()
    columns = max(1, min(columns, len(labels), width // max(max(map(len, labels), default=1) + 8, 1)))
    wrapped = ["\n".join(textwrap.wrap(label, width // columns - 8, break_long_words=False)) for label in labels]
    fig.legend(handles, wrapped, loc="outside lower center", ncols=columns, fontsize="small")


def _by_proportion(runs: list[dict]) -> dict[float, list[dict]]:
    by_p: dict[float, list[dict]] = {}
    for r in runs:
        by_p.setdefault(proportion_of(r), []).append(r)
    return by_p


def side_by_side(points: list[tuple[Hashable, float]], log: bool,
                 visual: bool = False) -> dict[tuple[Hashable, float], float]:
    """Where to draw each (key, x): the points of several keys at one ReLU count (within EQUAL_BUDGET of the
    group's smallest) are set SIDE_STEP of the x range apart, centred on the count, so none hides another. With
    ``visual`` (a quantity that is not a count: measured bytes), points group where they are within SIDE_STEP of the
    drawn range of each other, and move that far: the shifts stay small beside the differences the axis shows."""
    if not points:
        return {}
    scale = math.log10 if log else float
    xs = sorted({x for _, x in points})
    span = scale(xs[-1]) - scale(xs[0])
    step = SIDE_STEP * (span if visual and span > 0 else max(span, 0.3 if log else 0.1 * abs(xs[-1]) or 1.0))
    drawn, group = {}, []
    for x in xs + [math.inf]:
        apart = x == math.inf or (scale(x) - scale(group[0]) > step if visual and group else
                                  group and x > group[0] * (1 + EQUAL_BUDGET))
        if group and apart:
            # a visual group keeps the measured order from left to right; at one count the series' order
            members = sorted((px, n) for n, (_, px) in enumerate(points) if px in group) if visual else \
                [(px, n) for n, (_, px) in enumerate(points) if px in group]
            keys = list(dict.fromkeys(points[n][0] for _, n in members))
            for key, px in points:
                if px in group:
                    shift = (keys.index(key) - (len(keys) - 1) / 2) * step
                    drawn[key, px] = px * 10 ** shift if log else px + shift
            group = []
        group.append(x)
    return drawn


def _draw_points(ax, series: dict[str, list[tuple[float, str, list[dict]]]], log: bool,
                 measured_x: bool = False) -> str:
    """Per series (label -> (x, point label, runs) per configuration): mean ± std of its test errors, joined
    by a line, points that coincide labelled once; where a published value gives the configuration's test error,
    a hollow marker of the series at the same x. Returns what the caption should add about it. x is a ReLU count,
    or with ``measured_x`` a measured quantity, where points of one series may fall together too: then every
    point that would hide another is set apart (``side_by_side``'s visual rule)."""
    def key(label: str, text: str) -> Hashable:
        return (label, text) if measured_x else label

    drawn = side_by_side([(key(label, text), x) for label, points in series.items() for x, text, _ in points], log,
                         visual=measured_x)
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points, key=lambda p: p[0])
        xs = [drawn[key(label, text), x] for x, text, _ in points]
        bars = [_error_bars([r["test_error"] for r in runs]) for _, _, runs in points]
        n = max(len(runs) for _, _, runs in points)
        line = ax.errorbar(xs, [m for m, _, _ in bars], yerr=[[lo for _, lo, _ in bars], [hi for _, _, hi in bars]],
                           marker=MARKERS[i % len(MARKERS)], capsize=3, label=f"{label} (n={n} per point)")
        colour = line[0].get_color()
        texts: dict[tuple[float, float], list[str]] = {}  # points that coincide share one label
        for x, (_, text, _), (mean, _, _) in zip(xs, points, bars):
            if text:
                texts.setdefault((x, mean), []).append(text)
        for j, ((x, mean), parts) in enumerate(texts.items()):
            # a measured x may put a series' points close together: their labels alternate above and below
            below = measured_x and j % 2 == 1
            ax.annotate("; ".join(parts), (x, mean), textcoords="offset points", xytext=(4, -11 if below else 4),
                        fontsize=7, color=colour)
        published = [(x, paper) for x, (_, _, runs) in zip(xs, points) if (paper := published_error(runs[0]))]
        if published:
            errors = [(p["test_error"], p.get("test_error_std") or 0.0) for _, p in published]
            bars = [[min(s, e) for e, s in errors], [min(s, 100.0 - e) for e, s in errors]]
            ax.errorbar([x for x, _ in published], [e for e, _ in errors],
                        yerr=bars if any(s for _, s in errors) else None,  # caps of no length would strike it out
                        marker=MARKERS[i % len(MARKERS)], markersize=9, markerfacecolor="none", color=colour,
                        linestyle="none", capsize=3, label=f"{label}: published")
    moved = any(x != px for (_, px), x in drawn.items())
    published = any(c.get_label().endswith(": published") for c in ax.containers)
    return (f"; points {'that would overlap' if measured_x else 'at one count'} are set side by side" if moved
            else "") + \
        ("; hollow: the published value" if published else "")


def readable_log_ticks(axis) -> None:
    """Label a log axis with the densest of every digit, 1-2-5 or the powers of ten of each decade that puts at
    most ten labels in its range; a range too narrow for three of them (about a factor of 2) gets even linear
    steps. No minor labels: matplotlib's leave a range within one decade with a single label."""
    low, high = sorted(axis.get_view_interval())
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for mantissas in (range(1, 10), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** d for d in decades for m in mantissas if low <= m * 10.0 ** d <= high]
        if len(ticks) <= 10:
            break
    digits = None
    if len(ticks) < 3:
        ticks = [t for t in MaxNLocator(nbins=5).tick_values(low, high) if low <= t <= high]
        # even steps may fall between units (22.5, 0.05): as many decimals as the ticks need to read exactly
        digits = next((d for d in range(8) if all(abs(t - round(t, d)) <= 1e-9 * max(1.0, abs(t)) for t in ticks)),
                      8)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{digits}f}" if digits is not None
                                           else f"{v:,.0f}" if v >= 10 else f"{v:g}"))


def write_plots(root: Path, results: list[dict]) -> list[Path]:
    """Draw the sweep's plots into ``root`` from its finished runs; return the files written."""
    root, written = Path(root), []
    ok = [r for r in results if is_ok(r)]
    groups: dict[str, list[list[dict]]] = {}
    for r in sorted(ok, key=group_of):
        records = read_metrics(r["_dir"])
        if records:
            groups.setdefault(group_of(r), []).append(records)
    if groups:
        plot_curves(groups, root / "curves.png", fallback=describe(ok[0]))
        written.append(root / "curves.png")
    methods = has_methods(ok)
    if len({proportion_of(r) for r in ok if proportion_of(r) is not None}) > 1:
        plot_proportions(ok, root / "proportion.png")
        written.append(root / "proportion.png")
        with_relus = [r for r in ok if r.get("relus") is not None]
        if len({r["relus"] for r in with_relus}) > 1 and not methods:
            plot_pareto(with_relus, root / "pareto.png")
            written.append(root / "pareto.png")
    if methods and len({r["relus"] for r in ok if r.get("relus") is not None}) > 1:
        plot_methods(ok, root / "pareto.png")
        written.append(root / "pareto.png")
    with_cost = measured(ok)
    if len({group_of(r) for r in with_cost}) > 1:
        plot_communication(ok, root / "pareto_communication.png")
        written.append(root / "pareto_communication.png")
    if cost_fits(with_cost):
        plot_cost_against_relus(with_cost, root / "communication_relus.png")
        written.append(root / "communication_relus.png")
    return written


def _method_series(results: list[dict], x_of: Callable[[list[dict]], float | None]) -> dict[str, list]:
    """Label -> (x, point label, runs) per configuration, one series per method (``methods.series_key``); a
    configuration whose ``x_of`` is None is left out."""
    by_series: dict[tuple, dict[str, list[dict]]] = {}
    for r in results:
        by_series.setdefault(series_key(r), {}).setdefault(group_of(r), []).append(r)
    labels = series_labels(sorted(by_series))
    series = {labels[key]: [(x, point_label(runs[0]), runs) for runs in by_series[key].values()
                            if (x := x_of(runs)) is not None] for key in sorted(by_series)}
    return {label: points for label, points in series.items() if points}


def _plot_series(series: dict[str, list], path: Path, xlabel: str, caption: str, measured_x: bool = False) -> Figure:
    """Test error against a log x, one series per method (``_draw_points``), readable log ticks."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    notes = _draw_points(ax, series, log=True, measured_x=measured_x)
    ax.set_xscale("log")
    ax.margins(x=0.08)  # room for the labels of the outermost points
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error (%)")
    readable_log_ticks(ax.xaxis)
    _caption(fig, caption + notes, "")
    ax.grid(alpha=0.3)
    _legend(fig, ax, 2)
    fig.savefig(path, dpi=100)
    return fig


def _finished(results: list[dict]) -> list[dict]:
    return [r for r in results if is_ok(r) and r.get("test_error") is not None]


def plot_methods(results: list[dict], path: Path) -> Figure:
    """Test error against ReLU count (log axis), one series per method, a point per configuration with mean ± std
    over seeds, labelled with its proportion or budget; the published values as hollow markers."""
    series = _method_series([r for r in _finished(results) if r.get("relus") is not None],
                            lambda runs: statistics.fmean(r["relus"] for r in runs))
    return _plot_series(series, path, "ReLU elements in one forward pass on one image (log scale)",
                        "Test error against ReLU count, one series per method, mean ± std over seeds")


def _mean_mb(runs: list[dict]) -> float | None:
    costs = [r["pi_cost"]["bytes"] / MB for r in measured(runs)]
    return statistics.fmean(costs) if costs else None


def plot_communication(results: list[dict], path: Path) -> Figure:
    """The Pareto plot's second view: test error against the measured communication of one private inference
    (log axis), one series per method; x is the mean over the configuration's measured runs, the error's mean ±
    std over all its finished seeds."""
    series = _method_series(_finished(results), _mean_mb)
    return _plot_series(series, path, "communication of one private inference, both parties (MB, log scale)",
                        "Test error against measured communication (SPU Cheetah, python -m erasenet.pi), one "
                        "series per method; x: mean over the measured runs, error: mean ± std over seeds",
                        measured_x=True)


def plot_cost_against_relus(results: list[dict], path: Path) -> Figure:
    """Per measured run, all the bytes and the comparisons' bytes against its kept ReLUs, one colour per method
    series, with the least-squares lines of ``picost.cost_fits``: how far the ReLU count predicts the cost."""
    runs = measured(results)
    fits = {f.quantity: f.fit for f in cost_fits(runs)}
    by_series: dict[tuple, list[dict]] = {}
    for r in runs:
        by_series.setdefault(series_key(r), []).append(r)
    labels = series_labels(sorted(by_series))
    fig = Figure(figsize=(11, 5), layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, (quantity, key) in zip(panels, (("all traffic", "bytes"), ("comparisons (ReLU)", "comparison_bytes"))):
        for i, key_of_series in enumerate(sorted(by_series)):
            xs, ys = points(by_series[key_of_series], key)
            ax.plot(xs, [y / MB for y in ys], MARKERS[i % len(MARKERS)], color=f"C{i % 10}", alpha=0.8,
                    label=labels[key_of_series] if ax is panels[0] else None)
        fit = fits.get(quantity)
        if fit is not None:
            low, high = ax.get_xlim()
            xs = [max(low, 0.0), high]
            line, = ax.plot(xs, [(fit.slope * x + fit.intercept) / MB for x in xs], "k--", linewidth=1)
            r2 = "" if math.isnan(fit.r2) else f", R² = {fit.r2:.3f}"
            ax.legend([line], [f"least squares: {fit.slope:,.1f} bytes per ReLU + {fit.intercept / MB:.3f} MB{r2}"],
                      fontsize="small", loc="best")
        ax.set_xlabel("ReLUs kept (one forward pass on one image)")
        ax.set_ylabel(f"MB sent by both parties: {quantity}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.grid(alpha=0.3)
        ax.set_title(quantity, fontsize=9)
    _caption(fig, f"Communication of one private inference (SPU Cheetah) against ReLU count, {len(runs)} measured "
                  "runs; dashed: the least-squares line", "")
    _legend(fig, panels[0], 3)
    fig.savefig(path, dpi=100)
    return fig
