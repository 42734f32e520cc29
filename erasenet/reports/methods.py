"""Reports across ReLU-reduction methods: a sweep over ``erase.method`` and budgets.

A sweep that holds runs of a method other than EraseReLU's proportion rule (``erase.method`` ``gates`` or
``cull``) gets, besides the usual summary:

- a *series* per method (``erase`` split by ``erase.location`` where the sweep has several; every method by
  ``erase.replace`` where it is not ``identity``), and within a series one point per configuration;
- *budget levels*: configurations of one network and data set whose ReLU budget agrees within
  ``EQUAL_BUDGET`` (the budget is ``erase.budget``, as a count, where a run sets one, else the ReLUs it counts);
- Welch's test between every two configurations at one level, and its p-value adjusted by Holm's method over all
  of them (``summary.md``'s section "Methods at equal ReLU budget" and ``methods.csv``), the Pareto plot with one
  series per method on a log ReLU axis (``plots.plot_methods``), and ``python -m erasenet.select``'s choice, per
  level, of the configuration with the lowest validation error.

Sweeps of ``erase.method=erase`` alone are summarised as before: nothing here applies to them.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

from ..common.errors import UserError
from ..common.records import (format_mean_std, format_p, format_published, format_values, group_of, is_ok,
                               method_of, override_key, proportion_of, split_overrides)
from .picost import NOTE as COST_NOTE, cost_columns
from .rows import Row
from .stats import Welch, holm, welch
from .table import DASH, Column, csv_table, markdown_table

EQUAL_BUDGET = 0.02  # two budgets are equal when they differ by at most this fraction of the larger
# Dataset keys that only say where and how files are read: they never make two networks' data different.
_PLACE_KEYS = ("root", "path", "index", "workers", "download")


def has_methods(results: list[dict]) -> bool:
    """Whether the finished runs include a method other than EraseReLU's proportion rule."""
    return any(method_of(r) != "erase" for r in results if is_ok(r))


def budget_of(result: dict) -> float | None:
    """The run's ReLU budget as a count per image: ``erase.budget`` (a fraction <= 1 of ``relus_original``, or a
    count) where it sets one, else the ReLUs it counted."""
    budget = ((result.get("config") or {}).get("erase") or {}).get("budget")
    if budget is not None:
        if budget > 1:
            return float(budget)
        if result.get("relus_original"):
            return float(budget) * result["relus_original"]
    relus = result.get("relus")
    return float(relus) if relus is not None else None


# What moves a run along its method's series (the x of the Pareto plot); every other setting makes another series.
_POINT_KEYS = {"erase": {"erase.proportion"}, "gates": {"erase.budget", "erase.proportion"},
               "cull": {"erase.cull_stages", "erase.thin", "erase.fixed_sites", "erase.proportion"}}


def _names_the_point(override: str, method: str) -> bool:
    key = override_key(override)
    return key in ("erase", "erase.method") or key in _POINT_KEYS.get(method, set())


def base_of(result: dict) -> str:
    """What configurations compared at equal budget share: the network and the data (methods may differ in
    everything else: erase settings, schedule, a teacher)."""
    config = result.get("config") or {}
    dataset = {k: v for k, v in (config.get("dataset") or {}).items() if k not in _PLACE_KEYS}
    return json.dumps([config.get("model") or result.get("model"), dataset or result.get("dataset")],
                      sort_keys=True, default=str)


def series_key(result: dict) -> tuple[str, str, str, str]:
    """(method, location, replace, the other overrides): runs of one series differ in budget (or proportion, or
    culled stages); another setting of the method (a gate schedule, say) is another series."""
    method = method_of(result)
    erase = ((result.get("config") or {}).get("erase") or {})
    # a polynomial under gates (AutoReP) is another series than the identity under gates (SNL), wherever it was set
    location = str(erase.get("location", "")) if method == "erase" else ""
    replace = str(erase.get("replace", ""))
    rest = ",".join(o for o in split_overrides(group_of(result)) if not _names_the_point(o, method))
    return method, location, replace, rest


def series_labels(keys: list[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], str]:
    """A legend label per series: the method, the location where erase series differ in it, a replacement other
    than identity, and the overrides that not every series shares."""
    locations = {k[1] for k in keys if k[0] == "erase"}
    rests = [split_overrides(k[3]) for k in keys]
    common = [item for item in rests[0] if all(item in r for r in rests)] if rests else []
    labels = {}
    for key, rest in zip(keys, rests):
        method, location, replace, _ = key
        parts = [method + (f" location={location}" if method == "erase" and len(locations) > 1 else "")
                 + (f" replace={replace}" if replace not in ("", "identity") else "")]
        parts += [item for item in rest if item not in common]
        labels[key] = ", ".join(parts)
    return labels


