"""What private inference costs, in a sweep's reports: the communication and estimated latency of the runs
measured by ``python -m erasenet.pi`` (a ``pi_cost.json`` in the run directory), and how far the ReLU count
predicts the communication.

``summary.find_results`` reads each run's measurement (``records.read_pi_cost``) into ``result["pi_cost"]``.
Per configuration, :func:`cost_of` gives mean ± std over the seeds measured and how many they are; the summary's
and ``methods.csv``'s columns come from :func:`cost_columns`. Over every measured run of the sweep,
:func:`cost_fits` fits the bytes both parties sent against the kept ReLUs by least squares, once for all the
traffic and once for the secure comparisons alone (a ReLU's own cost: under Cheetah a fixed set-up plus a
constant per kept ReLU, while the linear layers' traffic does not follow the ReLU count at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from ..common.records import format_mean_std, is_ok, mean_std
from .stats import Fit, least_squares
from .table import DASH, Column, markdown_table

T = TypeVar("T")
MB = 1e6  # bytes: the unit of the reports' communication
# (field of Cost, CSV name, markdown title)
FIELDS = (("mb", "pi_mb", "communication (MB)"), ("comparison_mb", "pi_comparison_mb", "of it ReLU (MB)"),
          ("lan_seconds", "pi_lan_s", "LAN latency (s)*"), ("wan_seconds", "pi_wan_s", "WAN latency (s)*"))
NOTE = ("communication: the bytes both parties sent in one private inference of one test image under SPU's "
        "Cheetah (python -m erasenet.pi), mean ± std over the seeds measured; of it ReLU: its secure comparisons "
        "(ReLUs, max pooling); * LAN and WAN latency are estimates from the measured bytes, rounds and run time "
        "at 3 Gbit/s, 0.3 ms RTT and 400 Mbit/s, 40 ms RTT (the Cheetah paper's benchmark settings), not "
        "measurements.")


@dataclass(frozen=True)
class Cost:
    """A configuration's measured cost: mean and sample std over its ``n`` measured runs (NaN for none, std NaN
    for one)."""

    n: int
    failed_checks: int  # measured runs whose private logits missed the plaintext ones
    mb: float
    mb_std: float
    comparison_mb: float
    comparison_mb_std: float
    lan_seconds: float
    lan_seconds_std: float
    wan_seconds: float
    wan_seconds_std: float


def measured(results: Sequence[dict]) -> list[dict]:
    """The finished runs that have a private-inference measurement."""
    return [r for r in results if is_ok(r) and r.get("pi_cost")]


def cost_of(runs: Sequence[dict]) -> Cost:
    """The cost of a configuration from its runs (those without a measurement do not count)."""
    costs = [r["pi_cost"] for r in measured(runs)]
    values = {}
    for field, key, scale in (("mb", "bytes", MB), ("comparison_mb", "comparison_bytes", MB),
                              ("lan_seconds", "lan_seconds", 1.0), ("wan_seconds", "wan_seconds", 1.0)):
        values[field], values[field + "_std"] = mean_std(c[key] / scale for c in costs)
    return Cost(n=len(costs), failed_checks=sum(not c["passed"] for c in costs), **values)


def cost_columns(cost: Callable[[T], Cost], name: str = "{key}", title: str = "{title}",
                 count: Callable[[T], int] | None = None) -> list[Column[T]]:
    """The columns of a measured cost: how many runs were measured (of ``count`` where given), then per quantity
    its mean ± std (one markdown cell, two CSV fields: ``key``, ``key_std``); in markdown only where a row has a
    measurement. ``name`` and ``title`` place the key and title in a side's names (``{key}_a``, then
    ``pi_mb_a_std``, as methods.csv names its other fields; ``{title} A``)."""
    def shown(rows: Sequence[T]) -> bool:
        return any(cost(r).n for r in rows)

    def runs(row: T) -> str:
        k = cost(row).n
        return DASH if not k else f"{k}" if count is None else f"{k} of {count(row)}"

    columns = [Column(name.format(key="pi_n"), lambda r: cost(r).n, title.format(title="PI runs"), runs, shown)]
    for field, key, header in FIELDS:
        columns += [
            Column(name.format(key=key), lambda r, f=field: getattr(cost(r), f), title.format(title=header),
                   lambda r, f=field: format_mean_std(getattr(cost(r), f), getattr(cost(r), f + "_std")), shown),
            Column(name.format(key=key) + "_std", lambda r, f=field: getattr(cost(r), f + "_std"))]
    return columns


@dataclass(frozen=True)
class CostFit:
    """Bytes against kept ReLUs over the measured runs: ``quantity`` is all the traffic or the comparisons'."""

    quantity: str
    fit: Fit


def points(results: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(kept ReLUs, bytes ``key``) of every measured run."""
    runs = measured(results)
    return [float(r["pi_cost"]["relus"]) for r in runs], [float(r["pi_cost"][key]) for r in runs]


def cost_fits(results: Sequence[dict]) -> list[CostFit]:
    """The least-squares fits of all bytes and of the comparisons' bytes against the kept ReLUs, over every
    measured run; none with fewer than two distinct ReLU counts."""
    fits = []
    for quantity, key in (("all traffic", "bytes"), ("comparisons (ReLU)", "comparison_bytes")):
        fit = least_squares(*points(results, key))
        fits += [CostFit(quantity, fit)] if fit is not None else []
    return fits


FIT_COLUMNS: list[Column[CostFit]] = [
    Column(None, lambda c: c.quantity, "bytes of"),
    Column(None, lambda c: c.fit.n, "runs"),
    Column(None, lambda c: c.fit.slope, "slope (bytes per ReLU)", lambda c: f"{c.fit.slope:,.1f}"),
    Column(None, lambda c: c.fit.intercept, "intercept (MB)", lambda c: f"{c.fit.intercept / MB:.3f}"),
    Column(None, lambda c: c.fit.r2, "R²", lambda c: DASH if math.isnan(c.fit.r2) else f"{c.fit.r2:.3f}"),
]


def cost_markdown(results: Sequence[dict]) -> str:
    """The summary's section on the cost against the ReLU count (empty without two measured ReLU counts)."""
    fits = cost_fits(results)
    if not fits:
        return ""
    failed = sum(not r["pi_cost"]["passed"] for r in measured(results))
    counts = len(set(points(results, "bytes")[0]))
    return ("\n## Private-inference cost against ReLU count\n\nLeast-squares lines bytes = slope × kept ReLUs + "
            "intercept over every measured run (one private inference each, python -m erasenet.pi): how far the "
            "ReLU count predicts what the parties send. R² near 1: the count predicts the bytes; the intercept "
            "is what does not depend on it (the linear layers, a comparison's fixed set-up).\n\n"
            + markdown_table(FIT_COLUMNS, fits)
            + ("\nThe measured runs keep two ReLU counts only: a line passes through both, so R² = 1 says nothing; "
               "measure configurations at a third count to test the fit.\n" if counts == 2 else "")
            + (f"\n{failed} measured run(s) failed the check of the private logits against the plaintext ones; "
               "their cost counts all the same.\n" if failed else ""))
