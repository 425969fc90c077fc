"""Events held for a supervisor: stored, shown, and counted only once a supervisor accepts them.

A handheld counts offline, so some of what it sends could not have been right when it arrives: the
session was approved or voided meanwhile, handed to another device or verifier, locked by another
device, or the person named in ``by`` was deactivated. Refusing those would block the device's chain
and lose a verifier's work; counting them would change a total a supervisor already signed. They are
kept, and held: every read of counts (``counted_scans``, ``counted_damage``, ``counted_serial_adds``)
leaves a held event's effect out until a supervisor accepts it, and an item's photos leave out a photo
a held event attached (its effect names the photo by its hash in ``code``).

Two rules decide what is held, and both give the same answer on every replica:

* **Closing.** Approving or voiding a session records the version vector of the session's writers
  as the box held them (``session.status_changed`` carries ``vector``). Any event of the session
  beyond that vector was not part of what the supervisor signed, whichever box it reached and in
  whatever order: it is held (``SESSION_APPROVED`` / ``SESSION_VOID``). The fold recomputes this when
  the closing arrives after the events, and when a concurrent status change wins the register.
* **Checked on arrival.** The box a device's batch reaches checks each event against the session
  there and then (``check_device_events``); what fails is held by an ``events.held`` event the box
  records in the same transaction, carrying each held event's effect, so replicas hold the very same
  events without judging them again.

A decision (``held.decided``) is a last-writer-wins register per event: accepted events count, rejected
ones never do, and either can be changed by a later decision.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from appliance.auth.people import User
from appliance.counting.codes import PRODUCT_CODE_PREFIX
from appliance.counting.sessions import MANAGER_ROLES
from appliance.errors import NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, projection_tables, projector, row_to_event, run_projector
from replication.wire import vectors
from replication.wire.codec import Event, pack

projection_tables("session_writers", "held_events", "held_decisions")

# The event types that write into a session, and so can be held.
SESSION_EVENT_TYPES = (
    "scan.recorded",
    "scan.undone",
    "count.adjusted",
    "damage.adjusted",
    "item.attributes_set",
    "serial.added",
    "serial.removed",
    "photo.attached",
)
_TYPE_MARKS = ", ".join("?" for _ in SESSION_EVENT_TYPES)
CLOSED_REASON = {"APPROVED": "SESSION_APPROVED", "VOID": "SESSION_VOID"}
DECISIONS = ("accepted", "rejected")
MAX_DECIDE = 1000


# -- effects ----------------------------------------------------------------------------------------
def effect(event: Event) -> dict[str, Any]:
    """What an event adds to the counts, in the terms the counted views subtract while it is held."""
    p = event.payload
    if event.type == "scan.recorded":
        return {
            "kind": "scan",
            "rack_id": p["rack_id"] or "",
            "code": p["code"],
            "entry_writer": event.writer_id,
            "dp": p["qty"],
            "dn": 0,
        }
    if event.type == "scan.undone":
        return {
            "kind": "scan",
            "rack_id": p["rack_id"] or "",
            "code": p["code"],
            "entry_writer": p["of_writer"],
            "dp": 0,
            "dn": p["qty"],
        }
    if event.type == "count.adjusted":
        delta = p["delta"]
        return {
            "kind": "scan",
            "rack_id": "",
            "code": PRODUCT_CODE_PREFIX + p["product_id"],
            "entry_writer": event.writer_id,
            "dp": max(delta, 0),
            "dn": max(-delta, 0),
        }
    if event.type == "damage.adjusted":
        delta = p["delta"]
        return {
            "kind": "damage",
            "product_id": p["product_id"],
            "entry_writer": event.writer_id,
            "dp": max(delta, 0),
            "dn": max(-delta, 0),
        }
    if event.type == "serial.added":
        return {"kind": "serial", "product_id": p["product_id"]}
    if event.type == "photo.attached":
        # Nothing to subtract from a count; the item's photos leave this one out while it is held.
        return {"kind": "none", "product_id": p["product_id"], "code": p["sha256"]}
    return {"kind": "none"}  # attributes and serial removals: flagged, nothing to subtract


def _hold(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO held_events (event_id, origin, session_id, writer_id, seq, type, reason, kind, rack_id,"
        " code, entry_writer, product_id, dp, dn, hlc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def described(event: Event, reason: str) -> dict[str, Any]:
    """A held event as ``events.held`` carries it: enough to leave its effect out without the event."""
    return {
        "event_id": event.event_id,
        "writer_id": event.writer_id,
        "seq": event.seq,
        "type": event.type,
        "session_id": event.payload["session_id"],
        "reason": reason,
        "hlc": event.hlc,
        "effect": effect(event),
    }


def _row(held: dict[str, Any], origin: str) -> tuple[Any, ...]:
    fx = held["effect"]
    return (
        held["event_id"],
        origin,
        held["session_id"],
        held["writer_id"],
        held["seq"],
        held["type"],
        held["reason"],
        fx["kind"],
        fx.get("rack_id", ""),
        fx.get("code", ""),
        fx.get("entry_writer", ""),
        fx.get("product_id", ""),
        fx.get("dp", 0),
        fx.get("dn", 0),
        held["hlc"],
    )


# -- the closing rule -----------------------------------------------------------------------------
def _closed(conn: sqlite3.Connection, session_ids: set[str]) -> dict[str, tuple[str, dict[str, int]]]:
    """Of these sessions, the closed ones: their closing reason and vector (usually one query, no rows)."""
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for session_id in session_ids:
        row = conn.execute(
            "SELECT status, closed_vector FROM sessions WHERE session_id = ? AND closed_vector IS NOT NULL",
            (session_id,),
        ).fetchone()
        if row is not None:
            out[session_id] = (CLOSED_REASON[row[0]], vectors.unpack(row[1]))
    return out


def _note_writers(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Remember who wrote into each session, and hold what arrives after the session closed."""
    pairs = {(e.payload["session_id"], e.writer_id) for e in events}
    conn.executemany("INSERT OR IGNORE INTO session_writers (session_id, writer_id) VALUES (?, ?)", pairs)
    closed = _closed(conn, {session_id for session_id, _ in pairs})
    if closed:
        _hold(
            conn,
            [
                _row(described(e, closed[e.payload["session_id"]][0]), "closed")
                for e in events
                if e.payload["session_id"] in closed and e.seq > closed[e.payload["session_id"]][1].get(e.writer_id, 0)
            ],
        )


