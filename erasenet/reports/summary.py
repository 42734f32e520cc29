"""Per-run records and their aggregation over seeds: ``summary.md`` and ``summary.csv``.

A run's ``result.json`` carries ``group``: its command-line overrides minus the seed, the keys that do not change
the experiment (device, data root, ...) and metadata (``paper.*``). Runs with equal groups (and equal ``name``)
are seeds of one configuration. Each configuration is compared with its reference, the same configuration at
``erase.proportion=0`` (a preset's original network counts when the sweep holds it), by Welch's t-test.

A run directory Hydra made without a ``result.json`` is running elsewhere while another live process holds its
lock (erasenet.common.runlock), failed when it holds a failure record (``failure.json``, written when the job raised or
the disk filled up), else unfinished (killed, preempted).

``python -m erasenet.results DIR`` (``erasenet/results.py``) writes them by hand; a multirun's Hydra callback there
writes them when the sweep ends.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from ..common.config import with_schema_defaults
from ..common.records import (FAILURE_FILE, failure_of, final_train_error, finite, format_mean_std, format_p,
                               group_of, is_ok, mean_std, method_of, override_key, proportion_of, run_group,
                               split_overrides)
from ..common.runlock import RUNNING, describe, live_holder
from .methods import base_of, budget_of, has_methods, methods_csv, methods_markdown
from .stats import Welch, welch

METRICS = (  # (result key, column title)
    ("test_error", "test error (%)"),
    ("best_val_error", "best val error (%)"),
    ("test_error_at_best_val", "test @ best val (%)"),
)
# Config parts that must agree for two runs to be one configuration apart from erase: dataset keys that only say
# where and how the files are read do not count.
_DATASET_PLACE_KEYS = ("root", "path", "index", "workers", "download")


def find_results(root: Path) -> list[dict]:
    """Every ``result.json`` below ``root``, each with its directory under ``_dir``; unreadable ones skipped."""
    found = []
    for path in sorted(Path(root).rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"warning: skipping unreadable {path}: {err}", file=sys.stderr)
            continue
        result["_dir"] = str(path.parent)
        paper = _current_paper(path.parent)
        if paper is not None:
            result["paper"] = paper
        found.append(result)
    return found


def _current_paper(run_dir: Path) -> dict | None:
    """The published value the run's latest invocation gave (Hydra's ``.hydra/config.yaml``), if any: adding one
    to a finished sweep reuses its runs, whose ``result.json`` predates it."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        paper = OmegaConf.select(OmegaConf.load(config_file), "paper", default=None)
        paper = OmegaConf.to_container(paper, resolve=True) if paper is not None else None
    except Exception:  # an unreadable or unresolvable record leaves the stored one in charge
        return None
    return paper if isinstance(paper, dict) and paper.get("test_error") is not None else None


