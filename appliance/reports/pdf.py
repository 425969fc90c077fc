"""A ``Table`` written out as a PDF: a summary page, the rows page by page, and the chart.

Kept apart from the CSV and XLSX writers in ``appliance.reports.exports`` because it is the only one
that needs reportlab, its fonts and its page drawing. It reads the table's rows the same way they do,
once and row by row, through the typed rows and the progress counting of ``exports``.
"""

from __future__ import annotations

import functools
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.reports.exports import WIDTH_SAMPLE_ROWS, Progress, _counted, _noop, _typed_rows, text
from appliance.reports.table import Chart, Table

log = logging.getLogger(__name__)

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


@dataclass(frozen=True)
class _Fonts:
    regular: str
    bold: str
    covers: Callable[[str], bool]


@functools.cache
def _fonts() -> _Fonts:
    """DejaVu Sans, embedded, when Debian's fonts-dejavu-core is installed; else Helvetica.

    Helvetica is one of the PDF's built-in fonts and shows only Windows-1252 (Western European);
    DejaVu adds the rest of Latin, Greek, Cyrillic, Arabic and Hebrew letters and many symbols, for a
    few hundred KB of the font embedded per file (subset to the characters used). Neither has
    Devanagari or CJK, and reportlab does not shape Indic scripts anyway: characters the font cannot
    show print as "?" (never as blank boxes, and never a crash); the CSV and the XLSX keep them
    exactly. Nothing is fetched from the internet: the store has none.
    """
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]

    regular, bold = DEJAVU / "DejaVuSans.ttf", DEJAVU / "DejaVuSans-Bold.ttf"
    if regular.is_file() and bold.is_file():
        try:
            font = TTFont("DejaVuSans", str(regular))
            pdfmetrics.registerFont(font)
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(bold)))
        except Exception:  # a damaged font file must not stop a report: Helvetica will do
            log.exception("DejaVu Sans unusable; PDFs use Helvetica")
        else:
            glyphs = frozenset(font.face.charToGlyph)
            return _Fonts("DejaVuSans", "DejaVuSans-Bold", lambda ch: ord(ch) in glyphs)

    def cp1252(ch: str) -> bool:
        try:
            ch.encode("cp1252")
        except UnicodeEncodeError:
            return False
        return True

    return _Fonts("Helvetica", "Helvetica-Bold", cp1252)


def printable(value: str) -> str:
    """``value`` with what the PDF's font cannot show replaced by "?" (see ``_fonts``)."""
    if value.isascii():
        return value if value.isprintable() else "".join(ch if ch.isprintable() else " " for ch in value)
    covers = _fonts().covers
    return "".join(ch if ch.isprintable() and covers(ch) else ("?" if ch.isprintable() else " ") for ch in value)


