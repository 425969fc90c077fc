"""The product master: the fold of ``products.imported``, and resolving a scanned code to a product.

Verifiers count blind: every function that returns products takes ``with_expected`` and leaves the
``expected_qty`` key out entirely when it is false, so a forgotten filter cannot leak it as ``null``;
the catalog handhelds keep (``catalog``) never carries it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from appliance.errors import Conflict
from appliance.store.eventlog import projection_tables, projector
from hardware.barcodes import interpretations
from replication.wire.codec import Event

projection_tables("products", "product_codes")

SQL_CHUNK = 500  # stays under SQLite's bound-parameter limit
T = TypeVar("T")


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- projection ---------------------------------------------------------------------------------------
# Rows are matched on SKU as well as product_id: two replicas may import the same new SKU before they
# meet, each with its own new id, and the fold must still succeed (the first id wins).
_UPSERT_PRODUCT = """
INSERT INTO products (product_id, sku, name, category, subcategory, uom, mrp_minor, expected_qty)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (product_id) DO UPDATE SET
    sku = excluded.sku, name = excluded.name, category = excluded.category,
    subcategory = excluded.subcategory, uom = excluded.uom, mrp_minor = excluded.mrp_minor,
    expected_qty = excluded.expected_qty
ON CONFLICT (sku) DO UPDATE SET
    name = excluded.name, category = excluded.category, subcategory = excluded.subcategory,
    uom = excluded.uom, mrp_minor = excluded.mrp_minor, expected_qty = excluded.expected_qty