def point_label(result: dict) -> str:
    """What tells a point apart within its series: ``p=0.5`` (EraseReLU), ``budget=0.1`` (a budgeted method)."""
    if method_of(result) == "erase":
        p = proportion_of(result)
        return "" if p is None else f"p={p:g}"
    erase = (result.get("config") or {}).get("erase") or {}
    if erase.get("budget") is not None:
        return f"budget={erase['budget']:g}"
    if method_of(result) == "cull" and "cull_stages" in erase:  # from the config: an erase option may set them
        stages = list(erase["cull_stages"] or [])
        return "+".join(([f"cull {stages}"] if stages else []) + (["thin"] if erase.get("thin") else [])) or "none"
    items = [o for o in split_overrides(group_of(result)) if override_key(o).startswith("erase.")
             and override_key(o) != "erase.method"]
    return ",".join(items)


def budget_levels(rows: list[Row]) -> list[list[Row]]:
    """Summary rows (with runs) grouped by network and data, then into levels of equal ReLU budget, cheapest
    first; a level starts at its smallest budget and takes every budget within ``EQUAL_BUDGET`` of it."""
    levels = []
    by_base: dict[str, list[Row]] = {}
    for row in rows:
        if row.n and row.budget is not None:
            by_base.setdefault(row.base, []).append(row)
    for _, members in sorted(by_base.items()):
        members.sort(key=lambda r: (r.budget, r.config))
        current: list[Row] = []
        for row in members:
            if current and row.budget > current[0].budget * (1 + EQUAL_BUDGET):
                levels.append(current)
                current = []
            current.append(row)
        levels.append(current)
    return sorted((level for level in levels if len(level) > 1), key=lambda lv: lv[0].budget)


@dataclass(frozen=True)
class Comparison:
    """Two configurations at one budget level: Welch's test of a's test errors minus b's, and its p-value
    adjusted (Holm) for every comparison of the sweep."""

    budget: float  # the level's smallest budget
    a: Row
    b: Row
    welch: Welch
    p_holm: float


def comparisons(rows: list[Row]) -> list[Comparison]:
    """Every two configurations at one budget level, with Welch's test and Holm's adjustment over them all."""
    pairs = [(level[0].budget, a, b, welch(a.test_errors, b.test_errors))
             for level in budget_levels(rows) for a, b in itertools.combinations(level, 2)]
    adjusted = holm([w.p for *_, w in pairs])
    return [Comparison(*pair, p) for pair, p in zip(pairs, adjusted)]


def _count(x: float | None) -> str:
    return DASH if x is None else f"{round(x):,}"


def _side(side: str, key: str, header: str | None = None, cell: Callable[[Row], str] | None = None,
          name: str = "{key}_{side}") -> Column:
    """A column of one side (``a`` or ``b``) of the comparison: ``key`` of that row, CSV field ``key_side``."""
    def value(c: Comparison) -> Any:
        return getattr(getattr(c, side), key)

    return Column(name.format(key=key, side=side), value, header,
                  None if cell is None else lambda c: cell(getattr(c, side)))


def _if_testable(cell: Callable[[Welch], str], untestable: str = DASH) -> Callable[[Comparison], str]:
    return lambda c: cell(c.welch) if c.welch.testable else untestable


# methods.csv (every column) and the summary's section "Methods at equal ReLU budget" (those with a title).
COLUMNS: list[Column[Comparison]] = [
    Column("budget", attrgetter("budget"), "ReLU budget", lambda c: _count(c.budget)),
    *(column for side in ("a", "b") for column in (
        _side(side, "config", side.upper()), _side(side, "method", f"method {side.upper()}"),
        _side(side, "relus", f"ReLUs {side.upper()}", lambda r: _count(r.relus)), _side(side, "polys"))),
    *(column for side in ("a", "b") for column in (
        _side(side, "test_error", f"test error {side.upper()} (%)",
              lambda r: format_mean_std(r.test_error, r.test_error_std)),
        _side(side, "test_error_std", name="test_error_{side}_std"))),
    Column("delta_test_error", attrgetter("welch.diff"), "Δ test (A − B)",
           lambda c: DASH if math.isnan(c.welch.diff) else f"{c.welch.diff:+.2f}"),
    Column("delta_ci_low", attrgetter("welch.low"), "95% CI",
           _if_testable(lambda w: f"[{w.low:+.2f}, {w.high:+.2f}]", "n < 2 on a side")),
    Column("delta_ci_high", attrgetter("welch.high")),
    Column("p_welch", attrgetter("welch.p"), "p (Welch)", _if_testable(lambda w: format_p(w.p))),
    Column("p_holm", attrgetter("p_holm"), "p (Holm)", lambda c: DASH if math.isnan(c.p_holm) else format_p(c.p_holm)),
    Column("n_a", attrgetter("welch.n_a"), "n A vs B", lambda c: f"{c.welch.n_a} vs {c.welch.n_b}"),
    Column("n_b", attrgetter("welch.n_b")),
    *(column for side in ("a", "b") for column in cost_columns(
        attrgetter(f"{side}.cost"), "{key}_" + side, "{title} " + side.upper(), attrgetter(f"{side}.n"))),
]


def _testable(found: list[Comparison]) -> str:
    k = sum(c.welch.testable for c in found)
    return f"{k} testable comparison" + ("" if k == 1 else "s")


