"""The row of a summary: one configuration of a sweep (``summary.summarize`` makes them, ``summary`` and
``methods`` write them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .picost import Cost
from .stats import Welch


@dataclass
class Row:
    """One configuration of a sweep: its runs counted by outcome, its metrics over seeds, the published values and
    the comparison with its reference. Read by attribute; ``row["n"]`` reads the same, as the records it
    replaced were read."""

    config: str  # its overrides ("name: overrides" where the sweep holds several names), "(defaults)" for none
    name: str
    n: int  # finished runs
    failed: int
    unfinished: int
    running: int  # runs another live process is training
    seeds: list[int]  # of the finished runs
    failures: list[tuple]  # (seed, run directory, reason) per failed run
    holders: list[tuple]  # (seed, run directory, the process that holds it) per running run
    test_errors: list[float]  # per finished run
    test_error: float  # mean over seeds, then the sample std (NaN for none, std NaN for one)
    test_error_std: float
    best_val_error: float
    best_val_error_std: float
    test_error_at_best_val: float
    test_error_at_best_val_std: float
    test_top5_error: float
    test_top5_error_std: float
    train_error: float  # at the last epoch
    train_error_std: float
    paper: dict | None  # the published record, where it gives this configuration's test error
    paper_top5: float | None  # the published top-5 and train errors, where the record gives them for it
    paper_train: float | None
    params: float | None
    macs: float | None
    relus: float | None  # mean over seeds
    polys: float | None  # polynomial evaluations per image (AutoReP's replacement), mean over seeds
    seconds: float  # mean wall time per run
    proportion: float | None  # erase.proportion; None for a budgeted method
    method: str  # erase.method
    budget: float | None  # the ReLU budget as a count (reports.methods.budget_of), mean over seeds
    family: str  # what it shares with its reference (reference_family)
    base: str  # its network and data (reports.methods.base_of)
    unerased: list[str]  # its overrides without erase.proportion
    cost: Cost  # the private-inference cost of its measured runs (reports.picost)
    reference: str | None = None  # the config it is compared with
    welch: Welch | None = None  # its test errors minus the reference's
    reference_differs: bool = False  # the reference is not simply its overrides at erase.proportion=0
    paper_note: int | None = None  # the footnote (1, 2, ...) of its published source in this summary

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def diff(self) -> float:
        """The compared metric (``paper.metric``) minus the published test error."""
        return getattr(self, self.paper.get("metric", "test_error")) - self.paper["test_error"] if self.paper \
            else math.nan

    @property
    def top5_diff(self) -> float:
        return self.test_top5_error - self.paper_top5 if self.paper_top5 is not None else math.nan

    @property
    def train_diff(self) -> float:
        return self.train_error - self.paper_train if self.paper_train is not None else math.nan

    @property
    def is_reference(self) -> bool:
        """An original network that finished: what the rows at other proportions are compared with."""
        return self.proportion == 0 and self.n > 0
