"""A run's facts: the rows every report, query, snapshot and comparison is made of.

One row per (session, rack, product or unmatched code, writer) with what was counted and damaged, and
everything a person filters or groups by: floor, rack, category, subcategory, condition, verifier and
device. Only APPROVED sessions count (DESIGN §7), and where an approved recount covers a product its
count replaces the earlier ones for that product, as ``counting.rollups.approved_counts`` has it: the
facts' totals are the rollup's, by construction of the same rule.

Damage is kept per (session, product, writer), not per rack: its rows carry an empty rack and no
quantity, so grouping by rack shows it under "(no rack)" rather than inventing a split. Expected
quantities are the run's, per product (``run_expected``), and are reported only where a group is made
of whole products.

The rows are made in one SQL statement over the counter projections, so a run of 200,000 scans is
a few hundred milliseconds, and the same statement feeds a snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from appliance.counting import rollups
from replication.wire.codec import unpack

FIELDS = (
    "session_id",
    "verifier_id",
    "verifier",
    "writer_id",
    "device",
    "floor",
    "rack_id",
    "rack",
    "product_id",
    "sku",
    "name",
    "category",
    "subcategory",
    "condition",
    "code",
    "qty",
    "damage",
)

FACTS_SQL = rollups.APPROVED_FACTS
ORDER = " ORDER BY floor, rack, sku, code, session_id, writer_id"


def run_facts(conn: sqlite3.Connection, run_id: str) -> Iterator[dict[str, Any]]:
    """The run's fact rows, in floor, rack and SKU order."""
    cursor = conn.execute(f"SELECT * FROM ({FACTS_SQL}){ORDER}", {"run_id": run_id})
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def expected(conn: sqlite3.Connection, run_id: str) -> dict[str, tuple[str, int]]:
    """The run's expected quantity per product: ``{product_id: (sku, expected)}``."""
    return {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            "SELECT e.product_id, p.sku, e.expected_qty FROM run_expected e"
            " JOIN products p ON p.product_id = e.product_id WHERE e.run_id = ?",
            (run_id,),
        )
    }


def included_sessions(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    """The sessions a report of the run counts (the approved ones), with who counted them and the
    version vector each was closed at: what a snapshot says it was made of."""
    out = []
    for row in conn.execute(
        "SELECT s.session_id, s.kind, s.verifier_id, u.display_name, s.closed_vector FROM sessions s"
        " LEFT JOIN users u ON u.user_id = s.verifier_id WHERE s.run_id = ? AND s.status = 'APPROVED'"
        " ORDER BY s.created_hlc, s.session_id",
        (run_id,),
    ):
        vector = unpack(row[4]) if row[4] else {}
        out.append({"session_id": row[0], "kind": row[1], "verifier_id": row[2], "verifier": row[3], "vector": vector})
    return out