def find_incomplete(root: Path) -> list[dict]:
    """A record for every Hydra run directory below ``root`` without a result: ``status: failed`` with the
    ``failure`` of its failure record where it has one, else ``status: unfinished``."""
    found = []
    for overrides_file in sorted(Path(root).rglob(".hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        if (run_dir / "result.json").exists():
            continue
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        hydra_file = overrides_file.with_name("hydra.yaml")
        hydra_cfg = OmegaConf.load(hydra_file) if hydra_file.exists() else OmegaConf.create()
        excluded = OmegaConf.select(hydra_cfg, "hydra.job.config.override_dirname.exclude_keys", default=[])
        seeds = [o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"]
        record = {"status": "unfinished", "failure": None, "group": run_group(overrides, list(excluded)),
                  "seed": int(seeds[0]) if seeds else None, "overrides": overrides, "_dir": str(run_dir),
                  "config": _run_config(run_dir)}
        failure = _read_failure(run_dir / FAILURE_FILE)
        holder = live_holder(run_dir)
        if holder is not None:
            record.update(status=RUNNING, holder=holder)
        elif failure is not None:
            record.update(status="failed", failure=failure)
        found.append(record)
    return found


def _run_config(run_dir: Path) -> dict:
    """The task config Hydra recorded for the run (unresolved), or {} where there is none that reads."""
    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:  # missing or broken: the run is still counted, by its overrides alone
        return {}


def _read_failure(path: Path) -> str | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return failure_of(record) or "failed (no reason recorded)"


def reference_family(result: dict) -> str:
    """What a run shares with its reference: its group without ``erase.*`` and ``distill.*`` items, and its model,
    data and schedule (two presets that differ only in their erase settings share these; a distilled run's
    reference is the original network, with or without a teacher of its own)."""
    config = with_schema_defaults(result.get("config") or {})  # runs recorded before a knob existed
    dataset = {k: v for k, v in (config.get("dataset") or {}).items() if k not in _DATASET_PLACE_KEYS}
    rest = [o for o in split_overrides(group_of(result)) if not override_key(o).startswith(("erase.", "distill."))]
    return json.dumps([rest, config.get("model"), dataset, config.get("schedule")], sort_keys=True, default=str)


def _paper_applies(paper: dict | None, key: str, proportion: float | None) -> bool:
    return bool(paper) and paper.get(key) is not None and (
        paper.get("proportion") is None or (proportion is not None and math.isclose(paper["proportion"], proportion)))


def compare_with_paper(row: dict, paper: dict | None, proportion: float | None) -> None:
    """Add the published values and their differences (this row minus the paper) where the paper's record
    applies: ``diff`` for the compared test metric, ``top5_diff`` for top-5, ``train_diff`` for the train error."""
    row["paper"] = paper if _paper_applies(paper, "test_error", proportion) else None
    row["diff"] = (row[paper.get("metric", "test_error")] - paper["test_error"] if row["paper"] else math.nan)
    row["paper_top5"] = paper["test_top5_error"] if _paper_applies(paper, "test_top5_error", proportion) else None
    row["top5_diff"] = row["test_top5_error"] - row["paper_top5"] if row["paper_top5"] is not None else math.nan
    row["paper_train"] = paper["train_error"] if _paper_applies(paper, "train_error", proportion) else None
    row["train_diff"] = row["train_error"] - row["paper_train"] if row["paper_train"] is not None else math.nan


def _name_of(result: dict) -> str:
    return (result.get("config") or {}).get("name") or ""


def summarize(results: Iterable[dict]) -> list[dict]:
    """One row per configuration: n, failed, unfinished and running runs (with the failures' reasons and the
    running runs' holders), mean and std of every metric, the comparison with the reference (Welch), the
    published values and differences, ReLUs, params, MACs, mean seconds."""
    results = list(results)
    several_names = len({_name_of(r) for r in results}) > 1
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((_name_of(r), group_of(r)), []).append(r)
    rows = []
    for (name, group), runs in sorted(groups.items()):
        ok = [r for r in runs if is_ok(r)]
        unfinished = [r for r in runs if r.get("status") == "unfinished"]
        running = [r for r in runs if r.get("status") == RUNNING]
        failed = [r for r in runs if not is_ok(r) and r.get("status") not in ("unfinished", RUNNING)]
        label = group or "(defaults)"
        row: dict[str, Any] = {
            "config": f"{name}: {label}" if several_names and name else label, "n": len(ok),
            "unfinished": len(unfinished), "running": len(running), "failed": len(failed),
            "seeds": sorted(r.get("seed") for r in ok),
            "failures": [(r.get("seed"), r.get("_dir"), failure_of(r) or "no reason recorded") for r in failed],
            "holders": [(r.get("seed"), r.get("_dir"), describe(r.get("holder") or {})) for r in running],
            "test_errors": finite(r.get("test_error") for r in ok)}
        for key, _ in METRICS + (("test_top5_error", ""),):
            row[key], row[key + "_std"] = mean_std(r.get(key) for r in ok)
        row["train_error"], row["train_error_std"] = mean_std(final_train_error(r) for r in ok)
        first = (ok or [r for r in runs if r.get("status") not in ("unfinished", RUNNING)] or runs)[0]
        compare_with_paper(row, first.get("paper"), proportion_of(first))
        row["params"], row["macs"] = first.get("params"), first.get("macs")
        relus = finite(r.get("relus") for r in ok)
        row["relus"] = sum(relus) / len(relus) if relus else None
        row["seconds"] = mean_std(r.get("seconds") for r in ok)[0]
        row["proportion"], row["_family"] = proportion_of(first), reference_family(first)
        row["method"], row["_base"] = method_of(first), base_of(first)
        budgets = finite(budget_of(r) for r in ok)
        row["budget"] = sum(budgets) / len(budgets) if budgets else None
        row["_unerased"] = [o for o in split_overrides(group) if override_key(o) != "erase.proportion"]
        row["_name"] = name
        rows.append(row)
    for row in rows:
        add_reference(row, rows)
    return rows


def add_reference(row: dict, rows: list[dict]) -> None:
    """``reference`` (the row it is compared with, None where there is none) and ``welch``: this row's test
    error minus the reference's. The reference is a row of the same family at proportion 0, preferring one
    whose other ``erase.*`` items are this row's too."""
    row["reference"], row["welch"], row["reference_differs"] = None, None, False
    if row["method"] != "erase":  # a budgeted method: the original network of the same model and data
        candidates = [r for r in rows if r["method"] == "erase" and r["proportion"] == 0 and r["n"]
                      and r["_base"] == row["_base"]]
        if candidates:
            reference = max(candidates, key=lambda r: (r["_name"] == row["_name"], r["n"], r["config"]))
            row["reference"], row["reference_differs"] = reference["config"], True
            if row["test_errors"]:
                row["welch"] = welch(row["test_errors"], reference["test_errors"])
        return
    if row["proportion"] is None or row["proportion"] == 0:
        return
    candidates = [r for r in rows if r["_family"] == row["_family"] and r["proportion"] == 0 and r["n"]]
    if not candidates:
        return
    reference = max(candidates, key=lambda r: (r["_unerased"] == row["_unerased"], r["n"]))
    row["reference"] = reference["config"]
    # a reference that is not simply this row's overrides at erase.proportion=0 is named under the table
    row["reference_differs"] = (reference["_unerased"], reference["_name"]) != (row["_unerased"], row["_name"])
    if row["test_errors"]:
        row["welch"] = welch(row["test_errors"], reference["test_errors"])


def _exact(n: float | None) -> str:
    """11000 -> 11,000: a count whose every digit matters (ReLUs, compared by hand with papers)."""
    return "—" if n is None else f"{round(n):,}"


def _count(n: float | None) -> str:
    """1234567 -> 1.23M: parameter, MAC and ReLU counts at a glance."""
    if not n:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:g}"


def significance_cells(row: dict) -> list[str]:
    """Δ test error vs the reference, its 95% CI, the Welch p-value, and n on each side."""
    w: Welch | None = row["welch"]
    if row["proportion"] == 0 and row["n"]:
        return ["(reference)", "", "", ""]
    if w is None:
        return ["—", "—", "—", "—"]
    sizes = f"{w.n_a} vs {w.n_b}"
    if not w.testable:
        return ["n < 2 on a side", "—", "—", sizes]
    return [f"{w.diff:+.2f}", f"[{w.low:+.2f}, {w.high:+.2f}]", format_p(w.p), sizes]


def _title(metric: str) -> str:
    return dict(METRICS)[metric]


def _diff(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:+.2f}"


def to_markdown(rows: list[dict]) -> str:
    """The summary table, then its notes: the reference of each comparison, one footnote per published source,
    and the failed runs with their reasons."""
    top5 = any(not math.isnan(r["test_top5_error"]) for r in rows)
    train = any(r["paper_train"] is not None for r in rows)
    relus = any(r["relus"] for r in rows)
    published = any(r["paper"] for r in rows)
    head = (["config", "n"] + [title for _, title in METRICS] + ["Δ test vs reference", "95% CI", "p (Welch)",
            "n vs ref"] + (["paper (%)", "diff"] if published else [])
            + (["top-5 error (%)", "paper top-5", "diff top-5"] if top5 else [])
            + (["train error (%)", "paper train", "diff train"] if train else []) + (["ReLUs"] if relus else [])
            + ["params", "MACs", "time/run (s)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sources: list[tuple[str, str]] = []
    references: list[tuple[str, str]] = []
    for r in rows:
        n = f"{r['n']}" + "".join(f" (+{r[k]} {label})" for k, label in
                                  (("failed", "failed"), ("unfinished", "unfinished"), ("running", RUNNING)) if r[k])
        cells = [r["config"], n] + [format_mean_std(r[k], r[k + "_std"]) for k, _ in METRICS]
        cells += significance_cells(r)
        if r["reference_differs"]:
            references.append((r["config"], r["reference"]))
        paper, value = r["paper"], "—"
        if paper:
            source = (paper["source"], _title(paper.get("metric", "test_error")))
            sources += [source] if source not in sources else []
            std = paper.get("test_error_std")
            value = format_mean_std(paper["test_error"], math.nan if std is None else std) + \
                f" [{sources.index(source) + 1}]"
        cells += [value, _diff(r["diff"])] if published else []
        if top5:
            paper_top5 = "—" if r["paper_top5"] is None else f"{r['paper_top5']:.2f}"
            cells += [format_mean_std(r["test_top5_error"], r["test_top5_error_std"]), paper_top5,
                      _diff(r["top5_diff"])]
        if train:
            paper_train = "—" if r["paper_train"] is None else f"{r['paper_train']:.2f}"
            cells += [format_mean_std(r["train_error"], r["train_error_std"]), paper_train, _diff(r["train_diff"])]
        cells += [_exact(r["relus"])] if relus else []
        cells += [_count(r["params"]), _count(r["macs"]), "—" if math.isnan(r["seconds"]) else f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["Δ test vs reference: this row's mean test error minus its reference's (the same configuration at "
             "erase.proportion=0), the 95% confidence interval of that difference and the p-value of Welch's "
             "t-test (unequal variances); p < 0.05: the difference is unlikely to be seed noise. n < 2 on a side "
             "leaves no variance to test."] if any(r["welch"] for r in rows) else []
    if any(r["method"] != "erase" and r["welch"] for r in rows):
        notes += ["The reference of a budgeted method (erase.method other than erase) is the original network: "
                  "the run of the same model and data at erase.proportion=0."]
    notes += [f"Reference of {config}: {reference}." for config, reference in references]
    notes += [f"[{i}] {src}; diff = this row's {metric} minus the published value." for i, (src, metric) in
              enumerate(sources, 1)]
    failures = [f"- {r['config']}{'' if seed is None else f', seed {seed}'}: {reason} ({run_dir})" for r in rows
                for seed, run_dir, reason in r["failures"]]
    running = [f"- {r['config']}{'' if seed is None else f', seed {seed}'}: {holder} ({run_dir})" for r in rows
               for seed, run_dir, holder in r["holders"]]
    text = "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)
    text += "\nFailed runs:\n\n" + "\n".join(failures) + "\n" if failures else ""
    return text + ("\nRunning elsewhere (another process is training these runs):\n\n" + "\n".join(running) + "\n"
                   if running else "")


CSV_FIELDS = (["config", "n", "failed", "unfinished", "running"]
              + [k for key, _ in METRICS for k in (key, key + "_std")]
              + ["reference", "ref_n", "delta_test_error", "delta_ci_low", "delta_ci_high", "p_welch",
                 "paper_test_error", "paper_test_error_std", "paper_metric", "paper_source", "diff",
                 "test_top5_error", "test_top5_error_std", "paper_test_top5_error", "top5_diff",
                 "train_error", "train_error_std", "paper_train_error", "train_diff", "relus", "params", "macs",
                 "seconds", "failures"])


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        paper, w = r["paper"] or {}, r["welch"]
        flat = {**r, **{f"paper_{k}": paper.get(k) for k in ("test_error", "test_error_std", "metric", "source")},
                "paper_test_top5_error": r["paper_top5"], "paper_train_error": r["paper_train"],
                "ref_n": w.n_b if w else None, "delta_test_error": w.diff if w else None,
                "delta_ci_low": w.low if w else None, "delta_ci_high": w.high if w else None,
                "p_welch": w.p if w else None,
                "failures": "; ".join(f"seed {seed}: {reason}" for seed, _, reason in r["failures"])}
        writer.writerow({k: ("" if flat[k] is None or isinstance(flat[k], float) and math.isnan(flat[k]) else flat[k])
                         for k in CSV_FIELDS})
    return out.getvalue()


def write_summary(root: Path) -> tuple[str, list[Path]]:
    """Aggregate every run below ``root`` into ``root/summary.md``, ``root/summary.csv`` and the plots beside them;
    return the table (with its notes) and the files written."""
    from ..common.atomic import atomic_write
    from .plots import write_plots

    root = Path(root)
    results = find_results(root)
    rows = summarize(results + find_incomplete(root))
    plots = write_plots(root, results)
    table = to_markdown(rows)
    if has_methods(results):
        table += methods_markdown(rows)
    markdown = (f"# Summary of {root}\n\nErrors in %, mean ± sample std over seeds (n runs); MACs and ReLUs of one "
                f"forward pass on one image; time is wall time per run.\n\n" + table
                + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots))
    atomic_write(root / "summary.md", lambda f: f.write(markdown.encode()))
    atomic_write(root / "summary.csv", lambda f: f.write(to_csv(rows).encode()))
    written = [root / "summary.md", root / "summary.csv"]
    if has_methods(results):
        atomic_write(root / "methods.csv", lambda f: f.write(methods_csv(rows).encode()))
        written.append(root / "methods.csv")
    return table, written + plots


def console_summary(root: Path) -> str:
    """Write the summary of ``root``; return what a terminal shows: the table and the paths of the files."""
    table, written = write_summary(root)
    return f"Summary of {root}\n\n{table}\nwritten:\n" + "".join(f"  {p}\n" for p in written)