@run_projector("scan.recorded")
def _scans_recorded(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    _note_writers(conn, events)


def _one(conn: sqlite3.Connection, event: Event) -> None:
    _note_writers(conn, [event])


for _type in SESSION_EVENT_TYPES[1:]:
    projector(_type)(_one)


@projector("session.status_changed")
def _status_changed(conn: sqlite3.Connection, event: Event) -> None:
    """Runs after the status register's own fold: if this event now holds the register, the held set
    follows it (a closing holds what came after; any other state, a send-back that won, holds none)."""
    session_id = event.payload["session_id"]
    row = conn.execute(
        "SELECT status, status_hlc, status_writer FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None or (row["status_hlc"], row["status_writer"]) != (event.hlc, event.writer_id):
        return  # an older status: the register did not move
    conn.execute("DELETE FROM held_events WHERE session_id = ? AND origin = 'closed'", (session_id,))
    reason = CLOSED_REASON.get(row["status"])
    vector = event.payload.get("vector")
    if reason is None or vector is None:  # vector None: closed before closings carried one; nothing held
        conn.execute("UPDATE sessions SET closed_vector = NULL WHERE session_id = ?", (session_id,))
        return
    # Packed canonically: the same bytes on every replica, whatever order the payload's map came in.
    conn.execute("UPDATE sessions SET closed_vector = ? WHERE session_id = ?", (pack(vector), session_id))
    rows = []
    for (writer_id,) in conn.execute(
        "SELECT writer_id FROM session_writers WHERE session_id = ?", (session_id,)
    ).fetchall():
        for stored in conn.execute(
            f"SELECT * FROM events WHERE writer_id = ? AND seq > ? AND type IN ({_TYPE_MARKS}) ORDER BY seq",
            (writer_id, vector.get(writer_id, 0), *SESSION_EVENT_TYPES),
        ):
            later = row_to_event(stored)
            if later.payload.get("session_id") == session_id:
                rows.append(_row(described(later, reason), "closed"))
    _hold(conn, rows)


# -- held on arrival ------------------------------------------------------------------------------
def hold_checked(conn: sqlite3.Connection, log: EventLog, held: list[tuple[Event, str]]) -> None:
    """Record that the box holds these just-stored events (one event for the batch)."""
    log.record(conn, "events.held", {"events": [described(e, reason) for e, reason in held]})


@projector("events.held")
def _events_held(conn: sqlite3.Connection, event: Event) -> None:
    _hold(conn, [_row(held, "checked") for held in event.payload["events"]])


# -- decisions ------------------------------------------------------------------------------------
def decide(
    conn: sqlite3.Connection, log: EventLog, actor: User, event_ids: list[str], decision: str, reason: str
) -> int:
    """A supervisor accepts (they count from now on) or rejects (they never count) held events."""
    if actor.role not in MANAGER_ROLES:
        raise ValidationFailed("only a supervisor or an admin decides held events", code="NOT_ALLOWED")
    if decision not in DECISIONS:
        raise ValidationFailed(f"decision must be one of {', '.join(DECISIONS)}", details={"field": "decision"})
    wanted = list(dict.fromkeys(event_ids))
    if not 1 <= len(wanted) <= MAX_DECIDE:
        raise ValidationFailed(f"name 1 to {MAX_DECIDE} held events", details={"field": "event_ids"})
    marks = ",".join("?" for _ in wanted)
    found = {r[0] for r in conn.execute(f"SELECT event_id FROM held_events WHERE event_id IN ({marks})", wanted)}
    missing = [e for e in wanted if e not in found]
    if missing:
        raise NotFound("some of these events are not held", code="NOT_HELD", details={"event_ids": missing[:20]})
    if decision == "rejected" and not reason.strip():
        raise ValidationFailed("rejecting held events needs a reason", code="REASON_REQUIRED")
    log.record(
        conn,
        "held.decided",
        {"event_ids": wanted, "decision": decision, "reason": reason.strip(), "by": actor.user_id},
    )
    return len(wanted)


@projector("held.decided")
def _held_decided(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.executemany(
        "INSERT INTO held_decisions (event_id, decision, reason, by_user, at_ms, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET decision = excluded.decision,"
        " reason = excluded.reason, by_user = excluded.by_user, at_ms = excluded.at_ms, hlc = excluded.hlc,"
        " writer_id = excluded.writer_id WHERE (excluded.hlc, excluded.writer_id) > (hlc, writer_id)",
        [
            (e, p["decision"], p["reason"], p["by"], event.occurred_at or 0, event.hlc, event.writer_id)
            for e in p["event_ids"]
        ],
    )


# -- reads ----------------------------------------------------------------------------------------
def held(
    conn: sqlite3.Connection, *, run_id: str | None = None, session_id: str | None = None, status: str = "open"
) -> list[dict[str, Any]]:
    """Held events with their decision: ``open`` (undecided), ``decided``, or ``all``."""
    sql = (
        "SELECT h.event_id, h.session_id, s.run_id, h.writer_id, w.name AS writer_name, h.seq, h.type,"
        " group_concat(DISTINCT h.reason) AS reasons, h.kind, h.rack_id, r.code AS rack, h.code, h.product_id,"
        " h.dp, h.dn, h.hlc, d.decision, d.reason AS decision_reason, d.by_user AS decided_by"
        " FROM held_events h JOIN sessions s ON s.session_id = h.session_id"
        " LEFT JOIN writers w ON w.writer_id = h.writer_id LEFT JOIN racks r ON r.rack_id = h.rack_id"
        " LEFT JOIN held_decisions d ON d.event_id = h.event_id WHERE 1"
    )
    args: list[Any] = []
    if run_id:
        sql += " AND s.run_id = ?"
        args.append(run_id)
    if session_id:
        sql += " AND h.session_id = ?"
        args.append(session_id)
    if status == "open":
        sql += " AND d.decision IS NULL"
    elif status == "decided":
        sql += " AND d.decision IS NOT NULL"
    elif status != "all":
        raise ValidationFailed("status must be open, decided or all", details={"field": "status"})
    sql += " GROUP BY h.event_id ORDER BY h.hlc, h.writer_id, h.seq"
    return [
        {
            "event_id": row["event_id"],
            "session_id": row["session_id"],
            "run_id": row["run_id"],
            "writer_id": row["writer_id"],
            "writer_name": row["writer_name"],
            "seq": row["seq"],
            "type": row["type"],
            "reasons": sorted(row["reasons"].split(",")),
            "rack_id": row["rack_id"],
            "rack": row["rack"],
            "code": row["code"] or None,
            "product_id": row["product_id"] or None,
            "qty": row["dp"] - row["dn"],
            "hlc": row["hlc"],
            "decision": row["decision"],
            "decision_reason": row["decision_reason"],
            "decided_by": row["decided_by"],
        }
        for row in conn.execute(sql, args)
    ]


def held_answer(conn: sqlite3.Connection, events: Sequence[Event]) -> list[dict[str, Any]]:
    """Which of these stored events are held, in a batch answer's terms (for a batch sent again)."""
    seqs = {e.event_id: e.seq for e in events}
    marks = ",".join("?" * len(seqs))
    rows = conn.execute(
        f"SELECT event_id, session_id, min(reason) FROM held_events WHERE event_id IN ({marks}) GROUP BY event_id",
        list(seqs),
    )
    return sorted(
        ({"seq": seqs[r[0]], "event_id": r[0], "session_id": r[1], "reason": r[2]} for r in rows),
        key=lambda h: h["seq"],
    )


def open_count(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute(
        "SELECT count(DISTINCT h.event_id) FROM held_events h LEFT JOIN held_decisions d ON d.event_id = h.event_id"
        " WHERE h.session_id = ? AND d.decision IS NULL",
        (session_id,),
    ).fetchone()
    return int(row[0])
