"""A ``Table`` written out as CSV or XLSX, streaming its rows once and holding none of them.

Every writer reads ``table.rows()`` exactly once, row by row, so an export of a whole run costs the
memory of one row plus the writer's own buffer whatever its length (Datasette's 100 MB CSV cap is what
the issue asks us not to copy). ``progress(rows_done)`` is called every ``PROGRESS_ROWS`` rows and once
at the end with the total, so a background job can show how far it is.

Values are read by their column's kind: an ``int`` column's numbers stay numbers (right-aligned in the
PDF, numeric cells in the XLSX), ``date``/``datetime`` columns take ``date``/``datetime`` objects, ISO
strings, or the box's epoch milliseconds, shown in the box's local time (the store's clock), since that
is the time the people reading the report lived through.

The PDF writer lives in ``appliance.reports.pdf``, which reads the rows through the typed rows and the
progress counting kept here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from appliance.reports.table import Column, Table

Progress = Callable[[int], None]

PROGRESS_ROWS = 2000
CSV_CHUNK_CHARS = 256 * 1024  # one chunk of a streamed CSV: big enough to cost nothing per row
WIDTH_SAMPLE_ROWS = 200  # rows looked at to size the XLSX's and the PDF's columns
EXCEL_MAX_CHARS = 32_767  # what one Excel cell holds
EXCEL_EXACT_INT = 2**53  # beyond this an Excel number (a double) loses digits
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets: a product name
# like ``=HYPERLINK(...)`` from an ERP file must not run when a manager opens the CSV (OWASP "CSV
# injection"). Such text is written with a leading apostrophe, which spreadsheets hide.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ILLEGAL_XML = re.compile(r"[\000-\010\013\014\016-\037]")  # what an XLSX cell may not hold


def _noop(_rows_done: int) -> None:
    return None


# -- values by kind ------------------------------------------------------------------------------


def _local(moment: datetime) -> datetime:
    """A naive local time: Excel has no time zones, and a report speaks the store's clock."""
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo is not None else moment


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _local(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000)  # the box's timestamps are epoch milliseconds
    if isinstance(value, str):
        try:
            return _local(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def typed(column: Column, value: Any) -> Any:
    """``value`` as its column's kind says it should be written: None, int, float, date, datetime or str.

    A value that does not fit its kind (a text in an ``int`` column) is kept as text rather than refused:
    an export shows what the report holds."""
    if value is None or value == "":
        return None
    kind = column.kind
    if kind == "int":
        if isinstance(value, bool):
            return int(value)  # a flag counted as 0 or 1
        if isinstance(value, int | float):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            return str(value)
    if kind in ("date", "datetime"):
        moment = _datetime(value)
        if moment is None:
            return str(value)
        return moment.date() if kind == "date" else moment.replace(microsecond=0)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value  # a number in a text column is still a number
    return str(value)


def text(value: Any) -> str:
    """How a typed value reads in a CSV or a PDF cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _typed_rows(table: Table) -> Iterator[list[Any]]:
    columns = table.columns
    for row in table.rows():
        yield [typed(column, row.get(column.key)) for column in columns]


def _counted(rows: Iterable[list[Any]], progress: Progress) -> Iterator[list[Any]]:
    """``rows`` passed through, with ``progress`` told every ``PROGRESS_ROWS`` and at the end."""
    done = 0
    for done, row in enumerate(rows, 1):
        yield row
        if done % PROGRESS_ROWS == 0:
            progress(done)
    progress(done)


# -- CSV -----------------------------------------------------------------------------------------


def _guarded(value: Any) -> str:
    cell = text(value)
    if isinstance(value, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


def _csv_chunks(table: Table, progress: Progress) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")  # the BOM: without it Excel reads UTF-8 as the PC's code page ("CafÃ©")
    writer.writerow([column.label for column in table.columns])
    for row in _counted(_typed_rows(table), progress):
        writer.writerow([_guarded(value) for value in row])
        if buffer.tell() >= CSV_CHUNK_CHARS:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def csv_chunks(table: Table) -> Iterator[bytes]:
    """The table as CSV bytes, a few hundred KB a chunk, for a streamed HTTP answer with no size cap.

    UTF-8 with a BOM and a header row of the columns' labels; text that a spreadsheet would take for a
    formula starts with an apostrophe."""
    return _csv_chunks(table, _noop)


def write_csv(table: Table, path: Path, progress: Progress = _noop) -> None:
    with path.open("wb") as out:
        for chunk in _csv_chunks(table, progress):
            out.write(chunk)


# -- XLSX ----------------------------------------------------------------------------------------


def _sheet_title(title: str, taken: str) -> str:
    name = re.sub(r"[\[\]:*?/\\]", " ", title).strip()[:31].strip() or "Report"
    return "Rows" if name.lower() == taken.lower() else name


def _widths(table: Table, sample: list[list[Any]]) -> list[int]:
    """Excel column widths in characters, from the labels and the first rows, between 6 and 60."""
    widths = [len(column.label) for column in table.columns]
    for row in sample:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(text(value)))
    return [min(max(width + 2, 6), 60) for width in widths]


def write_xlsx(table: Table, path: Path, progress: Progress = _noop) -> None:
    """The rows on the first sheet (header frozen, columns sized), the summary on a second.

    Rows first, so a sheet exported to be filled in and imported again is the one a spreadsheet opens
    on. openpyxl's write-only workbook streams the rows to a temporary file as they come, which is what
    keeps memory flat for 100,000 rows; column widths and the frozen pane must be set before the first
    row, so the widths come from the first ``WIDTH_SAMPLE_ROWS`` rows, held back for that."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import Cell
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_sheet_title(table.title, "Summary"))
    rows = _typed_rows(table)
    sample = list(itertools.islice(rows, WIDTH_SAMPLE_ROWS))
    for i, width in enumerate(_widths(table, sample), 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    sheet.freeze_panes = "A2"
    bold = Font(bold=True)

    def header_cell(label: str) -> Cell:
        cell = WriteOnlyCell(sheet, value=_excel_text(label))
        cell.font = bold
        return cell

    def excel_cell(value: Any) -> Any:
        if isinstance(value, str):
            value = _excel_text(value)
            if value.startswith("=") or value.startswith("#"):
                # openpyxl would write "=..." as a formula and "#N/A" as an error value: force text.
                cell = WriteOnlyCell(sheet, value=value)
                cell.data_type = "s"
                return cell
            return value
        if isinstance(value, int) and abs(value) > EXCEL_EXACT_INT:
            return str(value)  # exact digits as text rather than a rounded number
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # Excel refuses a file holding NaN or infinity as a number
        return value

    try:
        sheet.append([header_cell(column.label) for column in table.columns])
        for row in _counted(itertools.chain(sample, rows), progress):
            sheet.append([excel_cell(value) for value in row])

        summary = workbook.create_sheet("Summary")
        summary.column_dimensions["A"].width = 28
        summary.column_dimensions["B"].width = 60
        summary.append([header_cell(table.title)])
        summary.append(["Generated", datetime.now().replace(microsecond=0)])
        summary.append([])
        for label, value in table.summary:
            summary.append([_excel_text(label), excel_cell(value)])
        workbook.save(path)
    except BaseException:
        _discard(workbook)
        raise


def _discard(workbook: Any) -> None:
    """Remove the temporary files a write-only workbook streams its sheets to. openpyxl removes them when
    the workbook is saved or when the process exits, and a box runs for months: every failed or
    cancelled export would leave its rows in the temporary folder until then."""
    for sheet in workbook.worksheets:
        writer = getattr(sheet, "_writer", None)
        if writer is None:
            continue
        with contextlib.suppress(Exception):
            rows = getattr(sheet, "_rows", None)
            if rows is not None:
                rows.close()  # ends the sheet's XML while its file is open, not later at garbage collection
            writer.close()
        with contextlib.suppress(OSError, ValueError):
            writer.cleanup()


def _excel_text(value: str) -> str:
    return _ILLEGAL_XML.sub("", value)[:EXCEL_MAX_CHARS]