"""
_DROP_CODES = "DELETE FROM product_codes WHERE product_id = (SELECT product_id FROM products WHERE sku = ?)"
_ADD_CODE = """
INSERT INTO product_codes (code, product_id, kind, raw)
SELECT ?, product_id, ?, ? FROM products WHERE sku = ?
ON CONFLICT (code) DO UPDATE SET product_id = excluded.product_id, kind = excluded.kind, raw = excluded.raw
"""


@projector("products.imported")
def _products_imported(conn: sqlite3.Connection, event: Event) -> None:
    rows = event.payload["rows"]
    conn.executemany(
        _UPSERT_PRODUCT,
        [
            (
                r["product_id"],
                r["sku"],
                r["name"],
                r["category"],
                r["subcategory"],
                r["uom"],
                r["mrp_minor"],
                r["expected_qty"],
            )
            for r in rows
        ],
    )
    # Every old code goes before any new one is added, so a code may move between SKUs of one file.
    conn.executemany(_DROP_CODES, [(r["sku"],) for r in rows])
    conn.executemany(_ADD_CODE, [(gtin, kind, raw, r["sku"]) for r in rows for gtin, kind, raw in r["codes"]])
    _advance_catalog_version(conn, event.hash)


# -- the catalog's version ----------------------------------------------------------------------------
# Handhelds keep a copy of the catalog and ask again with its version (an HTTP ETag). The master changes
# only by this fold, so the fold moves the version on: the hash of the version before and the folded
# import. Two folds from one start give one version only if they folded the same imports in the same
# order, which leaves the same master; the value lives outside the projections, so a rebuild moves it on
# rather than back. Reading it is one row, however large the master.
_CATALOG_VERSION = "catalog_version"


def _advance_catalog_version(conn: sqlite3.Connection, event_hash: bytes) -> None:
    row = conn.execute("SELECT value FROM replica_meta WHERE name = ?", (_CATALOG_VERSION,)).fetchone()
    before = bytes(row[0]) if row is not None and row[0] is not None else b""
    conn.execute(
        "INSERT INTO replica_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (_CATALOG_VERSION, hashlib.blake2b(before + event_hash, digest_size=16).digest()),
    )


def catalog_version(conn: sqlite3.Connection, node_id: str) -> str:
    """The version of this box's product master. It names the box: two boxes that started from masters
    of their own (before versions were kept) may fold the same imports after, and a device moving
    between them must not take one's master for the other's."""
    row = conn.execute("SELECT value FROM replica_meta WHERE name = ?", (_CATALOG_VERSION,)).fetchone()
    value = bytes(row[0]).hex() if row is not None and row[0] is not None else "0"
    return f"{node_id}.{value}"


# -- queries ------------------------------------------------------------------------------------------
_PUBLIC_FIELDS = ("product_id", "sku", "name", "category", "subcategory", "uom", "mrp_minor")
_SELECT = "SELECT product_id, sku, name, category, subcategory, uom, mrp_minor, expected_qty FROM products"


def product_dict(row: sqlite3.Row, *, with_expected: bool) -> dict[str, Any]:
    """A product as the API shows it; ``expected_qty`` is absent, not null, for blind counters."""
    product = {name: row[name] for name in _PUBLIC_FIELDS}
    if with_expected:
        product["expected_qty"] = row["expected_qty"]
    return product


def get(conn: sqlite3.Connection, sku: str, *, with_expected: bool = False) -> dict[str, Any] | None:
    """One product by SKU (exact, else ignoring case) with its barcodes."""
    row = _by_sku(conn, sku)
    if row is None:
        return None
    codes = conn.execute(
        "SELECT code, kind, raw FROM product_codes WHERE product_id = ? ORDER BY rowid", (row["product_id"],)
    )
    return {**product_dict(row, with_expected=with_expected), "codes": [dict(code) for code in codes]}


def resolve(conn: sqlite3.Connection, code: str, *, with_expected: bool = False) -> dict[str, Any] | None:
    """The product a scanned or typed code stands for: its barcode readings first, then its SKU."""
    text = code.strip()
    if not text:
        return None
    readings = interpretations(text)
    matches = _products_by_gtin(conn, [gtin for gtin, _kind in readings])
    products = {row["product_id"] for row in matches.values()}
    if len(products) > 1:
        raise Conflict(
            f"{text} reads as {len(products)} different products; scan another barcode or type the SKU",
            code="AMBIGUOUS_BARCODE",
            details={
                "code": text,
                "candidates": [
                    {"sku": matches[gtin]["sku"], "name": matches[gtin]["name"], "gtin": gtin, "kind": kind}
                    for gtin, kind in readings
                    if gtin in matches
                ],
            },
        )
    for gtin, kind in readings:
        if gtin in matches:
            return _resolved(matches[gtin], kind, gtin, with_expected)
    row = _by_sku(conn, text)
    return None if row is None else _resolved(row, "sku", None, with_expected)


def resolve_ids(conn: sqlite3.Connection, codes: Iterable[str]) -> dict[str, tuple[str | None, str]]:
    """``(product_id, matched_by)`` for each code, as ``resolve`` would find it (``"unmatched"`` and
    ``"ambiguous"`` with no product), in one look-up for all their barcodes and one for all their
    SKUs: a replica that meets two hundred new codes in a page asks twice, not six hundred times."""
    readings = {code: interpretations(code.strip()) for code in codes}
    gtins = sorted({gtin for found in readings.values() for gtin, _kind in found})
    by_gtin: dict[str, str] = {}
    for chunk in chunks(gtins, SQL_CHUNK):
        by_gtin.update(
            conn.execute(
                "SELECT c.code, c.product_id FROM product_codes c JOIN products p ON p.product_id = c.product_id"
                f" WHERE c.code IN ({_marks(chunk)})",
                chunk,
            ).fetchall()
        )
    out: dict[str, tuple[str | None, str]] = {}
    by_sku: list[str] = []
    for code, found in readings.items():
        hits = [(gtin, kind) for gtin, kind in found if gtin in by_gtin]
        if len({by_gtin[gtin] for gtin, _kind in hits}) > 1:
            out[code] = (None, "ambiguous")
        elif hits:
            out[code] = (by_gtin[hits[0][0]], hits[0][1])
        elif code.strip():
            by_sku.append(code)
        else:
            out[code] = (None, "unmatched")
    skus: dict[str, list[tuple[str, str]]] = {}
    for chunk in chunks(sorted({code.strip() for code in by_sku}), SQL_CHUNK):
        for sku, product_id in conn.execute(
            f"SELECT sku, product_id FROM products WHERE sku COLLATE NOCASE IN ({_marks(chunk)})", chunk
        ):
            skus.setdefault(_nocase(sku), []).append((sku, product_id))
    for code in by_sku:
        text = code.strip()
        # As ``_by_sku``: an exact match wins over one that differs only in case, then the first SKU.
        candidates = sorted(skus.get(_nocase(text), []), key=lambda hit: (hit[0] != text, hit[0]))
        out[code] = (candidates[0][1], "sku") if candidates else (None, "unmatched")
    return out


def catalog(conn: sqlite3.Connection) -> dict[str, Any]:
    """The whole product master as a handheld keeps it to resolve codes and show names while the box is
    out of reach: each product's public fields (never ``expected_qty``: verifiers count blind) and every
    normalised code with its product, as compact rows."""
    rows = conn.execute(
        "SELECT product_id, sku, name, category, subcategory, uom, mrp_minor FROM products ORDER BY sku"
    ).fetchall()
    codes = conn.execute("SELECT code, product_id FROM product_codes ORDER BY code").fetchall()
    return {
        "products": [{name: row[name] for name in _PUBLIC_FIELDS} for row in rows],
        "codes": [[code, product_id] for code, product_id in codes],
    }


def _nocase(text: str) -> str:
    """SQLite's NOCASE folds ASCII letters only; so does this."""
    return text.encode().lower().decode()


