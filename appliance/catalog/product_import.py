"""Importing a product master from a CSV or XLSX file: read, check whole, then commit or write nothing.

An import is checked whole before anything is written (a half-imported master would make a count
wrong without anyone noticing), and is then one ``products.imported`` event: one row per product it
adds or changes, with its barcodes already normalised to GTIN-14, so every replica folds the same rows
without re-parsing (the fold is in ``appliance.catalog.products``). Every error names its line, column and value, and
says how to fix it; a file with any error imports nothing.

Importing the same file again changes nothing: the event carries only the rows that add or change a
product, and a file that does neither records no event at all, so a weekly re-import does not grow the
log or move the catalog's version. A file's headers are recognised by the alias table below, or read
through a mapping a person set (``appliance.reports.imports``); with a mapping, a column the file does
not have leaves the master's value as it is, rather than resetting it.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from appliance.catalog.products import SQL_CHUNK, T, chunks
from appliance.errors import ValidationFailed
from appliance.store.eventlog import EventLog, new_id
from hardware.barcodes import BarcodeError, check

COLUMNS = ("sku", "barcodes", "name", "category", "subcategory", "uom", "mrp", "expected_qty")
REQUIRED = ("sku", "name")
# Through a mapping only the SKU is needed: a file may update some columns of products the master has
# ("SKU, Qty on hand"); a new product still needs its name (checked against the master, ``_new_unnamed``).
MAPPED_REQUIRED = ("sku",)
# Header spellings people use, after lower-casing and dropping spaces, underscores and hyphens.
_HEADER_NAMES = {name.replace("_", ""): name for name in COLUMNS} | {"barcode": "barcodes"}
MAX_SKU = 64
MAX_NAME = 200
MAX_LABEL = 100  # category, subcategory
MAX_QTY = 1_000_000_000
SAMPLE_ROWS = 5
_CODE_SPLIT = re.compile(r"[|;\s]+")
_MONEY = re.compile(r"(\d{1,12})(?:\.(\d+))?")
_UOM = re.compile(r"[A-Z0-9]{1,16}")
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the pre-2007 binary .xls

Code = tuple[str, str, str]  # (gtin14, kind, raw as written in the file)
Record = tuple[int, list[str]]  # (line number in the file, cells)


@dataclass
class ProductRow:
    line: int
    sku: str
    name: str
    category: str = ""
    subcategory: str = ""
    uom: str = "EA"
    mrp_minor: int | None = None
    expected_qty: int = 0
    codes: list[Code] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "subcategory": self.subcategory,
            "uom": self.uom,
            "mrp_minor": self.mrp_minor,
            "expected_qty": self.expected_qty,
            "codes": [list(code) for code in self.codes],
        }

    def payload(self, product_id: str) -> dict[str, Any]:
        """The row as it travels in the event (no line number: it means nothing to other replicas)."""
        row = self.to_dict()
        del row["line"]
        return {"product_id": product_id, **row}


@dataclass
class ImportPlan:
    """A parsed file: every row that could be read and every problem found, nothing written yet.

    ``columns`` are ours the file has; ``mapped`` says they came from a person's mapping, so that the
    columns it leaves out keep the master's values (see ``fill_from_master``).
    """

    rows: list[ProductRow]
    errors: list[dict[str, Any]]
    filename: str = ""
    columns: tuple[str, ...] = COLUMNS
    mapped: bool = False

    def preview(self) -> dict[str, Any]:
        return {
            "rows": len(self.rows),
            "valid": not self.errors,
            "errors": list(self.errors),
            "sample": [row.to_dict() for row in self.rows[:SAMPLE_ROWS]],
        }


def _error(line: int | None, column: str | None, value: str, message: str) -> dict[str, Any]:
    return {"line": line, "column": column, "value": value, "message": message}


class BadValue(ValueError):
    """One cell's value is unacceptable; the message goes to the person who made the file."""


