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

import json
import math
import sys
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import OmegaConf

from ..common.config import with_schema_defaults
from ..common.records import (FAILURE_FILE, failure_of, final_train_error, finite, format_mean_std, format_p,
                               format_published, group_of, is_ok, mean_std, method_of, override_key, paper_applies,
                               proportion_of, read_pi_cost, run_group, split_overrides)
from ..common.runlock import RUNNING, describe, live_holder
from .methods import base_of, budget_of, has_methods, methods_csv, methods_markdown
from .picost import NOTE as COST_NOTE, cost_columns, cost_markdown, cost_of
from .rows import Row
from .stats import Welch, welch
from .table import DASH, Column, always, csv_table, is_missing, markdown_table

METRICS = (  # (result key, column title)
    ("test_error", "test error (%)"),
    ("best_val_error", "best val error (%)"),
    ("test_error_at_best_val", "test @ best val (%)"),
)
# Config parts that must agree for two runs to be one configuration apart from erase: dataset keys that only say
# where and how the files are read do not count.
_DATASET_PLACE_KEYS = ("root", "path", "index", "workers", "download")


def find_results(root: Path) -> list[dict]:
    """Every ``result.json`` below ``root``, each with its directory under ``_dir`` and its private-inference
    measurement (``pi_cost.json``, read when the summary is written) under ``pi_cost``; unreadable ones skipped."""
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
        try:
            result["pi_cost"] = read_pi_cost(path.parent)
        except ValueError as err:
            print(f"warning: skipping the private-inference cost: {err}", file=sys.stderr)
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


def _name_of(result: dict) -> str:
    return (result.get("config") or {}).get("name") or ""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(results: Iterable[dict]) -> list[Row]:
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
        first = (ok or [r for r in runs if r.get("status") not in ("unfinished", RUNNING)] or runs)[0]
        label = group or "(defaults)"
        metrics = {}
        for key in ("test_error", "best_val_error", "test_error_at_best_val", "test_top5_error"):
            metrics[key], metrics[key + "_std"] = mean_std(r.get(key) for r in ok)
        metrics["train_error"], metrics["train_error_std"] = mean_std(final_train_error(r) for r in ok)
        paper, proportion = first.get("paper"), proportion_of(first)
        rows.append(Row(
            config=f"{name}: {label}" if several_names and name else label, name=name, n=len(ok),
            failed=len(failed), unfinished=len(unfinished), running=len(running),
            seeds=sorted(r.get("seed") for r in ok),
            failures=[(r.get("seed"), r.get("_dir"), failure_of(r) or "no reason recorded") for r in failed],
            holders=[(r.get("seed"), r.get("_dir"), describe(r.get("holder") or {})) for r in running],
            test_errors=finite(r.get("test_error") for r in ok), **metrics,
            paper=paper if paper_applies(paper, "test_error", proportion) else None,
            paper_top5=paper["test_top5_error"] if paper_applies(paper, "test_top5_error", proportion) else None,
            paper_train=paper["train_error"] if paper_applies(paper, "train_error", proportion) else None,
            params=first.get("params"), macs=first.get("macs"), relus=_mean(finite(r.get("relus") for r in ok)),
            polys=_mean(finite(r.get("polys") for r in ok)),
            seconds=mean_std(r.get("seconds") for r in ok)[0], proportion=proportion, method=method_of(first),
            budget=_mean(finite(budget_of(r) for r in ok)), family=reference_family(first), base=base_of(first),
            unerased=[o for o in split_overrides(group) if override_key(o) != "erase.proportion"],
            cost=cost_of(ok)))
    sources: list[tuple[str, str]] = []
    for row in rows:
        add_reference(row, rows)
        if row.paper:
            source = (row.paper["source"], row.paper.get("metric", "test_error"))
            sources += [source] if source not in sources else []
            row.paper_note = sources.index(source) + 1
    return rows


