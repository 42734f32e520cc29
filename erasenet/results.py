"""Per-run records and their aggregation over seeds: ``summary.md`` and ``summary.csv``.

A run's ``result.json`` carries ``group``: its command-line overrides minus the
seed and the keys that do not change the experiment (device, data root, ...).
Runs with equal groups are seeds of one configuration. A run directory
Hydra made whose ``result.json`` is missing (killed, preempted, still running)
counts as unfinished in its group.

    python -m erasenet.results DIR    # (re)write DIR/summary.md, DIR/summary.csv and the plots
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

METRICS = (  # (result key, column title)
    ("test_error", "test error (%)"),
    ("best_val_error", "best val error (%)"),
    ("test_error_at_best_val", "test @ best val (%)"),
)


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
        found.append(result)
    return found


def find_unfinished(root: Path) -> list[dict]:
    """A record (``status: unfinished``, group, seed) for every Hydra run directory below ``root`` without a result."""
    from .job import run_group

    found = []
    for overrides_file in sorted(Path(root).rglob(".hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        if (run_dir / "result.json").exists():
            continue
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        hydra_file = overrides_file.with_name("hydra.yaml")
        excluded = (OmegaConf.select(OmegaConf.load(hydra_file), "hydra.job.config.override_dirname.exclude_keys",
                                     default=[]) if hydra_file.exists() else [])
        seeds = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "seed"]
        found.append({"status": "unfinished", "group": run_group(overrides, list(excluded)),
                      "seed": int(seeds[0]) if seeds else None, "overrides": overrides, "_dir": str(run_dir)})
    return found


def proportion_of(result: dict) -> float | None:
    """The run's erase proportion, from its erase record."""
    return (result.get("erase") or {}).get("proportion")


def family_of(result: dict) -> str:
    """The run's group without its ``erase.proportion`` item: runs of one family differ only in proportion and seed."""
    rest = re.sub(r"(^|,)erase\.proportion=[^,]*", "", result.get("group", "")).strip(",")
    return rest or "(defaults)"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def compare_with_paper(row: dict, paper: dict | None, proportion: float | None) -> None:
    """Add the published value and ``diff`` (this row minus the paper) where the paper's record applies."""
    applies = paper and paper.get("test_error") is not None and (
        paper.get("proportion") is None or (proportion is not None and math.isclose(paper["proportion"], proportion)))
    row["paper"] = paper if applies else None
    row["diff"] = row[paper.get("metric", "test_error")] - paper["test_error"] if applies else math.nan


def summarize(results: Iterable[dict]) -> list[dict]:
    """One row per group: n, failed and unfinished runs, mean and std of every metric, the published value and the
    difference, params, MACs, mean seconds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r.get("group", ""), []).append(r)
    rows = []
    for group, runs in sorted(groups.items()):
        ok = [r for r in runs if r.get("status", "ok") == "ok"]
        unfinished = sum(r.get("status") == "unfinished" for r in runs)
        row: dict[str, Any] = {"config": group or "(defaults)", "n": len(ok), "unfinished": unfinished,
                               "failed": len(runs) - len(ok) - unfinished, "seeds": sorted(r.get("seed") for r in ok)}
        for key, _ in METRICS:
            row[key], row[key + "_std"] = mean_std([r.get(key) for r in ok])
        first = (ok or [r for r in runs if r.get("status") != "unfinished"] or [{}])[0]
        compare_with_paper(row, first.get("paper"), proportion_of(first))
        row["params"], row["macs"] = first.get("params"), first.get("macs")
        row["seconds"] = mean_std([r.get("seconds") for r in ok])[0]
        rows.append(row)
    return rows


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _count(n: float | None) -> str:
    """1234567 -> 1.23M: parameter and MAC counts at a glance."""
    if not n:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:g}"


def _title(metric: str) -> str:
    return dict(METRICS)[metric]


def to_markdown(rows: list[dict]) -> str:
    """The summary table, then one footnote per published source (where it is from, which metric it is compared with)."""
    head = ["config", "n"] + [title for _, title in METRICS] + ["paper (%)", "diff", "params", "MACs", "time/run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sources: list[tuple[str, str]] = []
    for r in rows:
        n = f"{r['n']}" + "".join(f" (+{r[k]} {k})" for k in ("failed", "unfinished") if r[k])
        cells = [r["config"], n] + [_pm(r[k], r[k + "_std"]) for k, _ in METRICS]
        paper, published = r["paper"], "—"
        if paper:
            source = (paper["source"], _title(paper.get("metric", "test_error")))
            sources += [source] if source not in sources else []
            std = paper.get("test_error_std")
            published = _pm(paper["test_error"], math.nan if std is None else std) + f" [{sources.index(source) + 1}]"
        cells += [published, "—" if math.isnan(r["diff"]) else f"{r['diff']:+.2f}", _count(r["params"]),
                  _count(r["macs"]), "—" if math.isnan(r["seconds"]) else f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"[{i}] {src}; diff = this row's {metric} minus the published value." for i, (src, metric) in
             enumerate(sources, 1)]
    return "\n".join(lines) + "\n" + ("\n" + "\n\n".join(notes) + "\n" if notes else "")


CSV_FIELDS = (["config", "n", "failed", "unfinished"] + [k for key, _ in METRICS for k in (key, key + "_std")]
              + ["paper_test_error", "paper_test_error_std", "paper_metric", "paper_source", "diff", "params", "macs",
                 "seconds"])


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        paper = r["paper"] or {}
        flat = {**r, **{f"paper_{k}": paper.get(k) for k in ("test_error", "test_error_std", "metric", "source")}}
        writer.writerow({k: ("" if flat[k] is None or isinstance(flat[k], float) and math.isnan(flat[k]) else flat[k])
                         for k in CSV_FIELDS})
    return out.getvalue()


def write_summary(root: Path) -> str:
    """Aggregate every run below ``root`` into ``root/summary.md``, ``root/summary.csv`` and the plots beside them;
    return the markdown."""
    from .atomic import atomic_write
    from .plots import write_plots

    root = Path(root)
    results = find_results(root)
    rows = summarize(results + find_unfinished(root))
    plots = write_plots(root, results)
    markdown = (f"# Summary of {root}\n\nErrors in %, mean ± sample std over seeds (n runs); MACs of one forward pass "
                f"on one image; time is wall time per run.\n\n" + to_markdown(rows)
                + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots))
    atomic_write(root / "summary.md", lambda f: f.write(markdown.encode()))
    atomic_write(root / "summary.csv", lambda f: f.write(to_csv(rows).encode()))
    return markdown


class SummaryCallback(Callback):
    """Hydra callback: when a multirun ends, summarise its sweep directory and print the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        if root.is_dir():
            print("\n" + write_summary(root) + f"\nwritten to {root / 'summary.md'} and {root / 'summary.csv'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m erasenet.results DIR\n\nAggregate every run (result.json) below DIR into "
              "DIR/summary.md and DIR/summary.csv (mean ± std over seeds per configuration, the published value and "
              "the difference where a run's config has one) and draw DIR/curves.png (and DIR/proportion.png for a "
              "sweep over erase.proportion).")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"error: {root} is not a directory. Give the sweep directory of a multirun, e.g. multirun/quickstart.",
              file=sys.stderr)
        return 2
    if not find_results(root):
        print(f"error: no result.json below {root}: no run there has finished yet.", file=sys.stderr)
        return 1
    print(write_summary(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
