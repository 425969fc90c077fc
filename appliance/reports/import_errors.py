"""How an import's errors are told to the person who made the file: where, what, why and what to do.

The readers (``appliance.catalog.product_import``, ``appliance.reports.imports``,
``appliance.reports.count_sheets``) say where a problem is and why it is one; this module adds the
file's own name for the column (a person looks for "Item Code", not ``sku``) and how to fix it. An
error list that only says "invalid row 212" — the ERPNext import log — sends a person back to guess;
every error here names a cell and an action.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from appliance.catalog.product_import import MAX_LABEL, MAX_NAME, MAX_SKU

# (our column or None for the file as a whole, a pattern the reason matches, the fix). First match wins;
# a column's last entry, with the pattern "", is its general advice.
_FIXES: list[tuple[str | None, str, str]] = [
    (None, "not UTF-8", "in the spreadsheet, use Save As and choose 'CSV UTF-8'"),
    (None, r"\.xls workbooks", "open it and save it as .xlsx (Excel Workbook) or as CSV UTF-8"),
    (None, "not a readable .xlsx", "open the file in the spreadsheet it came from and save it again as .xlsx"),
    (None, "file is empty", "put the column names on the first row and one product per row below"),
    (None, "no (product )?rows", "add rows below the header; the header alone imports nothing"),
    (None, "no header", "give the column a name on the header row, or check for a stray comma that shifted the row"),
    (None, "not one of", "map the file column to one of our columns, or leave it unmapped to ignore it"),
    (None, "unknown column", "rename the column to one of ours, or import with a mapping that ignores it"),
    (None, "scope is fixed", "scope changes only while a run is PLANNED or IN_PROGRESS; import into another run"),
    (None, "CSV cannot be read", "check the line named: a quote opened in a cell must be closed"),
    (None, "", "correct the file and preview it again"),
    ("sku", "not mapped|is missing", "map the file's column that holds the product code to sku"),
    ("sku", "appears twice|mapped to", "map only one of the file's columns to sku"),
    ("sku", "is also on", "keep one row per product: merge the rows or delete one"),
    ("sku", "not in the product master", "import the product into the master first, or correct the SKU"),
    ("sku", "blank", "write the product's SKU, or delete the row; the SKU is what a re-import matches on"),
    ("sku", "longer", f"shorten the SKU to {MAX_SKU} characters"),
    ("sku", "", "write the SKU as it is in the product master"),
    ("name", "not mapped|is missing", "map the file's column that holds the product's description to name"),
    ("name", "blank", "write the product's name as shoppers and counters know it"),
    ("name", "", f"shorten the name to {MAX_NAME} characters"),
    ("category", "", f"shorten the category to {MAX_LABEL} characters"),
    ("subcategory", "", f"shorten the subcategory to {MAX_LABEL} characters"),
    ("uom", "", "write a unit code such as EA, PK or KG: letters and digits, at most 16"),
    ("mrp", "", "write the price as digits with at most 2 decimals (123.45): no currency sign, no thousands comma"),
    ("barcodes", "leading 0", "format the barcode column as Text in the spreadsheet and type the code again"),
    ("barcodes", "already belongs", "remove the code from this row, or add its current SKU to the file without it"),
    ("barcodes", "is also on|same product code", "a barcode names one product: keep it on one row only"),
    ("barcodes", "check digit", "type the code again from the pack; its last digit is computed from the others"),
    ("barcodes", "", "write 8, 12, 13 or 14 digits as printed under the bars; separate several with |"),
    ("rack", "not part of this session", "count this rack in its own session, or correct the rack code"),
    ("rack", "", "write a rack code of this store as the Layout page shows it, such as G-01"),
    ("expected_qty", "not mapped|is missing", "map the file's quantity column (on hand, stock) to expected_qty"),
    ("expected_qty", "froze", "leave the quantity as it was frozen, or import expected quantities before the start"),
    ("expected_qty", "blank", "write the quantity expected; 0 if none is expected"),
    ("expected_qty", "", "write a whole number of units, 0 or more, without decimals or separators"),
    ("counted", "", "write the whole number of units counted, or leave the cell empty if the product was not counted"),
    ("damaged", "", "write the whole number of damaged units, or leave the cell empty"),
    ("barcode", "", "write the SKU, or the barcode as printed on the pack, so the row names one product"),
]


def how_to_fix(column: str | None, reason: str) -> str:
    for fix_column, pattern, fix in _FIXES:
        if fix_column == column and re.search(pattern, reason):
            return fix
    return "correct the value and preview the file again"


def explain(errors: list[dict[str, Any]], mapping: Mapping[str, str]) -> list[dict[str, Any]]:
    """Reader errors ({line, column, value, message}) as a person reads them: row, our column and the
    file's, value, reason and fix."""
    file_columns: dict[str, str] = {}
    for file_column, name in mapping.items():
        if name:
            file_columns.setdefault(name, file_column)
    explained = []
    for error in errors:  # a file-level error's "column" may be a header the file has: it stays the file's
        column = error["column"]
        ours: str | None = column if column in file_columns or column in _OUR_COLUMNS else None
        explained.append(
            {
                "row": error["line"],
                "column": ours,
                "file_column": file_columns.get(ours) if ours else column,
                "value": error["value"],
                "reason": error["message"],
                "fix": how_to_fix(ours, error["message"]),
            }
        )
    return explained


_OUR_COLUMNS = {column for column, _pattern, _fix in _FIXES if column}
