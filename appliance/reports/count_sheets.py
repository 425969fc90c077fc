"""Blind count sheets: a rack's products on paper or in a spreadsheet, filled in by hand, read back.

Where handhelds are short or a rack is counted by a person with a clipboard, a supervisor exports the
rack's sheet (CSV or XLSX): rack, SKU, barcode, name, unit, an empty ``counted`` column and an empty
``damaged`` one. It never carries an expected quantity: a sheet is as blind as a handheld.

The filled sheet comes back through the same rule as the dashboard's "set to N"
(``counting.items.set_quantity`` and ``set_damage``, as the supervisor who imports it): each filled cell
sets the session's quantity of that product; an empty cell means "not counted" and leaves it alone. A
sheet imported twice changes nothing the second time, because setting a quantity to what it already is
records nothing. Its own headers are recognised, so an exported sheet needs no mapping; its rows are
checked whole first, and a sheet with any error changes nothing (OpenBoxes' count sheets are the model:
what goes out comes back in).

Which products a rack's sheet lists: a recount session's own products; otherwise a directed run's
products, and every product already counted on that rack in any session (the box keeps no planogram,
so the rack's history is where its products are known). A row a counter adds by hand, with a SKU or a
barcode, is read like any other.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import dataclass
from typing import Any

import openpyxl

from appliance.auth.people import User
from appliance.catalog import product_import, products
from appliance.catalog.product_import import header_key
from appliance.counting import items
from appliance.counting.sessions import get_session
from appliance.errors import NotFound, StockVerifyError, ValidationFailed
from appliance.reports import import_errors
from appliance.store.eventlog import EventLog

SHEET_COLUMNS = ("rack", "sku", "barcode", "name", "uom", "counted", "damaged")
FORMATS = ("csv", "xlsx")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_HEADER_NAMES = {name: name for name in SHEET_COLUMNS} | {
    "barcodes": "barcode",
    "count": "counted",
    "countedqty": "counted",
    "qty": "counted",
    "quantity": "counted",
    "damage": "damaged",
    "damageqty": "damaged",
    "damagedqty": "damaged",
    "rackcode": "rack",
}
NOTHING_TO_CHANGE = "nothing to change"


# -- export -------------------------------------------------------------------------------------------
def sheet_rows(conn: sqlite3.Connection, session_id: str, rack: str) -> tuple[str, list[dict[str, Any]]]:
    """The rack's code and its products as the sheet lists them, by SKU, with empty count cells."""
    session = get_session(conn, session_id)
    rack_row = conn.execute("SELECT rack_id, code FROM racks WHERE code = ? COLLATE NOCASE", (rack.strip(),)).fetchone()
    if rack_row is None:
        raise NotFound(f"rack {rack.strip().upper()} does not exist", code="RACK_NOT_FOUND")
    rack_id, code = rack_row["rack_id"], rack_row["code"]
    in_session = conn.execute(
        "SELECT 1 FROM session_racks WHERE session_id = ? AND rack_id = ?", (session_id, rack_id)
    ).fetchone()
    if in_session is None:
        # Not found rather than a conflict: the session has no sheet for a rack it does not count.
        raise NotFound(f"rack {code} is not part of this session", code="RACK_NOT_IN_SESSION")
    if session["kind"] == "recount":
        listed = "SELECT product_id FROM session_products WHERE session_id = :session"
    else:
        listed = (
            "SELECT product_id FROM run_products rp JOIN runs r ON r.run_id = rp.run_id"
            " WHERE rp.run_id = :run AND r.kind = 'directed'"
            " UNION SELECT s.product_id FROM scan_counts c JOIN scan_codes s ON s.code = c.code"
            " WHERE c.rack_id = :rack AND s.product_id IS NOT NULL"
        )
    rows = conn.execute(
        "SELECT p.product_id, p.sku, p.name, p.uom,"
        " (SELECT raw FROM product_codes c WHERE c.product_id = p.product_id ORDER BY c.rowid LIMIT 1) AS barcode"
        f" FROM products p WHERE p.product_id IN ({listed}) ORDER BY p.sku",
        {"session": session_id, "run": session["run_id"], "rack": rack_id},
    )
    sheet = [
        {"rack": code, "sku": r["sku"], "barcode": r["barcode"] or "", "name": r["name"], "uom": r["uom"]}
        | {"counted": "", "damaged": ""}
        for r in rows
    ]
    return code, sheet