def error(line: int | None, column: str | None, value: str, message: str) -> dict[str, Any]:
    """A problem as every import reports it, before ``appliance.reports.imports`` says how to fix it."""
    return _error(line, column, value, message)


def recognise(cell: str) -> str | None:
    """Our column a header stands for by its name alone ("Expected_Qty", "Barcode"), if any."""
    return _HEADER_NAMES.get(header_key(cell))


# -- reading the file ---------------------------------------------------------------------------------
def read_records(data: bytes, filename: str = "") -> tuple[list[Record], dict[str, Any] | None]:
    """The file's non-blank rows, numbered as the file shows them, or the error that says why it cannot
    be read. Shared by every import (products, a run's scope, count sheets): one reader, one set of
    answers to an old .xls, a non-UTF-8 CSV or a broken workbook."""
    try:
        records = [(line, cells) for line, cells in _records(data, filename) if any(cells)]
    except BadValue as exc:
        return [], _error(None, None, "", str(exc))
    if not records:
        return [], _error(None, None, "", "the file is empty; expected a header row")
    return records, None


def header_key(cell: str) -> str:
    """A header as compared: lower case, without spaces, underscores and hyphens ("Expected_Qty")."""
    return re.sub(r"[\s_-]+", "", cell.lower())


def parse_file(data: bytes, filename: str = "", mapping: Mapping[str, str] | None = None) -> ImportPlan:
    """Read a CSV or XLSX product master and check every row; file problems become errors, not raises.

    Errors are collected rather than raised so that one upload shows the whole list to fix. Without a
    ``mapping`` the headers must be our column names (or their aliases); with one ({file column: our
    column}), the file's other columns are ignored.
    """
    records, unreadable = read_records(data, filename)
    if unreadable is not None:
        return ImportPlan([], [unreadable], filename)
    (header_line, header), body = records[0], records[1:]
    if mapping is None:
        columns, headed, errors = _read_header(header_line, header)
    else:
        columns, headed, errors = map_header(header_line, header, mapping, COLUMNS, MAPPED_REQUIRED)
    present = tuple(name for name in COLUMNS if name in columns.values())
    if any(name not in columns.values() for name in (REQUIRED if mapping is None else MAPPED_REQUIRED)):
        return ImportPlan([], errors, filename, present, mapping is not None)
    rows = [_read_row(line, cells, columns, headed, errors) for line, cells in body]
    if not rows:
        errors.append(_error(None, None, "", "the file has a header but no product rows"))
    _check_duplicates(rows, errors)
    errors.sort(key=lambda error: error["line"] or 0)  # stable: a row's problems stay in column order
    return ImportPlan(rows, errors, filename, present, mapping is not None)


def _records(data: bytes, filename: str) -> list[Record]:
    suffix = PurePath(filename).suffix.lower()
    if data.startswith(_OLE_MAGIC) or suffix == ".xls":
        raise BadValue("old binary .xls workbooks are not read; save the sheet as .xlsx or CSV")
    if data.startswith(_ZIP_MAGIC) or suffix in (".xlsx", ".xlsm"):
        return _xlsx_records(data)
    return _csv_records(data)


def _csv_records(data: bytes) -> list[Record]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadValue(f"the file is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[Record] = []
    end = 0  # line_num counts physical lines read so far; a quoted cell may span several
    try:
        for cells in reader:
            records.append((end + 1, [cell.strip() for cell in cells]))
            end = reader.line_num
    except csv.Error as exc:
        raise BadValue(f"line {reader.line_num}: the CSV cannot be read ({exc})") from None
    return records


def _xlsx_records(data: bytes) -> list[Record]:
    """The first sheet's rows, numbered as the spreadsheet shows them."""
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            sheet = book.worksheets[0]
            sheet.reset_dimensions()  # some writers store a wrong used range; read every row there is
            rows = sheet.iter_rows(min_row=1, values_only=True)
            records = [(number, [_cell_text(v) for v in row]) for number, row in enumerate(rows, start=1)]
        finally:
            book.close()
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError, IndexError) as exc:
        raise BadValue(f"not a readable .xlsx workbook ({exc})") from None
    return records


