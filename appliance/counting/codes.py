"""What a scanned code counts as: a supervisor's mapping, a product card's own code, or the master.

Counts are kept per scanned code, never per product, and ``scan_codes`` says which product each code
stands for on this replica. It is recomputed whenever the product master or a mapping changes, so an
unmatched code a supervisor maps later moves every count made with it to the product, here and (by the
same folds) on every other replica.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.auth.people import User
from appliance.catalog import products
from appliance.errors import NotFound, ValidationFailed
from appliance.store.db import insert_rows
from appliance.store.eventlog import EventLog, projection_tables, projector
from replication.wire.codec import Event

projection_tables("scan_codes", "code_mappings")

MAX_CODE = 64
PRODUCT_CODE_PREFIX = "@"  # counts set on a product card are kept under the code "@<product_id>"


def map_code(conn: sqlite3.Connection, log: EventLog, actor: User, code: str, sku: str) -> dict[str, Any]:
    """Map an unmatched code to a product; every count made with the code re-resolves."""
    row = conn.execute("SELECT product_id FROM products WHERE sku = ? COLLATE NOCASE", (sku.strip(),)).fetchone()
    if row is None:
        raise NotFound(f"product {sku} does not exist", code="PRODUCT_NOT_FOUND")
    scanned = code.strip()
    if not scanned or len(scanned) > MAX_CODE:
        raise ValidationFailed(f"code must be 1-{MAX_CODE} characters", details={"field": "code"})
    log.record(conn, "code.mapped", {"code": scanned, "product_id": row[0], "by": actor.user_id})
    return {"code": scanned, "product_id": row[0]}


# -- resolution -----------------------------------------------------------------------------------
def resolve_code(conn: sqlite3.Connection, code: str) -> tuple[str | None, str]:
    """The product a scanned code stands for now, and how it was matched."""
    return resolve_codes(conn, [code])[code]


def resolve_codes(conn: sqlite3.Connection, codes: list[str]) -> dict[str, tuple[str | None, str]]:
    """``resolve_code`` for many codes at once: a mapping first, then a product card's own code, then
    the product master (barcode, then SKU), in a few statements whatever the number of codes."""
    out: dict[str, tuple[str | None, str]] = {}
    for at in range(0, len(codes), 500):
        chunk = codes[at : at + 500]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(f"SELECT code, product_id FROM code_mappings WHERE code IN ({marks})", chunk)
        out.update((code, (product_id, "mapping")) for code, product_id in rows)
    rest = []
    for code in codes:
        if code in out:
            continue
        if code.startswith(PRODUCT_CODE_PREFIX):
            out[code] = (code[len(PRODUCT_CODE_PREFIX) :], "product")
        else:
            rest.append(code)
    out.update(products.resolve_ids(conn, rest))
    return out


def note_codes(conn: sqlite3.Connection, codes: set[str]) -> None:
    """Resolve codes seen for the first time against this replica's product master (a code already
    known keeps its resolution until an import or a mapping re-resolves it)."""
    # One statement asks which codes are known: each statement lets the writer thread's GIL go and
    # costs a wait to take it back while the event loop is busy, so a batch's 50 codes are one ask.
    wanted = sorted(codes)  # the same rows in the same order on every replica
    known: set[str] = set()
    for at in range(0, len(wanted), 500):
        chunk = wanted[at : at + 500]
        marks = ", ".join("?" * len(chunk))
        known.update(row[0] for row in conn.execute(f"SELECT code FROM scan_codes WHERE code IN ({marks})", chunk))
    fresh = [code for code in wanted if code not in known]
    resolved = resolve_codes(conn, fresh)
    new = [(code, *resolved[code]) for code in fresh]
    if new:
        insert_rows(conn, "INSERT INTO scan_codes (code, product_id, matched_by)", new)


def re_resolve(conn: sqlite3.Connection, codes: list[str]) -> None:
    """Resolve codes already seen again, after the product master or a mapping changed."""
    resolved = resolve_codes(conn, codes)
    rows = [(*resolved[code], code) for code in codes]
    conn.executemany("UPDATE scan_codes SET product_id = ?, matched_by = ? WHERE code = ?", rows)


# -- projections ----------------------------------------------------------------------------------
@projector("code.mapped")
def _code_mapped(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO code_mappings (code, product_id, hlc, writer_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET product_id = excluded.product_id, hlc = excluded.hlc,"
        " writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (code_mappings.hlc, code_mappings.writer_id)",
        (p["code"], p["product_id"], event.hlc, event.writer_id),
    )
    re_resolve(conn, [p["code"]])


@projector("products.imported")
def _products_imported(conn: sqlite3.Connection, event: Event) -> None:
    re_resolve(conn, [row[0] for row in conn.execute("SELECT code FROM scan_codes")])