def export_sheet(conn: sqlite3.Connection, session_id: str, rack: str, fmt: str) -> tuple[str, bytes]:
    """The sheet as a file: (file name, bytes)."""
    if fmt not in FORMATS:
        raise ValidationFailed(f"a count sheet is csv or xlsx, not {fmt!r}", code="BAD_FORMAT")
    code, rows = sheet_rows(conn, session_id, rack)
    name = f"count-sheet-{code}.{fmt}"
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        return name, buffer.getvalue().encode("utf-8-sig")  # the BOM makes Excel read it as UTF-8
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet(f"Rack {code}"[:31])
    sheet.append(list(SHEET_COLUMNS))
    for row in rows:
        # Strings throughout: a barcode stored as a number loses its leading zero in the spreadsheet.
        sheet.append([str(row[column]) if row[column] != "" else None for column in SHEET_COLUMNS])
    out = io.BytesIO()
    book.save(out)
    return name, out.getvalue()


# -- import -------------------------------------------------------------------------------------------
@dataclass
class SheetRow:
    line: int
    product_id: str
    sku: str
    counted: int | None
    damaged: int | None


def read_sheet(
    conn: sqlite3.Connection, session_id: str, data: bytes, filename: str = ""
) -> tuple[list[SheetRow], list[dict[str, Any]], dict[str, str]]:
    """The filled rows (a product and its counts), every error, and the headers as recognised."""
    get_session(conn, session_id)
    records, unreadable = product_import.read_records(data, filename)
    if unreadable is not None:
        return [], [unreadable], {}
    (header_line, header), body = records[0], records[1:]
    mapping = {cell: _HEADER_NAMES.get(header_key(cell), "") for cell in header if cell}
    columns, headed, errors = product_import.map_header(header_line, header, mapping, SHEET_COLUMNS, ("counted",))
    if not {"sku", "barcode"} & set(columns.values()):
        errors.append(product_import.error(header_line, "sku", "", "the sheet has neither a sku nor a barcode column"))
    if errors:
        return [], errors, mapping
    racks = {
        r[0]
        for r in conn.execute(
            "SELECT r.code FROM session_racks s JOIN racks r ON r.rack_id = s.rack_id WHERE s.session_id = ?",
            (session_id,),
        )
    }
    rows: list[SheetRow] = []
    first: dict[str, int] = {}
    for line, cells in body:
        values = {name: cells[position] if position < len(cells) else "" for position, name in columns.items()}
        for position, cell in enumerate(cells):
            if cell and position not in headed:
                message = f"a value in column {position + 1}, which has no header"
                errors.append(product_import.error(line, None, cell, message))
        counted = _count(line, "counted", values.get("counted", ""), errors)
        damaged = _count(line, "damaged", values.get("damaged", ""), errors)
        if counted is None and damaged is None:
            continue  # not counted: the row is left alone, whatever else it says
        rack = values.get("rack", "").upper()
        if rack and rack not in racks:
            errors.append(product_import.error(line, "rack", rack, f"rack {rack} is not part of this session"))
        found = _product(conn, line, values.get("sku", ""), values.get("barcode", ""), errors)
        if found is None:
            continue
        product_id, sku = found
        if product_id in first:
            errors.append(product_import.error(line, "sku", sku, f"SKU {sku} is also on line {first[product_id]}"))
            continue
        first[product_id] = line
        rows.append(SheetRow(line, product_id, sku, counted, damaged))
    return rows, errors, mapping


def _count(line: int, column: str, text: str, errors: list[dict[str, Any]]) -> int | None:
    if not text:
        return None
    if text.startswith("-"):
        errors.append(product_import.error(line, column, text, f"{column} cannot be negative"))
    elif not (text.isascii() and text.isdigit()):
        errors.append(product_import.error(line, column, text, f"{column} must be a whole number of units"))
    elif int(text) > items.MAX_QTY:
        errors.append(
            product_import.error(line, column, text, f"{column} is above {items.MAX_QTY:,}, the most one count holds")
        )
    else:
        return int(text)
    return None