def _cell_text(value: object) -> str:
    """A spreadsheet cell as the text a person sees (barcodes are often stored as numbers)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _read_header(line: int, header: list[str]) -> tuple[dict[int, str], set[int], list[dict[str, Any]]]:
    """Map cell positions to columns.

    ``headed`` holds every position with a header, known or not, so that an unknown column is
    reported once here rather than on every row.
    """
    columns: dict[int, str] = {}
    headed: set[int] = set()
    errors: list[dict[str, Any]] = []
    for position, cell in enumerate(header):
        if not cell:
            continue
        headed.add(position)
        name = _HEADER_NAMES.get(header_key(cell))
        if name is None:
            message = f"unknown column {cell!r}; the columns are {', '.join(COLUMNS)}"
            errors.append(_error(line, cell, cell, message))
        elif name in columns.values():
            errors.append(_error(line, cell, cell, f"column {name} appears twice"))
        else:
            columns[position] = name
    for name in REQUIRED:
        if name not in columns.values():
            errors.append(_error(line, name, "", f"required column {name} is missing"))
    return columns, headed, errors


def map_header(
    line: int,
    header: list[str],
    mapping: Mapping[str, str],
    ours: tuple[str, ...] = COLUMNS,
    required: tuple[str, ...] = REQUIRED,
) -> tuple[dict[int, str], set[int], list[dict[str, Any]]]:
    """Positions to columns through a person's mapping; the file's columns it leaves out are ignored.

    A mapping is matched to the file by exact header first, then as ``header_key`` compares, so
    "Item Code" saved last week still finds "ITEM CODE". Every position with a header counts as
    headed: an ignored column is not "a value with no header".
    """
    by_key = {header_key(cell): position for position, cell in enumerate(header) if cell}
    by_cell = {cell: position for position, cell in enumerate(header) if cell}
    columns: dict[int, str] = {}
    errors: list[dict[str, Any]] = []
    for file_column, name in mapping.items():
        position = by_cell.get(file_column, by_key.get(header_key(file_column)))
        if not name or position is None:
            continue
        if name not in ours:
            message = f"{file_column!r} is mapped to {name!r}, which is not one of {', '.join(ours)}"
            errors.append(_error(line, None, file_column, message))
        elif name in columns.values():
            errors.append(_error(line, name, file_column, f"two of the file's columns are mapped to {name}"))
        else:
            columns[position] = name
    for name in required:
        if name not in columns.values():
            errors.append(_error(line, name, "", f"required column {name} is not mapped to a column of the file"))
    return columns, {position for position, cell in enumerate(header) if cell}, errors


def _read_row(
    line: int, cells: list[str], columns: dict[int, str], headed: set[int], errors: list[dict[str, Any]]
) -> ProductRow:
    values = {name: cells[position] if position < len(cells) else "" for position, name in columns.items()}
    for position, cell in enumerate(cells):
        if cell and position not in headed:
            errors.append(_error(line, None, cell, f"a value in column {position + 1}, which has no header"))

    def read(column: str, parse: Callable[[str], T], default: T) -> T:
        if column not in values:
            return default  # a column the file does not have: the default, or the master's when mapped
        try:
            return parse(values.get(column, ""))
        except BadValue as exc:
            errors.append(_error(line, column, values.get(column, ""), str(exc)))
            return default

    sku = read("sku", read_sku, "")
    codes = _codes(line, values.get("barcodes", ""), errors)
    return ProductRow(
        line=line,
        sku=sku,
        name=read("name", _name, ""),
        category=read("category", _label, ""),
        subcategory=read("subcategory", _label, ""),
        uom=read("uom", _uom, "EA"),
        mrp_minor=read("mrp", _mrp_minor, None),
        expected_qty=read("expected_qty", read_quantity, 0),
        codes=codes,
    )


def read_sku(text: str) -> str:
    if not text:
        raise BadValue("sku is blank")
    if len(text) > MAX_SKU:
        raise BadValue(f"sku is longer than {MAX_SKU} characters")
    return text


def _name(text: str) -> str:
    name = " ".join(text.split())
    if not name:
        raise BadValue("name is blank")
    if len(name) > MAX_NAME:
        raise BadValue(f"name is {len(name)} characters long; at most {MAX_NAME}")
    return name


def _label(text: str) -> str:
    label = " ".join(text.split())
    if len(label) > MAX_LABEL:
        raise BadValue(f"longer than {MAX_LABEL} characters")
    return label


def _uom(text: str) -> str:
    uom = text.upper() or "EA"
    if not _UOM.fullmatch(uom):
        raise BadValue("uom must be 1-16 letters or digits, such as EA, PK or KG")
    return uom


def _mrp_minor(text: str) -> int | None:
    """Money as integer minor units: events carry no floats, and 0.1 + 0.2 must not shift a price."""
    if not text:
        return None
    if text.startswith("-"):
        raise BadValue("mrp cannot be negative")
    match = _MONEY.fullmatch(text)
    if match is None:
        raise BadValue("mrp must be an amount like 123.45: digits, a dot for decimals, no currency sign")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > 2:
        raise BadValue("mrp has more than 2 decimals")
    return int(whole) * 100 + int(fraction.ljust(2, "0"))


def read_quantity(text: str) -> int:
    if not text:
        return 0
    if text.startswith("-"):
        raise BadValue("expected_qty cannot be negative")
    if not (text.isascii() and text.isdigit()):
        raise BadValue("expected_qty must be a whole number")
    if int(text) > MAX_QTY:
        raise BadValue(f"expected_qty is above {MAX_QTY:,}")
    return int(text)


def _codes(line: int, text: str, errors: list[dict[str, Any]]) -> list[Code]:
    """Every reading of every code in the cell; an 8-digit code claims both its EAN-8 and UPC-E GTIN."""
    codes: list[Code] = []
    for raw in _CODE_SPLIT.split(text):
        if not raw:
            continue
        try:
            readings = check(raw)
        except BarcodeError as exc:
            errors.append(_error(line, "barcodes", raw, str(exc) + _lost_zero_hint(raw)))
            continue
        codes.extend((gtin, kind, raw) for gtin, kind in readings if all(gtin != c[0] for c in codes))
    return codes


def _lost_zero_hint(raw: str) -> str:
    # Spreadsheets store a typed UPC-A or EAN-8 as a number and drop its leading zero.
    if raw.isascii() and raw.isdigit() and len(raw) in (7, 11):
        return "; if a spreadsheet stored it as a number, its leading 0 was lost: format the column as text"
    return ""


def _check_duplicates(rows: list[ProductRow], errors: list[dict[str, Any]]) -> None:
    first_line: dict[str, int] = {}
    owners: dict[str, tuple[int, str, str]] = {}  # gtin -> (line, sku, raw) where it first appeared
    for row in rows:
        key = row.sku.casefold()
        if row.sku and first_line.setdefault(key, row.line) != row.line:
            message = f"SKU {row.sku} is also on line {first_line[key]}"
            errors.append(_error(row.line, "sku", row.sku, message))
        reported: set[str] = set()
        for gtin, _kind, raw in row.codes:
            line, sku, other_raw = owners.setdefault(gtin, (row.line, row.sku, raw))
            if sku.casefold() == key or raw in reported:
                continue
            reported.add(raw)
            same = "also" if other_raw == raw else f"the same product code as {other_raw}"
            message = f"barcode {raw} is {same} on line {line} (SKU {sku})"
            errors.append(_error(row.line, "barcodes", raw, message))


# -- checking against the store and committing ---------------------------------------------------------
def preview(conn: sqlite3.Connection, plan: ImportPlan) -> dict[str, Any]:
    """What ``commit`` would do: the file's problems plus clashes with barcodes already in the store,
    and how many products it would add, change or leave as they are."""
    fill_from_master(conn, plan)
    errors = _all_errors(conn, plan)
    existing = _existing_ids(conn)
    updated = sum(1 for row in plan.rows if row.sku.casefold() in existing)
    counts = changes(conn, plan)
    return {
        **plan.preview(),
        "valid": not errors,
        "errors": errors,
        "created": len(plan.rows) - updated,
        "updated": updated,
        "added": counts.added,
        "changed": counts.changed,
        "unchanged": counts.unchanged,
    }


def commit(conn: sqlite3.Connection, log: EventLog, plan: ImportPlan) -> dict[str, Any]:
    """Record the file's additions and changes as one event, or raise ``IMPORT_INVALID`` and write
    nothing. A file that adds and changes nothing records nothing (``import_id`` is then None)."""
    fill_from_master(conn, plan)
    errors = _all_errors(conn, plan)
    if errors:
        raise ValidationFailed(
            f"{len(errors)} problem(s) in {plan.filename or 'the file'}; nothing was imported",
            code="IMPORT_INVALID",
            details={"errors": errors},
        )
    existing = _existing_ids(conn)
    counts = changes(conn, plan)
    updated = sum(1 for row in plan.rows if row.sku.casefold() in existing)
    result = {
        "import_id": None,
        "rows": len(plan.rows),
        "created": len(plan.rows) - updated,
        "updated": updated,
        "added": counts.added,
        "changed": counts.changed,
        "unchanged": counts.unchanged,
    }
    if not counts.to_write:
        return {**result, "message": "nothing to change: the master already holds every row of the file"}
    rows = [row.payload(existing.get(row.sku.casefold()) or new_id()) for row in counts.to_write]
    import_id = new_id()
    log.record(conn, "products.imported", {"import_id": import_id, "rows": rows})
    return {**result, "import_id": import_id}


@dataclass
class Changes:
    """What a file would do to the master, row by row (``to_write``: the rows an event must carry)."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    to_write: list[ProductRow] = field(default_factory=list)


