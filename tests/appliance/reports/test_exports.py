"""Each export format written from a realistic table and read back by a real reader: the ``csv`` module,
openpyxl, and pypdf's text extraction. The numbers and texts read back must be the table's."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.worksheet._writer import ALL_TEMP_FILES
from pypdf import PdfReader

from appliance.reports import exports, pdf
from appliance.reports.table import Chart, Column, Table

ROWS = 10_000
NAMES = ["Café crème", "दाल", 'Rice, "Basmati" 5kg', "=SUM(A1:A9)", "Plain biscuits", "Ghee 1L", "#N/A"]
CATEGORIES = ["Dairy", "Staples", "", "Bakery"]  # "" is an empty cell
BIG = 9_007_199_254_740_993  # 2**53 + 1: a double cannot hold it
COUNTED_AT = datetime(2026, 12, 7, 8, 15, 30)


def make_row(i: int) -> dict[str, Any]:
    return {
        "sku": f"SKU-{i:06d}",
        "name": NAMES[i % len(NAMES)],
        "category": CATEGORIES[i % len(CATEGORIES)],
        "qty": BIG if i == 7 else (-3 if i == 8 else i * 7),
        "damage": 1_234_567_890 if i == 9 else i % 5,
        "counted_at": COUNTED_AT.replace(minute=i % 60),
    }


COLUMNS = [
    Column("sku", "SKU"),
    Column("name", "Product"),
    Column("category", "Category"),
    Column("qty", "Counted qty", "int"),
    Column("damage", "Damaged", "int"),
    Column("counted_at", "Counted at", "datetime"),
]
TOTAL_QTY = sum(make_row(i)["qty"] for i in range(ROWS))


def counts_table(rows: int = ROWS, columns: list[Column] = COLUMNS) -> Table:
    def produce() -> Iterator[dict[str, Any]]:
        return (make_row(i) for i in range(rows))

    return Table(
        title="Run 12 — counted quantities",
        columns=columns,
        rows=produce,
        total_rows=rows,
        summary=[("Run", "December full count"), ("Approved by", "a store manager"), ("Total qty", f"{TOTAL_QTY:,}")],
        chart=Chart("Most damaged", label="sku", value="damage", top=10),
    )


def csv_expected(value: Any) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    text = str(value)
    return "'" + text if isinstance(value, str) and text[:1] in "=+-@" else text


def test_csv_reads_back_with_the_csv_module(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    seen: list[int] = []
    exports.write_csv(counts_table(), path, seen.append)

    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [column.label for column in COLUMNS]
    assert len(rows) == ROWS + 1
    for i, row in enumerate(rows[1:]):
        expected = make_row(i)
        assert row == [csv_expected(expected[column.key]) for column in COLUMNS], i
    assert rows[1 + 1][1] == "दाल"
    assert rows[1 + 2][1] == 'Rice, "Basmati" 5kg'
    assert rows[1 + 3][1] == "'=SUM(A1:A9)"  # never a formula when a spreadsheet opens it
    assert rows[1 + 2][2] == ""
    assert int(rows[1 + 7][3]) == BIG
    assert sum(int(row[3]) for row in rows[1:]) == TOTAL_QTY
    assert seen == sorted(seen)
    assert seen[-1] == ROWS
    assert len(seen) >= ROWS // exports.PROGRESS_ROWS


def test_csv_chunks_stream_the_same_bytes_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    exports.write_csv(counts_table(), path)
    chunks = list(exports.csv_chunks(counts_table()))
    assert len(chunks) > 1
    assert all(len(chunk) < 2 * exports.CSV_CHUNK_CHARS * 4 for chunk in chunks)  # chars to UTF-8 bytes: ≤ 4 each
    assert b"".join(chunks) == path.read_bytes()


def test_xlsx_reads_back_with_openpyxl(tmp_path: Path) -> None:
    path = tmp_path / "counts.xlsx"
    seen: list[int] = []
    exports.write_xlsx(counts_table(), path, seen.append)
    assert seen[-1] == ROWS

    workbook = openpyxl.load_workbook(path, read_only=True)
    try:
        assert workbook.sheetnames == ["Run 12 — counted quantities", "Summary"]
        rows = list(workbook.worksheets[0].iter_rows(values_only=True))
        assert rows[0] == tuple(column.label for column in COLUMNS)
        assert len(rows) == ROWS + 1
        for i, row in enumerate(rows[1:]):
            expected = make_row(i)
            qty = expected["qty"]
            assert row == (
                expected["sku"],
                expected["name"],
                expected["category"] or None,
                str(qty) if qty == BIG else qty,  # beyond a double's digits: kept exact, as text
                expected["damage"],
                expected["counted_at"],
            ), i
        assert isinstance(rows[1][3], int)  # numbers as numbers
        assert isinstance(rows[1][5], datetime)  # dates as dates
        assert rows[1 + 3][1] == "=SUM(A1:A9)"  # text, not a formula
        assert rows[1 + 6][1] == "#N/A"  # text, not an error value
        assert sum(int(str(row[3])) for row in rows[1:]) == TOTAL_QTY

        summary = list(workbook["Summary"].iter_rows(values_only=True))
        assert summary[0][0] == "Run 12 — counted quantities"
        assert summary[1][0] == "Generated"
        assert isinstance(summary[1][1], datetime)
        pairs = {row[0]: row[1] for row in summary[3:]}
        assert pairs == {"Run": "December full count", "Approved by": "a store manager", "Total qty": f"{TOTAL_QTY:,}"}
    finally:
        workbook.close()


def test_xlsx_freezes_the_header_and_sizes_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "small.xlsx"
    exports.write_xlsx(counts_table(rows=50), path)
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.worksheets[0]
    assert sheet.freeze_panes == "A2"
    assert sheet["A1"].font.b
    widths = [sheet.column_dimensions[letter].width for letter in "ABCDEF"]
    assert all(6 <= width <= 60 for width in widths)
    assert widths[1] > widths[4]  # product names are wider than damage counts
    assert sheet["F2"].number_format == "yyyy-mm-dd h:mm:ss"


@pytest.mark.parametrize("write", [exports.write_csv, exports.write_xlsx, pdf.write_pdf])
def test_a_report_failing_half_way_leaves_no_temporary_files(tmp_path: Path, write: Any) -> None:
    def produce() -> Iterator[dict[str, Any]]:
        yield from (make_row(i) for i in range(3_000))
        raise RuntimeError("rack R-12 vanished")

    table = Table("Half", COLUMNS, produce)
    before = list(ALL_TEMP_FILES)
    with pytest.raises(RuntimeError, match="rack R-12 vanished"):
        write(table, tmp_path / "half")
    assert before == ALL_TEMP_FILES  # openpyxl's sheet files of the abandoned workbook are gone


def pdf_text(path: Path) -> list[str]:
    return [page.extract_text() for page in PdfReader(path).pages]


def test_pdf_reads_back_with_pypdf(tmp_path: Path) -> None:
    path = tmp_path / "counts.pdf"
    seen: list[int] = []
    pdf.write_pdf(counts_table(), path, seen.append)
    assert seen[-1] == ROWS
    pages = pdf_text(path)

    first = pages[0]
    for value in ["Run 12 — counted quantities", "December full count", "a store manager", f"{TOTAL_QTY:,}", "10,000"]:
        assert value in first

    body = "\n".join(pages[1:])
    for i in (0, 1, 4, 5, 123, 5_000, 9_994, 9_999):
        row = make_row(i)
        cells = [row["sku"], pdf.printable(row["name"]), row["category"], f"{row['qty']:,}", f"{row['damage']:,}"]
        line = "\n".join(cell for cell in cells if cell)
        assert line in body, (i, line)
    assert "Café crème" in body
    assert "???" in body  # Devanagari the font cannot show, replaced rather than dropped or crashing
    assert f"{BIG:,}" in body
    assert f"{ROWS:,} rows" in pages[-2]  # the total, after the last row; the chart page follows

    # Every page of rows repeats the header.
    assert all(page.startswith("SKU\nProduct\nCategory\nCounted qty\nDamaged\nCounted at") for page in pages[1:-1])

    chart = pages[-1]
    assert "Most damaged" in chart
    assert "SKU-000009" in chart  # 1,234,567,890 damaged: the largest bar
    assert "1,234,567,890" in chart


def test_the_pdf_chart_sums_its_value_per_label(tmp_path: Path) -> None:
    racks = ["R-001", "R-002", "R-003"]

    def produce() -> Iterator[dict[str, Any]]:
        for i in range(300):
            yield {"rack": racks[i % 3], "sku": f"SKU-{i}", "damage": (i % 3) + 1}  # R-003 damaged most

    table = Table(
        "Damage by rack",
        [Column("rack", "Rack"), Column("sku", "SKU"), Column("damage", "Damaged", "int")],
        produce,
        chart=Chart("Most damaged racks", label="rack", value="damage", top=2),
    )
    path = tmp_path / "racks.pdf"
    pdf.write_pdf(table, path)
    chart = pdf_text(path)[-1]
    assert "300" in chart  # 100 rows of 3
    assert "200" in chart
    assert "R-003" in chart and "R-002" in chart
    assert "R-001" not in chart  # beyond the top 2


def test_pdf_with_many_columns_is_landscape(tmp_path: Path) -> None:
    columns = [*COLUMNS, Column("rack", "Rack"), Column("floor", "Floor")]
    path = tmp_path / "wide.pdf"
    pdf.write_pdf(counts_table(rows=100, columns=columns), path)
    box = PdfReader(path).pages[1].mediabox
    assert box.width > box.height


def test_pdf_of_no_rows_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    pdf.write_pdf(counts_table(rows=0), path)
    pages = pdf_text(path)
    assert "No rows" in pages[1]
    assert "Nothing to chart" in pages[2]


def test_pdf_without_dejavu_falls_back_to_helvetica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box without fonts-dejavu-core still writes every PDF: Helvetica, with what it cannot show as "?"."""
    monkeypatch.setattr(pdf, "DEJAVU", tmp_path / "no-fonts")
    pdf._fonts.cache_clear()
    try:
        assert pdf.printable("Café — Ωmega дал दाल") == "Café — ?mega ??? ???"
        path = tmp_path / "helvetica.pdf"
        pdf.write_pdf(counts_table(rows=300), path)
        reader = PdfReader(path)
        fonts = reader.pages[1]["/Resources"]["/Font"].get_object()  # type: ignore[index]
        assert {str(font.get_object()["/BaseFont"]) for font in fonts.values()} == {"/Helvetica", "/Helvetica-Bold"}
        body = reader.pages[1].extract_text()
        assert "Café crème" in body
        assert "???" in body
    finally:
        pdf._fonts.cache_clear()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Café crème", "Café crème"),
        ("दाल", "???"),
        ("🍎 apple", "? apple"),
        ("tab\there", "tab here"),
    ],
)
def test_pdf_text_never_holds_what_the_font_cannot_show(text: str, shown: str) -> None:
    assert pdf.printable(text) == shown


def test_values_are_read_by_their_columns_kind() -> None:
    moment = datetime(2026, 12, 7, 8, 15, 30)
    at = Column("at", "At", "datetime")
    day = Column("day", "Day", "date")
    qty = Column("qty", "Qty", "int")
    assert exports.typed(at, int(moment.timestamp() * 1000)) == moment  # the box's epoch milliseconds
    assert exports.typed(at, "2026-12-07T08:15:30") == moment
    assert exports.typed(day, "2026-12-07") == moment.date()
    assert exports.typed(qty, "42") == 42
    assert exports.typed(qty, "n/a") == "n/a"  # kept as it is rather than refused
    assert exports.typed(Column("name", "Name"), None) is None


def test_csv_of_an_empty_table_is_its_header() -> None:
    data = b"".join(exports.csv_chunks(counts_table(rows=0))).decode("utf-8-sig")
    assert list(csv.reader(io.StringIO(data))) == [[column.label for column in COLUMNS]]
    assert re.fullmatch(r"SKU,Product,Category,Counted qty,Damaged,Counted at\r\n", data)