def methods_markdown(rows: list[Row]) -> str:
    """The summary's section comparing configurations at equal ReLU budget (empty without such pairs)."""
    found = comparisons(rows)
    if not found:
        return ""
    return ("\n## Methods at equal ReLU budget\n\nEvery two configurations of one network and data set whose ReLU "
            f"budgets agree within {EQUAL_BUDGET:.0%} (the budget is erase.budget as a count of ReLUs per image "
            "where a run sets one, else the ReLUs it counts; a level is named by its smallest budget). Δ: A's "
            "mean test error minus B's, with the 95% confidence interval and the two-sided p-value of Welch's "
            "t-test over seeds; p < 0.05: the difference is unlikely to be seed noise. p (Holm): the p-value "
            f"adjusted by Holm's method for the {_testable(found)} of this table together; read it, not the raw "
            "p, when any of the pairs may count as a finding."
            + (f" PI runs: the runs measured under two-party computation, of the finished ones; {COST_NOTE}"
               if any(c.a.cost.n or c.b.cost.n for c in found) else "") + "\n\n"
            + markdown_table(COLUMNS, found))


def methods_csv(rows: list[Row]) -> str:
    """``methods.csv``: the comparisons at equal budget, unformatted (empty where there is no value)."""
    return csv_table(COLUMNS, comparisons(rows))


@dataclass(frozen=True)
class Choice:
    """The configuration chosen on validation at one budget level, and its test errors against each other
    candidate's: Welch's test and its p-value adjusted (Holm) over every such test of the selection."""

    budget: float  # the level's smallest budget
    chosen: Row
    level: list[Row]
    against: list[tuple[Row, Welch, float]]  # (another candidate, chosen minus it, Holm's p)


def select_at_budgets(rows: list[Row]) -> list[Choice]:
    """Per budget level, the configuration with the lowest mean best-val error (ties: fewer ReLUs), and its test
    error against each other candidate's (Welch, Holm). The test set takes no part in the choice."""
    no_val = [r.config for r in rows if r.n and math.isnan(r.best_val_error)]
    if no_val:
        raise UserError(f"{len(no_val)} configuration(s) have no validation error (e.g. {no_val[0]}): they were "
                        "trained with dataset.val_size=0, and a method must not be chosen on the test set. Re-run "
                        "them with a validation split, e.g. dataset.val_size=5000.")
    levels = budget_levels(rows)
    if not levels:
        raise UserError("no two configurations of one network share a ReLU budget, so there is nothing to choose "
                        "between. Sweep the methods at the same budgets, e.g. erase.budget set to the ReLU counts "
                        "of the erase.proportion runs.")
    chosen = [min(level, key=lambda r: (r.best_val_error, r.relus or 0.0, r.config)) for level in levels]
    tests = [[(other, welch(best.test_errors, other.test_errors)) for other in level if other is not best]
             for best, level in zip(chosen, levels)]
    adjusted = iter(holm([w.p for level in tests for _, w in level]))
    return [Choice(level[0].budget, best, level, [(other, w, next(adjusted)) for other, w in against])
            for best, level, against in zip(chosen, levels, tests)]


def _verdicts(choice: Choice) -> str:
    return "; ".join(f"vs {other.config}: " + (
        f"Δ {w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}], p={format_p(w.p)} (Holm {format_p(p_holm)}), "
        f"n={w.n_a} vs {w.n_b}" if w.testable else f"not testable (n={w.n_a} vs {w.n_b})")
        for other, w, p_holm in choice.against)


def _published_choice(choices: list[Choice]) -> bool:
    return any(c.chosen.paper for c in choices)


SELECTION_COLUMNS: list[Column[Choice]] = [
    Column(None, attrgetter("budget"), "ReLU budget", lambda c: _count(c.budget)),
    Column(None, attrgetter("chosen.config"), "chosen on val"),
    Column(None, attrgetter("chosen.method"), "method"),
    Column(None, attrgetter("chosen.relus"), "ReLUs", lambda c: _count(c.chosen.relus)),
    Column(None, attrgetter("chosen.n"), "n"),
    Column(None, attrgetter("chosen.best_val_error"), "best val error (%)",
           lambda c: format_mean_std(c.chosen.best_val_error, c.chosen.best_val_error_std)),
    Column(None, attrgetter("chosen.test_error"), "test error (%)", lambda c: format_values(c.chosen.test_errors)),
    Column(None, attrgetter("chosen.paper"), "published test error (%)", lambda c: format_published(c.chosen.paper),
           _published_choice),
    Column(None, attrgetter("chosen.diff"), "diff from published",
           lambda c: DASH if math.isnan(c.chosen.diff) else f"{c.chosen.diff:+.2f}", _published_choice),
    Column(None, attrgetter("against"), "test error vs the other candidates", _verdicts),
    Column(None, attrgetter("level"), "mean best val error per candidate",
           lambda c: "; ".join(f"{r.config}: {r.best_val_error:.2f}" for r in c.level)),
]


def selection_markdown(choices: list[Choice]) -> str:
    return markdown_table(SELECTION_COLUMNS, choices)
