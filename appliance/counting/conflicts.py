"""Conflicts a supervisor resolves, found by looking at the counts rather than stored as they arrive.

Because each kind is a query over CRDT state, the queue is the same on every replica whatever order
the events came in, a condition that clears (the damage corrected, the mfg date fixed) leaves the
queue by itself, and nothing on the scan path waits for it. A conflict's id names its subject, so a
resolution recorded on one box applies to the same conflict everywhere.

Kinds: ``serial_duplicate`` (a serial on two items of one run), ``damage_exceeds`` (damage qty above
the verified qty), ``mfg_date_impossible`` (in the future when recorded, or before 1970),
``barcode_mismatch`` (a scan made while verifying one product resolves to another), ``late_lease``
(scans made under a rack lease that had already passed to someone else; rejecting them stops them
counting).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from typing import Any

from appliance.auth.people import User
from appliance.counting import items
from appliance.errors import NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, projection_tables, projector
from replication.wire.codec import Event, unpack

projection_tables("conflict_resolutions")

ACTIONS = ("accept", "reject", "edit")

_SERIALS = """
    WITH live AS (
        SELECT DISTINCT se.run_id, a.serial, a.session_id, a.product_id
        FROM counted_serial_adds a
        LEFT JOIN serial_removes r ON r.tag = a.tag
        JOIN sessions se ON se.session_id = a.session_id
        WHERE r.tag IS NULL AND se.status != 'VOID' {run_filter}
    )
    SELECT run_id, serial, json_group_array(json_object('session_id', session_id, 'product_id', product_id)) AS claims
    FROM live GROUP BY run_id, serial HAVING count(*) > 1
"""
_DAMAGE = """
    WITH d AS (
        SELECT session_id, product_id, CAST(total(p - n) AS INTEGER) AS damage
        FROM counted_damage GROUP BY session_id, product_id
    ), q AS (
        SELECT c.session_id, s.product_id, CAST(total(c.p - c.n) AS INTEGER) AS qty
        FROM counted_scans c JOIN scan_codes s ON s.code = c.code
        WHERE s.product_id IS NOT NULL GROUP BY c.session_id, s.product_id
    )
    SELECT se.run_id, d.session_id, d.product_id, d.damage, coalesce(q.qty, 0) AS qty
    FROM d JOIN sessions se ON se.session_id = d.session_id
    LEFT JOIN q ON q.session_id = d.session_id AND q.product_id = d.product_id
    WHERE d.damage > coalesce(q.qty, 0) AND se.status != 'VOID' {run_filter}
"""
_MFG = """
    SELECT se.run_id, a.session_id, a.product_id, a.value
    FROM item_attrs a JOIN sessions se ON se.session_id = a.session_id
    WHERE a.name = 'mfg_date' AND a.value IS NOT NULL AND se.status != 'VOID'
      AND (a.value > date((a.hlc >> 16) / 1000, 'unixepoch') OR a.value < '1970-01-01') {run_filter}
"""
# Late: the rack has passed to a newer lease, or the scans were made after the lock authority moved
# past the epoch of their token (the high half of it): the store no longer honours such a lease. The
# current token is then where the next epoch's tokens start, the same however often it moves again.
_LATE_LEASE = """
    SELECT se.run_id, ls.session_id, ls.rack_id, r.code AS rack, ls.writer_id, ls.token,
           CASE WHEN ls.token < rs.token THEN rs.token
                ELSE (SELECT min(epoch) << 32 FROM lock_designations WHERE epoch > ls.token >> 32) END AS current_token,
           CAST(total(ls.qty) AS INTEGER) AS qty, json_group_array(json_array(ls.code, ls.qty)) AS codes
    FROM lease_scans ls
    JOIN sessions se ON se.session_id = ls.session_id
    JOIN rack_states rs ON rs.run_id = se.run_id AND rs.rack_id = ls.rack_id
    LEFT JOIN racks r ON r.rack_id = ls.rack_id
    WHERE (ls.token < rs.token
           OR ls.last_hlc > (SELECT min(d.hlc) FROM lock_designations d WHERE d.epoch > ls.token >> 32))
      AND se.status != 'VOID' {run_filter}
    GROUP BY ls.session_id, ls.rack_id, ls.writer_id, ls.token