def pdf_text(value: Any) -> str:
    """How a typed value reads in the PDF: numbers with thousands separators, times to the minute."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return printable(text(value))


def write_pdf(table: Table, path: Path, progress: Progress = _noop) -> None:
    """A summary page, the rows (header repeated on every page), then the chart when the table has one.

    Drawn straight on reportlab's canvas, page by page, rather than through platypus tables: a platypus
    ``Table`` holds every row and splits itself page by page at a cost that grows with its length, while
    the canvas holds one page. The chart comes last because its top values are gathered during the same
    single pass over the rows (a second pass would run the report's query again). Its bars are the
    ``chart.value`` summed per ``chart.label``: a table of rows per product and rack charted by rack shows
    each rack once, with its total; a group-by table has one row per label anyway."""
    report = _PdfReport(table, path)
    report.summary_page()
    chart = table.chart
    keys = [column.key for column in table.columns]
    label_at = keys.index(chart.label) if chart and chart.label in keys else None
    value_at = keys.index(chart.value) if chart and chart.value in keys else None
    totals: dict[str, float] = {}
    for row in _counted(_typed_rows(table), progress):
        report.row(row)
        if label_at is not None and value_at is not None:
            value = row[value_at]
            if isinstance(value, int | float) and not isinstance(value, bool):
                label = text(row[label_at])
                totals[label] = totals.get(label, 0) + value
    report.end_of_rows()
    if chart is not None:
        report.chart_page(chart, heapq.nlargest(chart.top, totals.items(), key=lambda item: item[1]))
    report.save()


class _PdfReport:
    """One PDF being drawn: the page it is on, where the next line goes, the columns' widths."""

    FONT_SIZE = 8.5
    ROW_HEIGHT = 12.0
    PAD = 3.0
    LANDSCAPE_FROM = 7  # columns; fewer fit an upright A4

    def __init__(self, table: Table, path: Path) -> None:
        from reportlab.lib.pagesizes import A4, landscape  # type: ignore[import-untyped]
        from reportlab.lib.units import mm  # type: ignore[import-untyped]
        from reportlab.pdfbase.pdfmetrics import stringWidth  # type: ignore[import-untyped]
        from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped]

        self.table = table
        self.string_width: Callable[[str, str, float], float] = stringWidth
        self.fonts = _fonts()
        self.size = landscape(A4) if len(table.columns) >= self.LANDSCAPE_FROM else A4
        self.margin = 15 * mm
        self.width = self.size[0] - 2 * self.margin
        self.canvas = Canvas(str(path), pagesize=self.size, pageCompression=1)
        self.canvas.setTitle(printable(table.title))
        self.canvas.setCreator("StockVerify Edge")
        self.page = 0
        self.y = 0.0
        self.numeric = [column.kind == "int" for column in table.columns]
        self.widths: list[float] = []
        self.pending: list[list[Any]] = []  # the first rows, held until the columns are sized
        self.rows_done = 0

    # -- pages ---------------------------------------------------------------------------------
    def _new_page(self) -> None:
        if self.page:
            self._footer()
            self.canvas.showPage()
        self.page += 1
        self.y = self.size[1] - self.margin

    def _footer(self) -> None:
        canvas = self.canvas
        canvas.setFont(self.fonts.regular, 7)
        canvas.setFillGray(0.4)
        canvas.drawString(self.margin, self.margin / 2, printable(self.table.title))
        canvas.drawRightString(self.size[0] - self.margin, self.margin / 2, f"page {self.page}")
        canvas.setFillGray(0)

    def _line(
        self, left: str, right: str = "", *, bold: bool = False, size: float = 10, label_width: float = 0
    ) -> None:
        """A line of the summary page: a label and a value wrapped to the page's width."""
        from reportlab.lib.utils import simpleSplit  # type: ignore[import-untyped]

        fonts = self.fonts
        value_width = self.width - label_width
        lines = simpleSplit(right, fonts.regular, size, value_width) if right else [""]
        for n, part in enumerate(lines):
            if self.y < self.margin + size * 2:
                self._new_page()
            self.canvas.setFont(fonts.bold if bold or label_width else fonts.regular, size)
            if n == 0:
                self.canvas.drawString(self.margin, self.y, left)
            self.canvas.setFont(fonts.regular, size)
            self.canvas.drawString(self.margin + label_width, self.y, part)
            self.y -= size * 1.45

    def summary_page(self) -> None:
        table = self.table
        self._new_page()
        self._line(printable(table.title), bold=True, size=16)
        self.y -= 4
        generated = datetime.now().strftime("%Y-%m-%d %H:%M")
        pairs = [("Generated", generated)]
        if table.total_rows is not None:
            pairs.append(("Rows", f"{table.total_rows:,}"))
        pairs += [(printable(label), printable(value)) for label, value in table.summary]

        label_width = max(self.string_width(label, self.fonts.bold, 10) for label, _v in pairs) + 12
        label_width = min(label_width, self.width * 0.4)
        for label, value in pairs:
            self._line(label, value, label_width=label_width)

    # -- the rows ------------------------------------------------------------------------------
    def _size_columns(self) -> None:
        fonts, size, pad = self.fonts, self.FONT_SIZE, self.PAD
        natural = [
            self.string_width(printable(column.label), fonts.bold, size) + 2 * pad for column in self.table.columns
        ]
        for row in self.pending:
            for i, value in enumerate(row):
                natural[i] = max(natural[i], self.string_width(pdf_text(value), fonts.regular, size) + 2 * pad)
        # Narrow columns keep their width; the wide ones share what is left equally.
        widths = list(natural)
        remaining, room = list(range(len(natural))), self.width
        while remaining:
            share = room / len(remaining)
            narrow = [i for i in remaining if natural[i] <= share]
            if not narrow:
                for i in remaining:
                    widths[i] = share
                break
            for i in narrow:
                room -= natural[i]
            remaining = [i for i in remaining if i not in narrow]
        stretch = self.width / sum(widths) if sum(widths) else 1.0
        self.widths = [width * stretch for width in widths]

    def _fit(self, cell: str, width: float, font: str) -> str:
        """``cell`` cut to ``width`` with an ellipsis: a row stays one line, so pages stay predictable."""
        room = width - 2 * self.PAD
        if self.string_width(cell, font, self.FONT_SIZE) <= room:
            return cell
        low, high = 0, len(cell)
        while low < high:
            mid = (low + high + 1) // 2
            if self.string_width(cell[:mid] + "\u2026", font, self.FONT_SIZE) <= room:
                low = mid
            else:
                high = mid - 1
        return cell[:low] + "\u2026"

    def _header(self) -> None:
        canvas, fonts = self.canvas, self.fonts
        self._new_page()
        canvas.setFillGray(0.88)
        canvas.rect(self.margin, self.y - 3.5, self.width, self.ROW_HEIGHT, stroke=0, fill=1)
        canvas.setFillGray(0)
        canvas.setFont(fonts.bold, self.FONT_SIZE)
        x = self.margin
        for column, width, numeric in zip(self.table.columns, self.widths, self.numeric, strict=True):
            label = self._fit(printable(column.label), width, fonts.bold)
            if numeric:
                canvas.drawRightString(x + width - self.PAD, self.y, label)
            else:
                canvas.drawString(x + self.PAD, self.y, label)
            x += width
        self.y -= self.ROW_HEIGHT
        canvas.setFont(fonts.regular, self.FONT_SIZE)

    def _draw(self, row: list[Any]) -> None:
        if self.y < self.margin + self.ROW_HEIGHT:
            self._header()
        canvas, font = self.canvas, self.fonts.regular
        x = self.margin
        for value, width in zip(row, self.widths, strict=True):
            cell = self._fit(pdf_text(value), width, font)
            if isinstance(value, int | float) and not isinstance(value, bool):
                canvas.drawRightString(x + width - self.PAD, self.y, cell)
            else:
                canvas.drawString(x + self.PAD, self.y, cell)
            x += width
        self.y -= self.ROW_HEIGHT

    def row(self, row: list[Any]) -> None:
        self.rows_done += 1
        if self.widths:
            self._draw(row)
            return
        self.pending.append(row)
        if len(self.pending) >= WIDTH_SAMPLE_ROWS:
            self._flush()

    def _flush(self) -> None:
        self._size_columns()
        self._header()
        for row in self.pending:
            self._draw(row)
        self.pending = []

    def end_of_rows(self) -> None:
        rows_done = self.rows_done
        if not self.widths:
            self._flush()
        if self.y < self.margin + self.ROW_HEIGHT:
            self._header()
        self.canvas.setFont(self.fonts.bold, self.FONT_SIZE)
        self.canvas.drawString(self.margin + self.PAD, self.y - 4, f"{rows_done:,} rows" if rows_done else "No rows")
        self.y -= self.ROW_HEIGHT + 4

    # -- the chart -----------------------------------------------------------------------------
    def chart_page(self, chart: Chart, items: list[tuple[str, float]]) -> None:
        """A horizontal bar chart of the ``chart.top`` largest totals, the largest at the top."""
        from reportlab.graphics import renderPDF  # type: ignore[import-untyped]
        from reportlab.graphics.charts.barcharts import HorizontalBarChart  # type: ignore[import-untyped]
        from reportlab.graphics.shapes import Drawing  # type: ignore[import-untyped]

        self._new_page()
        self._line(printable(chart.title), bold=True, size=14)
        if not items:
            self._line("Nothing to chart: no row has a value.")
            return
        fonts = self.fonts
        labels = [printable(label)[:40] for label, _value in reversed(items)]
        values = [value for _label, value in reversed(items)]
        height = min(self.y - self.margin - 10, 22.0 * len(items) + 40)
        drawing = Drawing(self.width, height)
        bars = HorizontalBarChart()
        bars.x, bars.y = self.width * 0.3, 20
        bars.width, bars.height = self.width * 0.62, height - 30
        bars.data = [values]
        bars.valueAxis.valueMin = min(0.0, *values)
        bars.categoryAxis.categoryNames = labels
        bars.categoryAxis.labels.fontName = fonts.regular
        bars.categoryAxis.labels.fontSize = 8
        bars.categoryAxis.labels.boxAnchor = "e"
        bars.valueAxis.labels.fontName = fonts.regular
        bars.valueAxis.labels.fontSize = 7
        bars.valueAxis.labelTextFormat = _thousands
        bars.barLabels.fontName = fonts.regular
        bars.barLabels.fontSize = 7
        bars.barLabels.boxAnchor = "w"
        bars.barLabels.dx = 3
        bars.barLabelFormat = _thousands
        bars.bars[0].fillColor = _bar_colour()
        drawing.add(bars)
        renderPDF.draw(drawing, self.canvas, self.margin, self.y - height)
        self.y -= height

    def save(self) -> None:
        self._footer()
        self.canvas.showPage()
        self.canvas.save()


def _thousands(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _bar_colour() -> Any:
    from reportlab.lib.colors import HexColor  # type: ignore[import-untyped]

    return HexColor("#2f6f9f")