def changes(conn: sqlite3.Connection, plan: ImportPlan) -> Changes:
    """Compare each row with the product it would become, field by field and code by code, as the fold
    would leave it: a SKU written in another case renames the product, so it is a change."""
    current = _current_rows(conn)
    counts = Changes()
    for row in plan.rows:
        before = current.get(row.sku.casefold())
        if before is None:
            counts.added += 1
            counts.to_write.append(row)
        elif before == _comparable(row):
            counts.unchanged += 1
        else:
            counts.changed += 1
            counts.to_write.append(row)
    return counts


def fill_from_master(conn: sqlite3.Connection, plan: ImportPlan) -> None:
    """Give a mapped file's rows the master's values for the columns it does not have.

    A file of "SKU, Qty on hand" must update expected quantities and leave names and barcodes alone;
    without this, every missing column would read as blank and reset the product. New products keep
    the defaults. Idempotent: preview and commit may both call it.
    """
    missing = set(COLUMNS) - set(plan.columns)
    if not plan.mapped or not missing or not plan.rows:
        return
    master = _current_rows(conn)
    ordered, ids = _master_codes(conn), _existing_ids(conn)
    for row in plan.rows:
        before = master.get(row.sku.casefold())
        if before is None:
            continue
        _sku, name, category, subcategory, uom, mrp_minor, expected_qty, _codes = before
        fields = {
            "name": name,
            "category": category,
            "subcategory": subcategory,
            "uom": uom,
            "mrp_minor": mrp_minor,
            "expected_qty": expected_qty,
        }
        for column in missing - {"barcodes", "mrp"}:
            setattr(row, column, fields[column])
        if "mrp" in missing:
            row.mrp_minor = mrp_minor
        if "barcodes" in missing:
            row.codes = list(ordered.get(ids[row.sku.casefold()], []))