"""
_BARCODE = """
    SELECT se.run_id, c.session_id, c.event_id, c.code, c.product_id AS claimed, s.product_id AS resolved, c.qty
    FROM scan_claims c JOIN scan_codes s ON s.code = c.code JOIN sessions se ON se.session_id = c.session_id
    WHERE s.product_id IS NOT NULL AND s.product_id != c.product_id AND se.status != 'VOID'
      AND c.event_id NOT IN (SELECT undoes FROM scan_undos) {run_filter}
"""


def _query(conn: sqlite3.Connection, sql: str, run_id: str | None) -> list[sqlite3.Row]:
    if run_id is None:
        return conn.execute(sql.format(run_filter="")).fetchall()
    return conn.execute(sql.format(run_filter="AND se.run_id = ?"), (run_id,)).fetchall()


KINDS = ("serial_duplicate", "damage_exceeds", "mfg_date_impossible", "late_lease", "barcode_mismatch")


def detect(conn: sqlite3.Connection, run_id: str | None = None, kinds: Collection[str] = KINDS) -> list[dict[str, Any]]:
    """The conflicts of ``kinds`` (all by default) that the counts show now."""
    found: list[dict[str, Any]] = []
    for row in _query(conn, _SERIALS, run_id) if "serial_duplicate" in kinds else ():
        found.append(
            {
                "conflict_id": f"serial_duplicate:{row['run_id']}:{row['serial']}",
                "kind": "serial_duplicate",
                "run_id": row["run_id"],
                "serial": row["serial"],
                "claims": json.loads(row["claims"]),
            }
        )
    for row in _query(conn, _DAMAGE, run_id) if "damage_exceeds" in kinds else ():
        found.append(
            {
                "conflict_id": f"damage_exceeds:{row['session_id']}:{row['product_id']}",
                "kind": "damage_exceeds",
                "run_id": row["run_id"],
                "session_id": row["session_id"],
                "product_id": row["product_id"],
                "damage_qty": row["damage"],
                "qty": row["qty"],
            }
        )
    for row in _query(conn, _MFG, run_id) if "mfg_date_impossible" in kinds else ():
        found.append(
            {
                "conflict_id": f"mfg_date_impossible:{row['session_id']}:{row['product_id']}",
                "kind": "mfg_date_impossible",
                "run_id": row["run_id"],
                "session_id": row["session_id"],
                "product_id": row["product_id"],
                "mfg_date": row["value"],
            }
        )
    for row in _query(conn, _LATE_LEASE, run_id) if "late_lease" in kinds else ():
        found.append(
            {
                "conflict_id": f"late_lease:{row['session_id']}:{row['rack_id']}:{row['writer_id']}:{row['token']}",
                "kind": "late_lease",
                "run_id": row["run_id"],
                "session_id": row["session_id"],
                "rack_id": row["rack_id"],
                "rack": row["rack"],
                "writer_id": row["writer_id"],
                "token": row["token"],
                "current_token": row["current_token"],
                "qty": row["qty"],
                "codes": json.loads(row["codes"]),
            }
        )
    for row in _query(conn, _BARCODE, run_id) if "barcode_mismatch" in kinds else ():
        found.append(
            {
                "conflict_id": f"barcode_mismatch:{row['event_id']}",
                "kind": "barcode_mismatch",
                "run_id": row["run_id"],
                "session_id": row["session_id"],
                "event_id": row["event_id"],
                "code": row["code"],
                "product_id": row["claimed"],
                "resolves_to": row["resolved"],
                "qty": row["qty"],
            }
        )
    return found


def fingerprint(conflict: dict[str, Any]) -> str:
    """The part of a conflict a supervisor judged: the numbers, dates or claims it showed."""
    keys = {
        "serial_duplicate": ("claims",),
        "damage_exceeds": ("damage_qty", "qty"),
        "mfg_date_impossible": ("mfg_date",),
        "barcode_mismatch": ("qty",),
        "late_lease": ("qty", "current_token"),
    }[conflict["kind"]]
    return json.dumps([conflict[key] for key in keys], sort_keys=True)


def conflicts(conn: sqlite3.Connection, run_id: str | None = None, status: str = "open") -> list[dict[str, Any]]:
    """The queue: detected conflicts with their resolution, filtered by open / resolved / all."""
    resolutions = {
        r["conflict_id"]: dict(r)
        for r in conn.execute("SELECT conflict_id, fingerprint, action, reason, by_user, hlc FROM conflict_resolutions")
    }
    out = []
    for conflict in detect(conn, run_id):
        resolution = resolutions.get(conflict["conflict_id"])
        if resolution is not None and resolution.pop("fingerprint") != fingerprint(conflict):
            resolution = None  # decided on other numbers than the ones now in the count: open again
        conflict["status"] = "resolved" if resolution else "open"
        conflict["resolution"] = resolution
        if status == "all" or conflict["status"] == status:
            out.append(conflict)
    return out


def resolve(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    conflict_id: str,
    *,
    action: str,
    reason: str = "",
    edits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accept, reject (with a reason; the flagged data is taken back) or edit and accept."""
    if action not in ACTIONS:
        raise ValidationFailed("action must be accept, reject or edit", details={"field": "action"})
    if action == "reject" and not reason.strip():
        raise ValidationFailed("rejecting needs a reason", code="REASON_REQUIRED")
    current = {c["conflict_id"]: c for c in conflicts(conn, status="all")}
    conflict = current.get(conflict_id)
    if conflict is None:
        raise NotFound("no such conflict (it may have cleared by itself)", code="CONFLICT_NOT_FOUND")
    edits = edits or {}
    if action == "reject":
        _take_back(conn, log, actor, conflict, edits)
    elif action == "edit":
        _apply_edits(conn, log, actor, conflict, edits)
    log.record(
        conn,
        "conflict.resolved",
        {
            "conflict_id": conflict_id,
            "kind": conflict["kind"],
            "fingerprint": fingerprint(conflict),
            "action": action,
            "reason": reason.strip(),
            "by": actor.user_id,
        },
    )
    return {"conflict_id": conflict_id, "action": action}