def _product(
    conn: sqlite3.Connection, line: int, sku: str, barcode: str, errors: list[dict[str, Any]]
) -> tuple[str, str] | None:
    """The product a row names by SKU, else by barcode; both given must name the same one."""
    by_sku = products.get(conn, sku) if sku else None
    if sku and by_sku is None:
        errors.append(product_import.error(line, "sku", sku, f"SKU {sku} is not in the product master"))
        return None
    by_code: dict[str, Any] | None = None
    if barcode:
        try:
            by_code = products.resolve(conn, barcode)
        except StockVerifyError as exc:
            errors.append(product_import.error(line, "barcode", barcode, exc.message))
            return None
        if by_code is None and by_sku is None:
            errors.append(product_import.error(line, "barcode", barcode, f"no product has the barcode {barcode}"))
            return None
    if by_sku is not None and by_code is not None and by_code["product_id"] != by_sku["product_id"]:
        message = f"barcode {barcode} belongs to SKU {by_code['sku']}, not {by_sku['sku']}"
        errors.append(product_import.error(line, "barcode", barcode, message))
        return None
    found = by_sku or by_code
    if found is None:
        errors.append(product_import.error(line, "sku", "", "the row has a count but no SKU or barcode"))
        return None
    return str(found["product_id"]), str(found["sku"])


def preview_sheet(
    conn: sqlite3.Connection, actor: User, session_id: str, data: bytes, filename: str = ""
) -> dict[str, Any]:
    """The dry run of a filled sheet: what it would change and every reason it would refuse."""
    rows, errors, mapping = read_sheet(conn, session_id, data, filename)
    try:
        items.counting_session(conn, actor, session_id)
    except StockVerifyError as exc:
        errors.insert(0, product_import.error(None, None, "", exc.message))
    return _answer(conn, session_id, rows, errors, mapping)


def import_sheet(
    conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str, data: bytes, filename: str = ""
) -> dict[str, Any]:
    """Set every filled count, or raise and set none (the caller's transaction holds them all)."""
    rows, errors, mapping = read_sheet(conn, session_id, data, filename)
    answer = _answer(conn, session_id, rows, errors, mapping)
    if errors:
        raise ValidationFailed(
            f"{len(errors)} problem(s) in {filename or 'the sheet'}; no count was set",
            code="IMPORT_INVALID",
            details={"errors": answer["errors"]},
        )
    items.counting_session(conn, actor, session_id)  # the session's own refusal, even for a sheet of blanks
    for row in rows:
        if row.counted is not None:
            items.set_quantity(conn, log, actor, session_id, row.product_id, row.counted)
        if row.damaged is not None:
            items.set_damage(conn, log, actor, session_id, row.product_id, row.damaged)
    return answer


def _answer(
    conn: sqlite3.Connection,
    session_id: str,
    rows: list[SheetRow],
    errors: list[dict[str, Any]],
    mapping: dict[str, str],
) -> dict[str, Any]:
    changed = [
        {"row": row.line, "sku": row.sku, "product_id": row.product_id, **change}
        for row in rows
        if (change := _change(conn, session_id, row))
    ]
    errors.sort(key=lambda error: error["line"] or 0)
    return {
        "session_id": session_id,
        "headers": mapping,
        "rows": len(rows),
        "valid": not errors,
        "errors": import_errors.explain(errors, mapping),
        "changed": len(changed),
        "unchanged": len(rows) - len(changed),
        "changes": changed,
        "message": NOTHING_TO_CHANGE if not changed and not errors else None,
    }


def _change(conn: sqlite3.Connection, session_id: str, row: SheetRow) -> dict[str, Any]:
    change: dict[str, Any] = {}
    if row.counted is not None:
        qty = items.item_quantity(conn, session_id, row.product_id)
        if qty != row.counted:
            change |= {"qty_before": qty, "qty": row.counted}
    if row.damaged is not None:
        damage = items.damage_quantity(conn, session_id, row.product_id)
        if damage != row.damaged:
            change |= {"damage_before": damage, "damage_qty": row.damaged}
    return change