def add_reference(row: Row, rows: list[Row]) -> None:
    """``reference`` (the row it is compared with, None where there is none) and ``welch``: this row's test
    error minus the reference's. The reference is a row of the same family at proportion 0, preferring one
    whose other ``erase.*`` items are this row's too."""
    if row.method != "erase":  # a budgeted method: the original network of the same model and data
        candidates = [r for r in rows if r.method == "erase" and r.proportion == 0 and r.n and r.base == row.base]
        if candidates:
            reference = max(candidates, key=lambda r: (r.name == row.name, r.n, r.config))
            row.reference, row.reference_differs = reference.config, True
            if row.test_errors:
                row.welch = welch(row.test_errors, reference.test_errors)
        return
    if row.proportion is None or row.proportion == 0:
        return
    candidates = [r for r in rows if r.family == row.family and r.proportion == 0 and r.n]
    if not candidates:
        return
    reference = max(candidates, key=lambda r: (r.unerased == row.unerased, r.n))
    row.reference = reference.config
    # a reference that is not simply this row's overrides at erase.proportion=0 is named under the table
    row.reference_differs = (reference.unerased, reference.name) != (row.unerased, row.name)
    if row.test_errors:
        row.welch = welch(row.test_errors, reference.test_errors)


def _exact(n: float | None) -> str:
    """11000 -> 11,000: a count whose every digit matters (ReLUs, compared by hand with papers)."""
    return DASH if n is None else f"{round(n):,}"


def _count(n: float | None) -> str:
    """1234567 -> 1.23M: parameter and MAC counts at a glance."""
    if not n:
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:g}"


def _signed(x: float | None) -> str:
    return DASH if is_missing(x) else f"{x:+.2f}"


