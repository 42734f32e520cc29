"""The erase proportion chosen on validation error, as the EraseReLU paper chooses it, its test error, and whether
it beats the original network (``python -m erasenet.select``, ``erasenet/select.py``, prints it).

Runs are grouped into families that differ only in seed and ``erase.proportion``. In each family the proportion
(among the candidates) with the lowest mean best-validation error over seeds is chosen; the test error of that
choice is reported, with whether it beats the original network (p=0) on test error at the 5% level (Welch's
t-test, two-sided, over seeds). The test set never takes part in the choice.
"""

from __future__ import annotations

import math
from operator import itemgetter

from ..common.errors import UserError
from ..common.records import (family_of, format_p, format_published, format_values, is_ok, mean_std, proportion_of,
                               published_error)
from .stats import welch
from .table import DASH, Column, markdown_table

PAPER_CANDIDATES = (0.25, 0.5, 0.75, 1.0)  # EraseReLU Sec. 4: selected from {25, 50, 75, 100}% on validation
LEVEL = 0.05  # the significance level of "beats p=0"


def verdict(chosen: list[float], original: list[float]) -> str:
    """Whether the chosen proportion's test error is lower than the original network's at the 5% level."""
    if not original:
        return "no p=0 runs to compare with"
    w = welch(chosen, original)
    if not w.testable:
        return f"not testable: n < 2 on a side ({w.n_a} vs {w.n_b})"
    beats = w.diff < 0 and w.p < LEVEL
    return (f"{'beats' if beats else 'does not beat'} p=0 at the 5% level: Δ {w.diff:+.2f} "
            f"[{w.low:+.2f}, {w.high:+.2f}], Welch p={format_p(w.p)}, n={w.n_a} vs {w.n_b}")


def select(results: list[dict], among: tuple[float, ...] = PAPER_CANDIDATES) -> list[dict]:
    """One row per family: the chosen proportion, its val and test errors over seeds, and every candidate's val mean."""
    ok = [r for r in results if is_ok(r)]
    no_val = sorted({r["_dir"] for r in ok if r.get("best_val_error") is None})
    if no_val:
        raise UserError(f"{len(no_val)} run(s) have no validation error (e.g. {no_val[0]}): they were trained with "
                        "dataset.val_size=0, and the proportion must not be chosen on the test set. Re-run the sweep "
                        "with a validation split, e.g. dataset.val_size=5000.")
    families: dict[str, dict[float, list[dict]]] = {}
    for r in ok:
        p = proportion_of(r)
        candidate = next((c for c in among if p is not None and math.isclose(p, c)), None)
        if candidate is not None:
            families.setdefault(family_of(r), {}).setdefault(candidate, []).append(r)
    if not families:
        found = sorted({proportion_of(r) for r in ok if proportion_of(r) is not None})
        raise UserError(f"no finished run has a candidate proportion ({', '.join(f'{c:g}' for c in among)}); the "
                        f"runs have {', '.join(f'{p:g}' for p in found) or 'none'}. Sweep them, e.g. "
                        "erase.proportion=0.25,0.5,0.75,1, or pass the proportions you swept with --among.")
    rows = []
    for family, by_p in sorted(families.items()):
        val_means = {p: mean_std([r["best_val_error"] for r in runs])[0] for p, runs in sorted(by_p.items())}
        chosen = min(val_means, key=lambda p: (val_means[p], p))  # ties go to the smaller proportion
        runs = by_p[chosen]
        original = [r["test_error"] for r in ok if family_of(r) == family and proportion_of(r) == 0.0]
        paper = published_error(runs[0])
        rows.append({"paper": paper,
                     "paper_diff": mean_std(r.get(paper.get("metric", "test_error")) for r in runs)[0]
                     - paper["test_error"] if paper else None,
                     "family": family, "proportion": chosen, "n": len(runs), "val_means": val_means,
                     "best_val_error": format_values(r["best_val_error"] for r in runs),
                     "test_error": format_values(r["test_error"] for r in runs),
                     "test_error_at_best_val": format_values(r["test_error_at_best_val"] for r in runs),
                     "original_test_error": format_values(original) + (f" (n={len(original)})" if original else ""),
                     "verdict": verdict([r["test_error"] for r in runs], original)})
    return rows


def _published(rows: list[dict]) -> bool:
    return any(r["paper"] for r in rows)


COLUMNS: list[Column[dict]] = [
    Column(None, itemgetter("family"), "family"),
    Column(None, itemgetter("proportion"), "chosen proportion", lambda r: f"{r['proportion']:g}"),
    Column(None, itemgetter("n"), "n"),
    Column(None, itemgetter("best_val_error"), "best val error (%)"),
    Column(None, itemgetter("test_error"), "test error (%)"),
    Column(None, itemgetter("test_error_at_best_val"), "test @ best val (%)"),
    Column(None, itemgetter("paper"), "published (%)", lambda r: format_published(r["paper"]), _published),
    Column(None, itemgetter("paper_diff"), "diff from published",
           lambda r: DASH if r["paper_diff"] is None else f"{r['paper_diff']:+.2f}", _published),
    Column(None, itemgetter("original_test_error"), "original (p=0) test error (%)"),
    Column(None, itemgetter("verdict"), "vs p=0 on test error"),
    Column(None, itemgetter("val_means"), "mean best val error per candidate",
           lambda r: ", ".join(f"{p:g}: {v:.2f}" for p, v in r["val_means"].items())),
]


def to_markdown(rows: list[dict]) -> str:
    verdicts = [f"- {r['family']}: p={r['proportion']:g} {r['verdict']}." for r in rows]
    return markdown_table(COLUMNS, rows) + "\n" + "\n".join(verdicts) + "\n"
