"""Rollups and buckets: derived on every read, never stored (seed: count run design).

Totals, progress and variance count APPROVED sessions only. Buckets are live: they follow every
session that is not VOID as scans land. Where an approved recount covers a product, its count replaces
the first count for that product (the recount exists because the first was doubted).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

# Quantity per (session, product) and the unmatched codes per session, for one run. Sums are
# CAST(total(...) AS INTEGER) so that no stored value can make a read fail (see ``items`` queries).
_SESSION_PRODUCT_QTY = """
    SELECT c.session_id, s.product_id, c.code, CAST(total(c.p - c.n) AS INTEGER) AS qty
    FROM counted_scans c
    JOIN sessions se ON se.session_id = c.session_id
    JOIN scan_codes s ON s.code = c.code
    WHERE se.run_id = ? AND se.status IN ({statuses})
    GROUP BY c.session_id, s.product_id, CASE WHEN s.product_id IS NULL THEN c.code END
"""
# What approved sessions counted, one row per (session, rack, product or unmatched code, writer), and
# damage per (session, product, writer) with no rack: the rule of ``approved_counts`` in SQL (a recount
# counts only its own products, and where the latest approved recount covers a product only it counts),
# for the rollup's racks and for every report (``appliance.reports.facts``).
_APPROVED_RULE = """
WITH approved AS (
    SELECT session_id, kind, created_hlc, verifier_id FROM sessions WHERE run_id = :run_id AND status = 'APPROVED'
),
recount_scope AS (
    SELECT sp.product_id, a.session_id, a.created_hlc
    FROM session_products sp JOIN approved a ON a.session_id = sp.session_id
    WHERE a.kind = 'recount'
),
latest_recount AS (
    SELECT product_id, session_id FROM recount_scope r
    WHERE created_hlc = (SELECT max(created_hlc) FROM recount_scope r2 WHERE r2.product_id = r.product_id)
),
scans AS (
    SELECT c.session_id, c.rack_id, c.writer_id, s.product_id,
           CASE WHEN s.product_id IS NULL THEN c.code END AS code,
           CAST(total(c.p - c.n) AS INTEGER) AS qty, 0 AS damage
    FROM counted_scans c
    JOIN approved a ON a.session_id = c.session_id
    JOIN scan_codes s ON s.code = c.code
    GROUP BY c.session_id, c.rack_id, c.writer_id, s.product_id, CASE WHEN s.product_id IS NULL THEN c.code END
),
damaged AS (
    SELECT d.session_id, '' AS rack_id, d.writer_id, d.product_id, NULL AS code,
           0 AS qty, CAST(total(d.p - d.n) AS INTEGER) AS damage
    FROM counted_damage d JOIN approved a ON a.session_id = d.session_id
    GROUP BY d.session_id, d.writer_id, d.product_id
),
counted AS (
    SELECT f.*, a.verifier_id FROM (SELECT * FROM scans UNION ALL SELECT * FROM damaged) f
    JOIN approved a ON a.session_id = f.session_id
    WHERE (f.qty != 0 OR f.damage != 0)
      -- A recount counts only its own products; a product it covers counts only there.
      AND (a.kind != 'recount'
           OR f.product_id IN (SELECT product_id FROM recount_scope rs WHERE rs.session_id = f.session_id))
      AND NOT EXISTS (
          SELECT 1 FROM latest_recount lr WHERE lr.product_id = f.product_id AND lr.session_id != f.session_id
      )
)
"""
APPROVED_FACTS = (
    _APPROVED_RULE
    + """
SELECT f.session_id, f.verifier_id, u.display_name AS verifier, f.writer_id, w.name AS device,
       fl.code AS floor, nullif(f.rack_id, '') AS rack_id, r.code AS rack, f.product_id, p.sku, p.name,
       p.category, p.subcategory, cond.value AS condition, f.code, f.qty, f.damage
FROM counted f
LEFT JOIN users u ON u.user_id = f.verifier_id
LEFT JOIN writers w ON w.writer_id = f.writer_id
LEFT JOIN racks r ON r.rack_id = f.rack_id
LEFT JOIN floors fl ON fl.floor_id = r.floor_id
LEFT JOIN products p ON p.product_id = f.product_id
LEFT JOIN item_attrs cond ON cond.session_id = f.session_id AND cond.product_id = f.product_id
                         AND cond.name = 'condition'