def _percent(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _significance(row: Row, cell: Callable[[Welch], str], untestable: Callable[[Welch], str] | None = None) -> str:
    """A cell of the comparison with the reference: empty on the reference itself, the dash without a
    comparison, ``untestable``'s text (else the dash) with fewer than two runs on a side."""
    if row.is_reference:
        return ""
    if row.welch is None:
        return DASH
    if not row.welch.testable:
        return untestable(row.welch) if untestable else DASH
    return cell(row.welch)


def _sizes(w: Welch) -> str:
    return f"{w.n_a} vs {w.n_b}"


def _runs(row: Row) -> str:
    """3 (+1 failed, +1 unfinished): finished runs, and the others where there are any."""
    others = (("failed", row.failed), ("unfinished", row.unfinished), (RUNNING, row.running))
    return f"{row.n}" + "".join(f" (+{k} {label})" for label, k in others if k)


def _published(rows: Sequence[Row]) -> bool:
    return any(r.paper for r in rows)


def _with_top5(rows: Sequence[Row]) -> bool:
    return any(not math.isnan(r.test_top5_error) for r in rows)


def _with_paper_train(rows: Sequence[Row]) -> bool:
    return any(r.paper_train is not None for r in rows)


def _with_relus(rows: Sequence[Row]) -> bool:
    return any(r.relus for r in rows)


def _with_polys(rows: Sequence[Row]) -> bool:
    return any(r.polys for r in rows)


def _welch_value(field: str) -> Callable[[Row], Any]:
    return lambda r: getattr(r.welch, field) if r.welch else None


def metric_columns(key: str, header: str, shown: Callable[[Sequence[Row]], bool] = always) -> list[Column[Row]]:
    """A metric's mean ± std over seeds: one markdown cell, two CSV fields (``key``, ``key_std``)."""
    return [Column(key, attrgetter(key), header, lambda r: format_mean_std(getattr(r, key), getattr(r, key + "_std")),
                   shown),
            Column(key + "_std", attrgetter(key + "_std"))]


# The summary's columns, in the order of summary.csv (every column) and summary.md (those with a title, where shown).
COLUMNS: list[Column[Row]] = [
    Column("config", attrgetter("config"), "config"),
    Column("n", attrgetter("n"), "n", _runs),
    Column("failed", attrgetter("failed")),
    Column("unfinished", attrgetter("unfinished")),
    Column("running", attrgetter("running")),
    *(column for key, title in METRICS for column in metric_columns(key, title)),
    Column("reference", attrgetter("reference")),
    Column("ref_n", _welch_value("n_b")),
    Column("delta_test_error", _welch_value("diff"), "Δ test vs reference",
           lambda r: "(reference)" if r.is_reference else _significance(r, lambda w: f"{w.diff:+.2f}",
                                                                        lambda w: "n < 2 on a side")),
    Column("delta_ci_low", _welch_value("low"), "95% CI",
           lambda r: _significance(r, lambda w: f"[{w.low:+.2f}, {w.high:+.2f}]")),
    Column("delta_ci_high", _welch_value("high")),
    Column("p_welch", _welch_value("p"), "p (Welch)", lambda r: _significance(r, lambda w: format_p(w.p))),
    Column(None, attrgetter("welch"), "n vs ref", lambda r: _significance(r, _sizes, _sizes)),
    Column("paper_test_error", lambda r: (r.paper or {}).get("test_error"), "paper (%)",
           lambda r: format_published(r.paper, f"[{r.paper_note}]"), _published),
    Column("paper_test_error_std", lambda r: (r.paper or {}).get("test_error_std")),
    Column("paper_metric", lambda r: (r.paper or {}).get("metric")),
    Column("paper_source", lambda r: (r.paper or {}).get("source")),
    Column("diff", attrgetter("diff"), "diff", lambda r: _signed(r.diff), _published),
    *metric_columns("test_top5_error", "top-5 error (%)", _with_top5),
    Column("paper_test_top5_error", attrgetter("paper_top5"), "paper top-5", lambda r: _percent(r.paper_top5),
           _with_top5),
    Column("top5_diff", attrgetter("top5_diff"), "diff top-5", lambda r: _signed(r.top5_diff), _with_top5),
    *metric_columns("train_error", "train error (%)", _with_paper_train),
    Column("paper_train_error", attrgetter("paper_train"), "paper train", lambda r: _percent(r.paper_train),
           _with_paper_train),
    Column("train_diff", attrgetter("train_diff"), "diff train", lambda r: _signed(r.train_diff), _with_paper_train),
    Column("relus", attrgetter("relus"), "ReLUs", lambda r: _exact(r.relus), _with_relus),
    Column("polys", attrgetter("polys"), "polynomials", lambda r: _exact(r.polys), _with_polys),
    *cost_columns(attrgetter("cost"), count=attrgetter("n")),
    Column("params", attrgetter("params"), "params", lambda r: _count(r.params)),
    Column("macs", attrgetter("macs"), "MACs", lambda r: _count(r.macs)),
    Column("seconds", attrgetter("seconds"), "time/run (s)",
           lambda r: DASH if math.isnan(r.seconds) else f"{r.seconds:.1f}"),
    Column("failures", lambda r: "; ".join(f"seed {seed}: {reason}" for seed, _, reason in r.failures)),
]


def to_markdown(rows: list[Row]) -> str:
    """The summary table, then its notes: the reference of each comparison, one footnote per published source,
    and the failed runs with their reasons."""
    sources = {}
    for r in rows:
        if r.paper:
            sources[r.paper_note] = (r.paper["source"], dict(METRICS)[r.paper.get("metric", "test_error")])
    notes = ["Δ test vs reference: this row's mean test error minus its reference's (the same configuration at "
             "erase.proportion=0), the 95% confidence interval of that difference and the p-value of Welch's "
             "t-test (unequal variances); p < 0.05: the difference is unlikely to be seed noise. n < 2 on a side "
             "leaves no variance to test."] if any(r.welch for r in rows) else []
    if any(r.method != "erase" and r.welch for r in rows):
        notes += ["The reference of a budgeted method (erase.method other than erase) is the original network: "
                  "the run of the same model and data at erase.proportion=0."]
    notes += [f"Reference of {r.config}: {r.reference}." for r in rows if r.reference_differs]
    notes += [f"PI runs: the runs measured under two-party computation, of the finished ones; {COST_NOTE}"] \
        if any(r.cost.n for r in rows) else []
    notes += [f"[{i}] {src}; diff = this row's {metric} minus the published value." for i, (src, metric) in
              sorted(sources.items())]
    failures = [f"- {r.config}{'' if seed is None else f', seed {seed}'}: {reason} ({run_dir})" for r in rows
                for seed, run_dir, reason in r.failures]
    running = [f"- {r.config}{'' if seed is None else f', seed {seed}'}: {holder} ({run_dir})" for r in rows
               for seed, run_dir, holder in r.holders]
    text = markdown_table(COLUMNS, rows) + "".join(f"\n{note}\n" for note in notes)
    text += "\nFailed runs:\n\n" + "\n".join(failures) + "\n" if failures else ""
    return text + ("\nRunning elsewhere (another process is training these runs):\n\n" + "\n".join(running) + "\n"
                   if running else "")


def to_csv(rows: list[Row]) -> str:
    return csv_table(COLUMNS, rows)


def write_summary(root: Path) -> tuple[str, list[Path]]:
    """Aggregate every run below ``root`` into ``root/summary.md``, ``root/summary.csv`` and the plots beside them;
    return the table (with its notes) and the files written."""
    from ..common.atomic import atomic_write
    from .plots import write_plots

    root = Path(root)
    results = find_results(root)
    rows = summarize(results + find_incomplete(root))
    plots = write_plots(root, results)
    table = to_markdown(rows) + cost_markdown(results)
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
