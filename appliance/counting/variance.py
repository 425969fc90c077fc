"""Variance against the frozen snapshot, tolerances, blind recounts and the supervisor's decisions.

For each product: S is the expected quantity frozen at run start, C the approved count, V = C - S.
A line is within tolerance when |V| ≤ T_units or |V|/S ≤ T_pct; a tolerance of 0 switches that test
off; S = 0 counts as 100 % unless C = 0. Tolerances are set for the store and may be overridden per
floor and per rack; a product counted on a single rack takes that rack's (or its floor's) values.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from appliance.auth.people import User
from appliance.counting.rollups import approved_counts, directed_products
from appliance.counting.runs import get_run
from appliance.counting.sessions import check_counter, create_session
from appliance.errors import Conflict, NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, projection_tables, projector
from replication.wire.codec import Event
from replication.wire.hlc import physical_ms

projection_tables("tolerances", "variance_decisions")

DECISIONS = ("applied", "skipped", "zeroed")
REASON_CODES = (
    "COUNT_CONFIRMED",
    "DAMAGED",
    "THEFT",
    "MISPLACED",
    "RECEIVING_ERROR",
    "DATA_ERROR",
    "NOT_FOUND",
    "OTHER",
)
SCOPES = ("store", "floor", "rack")


# -- tolerances -----------------------------------------------------------------------------------
def set_tolerance(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    *,
    scope: str,
    code: str = "",
    units: int,
    pct_bp: int,
) -> dict[str, Any]:
    if scope not in SCOPES:
        raise ValidationFailed("scope must be store, floor or rack", details={"field": "scope"})
    for name, value, high in (("units", units, 1_000_000), ("pct_bp", pct_bp, 10_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ValidationFailed(f"{name} must be a whole number from 0 to {high}", details={"field": name})
    scope_id = ""
    if scope != "store":
        table = "floors" if scope == "floor" else "racks"
        row = conn.execute(f"SELECT {scope}_id FROM {table} WHERE code = ?", (code.strip().upper(),)).fetchone()
        if row is None:
            raise NotFound(f"{scope} {code} does not exist", code=f"{scope.upper()}_NOT_FOUND")
        scope_id = row[0]
    payload = {"scope": scope, "scope_id": scope_id, "units": units, "pct_bp": pct_bp, "by": actor.user_id}
    log.record(conn, "tolerance.set", payload)
    return payload


@projector("tolerance.set")
def _tolerance_set(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO tolerances (scope, scope_id, units, pct_bp, hlc, writer_id) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET units = excluded.units, pct_bp = excluded.pct_bp, hlc = excluded.hlc,"
        " writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (tolerances.hlc, tolerances.writer_id)",
        (p["scope"], p["scope_id"], p["units"], p["pct_bp"], event.hlc, event.writer_id),
    )


def within_tolerance(counted: int, expected: int, units: int, pct_bp: int) -> bool:
    variance = abs(counted - expected)
    if variance == 0:
        return True
    if units and variance <= units:
        return True
    if pct_bp:
        # |V| / S <= pct, in integers: |V| * 10000 <= pct_bp * S. S = 0 with C != 0 is 100 %.
        return variance * 10_000 <= pct_bp * expected if expected else pct_bp >= 10_000
    return False


# -- variance -------------------------------------------------------------------------------------
def _product_racks(conn: sqlite3.Connection, run_id: str) -> dict[str, set[str]]:
    racks: dict[str, set[str]] = defaultdict(set)
    for row in conn.execute(
        "SELECT DISTINCT s.product_id, c.rack_id FROM counted_scans c JOIN sessions se ON se.session_id = c.session_id"
        " JOIN scan_codes s ON s.code = c.code WHERE se.run_id = ? AND se.status = 'APPROVED'"
        " AND s.product_id IS NOT NULL AND c.rack_id != '' AND c.p > c.n",
        (run_id,),
    ):
        racks[row[0]].add(row[1])
    return racks


def variance_lines(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    get_run(conn, run_id)
    counts = approved_counts(conn, run_id)
    expected = dict(
        conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,)).fetchall()
    )
    products = directed_products(conn, run_id) | {pid for pid, n in counts.items() if n}
    tolerances = {
        (r[0], r[1]): (r[2], r[3]) for r in conn.execute("SELECT scope, scope_id, units, pct_bp FROM tolerances")
    }
    store_tol = tolerances.get(("store", ""), (0, 0))
    rack_floor = dict(conn.execute("SELECT rack_id, floor_id FROM racks").fetchall())
    racks_of = _product_racks(conn, run_id)
    decisions = {
        r["product_id"]: dict(r)
        for r in conn.execute(
            "SELECT product_id, decision, reason_code, note, by_user, at_ms FROM variance_decisions WHERE run_id = ?",
            (run_id,),
        )
    }
    recounting = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT sp.product_id, s.status FROM session_products sp JOIN sessions s ON s.session_id = sp.session_id"
            " WHERE s.run_id = ? AND s.kind = 'recount' AND s.status != 'VOID' ORDER BY s.created_hlc",
            (run_id,),
        )
    }
    info = {}
    if products:
        marks = ",".join("?" for _ in products)
        info = {
            r["product_id"]: r
            for r in conn.execute(
                f"SELECT product_id, sku, name, category FROM products WHERE product_id IN ({marks})",
                list(products),
            )
        }
    lines = []
    for product_id in sorted(products, key=lambda pid: info[pid]["sku"] if pid in info else pid):
        s_qty = expected.get(product_id, 0)
        c_qty = counts.get(product_id, 0)
        units, pct_bp, scope = *store_tol, "store"
        racks = racks_of.get(product_id, set())
        if len(racks) == 1:
            rack_id = next(iter(racks))
            for key, name in (
                ((("rack", rack_id)), "rack"),
                (("floor", rack_floor.get(rack_id, "")), "floor"),
            ):
                if key in tolerances:
                    units, pct_bp, scope = *tolerances[key], name
                    break
        variance = c_qty - s_qty
        row = info.get(product_id)
        lines.append(
            {
                "product_id": product_id,
                "sku": row["sku"] if row else None,
                "name": row["name"] if row else None,
                "category": row["category"] if row else None,
                "expected": s_qty,
                "counted": c_qty,
                "variance": variance,
                "variance_pct": round(100 * abs(variance) / s_qty, 2) if s_qty else (0.0 if c_qty == 0 else 100.0),
                "tolerance": {"units": units, "pct_bp": pct_bp, "scope": scope},
                "within_tolerance": within_tolerance(c_qty, s_qty, units, pct_bp),
                "recount": recounting.get(product_id),
                "decision": decisions.get(product_id),
            }
        )
    return lines


# -- recounts and decisions -----------------------------------------------------------------------
def order_recount(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    skus: list[str],
    verifier_id: str,
    rack_codes: list[str] | None = None,
) -> str:
    """A blind recount of out-of-tolerance lines by a verifier who did not count them first."""
    run = get_run(conn, run_id)
    if run["status"] != "IN_PROGRESS":
        raise Conflict("recounts are ordered while the run is in progress", code="RUN_NOT_IN_PROGRESS")
    lines = {line["sku"]: line for line in variance_lines(conn, run_id) if line["sku"]}
    wanted = list(dict.fromkeys(s.strip() for s in skus if s.strip()))
    if not wanted:
        raise ValidationFailed("name at least one SKU to recount", details={"field": "skus"})
    unknown = [s for s in wanted if s not in lines]
    if unknown:
        raise ValidationFailed("these SKUs have no variance line in this run", code="UNKNOWN_SCOPE", details=unknown)
    fine = [s for s in wanted if lines[s]["within_tolerance"]]
    if fine:
        raise Conflict("these SKUs are within tolerance; nothing to recount", code="WITHIN_TOLERANCE", details=fine)
    product_ids = [lines[s]["product_id"] for s in wanted]
    check_counter(conn, verifier_id)
    marks = ",".join("?" for _ in product_ids)
    first_counters = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT se.verifier_id FROM scan_counts c JOIN sessions se ON se.session_id = c.session_id"
            f" JOIN scan_codes s ON s.code = c.code WHERE se.run_id = ? AND s.product_id IN ({marks})",
            (run_id, *product_ids),
        )
    }
    if verifier_id in first_counters:
        raise Conflict(
            "a recount goes to a verifier who did not count these SKUs the first time",
            code="RECOUNT_SAME_VERIFIER",
        )
    return create_session(
        conn,
        log,
        actor,
        run_id,
        verifier_id=verifier_id,
        rack_codes=rack_codes,
        product_ids=product_ids,
        kind="recount",
    )


def decide(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    sku: str,
    decision: str,
    reason_code: str,
    note: str = "",
) -> dict[str, Any]:
    """Record what happens to a variance line: applied, skipped, or (for an uncounted SKU) zeroed."""
    run = get_run(conn, run_id)
    if run["status"] not in ("IN_PROGRESS", "COMPLETED"):
        raise Conflict(f"a {run['status']} run takes no decisions", code="RUN_NOT_IN_PROGRESS")
    if decision not in DECISIONS:
        raise ValidationFailed(f"decision must be one of {', '.join(DECISIONS)}", details={"field": "decision"})
    if reason_code not in REASON_CODES:
        raise ValidationFailed(
            f"reason_code must be one of {', '.join(REASON_CODES)}", details={"field": "reason_code"}
        )
    row = conn.execute("SELECT product_id FROM products WHERE sku = ? COLLATE NOCASE", (sku.strip(),)).fetchone()
    if row is None:
        raise NotFound(f"product {sku} does not exist", code="PRODUCT_NOT_FOUND")
    payload = {
        "run_id": run_id,
        "product_id": row[0],
        "decision": decision,
        "reason_code": reason_code,
        "note": note.strip()[:500],
        "by": actor.user_id,
    }
    log.record(conn, "variance.decided", payload)
    return payload


@projector("variance.decided")
def _variance_decided(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO variance_decisions"
        " (run_id, product_id, decision, reason_code, note, by_user, at_ms, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET decision = excluded.decision,"
        " reason_code = excluded.reason_code, note = excluded.note, by_user = excluded.by_user, at_ms = excluded.at_ms,"
        " hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (variance_decisions.hlc, variance_decisions.writer_id)",
        (
            p["run_id"],
            p["product_id"],
            p["decision"],
            p["reason_code"],
            p["note"],
            p["by"],
            physical_ms(event.hlc),
            event.hlc,
            event.writer_id,
        ),
    )
