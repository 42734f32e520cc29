"""Choose the erase proportion on validation error, as the EraseReLU paper does, and report its test error.

    python -m erasenet.select DIR [--among 0.25,0.5,0.75,1]

Runs below DIR are grouped into families that differ only in seed and ``erase.proportion``. In each family the
proportion (among the candidates) with the lowest mean best-validation error over seeds is chosen; the test error
of that choice is reported, with whether it beats the original network (p=0) on test error at the 5% level
(Welch's t-test, two-sided, over seeds). The test set never takes part in the choice.

A sweep over methods (``erase.method`` gates or cull beside erase) is also compared at equal ReLU budget: per
budget level (``erasenet.reports.methods``), the configuration with the lowest mean best-validation error is chosen,
and its test error is compared with each other candidate's (Welch, with Holm's adjustment over every comparison).
Where a run's ``paper.*`` gives the chosen configuration's test error, the published value and the difference
stand beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common.errors import UserError
from .reports.methods import EQUAL_BUDGET, has_methods, select_at_budgets, selection_markdown
from .reports.selection import PAPER_CANDIDATES, select, to_markdown
from .reports.summary import find_results, summarize


def proportion_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    return (f"# Proportion chosen on validation in {args.dir}\n\nPer family (runs differing only in seed and "
            f"erase.proportion), the candidate ({args.among}) with the lowest mean best-val error; errors in %, "
            f"mean ± sample std over seeds. The test set took no part in the choice. \"vs p=0\": the chosen "
            f"proportion's mean test error minus the original network's, its 95% confidence interval and "
            f"Welch's two-sided p-value; it beats p=0 when it is lower with p < 0.05.\n\n" + to_markdown(rows))


def select_methods_markdown(results: list[dict], among: tuple[float, ...], args: argparse.Namespace) -> str:
    """A sweep over methods: the choice at each ReLU budget, then the proportion choice of its erase families
    where it has candidate proportions."""
    chosen = select_at_budgets(summarize(results))
    markdown = (f"# Configuration chosen on validation at each ReLU budget in {args.dir}\n\nPer level of equal "
                "ReLU budget (configurations of one network and data set whose budgets agree within "
                f"{EQUAL_BUDGET:.0%}), the "
                "configuration with the lowest mean best-val error, whatever its method; errors in %, mean ± "
                "sample std over seeds. The test set took no part in the choice. Against each other candidate: the "
                "chosen configuration's mean test error minus the candidate's, its 95% confidence interval, "
                "Welch's two-sided p-value (\"Holm\": adjusted by Holm's method for every comparison of this "
                "table together) and n on each side.\n\n" + selection_markdown(chosen))
    try:
        rows = select(results, among)
    except UserError:  # no erase family with a candidate proportion: the comparison at equal budget is the answer
        return markdown
    return markdown + "\n" + proportion_markdown(rows, args).replace("# ", "## ", 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m erasenet.select", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a sweep directory, e.g. multirun/<name>")
    parser.add_argument("--among", default=",".join(f"{c:g}" for c in PAPER_CANDIDATES),
                        help="comma-separated candidate proportions (default: %(default)s, the paper's)")
    args = parser.parse_args(argv)
    try:
        try:
            among = tuple(float(x) for x in args.among.split(","))
        except ValueError:
            raise UserError(f"--among {args.among!r} is not a list of numbers. Use e.g. --among 0.25,0.5,0.75,1.")
        if not args.dir.is_dir():
            raise UserError(f"{args.dir} is not a directory. Give the sweep directory, e.g. multirun/quickstart.")
        results = find_results(args.dir)
        if has_methods(results):
            markdown = select_methods_markdown(results, among, args)
        else:
            markdown = proportion_markdown(select(results, among), args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (args.dir / "selection.md").write_text(markdown)
    print(markdown + f"\nwritten to {args.dir / 'selection.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