Comparable = tuple[str, str, str, str, str, int | None, int, frozenset[Code]]


def _comparable(row: ProductRow) -> Comparable:
    return (
        row.sku,
        row.name,
        row.category,
        row.subcategory,
        row.uom,
        row.mrp_minor,
        row.expected_qty,
        frozenset(row.codes),
    )


def _current_rows(conn: sqlite3.Connection) -> dict[str, Comparable]:
    """The master as rows comparable with a file's, by case-folded SKU (one read for the products, one
    for the codes: a 5,000-row re-import compares in memory)."""
    codes = _master_codes(conn)
    current: dict[str, Comparable] = {}
    for row in conn.execute(
        "SELECT product_id, sku, name, category, subcategory, uom, mrp_minor, expected_qty FROM products"
    ):
        current[row["sku"].casefold()] = (
            row["sku"],
            row["name"],
            row["category"],
            row["subcategory"],
            row["uom"],
            row["mrp_minor"],
            row["expected_qty"],
            frozenset(codes.get(row["product_id"], ())),
        )
    return current


def _master_codes(conn: sqlite3.Connection) -> dict[str, list[Code]]:
    """Each product's codes in the order they were imported (the order ``products.get`` shows)."""
    codes: dict[str, list[Code]] = {}
    for row in conn.execute("SELECT code, product_id, kind, raw FROM product_codes ORDER BY rowid"):
        codes.setdefault(row["product_id"], []).append((row["code"], row["kind"], row["raw"]))
    return codes