"""
)
# Units per rack under the same rule, without what a report shows beside them.
_APPROVED_RACK_UNITS = (
    _APPROVED_RULE
    + """
SELECT rack_id, CAST(total(qty) AS INTEGER) FROM counted
WHERE product_id IS NOT NULL AND rack_id != '' GROUP BY rack_id
"""
)
LIVE = ("CREATED", "ASSIGNED", "IN_PROGRESS", "SUBMITTED", "APPROVED")


def _quantities(
    conn: sqlite3.Connection, run_id: str, statuses: tuple[str, ...], session_id: str | None = None
) -> list[sqlite3.Row]:
    sql = _SESSION_PRODUCT_QTY.format(statuses=",".join("?" for _ in statuses))
    args: list[Any] = [run_id, *statuses]
    if session_id is not None:
        sql = sql.replace("WHERE se.run_id = ?", "WHERE se.run_id = ? AND c.session_id = ?")
        args.insert(1, session_id)
    return conn.execute(sql, args).fetchall()


def directed_products(conn: sqlite3.Connection, run_id: str, session_id: str | None = None) -> set[str]:
    """What should be counted: a recount's own products, a directed run's list, or for a hard count
    every product the snapshot expects to be there."""
    if session_id is not None:
        own = {
            r[0] for r in conn.execute("SELECT product_id FROM session_products WHERE session_id = ?", (session_id,))
        }
        if own:
            return own
    kind = conn.execute("SELECT kind FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if kind is not None and kind[0] == "directed":
        return {r[0] for r in conn.execute("SELECT product_id FROM run_products WHERE run_id = ?", (run_id,))}
    return {
        r[0]
        for r in conn.execute("SELECT product_id FROM run_expected WHERE run_id = ? AND expected_qty > 0", (run_id,))
    }


def approved_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """C per product over approved sessions, a later approved recount replacing earlier counts."""
    kinds = {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            "SELECT session_id, kind, created_hlc FROM sessions WHERE run_id = ? AND status = 'APPROVED'",
            (run_id,),
        )
    }
    counted: dict[str, int] = defaultdict(int)
    recounted: dict[str, tuple[int, int]] = {}  # product -> (recount created_hlc, qty)
    per_session: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in _quantities(conn, run_id, ("APPROVED",)):
        if row["product_id"] is not None:
            per_session[row["session_id"]][row["product_id"]] += row["qty"]
    for session_id, (kind, created_hlc) in kinds.items():
        if kind == "recount":
            scope = [
                r[0]
                for r in conn.execute("SELECT product_id FROM session_products WHERE session_id = ?", (session_id,))
            ]
            for product_id in scope:
                qty = per_session[session_id].get(product_id, 0)
                if product_id not in recounted or recounted[product_id][0] < created_hlc:
                    recounted[product_id] = (created_hlc, qty)
        else:
            for product_id, qty in per_session[session_id].items():
                counted[product_id] += qty
    for product_id, (_hlc, qty) in recounted.items():
        counted[product_id] = qty
    return dict(counted)


def buckets(conn: sqlite3.Connection, run_id: str, session_id: str | None = None) -> dict[str, Any]:
    """Counted, uncounted, undirected and unmatched, live over every session that is not VOID."""
    rows = _quantities(conn, run_id, LIVE, session_id)
    directed = directed_products(conn, run_id, session_id)
    qty: dict[str, int] = defaultdict(int)
    unmatched: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["product_id"] is None:
            unmatched[row["code"]] += row["qty"]
        else:
            qty[row["product_id"]] += row["qty"]
    seen = {pid for pid, n in qty.items() if n > 0}
    counted = seen & directed
    return {
        "counted": len(counted),
        "uncounted": len(directed - seen),
        "undirected": len(seen - directed),
        "unmatched": sum(1 for n in unmatched.values() if n > 0),
        "units": sum(n for pid, n in qty.items() if n > 0),
        "unmatched_codes": sorted(code for code, n in unmatched.items() if n > 0)[:200],
        "undirected_products": sorted(seen - directed)[:200],
    }


def uncounted_without_decision(conn: sqlite3.Connection, run_id: str) -> list[str]:
    """Directed SKUs no approved session counted and nobody zeroed or skipped (completion gate)."""
    kind = conn.execute("SELECT kind FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if kind is None or kind[0] != "directed":
        return []
    counted = {pid for pid, n in approved_counts(conn, run_id).items() if n > 0}
    decided = {
        r[0]
        for r in conn.execute(
            "SELECT product_id FROM variance_decisions WHERE run_id = ? AND decision IN ('zeroed', 'skipped')",
            (run_id,),
        )
    }
    missing = directed_products(conn, run_id) - counted - decided
    if not missing:
        return []
    marks = ",".join("?" for _ in missing)
    return [
        r[0]
        for r in conn.execute(f"SELECT sku FROM products WHERE product_id IN ({marks}) ORDER BY sku", list(missing))
    ]


def run_rollup(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Totals and progress per floor, rack and category, from approved sessions only."""
    counts = approved_counts(conn, run_id)
    directed = directed_products(conn, run_id)
    expected = dict(
        conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,)).fetchall()
    )
    approved = [
        r[0]
        for r in conn.execute("SELECT session_id FROM sessions WHERE run_id = ? AND status = 'APPROVED'", (run_id,))
    ]

    # Racks in scope: the run's list, else every rack its sessions cover, else (hard count) every rack.
    scope = {r[0] for r in conn.execute("SELECT rack_id FROM run_racks WHERE run_id = ?", (run_id,))}
    if not scope:
        scope = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT sr.rack_id FROM session_racks sr JOIN sessions s ON s.session_id = sr.session_id"
                " WHERE s.run_id = ? AND s.status != 'VOID'",
                (run_id,),
            )
        }
    kind = conn.execute("SELECT kind FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if not scope and kind is not None and kind[0] == "hard":
        scope = {r[0] for r in conn.execute("SELECT rack_id FROM racks")}
    marks = ",".join("?" for _ in approved) or "NULL"
    done_racks = {
        r[0]
        for r in conn.execute(f"SELECT DISTINCT rack_id FROM session_racks WHERE session_id IN ({marks})", approved)
    }
    rack_units: dict[str, int] = defaultdict(int)
    for row in conn.execute(_APPROVED_RACK_UNITS, {"run_id": run_id}):
        rack_units[row[0]] += row[1]
        done_racks.add(row[0])

    floors: dict[str, dict[str, Any]] = {}
    racks_out = []
    for row in conn.execute(
        "SELECT r.rack_id, r.code, f.code AS floor_code, f.name AS floor_name, f.position"
        " FROM racks r JOIN floors f ON f.floor_id = r.floor_id ORDER BY f.position, r.code"
    ):
        if row["rack_id"] not in scope and row["rack_id"] not in done_racks:
            continue
        floor = floors.setdefault(
            row["floor_code"],
            {"floor": row["floor_code"], "name": row["floor_name"], "racks": 0, "racks_done": 0, "units": 0},
        )
        done = row["rack_id"] in done_racks
        floor["racks"] += 1
        floor["racks_done"] += int(done)
        floor["units"] += rack_units.get(row["rack_id"], 0)
        racks_out.append(
            {
                "rack": row["code"],
                "floor": row["floor_code"],
                "done": done,
                "units": rack_units.get(row["rack_id"], 0),
            }
        )

    categories: dict[str, dict[str, Any]] = {}
    relevant = directed | {pid for pid, n in counts.items() if n}
    if relevant:
        placeholders = ",".join("?" for _ in relevant)
        for row in conn.execute(
            f"SELECT product_id, category FROM products WHERE product_id IN ({placeholders})", list(relevant)
        ):
            cat = categories.setdefault(
                row[1] or "",
                {"category": row[1] or "", "skus": 0, "skus_counted": 0, "counted": 0, "expected": 0},
            )
            cat["skus"] += 1
            cat["skus_counted"] += int(counts.get(row[0], 0) > 0)
            cat["counted"] += counts.get(row[0], 0)
            cat["expected"] += expected.get(row[0], 0)

    total_expected = sum(expected.get(pid, 0) for pid in relevant)
    return {
        "run_id": run_id,
        "sessions_approved": len(approved),
        "skus_assigned": len(directed),
        "skus_counted": sum(1 for n in counts.values() if n > 0),
        "total_counted": sum(counts.values()),
        "total_expected": total_expected,
        "floors": list(floors.values()),
        "racks": racks_out,
        "categories": sorted(categories.values(), key=lambda c: c["category"]),
    }
