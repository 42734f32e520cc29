"""One list of columns, two forms of a table: markdown for people and CSV for scripts.

A column names its CSV field (or none: a markdown cell that joins values the CSV keeps apart), says how to read
its value from a row, and, where the markdown table shows it, its title, how its cell reads and when the table has
it. The CSV keeps every column, always in the same order, so a
script finds its field whatever the sweep holds; the markdown table leaves out what no row has.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

R = TypeVar("R")
DASH = "—"  # a cell without a value


def always(rows: Sequence[Any]) -> bool:
    return True


def text(value: Any) -> str:
    """A value as a markdown cell: the dash for none (None or NaN)."""
    return DASH if is_missing(value) else str(value)


def is_missing(value: Any) -> bool:
    return value is None or isinstance(value, float) and math.isnan(value)


@dataclass(frozen=True)
class Column(Generic[R]):
    name: str | None  # the CSV field, the name scripts read; None: the markdown table alone has the column
    value: Callable[[R], Any]  # the unformatted value (None or NaN: an empty field)
    header: str | None = None  # the markdown title; None: the CSV alone has the column
    cell: Callable[[R], str] | None = None  # the markdown cell; None: the value as text
    shown: Callable[[Sequence[R]], bool] = always  # whether the markdown table has it (given all its rows)

    def markdown_cell(self, row: R) -> str:
        return self.cell(row) if self.cell is not None else text(self.value(row))


def markdown_table(columns: Sequence[Column[R]], rows: Sequence[R]) -> str:
    """The markdown table of the columns that have a title and are shown for these rows."""
    shown = [c for c in columns if c.header is not None and c.shown(rows)]
    lines = ["| " + " | ".join(c.header for c in shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(c.markdown_cell(r) for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(columns: Sequence[Column[R]], rows: Sequence[R]) -> str:
    """Every column's value for every row, unformatted, an empty field where there is none."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [c for c in columns if c.name is not None]
    writer.writerow([c.name for c in columns])
    for r in rows:
        writer.writerow(["" if is_missing(v := c.value(r)) else v for c in columns])
    return out.getvalue()
