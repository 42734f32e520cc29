"""``python -m erasenet.criticality DIR``: DeepReDuce's ReLU criticality, the ranking of a network's stages.

DeepReDuce (Jha et al., ICML 2021) profiles how critical the ReLUs of each stage are before culling (the profiling
step of its Figure 4): for each stage k it trains the network that keeps the ReLUs of stage k alone (every other
stage culled) and compares those networks; culling then removes the least critical stages first. Such a sweep is
``erase=cull erase.fixed_sites=true`` with ``erase.cull_stages`` naming every stage but one, for each stage (preset
``deepreduce2021/resnet18_c100_criticality`` for the CIFAR ResNet-18; on any network, e.g. a ResNet-20's three
stages: ``erase.cull_stages=[2,3],[1,3],[1,2]``). The preset culls the stem's ReLU in every arm, as every released
DeepReDuce model does (whether the paper's profiling networks keep it was not found).

This command reads the finished runs below DIR, keeps those that kept exactly one stage (unthinned), groups them by
network, data, schedule, distillation and stem treatment, and ranks the stages of the largest group by the mean
best validation error over seeds (lower: more critical); ties go to the stage with fewer ReLUs. It prints the
ranking with each stage's test error and ReLUs kept, and writes ``criticality.md`` and ``criticality.json`` into DIR.
The preset runs it when its multirun ends (``CriticalityCallback``).

Where this departs from the paper: the paper's criticality metric weighs each stage's accuracy against its ReLU
cost; its formula was not available to this project, so the ranking here is on accuracy alone, with the ReLUs kept
beside it (``criticality.json`` holds both, per stage, to apply another metric). It ranks on validation, never on
test.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .common.atomic import atomic_write
from .common.records import is_ok
from .reports.summary import find_results

REPORT_MD, REPORT_JSON = "criticality.md", "criticality.json"


def _family(result: dict) -> str:
    """What must agree for two runs to be arms of one criticality sweep: network, data, schedule, distillation,
    and what stands in a culled ReLU and whether the stem's ReLU is culled too (an arm that keeps the stem's ReLU
    beside its stage measures more than that stage)."""
    config = result.get("config") or {}
    dataset = {k: v for k, v in (config.get("dataset") or {}).items()
               if k not in ("root", "path", "index", "workers", "download")}
    erase = result.get("erase") or {}
    return json.dumps({k: config.get(k) for k in ("model", "schedule", "distill")} | {"dataset": dataset}
                      | {"replace": erase.get("replace"), "fixed_sites": erase.get("fixed_sites")},
                      sort_keys=True, default=str)


def kept_stage(result: dict, num_stages: int) -> int | None:
    """The one stage a culling run kept (1-based), or None when it is no arm of a criticality sweep."""
    erase = result.get("erase") or {}
    if erase.get("method") != "cull" or erase.get("thin"):
        return None
    kept = set(range(1, num_stages + 1)) - set(erase.get("cull_stages") or [])
    return kept.pop() if len(kept) == 1 else None


def rank_stages(results: list[dict]) -> list[dict]:
    """One row per stage of the largest family of finished criticality arms, most critical first.

    Raises ``ValueError`` when there is none, or when its runs hold no validation error.
    """
    finished = [r for r in results if is_ok(r) and (r.get("erase") or {}).get("method") == "cull"]
    families: dict[str, list[dict]] = {}
    for r in finished:
        families.setdefault(_family(r), []).append(r)
    rows: list[dict] = []
    for runs in families.values():
        num_stages = max((max(r["erase"].get("cull_stages") or [0]) for r in runs), default=0)
        by_stage: dict[int, list[dict]] = {}
        for r in runs:
            stage = kept_stage(r, num_stages)
            if stage is not None:
                by_stage.setdefault(stage, []).append(r)
        if len(by_stage) > len(rows):
            rows = [_row(stage, arm) for stage, arm in by_stage.items()]
    if len(rows) < 2:
        raise ValueError("no criticality sweep here: it needs finished erase=cull runs that each keep one stage "
                         "(erase.cull_stages naming every other stage), for at least two stages")
    if any(row["val_error"] is None for row in rows):
        raise ValueError("the runs hold no validation error (dataset.val_size=0): criticality ranks on validation, "
                         "so train the sweep with a validation split")
    rows.sort(key=lambda row: (row["val_error"], row["relus"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _row(stage: int, runs: list[dict]) -> dict:
    val, val_std = _mean_std([r.get("best_val_error") for r in runs])
    test, test_std = _mean_std([r.get("test_error") for r in runs])
    return {"stage": stage, "n": len(runs), "val_error": val, "val_error_std": val_std, "test_error": test,
            "test_error_std": test_std, "relus": runs[0].get("relus"), "relus_original": runs[0].get("relus_original"),
            "runs": sorted(r["_dir"] for r in runs)}


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def to_markdown(rows: list[dict]) -> str:
    order = ", ".join(str(row["stage"]) for row in rows)
    cull = ", ".join(str(row["stage"]) for row in reversed(rows))
    lines = ["# ReLU criticality (DeepReDuce): each stage's ReLUs kept alone", "",
             f"Stages, most critical first: {order}. Culling order (least critical first): {cull}.", "",
             "| rank | stage kept | n | best val error (%) | test error (%) | ReLUs kept |",
             "|---:|---:|---:|---|---|---:|"]
    lines += [f"| {row['rank']} | {row['stage']} | {row['n']} | {_pm(row['val_error'], row['val_error_std'])} | "
              f"{_pm(row['test_error'], row['test_error_std'])} | {row['relus']:,} |" for row in rows]
    lines += ["", "Ranked on the mean best validation error over seeds (lower: more critical); ties go to fewer "
              "ReLUs. The test error is reported, never used. DeepReDuce's own metric also weighs each stage's "
              "ReLU cost; its formula was not available, so this ranking is on accuracy alone."]
    return "\n".join(lines) + "\n"


def write_report(root: Path) -> str:
    """Rank the stages of the criticality sweep below ``root``, write the two reports, return the markdown."""
    rows = rank_stages(find_results(root))
    text = to_markdown(rows)
    atomic_write(root / REPORT_MD, lambda f: f.write(text.encode()))
    record = {"ranking": [row["stage"] for row in rows], "cull_order": [row["stage"] for row in reversed(rows)],
              "metric": "best_val_error", "stages": rows}
    atomic_write(root / REPORT_JSON, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return text + f"\nwrote {root / REPORT_MD} and {root / REPORT_JSON}\n"


class CriticalityCallback(Callback):
    """Hydra callback: when a criticality multirun ends, rank its stages and print the ranking."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        if not root.is_dir():
            return
        try:
            print("\n" + write_report(root), end="")
        except ValueError as err:
            print(f"\nno criticality ranking for {root}: {err}.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m erasenet.criticality DIR\n\n" + (__doc__ or ""))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"error: {root} is not a directory. Give the sweep directory of a criticality multirun, e.g. "
              "multirun/deepreduce2021_resnet18_c100_criticality.", file=sys.stderr)
        return 2
    try:
        print(write_report(root), end="")
    except ValueError as err:
        print(f"error: {root}: {err}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