def _resolved(row: sqlite3.Row, matched_by: str, gtin: str | None, with_expected: bool) -> dict[str, Any]:
    return {**product_dict(row, with_expected=with_expected), "matched_by": matched_by, "gtin": gtin}


def search(
    conn: sqlite3.Connection,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
    with_expected: bool = False,
    category: str | None = None,
) -> dict[str, Any]:
    """A page of products whose SKU or name contains ``q`` (prefix matches first) or whose barcode it is."""
    where: list[str] = []
    args: list[Any] = []
    order = "sku"
    text = (q or "").strip()
    if text:
        contains, prefix = f"%{_escape_like(text)}%", f"{_escape_like(text)}%"
        match = "sku LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\'"
        gtins = [gtin for gtin, _kind in interpretations(text)]
        by_code = f" OR product_id IN (SELECT product_id FROM product_codes WHERE code IN ({_marks(gtins)}))"
        where.append(f"({match}{by_code if gtins else ''})")
        args += [contains, contains, *gtins]
        order = f"({match}) DESC, sku"
    if category and category.strip():
        where.append("category = ? COLLATE NOCASE")
        args.append(category.strip())
    sql_where = f" WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT count(*) FROM products{sql_where}", args).fetchone()[0]
    limit, offset = max(1, min(limit, 500)), max(0, offset)
    order_args = [prefix, prefix] if text else []
    rows = conn.execute(f"{_SELECT}{sql_where} ORDER BY {order} LIMIT ? OFFSET ?", [*args, *order_args, limit, offset])
    items = [product_dict(row, with_expected=with_expected) for row in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _products_by_gtin(conn: sqlite3.Connection, gtins: list[str]) -> dict[str, sqlite3.Row]:
    if not gtins:
        return {}
    rows = conn.execute(
        "SELECT c.code AS gtin, p.* FROM product_codes c JOIN products p ON p.product_id = c.product_id"
        f" WHERE c.code IN ({_marks(gtins)})",
        gtins,
    )
    return {row["gtin"]: row for row in rows}


def _by_sku(conn: sqlite3.Connection, sku: str) -> sqlite3.Row | None:
    text = sku.strip()
    if not text:
        return None
    # One look-up in the case-blind index; an exact match wins over one that differs only in case.
    row: sqlite3.Row | None = conn.execute(
        f"{_SELECT} WHERE sku = ? COLLATE NOCASE ORDER BY sku != ?, sku LIMIT 1", (text, text)
    ).fetchone()
    return row


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