def _take_back(
    conn: sqlite3.Connection, log: EventLog, actor: User, conflict: dict[str, Any], edits: dict[str, Any]
) -> None:
    kind = conflict["kind"]
    if kind == "barcode_mismatch":
        items.undo_scan(conn, log, actor, conflict["session_id"], conflict["event_id"], supervising=True)
    elif kind == "damage_exceeds":
        items.set_damage(conn, log, actor, conflict["session_id"], conflict["product_id"], 0, supervising=True)
    elif kind == "mfg_date_impossible":
        items.set_attributes(
            conn,
            log,
            actor,
            conflict["session_id"],
            conflict["product_id"],
            {"mfg_date": None},
            supervising=True,
        )
    elif kind == "serial_duplicate":
        claim = _claim(conflict, edits)
        items.remove_serial(
            conn, log, actor, claim["session_id"], claim["product_id"], conflict["serial"], supervising=True
        )
    elif kind == "late_lease":
        log.record(
            conn,
            "lease_scans.voided",
            {
                "conflict_id": conflict["conflict_id"],
                "session_id": conflict["session_id"],
                "rack_id": conflict["rack_id"],
                "writer_id": conflict["writer_id"],
                "codes": conflict["codes"],
                "by": actor.user_id,
            },
        )


@projector("lease_scans.voided")
def _lease_scans_voided(conn: sqlite3.Connection, event: Event) -> None:
    # Scans made under a lease that had passed on no longer count: negated once, on their own entries.
    p = event.payload
    if conn.execute("INSERT OR IGNORE INTO lease_voids (conflict_id) VALUES (?)", (p["conflict_id"],)).rowcount:
        for code, qty in p["codes"]:
            conn.execute(
                "INSERT INTO scan_counts (session_id, rack_id, code, writer_id, p, n, u, last_hlc)"
                " VALUES (?, ?, ?, ?, 0, ?, ?, 0) ON CONFLICT DO UPDATE SET n = n + excluded.n, u = u + excluded.u",
                (p["session_id"], p["rack_id"], code, p["writer_id"], qty, qty),
            )


