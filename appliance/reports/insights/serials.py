"""Serials of a run: where and when each was put on an item, duplicates first."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from appliance.counting.runs import get_run
from appliance.reports.insights._common import _ms


def serials(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Every serial on an item of the run (added and not removed, in a session that is not VOID): where
    (session, rack, product) and when; a serial on two items is a duplicate, and those come first.

    The rack is the one the session counted the product on, else the session's own rack if it has just
    one; none when that is not a single rack."""
    get_run(conn, run_id)
    rows = conn.execute(
        """
        SELECT a.tag, a.serial, a.session_id, a.product_id, p.sku, e.hlc, e.writer_id, u.display_name AS verifier,
               a.tag IN (SELECT event_id FROM held_open WHERE kind = 'serial') AS held
        FROM serial_adds a
        JOIN sessions se ON se.session_id = a.session_id
        LEFT JOIN serial_removes r ON r.tag = a.tag
        LEFT JOIN events e ON e.event_id = a.tag
        LEFT JOIN products p ON p.product_id = a.product_id
        LEFT JOIN users u ON u.user_id = se.verifier_id
        WHERE se.run_id = ? AND se.status != 'VOID' AND r.tag IS NULL
        ORDER BY a.serial, e.hlc
        """,
        (run_id,),
    ).fetchall()
    pairs = {(r["session_id"], r["product_id"]) for r in rows}
    racks = _item_racks(conn, pairs)
    places: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        places[row["serial"]].add((row["session_id"], row["product_id"]))
    seen = []
    for row in rows:
        rack = racks.get((row["session_id"], row["product_id"]))
        seen.append(
            {
                "serial": row["serial"],
                "duplicate": len(places[row["serial"]]) > 1,
                "session_id": row["session_id"],
                "verifier": row["verifier"],
                "rack": rack,
                "product_id": row["product_id"],
                "sku": row["sku"],
                "seen_ms": _ms(row["hlc"]),
                "writer_id": row["writer_id"],
                "held": bool(row["held"]),
            }
        )
    seen.sort(key=lambda s: (not s["duplicate"], s["serial"], s["seen_ms"] or 0))
    duplicates = sorted(s for s, where in places.items() if len(where) > 1)
    return {"run_id": run_id, "serials": len(places), "duplicates": duplicates, "seen": seen}


def _item_racks(conn: sqlite3.Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    sessions = sorted({s for s, _ in pairs})
    if not sessions:
        return {}
    marks = ",".join("?" for _ in sessions)
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for session_id, product_id, rack in conn.execute(
        "SELECT DISTINCT c.session_id, s.product_id, r.code FROM scan_counts c JOIN scan_codes s ON s.code = c.code"
        f" JOIN racks r ON r.rack_id = c.rack_id WHERE c.session_id IN ({marks}) AND s.product_id IS NOT NULL",
        sessions,
    ):
        if (session_id, product_id) in pairs:
            found[(session_id, product_id)].add(rack)
    own: dict[str, set[str]] = defaultdict(set)
    for session_id, rack in conn.execute(
        "SELECT sr.session_id, r.code FROM session_racks sr JOIN racks r ON r.rack_id = sr.rack_id"
        f" WHERE sr.session_id IN ({marks})",
        sessions,
    ):
        own[session_id].add(rack)
    out = {}
    for pair in pairs:
        racks = found.get(pair) or own.get(pair[0], set())
        if len(racks) == 1:
            out[pair] = next(iter(racks))
    return out
