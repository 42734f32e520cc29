"""Per-run records and their aggregation over seeds: ``summary.md`` and ``summary.csv``.

A run's ``result.json`` carries ``group``: its command-line overrides minus the
seed and the keys that do not change the experiment (device, data root, ...).
Runs with equal groups are seeds of one configuration.

    python -m erasenet.results DIR    # (re)write DIR/summary.md and DIR/summary.csv
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(results: Iterable[dict]) -> list[dict]:
    """One row per group: n, failures, mean and std of every metric, params, mean seconds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r.get("group", ""), []).append(r)
    rows = []
    for group, runs in sorted(groups.items()):
        ok = [r for r in runs if r.get("status", "ok") == "ok"]
        row: dict[str, Any] = {"config": group or "(defaults)", "n": len(ok), "failed": len(runs) - len(ok),
                               "seeds": sorted(r.get("seed") for r in ok)}
        for key, _ in METRICS:
            row[key], row[key + "_std"] = mean_std([r.get(key) for r in ok])
        row["params"] = ok[0].get("params") if ok else None
        row["seconds"] = mean_std([r.get("seconds") for r in ok])[0]
        rows.append(row)
    return rows


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def to_markdown(rows: list[dict]) -> str:
    head = ["config", "n"] + [title for _, title in METRICS] + ["params", "time/run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = f"{r['n']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        cells = [r["config"], n] + [_pm(r[k], r[k + "_std"]) for k, _ in METRICS]
        cells += [f"{r['params']:,}" if r["params"] else "—", "—" if math.isnan(r["seconds"]) else f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    fields = ["config", "n", "failed"] + [k for key, _ in METRICS for k in (key, key + "_std")] + ["params", "seconds"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k]) for k in fields})
    return out.getvalue()


def write_summary(root: Path) -> str:
    """Aggregate every run below ``root`` into ``root/summary.md`` and ``root/summary.csv``; return the markdown."""
    from .checkpoint import atomic_write

    root = Path(root)
    rows = summarize(find_results(root))
    markdown = f"# Summary of {root}\n\nErrors in %, mean ± sample std over seeds (n runs).\n\n" + to_markdown(rows)
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
              "DIR/summary.md and DIR/summary.csv: mean ± std over seeds per configuration.")
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