def _apply_edits(
    conn: sqlite3.Connection, log: EventLog, actor: User, conflict: dict[str, Any], edits: dict[str, Any]
) -> None:
    kind = conflict["kind"]
    if kind == "damage_exceeds" and ("damage_qty" in edits or "qty" in edits):
        if "qty" in edits:
            items.set_quantity(
                conn,
                log,
                actor,
                conflict["session_id"],
                conflict["product_id"],
                edits["qty"],
                supervising=True,
            )
        if "damage_qty" in edits:
            items.set_damage(
                conn,
                log,
                actor,
                conflict["session_id"],
                conflict["product_id"],
                edits["damage_qty"],
                supervising=True,
            )
    elif kind == "mfg_date_impossible" and "mfg_date" in edits:
        items.set_attributes(
            conn,
            log,
            actor,
            conflict["session_id"],
            conflict["product_id"],
            {"mfg_date": edits["mfg_date"]},
            supervising=True,
        )
    elif kind == "barcode_mismatch" and "count_as" in edits:
        # Count the scan toward the product the verifier meant ("count_as": "claimed") or leave it
        # on the product its barcode names ("count_as": "scanned").
        if edits["count_as"] == "claimed":
            items.undo_scan(conn, log, actor, conflict["session_id"], conflict["event_id"], supervising=True)
            current = items.item_quantity(conn, conflict["session_id"], conflict["product_id"])
            items.set_quantity(
                conn,
                log,
                actor,
                conflict["session_id"],
                conflict["product_id"],
                current + conflict["qty"],
                supervising=True,
            )
        elif edits["count_as"] != "scanned":
            raise ValidationFailed("count_as must be 'claimed' or 'scanned'", details={"field": "count_as"})
    elif kind == "serial_duplicate" and "serial" in edits:
        claim = _claim(conflict, edits)
        items.remove_serial(
            conn, log, actor, claim["session_id"], claim["product_id"], conflict["serial"], supervising=True
        )
        items.add_serial(conn, log, actor, claim["session_id"], claim["product_id"], edits["serial"], supervising=True)
    else:
        raise ValidationFailed(f"no edit given that fits a {kind} conflict", code="EDIT_REQUIRED", details=edits)


def _claim(conflict: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    for claim in conflict["claims"]:
        if claim["session_id"] == edits.get("session_id"):
            return dict(claim)
    raise ValidationFailed(
        "name the session whose claim to change (edits.session_id)",
        code="EDIT_REQUIRED",
        details=conflict["claims"],
    )


@projector("conflict.resolved")
def _conflict_resolved(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO conflict_resolutions (conflict_id, fingerprint, action, reason, by_user, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET fingerprint = excluded.fingerprint, action = excluded.action,"
        " reason = excluded.reason, by_user = excluded.by_user,"
        " hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (conflict_resolutions.hlc, conflict_resolutions.writer_id)",
        (p["conflict_id"], p.get("fingerprint", ""), p["action"], p["reason"], p["by"], event.hlc, event.writer_id),
    )


def racks_of(conn: sqlite3.Connection, conflict: dict[str, Any]) -> set[str]:
    """The racks a conflict's scans were made on (its session's racks when the scans name none)."""
    kind = conflict["kind"]
    pairs: list[tuple[str, str]] = []
    racks: set[str] = set()
    if kind == "late_lease":
        racks.add(conflict["rack_id"])
    elif kind == "barcode_mismatch":
        row = conn.execute("SELECT payload FROM events WHERE event_id = ?", (conflict["event_id"],)).fetchone()
        if row is not None:
            racks.add(unpack(row[0]).get("rack_id") or "")
    elif kind == "serial_duplicate":
        pairs = [(claim["session_id"], claim["product_id"]) for claim in conflict["claims"]]
    else:
        pairs = [(conflict["session_id"], conflict["product_id"])]
    for session_id, product_id in pairs:
        racks.update(
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT c.rack_id FROM scan_counts c JOIN scan_codes s ON s.code = c.code"
                " WHERE c.session_id = ? AND s.product_id = ? AND c.rack_id != ''",
                (session_id, product_id),
            )
        )
    racks.discard("")
    if not racks:
        sessions = {s for s, _ in pairs} or {str(conflict.get("session_id"))}
        for session_id in sessions:
            racks.update(
                r[0] for r in conn.execute("SELECT rack_id FROM session_racks WHERE session_id = ?", (session_id,))
            )
    return racks


def open_by_rack(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """Open conflicts per rack of a run, for the floor map."""
    counts: dict[str, int] = {}
    for conflict in conflicts(conn, run_id):
        for rack_id in racks_of(conn, conflict):
            counts[rack_id] = counts.get(rack_id, 0) + 1
    return counts
