"""What every report, query and comparison becomes before it is shown or exported: a ``Table``.

The page, the CSV, the XLSX and the PDF are made from the same ``Table``, so an export's numbers are
the API's numbers by construction: ``rows`` is a function that yields the rows afresh each time it is
called (an export of 100,000 rows streams them; it never holds them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["text", "int", "date", "datetime"]


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: Kind = "text"


@dataclass(frozen=True)
class Chart:
    """A bar chart of the table's largest values, for the PDF: ``label`` and ``value`` are column keys."""

    title: str
    label: str
    value: str
    top: int = 15


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: Callable[[], Iterator[dict[str, Any]]]
    total_rows: int | None = None  # when known beforehand: progress is then a fraction
    # Label and value pairs for the PDF's summary page and the XLSX's first rows: who, when, what run,
    # which sessions, totals.
    summary: list[tuple[str, str]] = field(default_factory=list)
    chart: Chart | None = None

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        return self.rows()
