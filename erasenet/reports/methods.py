"""Reports across ReLU-reduction methods: a sweep over ``erase.method`` and budgets.

A sweep that holds runs of a method other than EraseReLU's proportion rule (``erase.method`` ``gates`` or
``cull``) gets, besides the usual summary:

- a *series* per method (``erase`` split by ``erase.location`` where the sweep has several, and by
  ``erase.replace`` where it is not ``identity``), and within a series one point per configuration;
- *budget levels*: configurations of one network and data set whose ReLU budget agrees within
  ``EQUAL_BUDGET`` (the budget is ``erase.budget``, as a count, where a run sets one, else the ReLUs it counts);
- Welch's test between every two configurations at one level (``summary.md``'s section "Methods at equal ReLU
  budget" and ``methods.csv``), the Pareto plot with one series per method on a log ReLU axis, and
  ``python -m erasenet.select``'s choice, per level, of the configuration with the lowest validation error.

Sweeps of ``erase.method=erase`` alone are summarised as before: nothing here applies to them.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

from ..common.errors import UserError
from ..common.records import (format_mean_std, format_p, format_values, group_of, is_ok, method_of, override_key,
                      proportion_of, split_overrides)
from .stats import Welch, welch

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
    location, replace = ("", "")
    if method == "erase":
        location, replace = str(erase.get("location", "")), str(erase.get("replace", ""))
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
    budget = ((result.get("config") or {}).get("erase") or {}).get("budget")
    if budget is not None:
        return f"budget={budget:g}"
    items = [o for o in split_overrides(group_of(result)) if override_key(o).startswith("erase.")
             and override_key(o) != "erase.method"]
    return ",".join(items)


def budget_levels(rows: list[dict]) -> list[list[dict]]:
    """Summary rows (with runs) grouped by network and data, then into levels of equal ReLU budget, cheapest
    first; a level starts at its smallest budget and takes every budget within ``EQUAL_BUDGET`` of it."""
    levels = []
    by_base: dict[str, list[dict]] = {}
    for row in rows:
        if row["n"] and row.get("budget") is not None:
            by_base.setdefault(row["_base"], []).append(row)
    for _, members in sorted(by_base.items()):
        members.sort(key=lambda r: (r["budget"], r["config"]))
        current: list[dict] = []
        for row in members:
            if current and row["budget"] > current[0]["budget"] * (1 + EQUAL_BUDGET):
                levels.append(current)
                current = []
            current.append(row)
        levels.append(current)
    return sorted((level for level in levels if len(level) > 1), key=lambda lv: lv[0]["budget"])


def comparisons(rows: list[dict]) -> list[tuple[list[dict], dict, dict, Welch]]:
    """(level, a, b, Welch of a's test errors minus b's) for every two configurations at one budget level."""
    found = []
    for level in budget_levels(rows):
        for a, b in itertools.combinations(level, 2):
            found.append((level, a, b, welch(a["test_errors"], b["test_errors"])))
    return found


def _count(x: float | None) -> str:
    return "—" if x is None else f"{round(x):,}"


def _welch_cells(w: Welch) -> list[str]:
    if not w.testable:
        return [f"{w.diff:+.2f}" if not math.isnan(w.diff) else "—", "n < 2 on a side", "—"]
    return [f"{w.diff:+.2f}", f"[{w.low:+.2f}, {w.high:+.2f}]", format_p(w.p)]


def methods_markdown(rows: list[dict]) -> str:
    """The summary's section comparing configurations at equal ReLU budget (empty without such pairs)."""
    found = comparisons(rows)
    if not found:
        return ""
    head = ["ReLU budget", "A", "method A", "ReLUs A", "B", "method B", "ReLUs B", "test error A (%)",
            "test error B (%)", "Δ test (A − B)", "95% CI", "p (Welch)", "n A vs B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level, a, b, w in found:
        lines.append("| " + " | ".join([_count(level[0]["budget"]), a["config"], a["method"], _count(a["relus"]),
                                        b["config"], b["method"], _count(b["relus"]),
                                        format_mean_std(a["test_error"], a["test_error_std"]),
                                        format_mean_std(b["test_error"], b["test_error_std"]),
                                        *_welch_cells(w), f"{w.n_a} vs {w.n_b}"]) + " |")
    return ("\n## Methods at equal ReLU budget\n\nEvery two configurations of one network and data set whose ReLU "
            f"budgets agree within {EQUAL_BUDGET:.0%} (the budget is erase.budget as a count of ReLUs per image "
            "where a run sets one, else the ReLUs it counts; a level is named by its smallest budget). Δ: A's "
            "mean test error minus B's, with the 95% confidence interval and the two-sided p-value of Welch's "
            "t-test over seeds; p < 0.05: the difference is unlikely to be seed noise.\n\n"
            + "\n".join(lines) + "\n")


METHODS_CSV = ("budget", "config_a", "method_a", "relus_a", "config_b", "method_b", "relus_b", "test_error_a",
               "test_error_a_std", "test_error_b", "test_error_b_std", "delta_test_error", "delta_ci_low",
               "delta_ci_high", "p_welch", "n_a", "n_b")


def methods_csv(rows: list[dict]) -> str:
    """``methods.csv``: the comparisons at equal budget, unformatted (empty where there is no value)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=METHODS_CSV, lineterminator="\n")
    writer.writeheader()
    for level, a, b, w in comparisons(rows):
        record = {"budget": level[0]["budget"], "config_a": a["config"], "method_a": a["method"],
                  "relus_a": a["relus"], "config_b": b["config"], "method_b": b["method"], "relus_b": b["relus"],
                  "test_error_a": a["test_error"], "test_error_a_std": a["test_error_std"],
                  "test_error_b": b["test_error"], "test_error_b_std": b["test_error_std"],
                  "delta_test_error": w.diff, "delta_ci_low": w.low, "delta_ci_high": w.high, "p_welch": w.p,
                  "n_a": w.n_a, "n_b": w.n_b}
        writer.writerow({k: "" if v is None or isinstance(v, float) and math.isnan(v) else v
                         for k, v in record.items()})
    return out.getvalue()


def select_at_budgets(rows: list[dict]) -> list[dict]:
    """Per budget level, the configuration with the lowest mean best-val error (ties: fewer ReLUs), its errors,
    and its test error against each other candidate's (Welch). The test set takes no part in the choice."""
    no_val = [r["config"] for r in rows if r["n"] and math.isnan(r["best_val_error"])]
    if no_val:
        raise UserError(f"{len(no_val)} configuration(s) have no validation error (e.g. {no_val[0]}): they were "
                        "trained with dataset.val_size=0, and a method must not be chosen on the test set. Re-run "
                        "them with a validation split, e.g. dataset.val_size=5000.")
    levels = budget_levels(rows)
    if not levels:
        raise UserError("no two configurations of one network share a ReLU budget, so there is nothing to choose "
                        "between. Sweep the methods at the same budgets, e.g. erase.budget set to the ReLU counts "
                        "of the erase.proportion runs.")
    chosen_rows = []
    for level in levels:
        chosen = min(level, key=lambda r: (r["best_val_error"], r["relus"] or 0.0, r["config"]))
        others = [r for r in level if r is not chosen]
        verdicts = []
        for other in others:
            w = welch(chosen["test_errors"], other["test_errors"])
            verdicts.append(f"vs {other['config']}: " + (
                f"Δ {w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}], p={format_p(w.p)}, n={w.n_a} vs {w.n_b}"
                if w.testable else f"not testable (n={w.n_a} vs {w.n_b})"))
        chosen_rows.append({"budget": level[0]["budget"], "config": chosen["config"], "method": chosen["method"],
                            "relus": chosen["relus"], "n": chosen["n"],
                            "best_val_error": format_mean_std(chosen["best_val_error"], chosen["best_val_error_std"]),
                            "test_error": format_values(chosen["test_errors"]),
                            "val_means": {r["config"]: r["best_val_error"] for r in level},
                            "verdicts": verdicts})
    return chosen_rows


def selection_markdown(chosen: list[dict]) -> str:
    head = ["ReLU budget", "chosen on val", "method", "ReLUs", "n", "best val error (%)", "test error (%)",
            "test error vs the other candidates", "mean best val error per candidate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in chosen:
        candidates = "; ".join(f"{config}: {v:.2f}" for config, v in c["val_means"].items())
        lines.append("| " + " | ".join([_count(c["budget"]), c["config"], c["method"], _count(c["relus"]), str(c["n"]),
                                        c["best_val_error"], c["test_error"], "; ".join(c["verdicts"]),
                                        candidates]) + " |")
    return "\n".join(lines) + "\n"
