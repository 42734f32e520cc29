"""Reading run records: override items, a run's configuration group, family and proportion, mean ± std.

Torch-, Hydra- and OmegaConf-free, so that reports, the launcher and the config's dirname resolver can share it
without loading a training stack. An override is one ``key=value`` item of a command line, with Hydra's optional
``+``, ``++`` or ``~`` prefix.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Iterable

# Keys under these prefixes describe a run (a published value to compare with) without changing what it trains.
METADATA_PREFIXES = ("paper.",)
# a run directory's record of a job that raised or a disk that filled up: {"status": "failed", "failure": ...}
FAILURE_FILE = "failure.json"
# a run directory's measured private-inference cost, written by ``python -m erasenet.pi`` (erasenet/pi/measure.py)
PI_COST_FILE = "pi_cost.json"
# Boundaries between items of a joined override string: a comma followed by the next item's ``key=``. A comma
# inside a value (``schedule.milestones=[2,3]``, ``paper.source="Table 2, ResNet-110"``) is not one.
_ITEM_BOUNDARY = re.compile(r",(?=[+~]{0,2}[\w.-]+=)")


def override_key(override: str) -> str:
    """``+erase.proportion=0.5`` -> ``erase.proportion``: the config key an override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str:
    """``erase.proportion=0.5`` -> ``0.5``; an item without ``=`` (a deletion ``~key``) has the empty value."""
    return override.split("=", 1)[1] if "=" in override else ""


def split_overrides(joined: str) -> list[str]:
    """Items of an override string joined with commas (a run's ``group``, Hydra's ``override_dirname``); a comma
    inside a quoted value (``distill.teacher="runs/x/a=1,seed={seed}"``) is not a boundary."""
    if not joined:
        return []
    items, start, quote = [], 0, ""
    for i, char in enumerate(joined):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'" and (i == 0 or joined[i - 1] == "="):  # a value that starts with a quote
            quote = char
        elif char == "," and _ITEM_BOUNDARY.match(joined, i):
            items.append(joined[start:i])
            start = i + 1
    items.append(joined[start:])
    return [item for item in items if item]


def is_metadata(key: str) -> bool:
    """Whether a config key only describes a run (``paper.*``): it never changes a run's identity."""
    return key.startswith(METADATA_PREFIXES) or key.rstrip(".") + "." in METADATA_PREFIXES


def drop_metadata(joined: str) -> str:
    """A joined override string without its metadata items, e.g. for a run directory's name."""
    return ",".join(o for o in split_overrides(joined) if not is_metadata(override_key(o)))


def run_group(overrides: Iterable[str], excluded: Iterable[str]) -> str:
    """The overrides that define a run's configuration, sorted: all but the seed, the excluded keys and metadata."""
    skip = set(excluded) | {"seed"}
    return ",".join(sorted(o for o in overrides if override_key(o) not in skip and not is_metadata(override_key(o))))


def group_of(result: dict) -> str:
    """A result's configuration group (as ``run_group`` made it), without metadata items recorded before they
    were left out."""
    return ",".join(o for o in split_overrides(result.get("group") or "") if not is_metadata(override_key(o)))


def method_of(result: dict) -> str:
    """The run's ``erase.method`` (``erase``, EraseReLU's proportion rule, for runs recorded before it existed)."""
    erase = ((result.get("config") or {}).get("erase") or {})
    return erase.get("method") or (result.get("erase") or {}).get("method") or "erase"


def proportion_of(result: dict) -> float | None:
    """The run's erase proportion, from its erase record; None for a method other than EraseReLU's proportion rule
    (a budgeted method has no proportion)."""
    if method_of(result) != "erase":
        return None
    return (result.get("erase") or {}).get("proportion")


def family_of(result: dict) -> str:
    """The run's group without its ``erase.proportion`` item: runs of one family differ only in proportion and seed."""
    rest = [o for o in split_overrides(group_of(result)) if override_key(o) != "erase.proportion"]
    return ",".join(rest) or "(defaults)"


def paper_applies(paper: dict | None, key: str, proportion: float | None) -> bool:
    """Whether a published record (``paper``) gives ``key`` for a run at this erase proportion: one without a
    proportion applies at every proportion, and to a budgeted method (which has none)."""
    return bool(paper) and paper.get(key) is not None and (
        paper.get("proportion") is None or (proportion is not None and math.isclose(paper["proportion"], proportion)))


def published_error(result: dict) -> dict | None:
    """The run's published record where it gives the run's test error, else None."""
    paper = result.get("paper")
    return paper if paper_applies(paper, "test_error", proportion_of(result)) else None


def is_ok(result: dict) -> bool:
    """Whether the run finished normally (``status`` ``ok``, the default of records that predate the field)."""
    return result.get("status", "ok") == "ok"


def failure_of(result: dict) -> str | None:
    """Why a run failed, where its record says (``failure``), else None."""
    reason = result.get("failure")
    return str(reason) if reason else None


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and finite (a missing metric is None, a diverged one NaN)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN for none; std NaN for fewer than two)."""
    values = finite(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``5.78 ± 0.10``; ``5.78`` without a std; ``—`` without a mean."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def format_published(paper: dict | None, note: str | None = None) -> str:
    """A published test error: ``27.00 ± 1.50 (its source)``, or with ``note`` in place of the source (``[1]``);
    the dash without a record."""
    if not paper:
        return "—"
    std = paper.get("test_error_std")
    value = format_mean_std(paper["test_error"], math.nan if std is None else std)
    return f"{value} {note}" if note is not None else f"{value} ({paper['source']})"


def format_p(p: float) -> str:
    """A p-value with the digits that matter: 0.012, 3.1e-05."""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def format_values(values: Iterable[float | None], digits: int = 2) -> str:
    """``format_mean_std`` of the values' mean and sample std."""
    return format_mean_std(*mean_std(values), digits=digits)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's per-epoch records (``metrics.jsonl``) in epoch order; a repeated epoch (a resumed run) keeps its
    last record; a torn last line (a run killed while writing) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def final_train_error(result: dict) -> float | None:
    """The run's train error at its last epoch: ``train_error`` of ``result.json``, else the last line of
    ``metrics.jsonl``."""
    if result.get("train_error") is not None:
        return result["train_error"]
    records = read_metrics(result["_dir"]) if result.get("_dir") else []
    return records[-1].get("train_error") if records else None


def read_pi_cost(run_dir: str | Path) -> dict | None:
    """What the reports read of a run's ``pi_cost.json``: the ReLUs the measured network kept, the bytes both
    parties sent (in all and in secure comparisons), the rounds, the LAN and WAN latency estimates (seconds) and
    whether the private logits passed their check. None where the run has no measurement; ValueError where its
    file does not read as one."""
    path = Path(run_dir) / PI_COST_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        latency = record["latency"]["settings"]
        return {"relus": record["relus"], "bytes": record["total"]["bytes"],
                "comparison_bytes": record["by_kind"]["comparison_relu"]["bytes"],
                "rounds": record["total"]["rounds"], "lan_seconds": latency["LAN"]["seconds"],
                "wan_seconds": latency["WAN"]["seconds"], "passed": record["check"]["passed"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a private-inference cost record ({type(err).__name__}: {err})") from err