def _all_errors(conn: sqlite3.Connection, plan: ImportPlan) -> list[dict[str, Any]]:
    errors = [*plan.errors, *_database_errors(conn, plan), *_new_unnamed(conn, plan)]
    return sorted(errors, key=lambda error: error["line"] or 0)


def _new_unnamed(conn: sqlite3.Connection, plan: ImportPlan) -> list[dict[str, Any]]:
    """A new product in a mapped file without a name column: the master has no name to keep for it."""
    if "name" in plan.columns:
        return []
    existing = _existing_ids(conn)
    message = "name is blank: SKU {} is new to the master, and the file has no column mapped to name"
    return [
        _error(row.line, "name", "", message.format(row.sku))
        for row in plan.rows
        if row.sku and row.sku.casefold() not in existing
    ]


def _database_errors(conn: sqlite3.Connection, plan: ImportPlan) -> list[dict[str, Any]]:
    """Barcodes the store already gives to a SKU this file leaves alone.

    A code owned by a SKU that *is* in the file is fine: that SKU's codes are replaced by the file's,
    and the file itself was already checked for a code on two SKUs.
    """
    owners = _code_owners(conn, {code[0] for row in plan.rows for code in row.codes})
    in_file = {row.sku.casefold() for row in plan.rows}
    errors: list[dict[str, Any]] = []
    for row in plan.rows:
        reported: set[str] = set()
        for gtin, _kind, raw in row.codes:
            owner = owners.get(gtin)
            if owner is None or owner.casefold() in in_file or raw in reported:
                continue
            reported.add(raw)
            errors.append(_error(row.line, "barcodes", raw, f"barcode {raw} already belongs to SKU {owner}"))
    return errors


def _code_owners(conn: sqlite3.Connection, gtins: Iterable[str]) -> dict[str, str]:
    owners: dict[str, str] = {}
    for chunk in chunks(sorted(gtins), SQL_CHUNK):
        rows = conn.execute(
            "SELECT c.code, p.sku FROM product_codes c JOIN products p ON p.product_id = c.product_id"
            f" WHERE c.code IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        owners.update((row["code"], row["sku"]) for row in rows)
    return owners


def _existing_ids(conn: sqlite3.Connection) -> dict[str, str]:
    """SKU (case-folded) -> product_id: a re-imported SKU keeps its id, whatever its case in the file."""
    rows = conn.execute("SELECT sku, product_id FROM products")
    return {row["sku"].casefold(): row["product_id"] for row in rows}
