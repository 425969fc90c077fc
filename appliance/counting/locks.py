"""Rack claims and session locks: leases with fencing tokens, granted by the store's lock authority.

A lease lasts ``lease_ttl_s`` from its last renewal (a heartbeat) and lapses by itself when a device
vanishes. Every grant takes a fencing token, ``epoch << 32 | counter``, monotonic for the store;
scans carry the token of the lease they were made under, so scans arriving late under a lease that
has since passed to someone else are recognised (stored, and flagged as ``late_lease`` conflicts).

Leases are the authority's own state (not events, not replicated: DESIGN §6); which box is the
authority, and the epoch in the high half of every token, is replicated (``appliance.counting.authority``),
and a lease of an earlier epoch is no longer honoured once the authority has moved. Every rack *move* —
claim, start, pause, resume, finish, release, force release, re-verify — is an event, so who did what
and when is in the log, and the rack's state is a fold that replicas agree on: a move counts only if
its token is the newest seen for the rack (ties by HLC).

    available → claimed → active ⇄ paused → completed → re-verify → claimed …
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from appliance.auth.people import User
from appliance.counting.runs import get_run
from appliance.counting.sessions import MANAGER_ROLES, get_session
from appliance.errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from appliance.store.db import insert_rows
from appliance.store.eventlog import EventLog, projection_tables, projector, run_projector
from replication.wire.codec import Event
from replication.wire.hlc import wall_ms

projection_tables("rack_states", "lease_scans", "lease_voids")

HELD = ("claimed", "active", "paused")
# action: (states it may start from, state it leads to, event type)
RACK_MOVES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "start": (("claimed",), "active", "rack.started"),
    "pause": (("active",), "paused", "rack.paused"),
    "resume": (("paused",), "active", "rack.resumed"),
    "finish": (("claimed", "active", "paused"), "completed", "rack.finished"),
    "release": (HELD, "available", "rack.released"),
}
EVENT_STATE = {
    "rack.claimed": "claimed",
    "rack.started": "active",
    "rack.paused": "paused",
    "rack.resumed": "active",
    "rack.finished": "completed",
    "rack.released": "available",
    "rack.reverify_requested": "re-verify",
}


def _authority(authority: bool) -> None:
    if not authority:
        raise Unavailable(
            "this box does not grant locks for the store; claim on the lock authority box",
            code="NOT_LOCK_AUTHORITY",
        )


def next_token(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE lock_authority SET counter = counter + 1 WHERE singleton = 1 RETURNING epoch, counter"
    ).fetchone()
    return int(row[0]) << 32 | int(row[1])


def _rack(conn: sqlite3.Connection, code: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT rack_id, code FROM racks WHERE code = ?", (code.strip().upper(),)
    ).fetchone()
    if row is None:
        raise NotFound(f"rack {code} does not exist", code="RACK_NOT_FOUND")
    return row


def _username(conn: sqlite3.Connection, user_id: str | None) -> str:
    row = conn.execute("SELECT display_name FROM users WHERE user_id = ?", (user_id,)).fetchone()
    return str(row[0]) if row else str(user_id)


def _payload(rack: sqlite3.Row, run_id: str, lease: dict[str, Any], actor: User, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "rack_id": rack["rack_id"],
        "rack": rack["code"],
        "session_id": lease["session_id"],
        "user_id": lease["user_id"],
        "user_name": lease.get("user_name", ""),
        "device_id": lease["device_id"],
        "token": lease["token"],
        "by": actor.user_id,
        **extra,
    }


# -- racks ----------------------------------------------------------------------------------------
def claim_rack(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    *,
    run_id: str,
    rack_code: str,
    session_id: str,
    device_id: str | None,
    ttl_ms: int,
    authority: bool,
) -> dict[str, Any]:
    """Claim a rack for a session; exactly one claimant wins, the others learn who holds it."""
    _authority(authority)
    rack = _rack(conn, rack_code)
    if get_run(conn, run_id)["status"] != "IN_PROGRESS":
        raise Conflict("racks are claimed while the run is in progress", code="RUN_NOT_IN_PROGRESS")
    session = get_session(conn, session_id)
    if session["run_id"] != run_id:
        raise ValidationFailed("the session belongs to another run", code="SESSION_NOT_IN_RUN")
    if actor.role not in MANAGER_ROLES and session["verifier_id"] != actor.user_id:
        raise Forbidden("this session belongs to another verifier", code="SESSION_NOT_YOURS")
    if session["status"] not in ("ASSIGNED", "IN_PROGRESS"):
        raise Conflict(f"a {session['status']} session claims no racks", code="SESSION_NOT_IN_PROGRESS")
    own = [r[0] for r in conn.execute("SELECT rack_id FROM session_racks WHERE session_id = ?", (session_id,))]
    if own and rack["rack_id"] not in own:
        raise Conflict(f"rack {rack['code']} is not part of this session", code="RACK_NOT_IN_SESSION")

    now = wall_ms()
    state = conn.execute(
        "SELECT state, token FROM rack_states WHERE run_id = ? AND rack_id = ?", (run_id, rack["rack_id"])
    ).fetchone()
    lease = conn.execute(
        "SELECT l.*, l.token >> 32 < (SELECT epoch FROM lock_authority) AS superseded FROM rack_leases l"
        " WHERE run_id = ? AND rack_id = ?",
        (run_id, rack["rack_id"]),
    ).fetchone()
    current = state["state"] if state else "available"
    # A lease granted before the lock authority moved is not honoured: the rack is free to claim.
    if lease is not None and lease["expires_at"] > now and current in HELD and not lease["superseded"]:
        if lease["user_id"] == actor.user_id and lease["device_id"] == device_id and lease["session_id"] == session_id:
            conn.execute(
                "UPDATE rack_leases SET expires_at = ? WHERE run_id = ? AND rack_id = ?",
                (now + ttl_ms, run_id, rack["rack_id"]),
            )
            return {
                "run_id": run_id,
                "rack": rack["code"],
                "token": lease["token"],
                "expires_at": now + ttl_ms,
                "state": current,
            }
        raise Conflict(
            f"rack {rack['code']} is claimed by {_username(conn, lease['user_id'])}",
            code="RACK_CLAIMED",
            details={
                "holder": lease["user_id"],
                "holder_name": _username(conn, lease["user_id"]),
                "device_id": lease["device_id"],
                "expires_at": lease["expires_at"],
            },
        )
    if current == "completed":
        raise Conflict(f"rack {rack['code']} is completed; a supervisor can ask for a re-verify", code="RACK_COMPLETED")
    token = next_token(conn)
    grant = {
        "session_id": session_id,
        "user_id": actor.user_id,
        "user_name": actor.display_name,
        "device_id": device_id,
        "token": token,
    }
    lapsed = state["token"] if state and current in HELD else None
    log.record(conn, "rack.claimed", _payload(rack, run_id, grant, actor, lapsed_token=lapsed))
    conn.execute(
        "INSERT OR REPLACE INTO rack_leases (run_id, rack_id, session_id, user_id, device_id, token, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run_id, rack["rack_id"], session_id, actor.user_id, device_id, token, now + ttl_ms),
    )
    return {"run_id": run_id, "rack": rack["code"], "token": token, "expires_at": now + ttl_ms, "state": "claimed"}


def move_rack(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    *,
    run_id: str,
    rack_code: str,
    action: str,
    ttl_ms: int,
    authority: bool,
) -> dict[str, Any]:
    """A move by the holder: start, pause, resume, finish or release, while the lease is live."""
    _authority(authority)
    if action not in RACK_MOVES:
        raise ValidationFailed(f"unknown rack action {action!r}", details={"field": "action"})
    starts, target, event_type = RACK_MOVES[action]
    rack = _rack(conn, rack_code)
    lease = conn.execute(
        "SELECT l.*, l.token >> 32 < (SELECT epoch FROM lock_authority) AS superseded FROM rack_leases l"
        " WHERE run_id = ? AND rack_id = ?",
        (run_id, rack["rack_id"]),
    ).fetchone()
    now = wall_ms()
    if lease is None or lease["user_id"] != actor.user_id:
        raise Forbidden(f"you do not hold rack {rack['code']}", code="NOT_RACK_HOLDER")
    if lease["expires_at"] <= now:
        raise Conflict(f"your lease on rack {rack['code']} lapsed; claim it again", code="LEASE_LAPSED")
    if lease["superseded"]:
        raise Conflict(
            f"your lease on rack {rack['code']} was granted before the lock authority moved; claim it again",
            code="LEASE_LAPSED",
        )
    state = conn.execute(
        "SELECT state FROM rack_states WHERE run_id = ? AND rack_id = ?", (run_id, rack["rack_id"])
    ).fetchone()
    current = state["state"] if state else "available"
    if current not in starts:
        raise Conflict(
            f"a {current} rack cannot {action}",
            code="RACK_INVALID_TRANSITION",
            details={"from": current, "action": action},
        )
    grant = {**dict(lease), "user_name": actor.display_name}
    log.record(conn, event_type, _payload(rack, run_id, grant, actor))
    if target in ("completed", "available"):
        conn.execute("DELETE FROM rack_leases WHERE run_id = ? AND rack_id = ?", (run_id, rack["rack_id"]))
    else:
        conn.execute(
            "UPDATE rack_leases SET expires_at = ? WHERE run_id = ? AND rack_id = ?",
            (now + ttl_ms, run_id, rack["rack_id"]),
        )
    return {"run_id": run_id, "rack": rack["code"], "token": lease["token"], "state": target}


def supervise_rack(
    conn: sqlite3.Connection, log: EventLog, actor: User, *, run_id: str, rack_code: str, action: str, reason: str
) -> dict[str, Any]:
    """A supervisor's move, always with a reason: force release a held rack, or ask for a re-verify."""
    if not reason.strip():
        raise ValidationFailed("this needs a reason", code="REASON_REQUIRED")
    rack = _rack(conn, rack_code)
    state = conn.execute(
        "SELECT * FROM rack_states WHERE run_id = ? AND rack_id = ?", (run_id, rack["rack_id"])
    ).fetchone()
    current = state["state"] if state else "available"
    if action == "force_release" and current in HELD:
        event_type, extra = "rack.released", {"forced": True}
    elif action == "reverify" and current == "completed":
        event_type, extra = "rack.reverify_requested", {}
    else:
        raise Conflict(
            f"a {current} rack cannot be given {action}",
            code="RACK_INVALID_TRANSITION",
            details={"from": current, "action": action},
        )
    grant = {
        "session_id": state["session_id"],
        "user_id": state["user_id"],
        "device_id": state["device_id"],
        "token": state["token"],
        "user_name": _username(conn, state["user_id"]),
    }
    log.record(conn, event_type, _payload(rack, run_id, grant, actor, reason=reason.strip(), **extra))
    conn.execute("DELETE FROM rack_leases WHERE run_id = ? AND rack_id = ?", (run_id, rack["rack_id"]))
    target = "available" if action == "force_release" else "re-verify"
    return {"run_id": run_id, "rack": rack["code"], "state": target}


def renew(conn: sqlite3.Connection, *, ttl_ms: int, device_id: str | None = None, user_id: str | None = None) -> int:
    """Heartbeat: push out every live lease (racks and sessions) of a device or a person."""
    now = wall_ms()
    column, value = ("device_id", device_id) if device_id else ("user_id", user_id)
    renewed = conn.execute(
        f"UPDATE rack_leases SET expires_at = ? WHERE {column} = ? AND expires_at > ?", (now + ttl_ms, value, now)
    ).rowcount
    renewed += conn.execute(
        f"UPDATE session_locks SET expires_at = ? WHERE {column} = ? AND expires_at > ?", (now + ttl_ms, value, now)
    ).rowcount
    return renewed


def lease_token(conn: sqlite3.Connection, run_id: str, rack_id: str, user_id: str) -> int | None:
    """The token of the live lease this person holds on the rack, to stamp on their scans."""
    row = conn.execute(
        "SELECT token FROM rack_leases WHERE run_id = ? AND rack_id = ? AND user_id = ? AND expires_at > ?",
        (run_id, rack_id, user_id, wall_ms()),
    ).fetchone()
    return int(row[0]) if row else None


# -- session locks (get / lock / release) ---------------------------------------------------------
def session_lock(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT l.*, u.display_name FROM session_locks l LEFT JOIN users u ON u.user_id = l.user_id"
        " WHERE l.session_id = ? AND l.expires_at > ? AND l.token >> 32 >= (SELECT epoch FROM lock_authority)",
        (session_id, wall_ms()),
    ).fetchone()
    if row is None:
        return None
    return {
        "session_id": session_id,
        "user_id": row["user_id"],
        "holder_name": row["display_name"],
        "device_id": row["device_id"],
        "token": row["token"],
        "expires_at": row["expires_at"],
    }


def lock_session(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    *,
    session_id: str,
    device_id: str,
    ttl_ms: int,
    authority: bool,
) -> dict[str, Any]:
    """One device counts a session at a time; the error says whether it is yours elsewhere or another's."""
    _authority(authority)
    session = get_session(conn, session_id)
    if actor.role not in MANAGER_ROLES and session["verifier_id"] != actor.user_id:
        raise Forbidden("this session belongs to another verifier", code="SESSION_NOT_YOURS")
    held = session_lock(conn, session_id)
    now = wall_ms()
    if held is not None:
        if held["user_id"] == actor.user_id and held["device_id"] == device_id:
            conn.execute("UPDATE session_locks SET expires_at = ? WHERE session_id = ?", (now + ttl_ms, session_id))
            return {**held, "expires_at": now + ttl_ms}
        details = {key: held[key] for key in ("user_id", "holder_name", "device_id", "expires_at")}
        if held["user_id"] == actor.user_id:
            raise Conflict(
                "you hold this session on another device; release it there first",
                code="SESSION_LOCKED_ON_OTHER_DEVICE",
                details=details,
            )
        raise Conflict(
            f"this session is held by {held['holder_name']}", code="SESSION_LOCKED_BY_OTHER_USER", details=details
        )
    token = next_token(conn)
    conn.execute(
        "INSERT OR REPLACE INTO session_locks (session_id, user_id, device_id, token, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (session_id, actor.user_id, device_id, token, now + ttl_ms),
    )
    log.record(
        conn,
        "session.locked",
        {
            "session_id": session_id,
            "user_id": actor.user_id,
            "device_id": device_id,
            "token": token,
            "by": actor.user_id,
        },
    )
    return session_lock(conn, session_id) or {}


def release_session(
    conn: sqlite3.Connection, log: EventLog, actor: User, *, session_id: str, reason: str = "", force: bool = False
) -> None:
    held = session_lock(conn, session_id)
    if held is None:
        raise NotFound("this session is not locked", code="SESSION_NOT_LOCKED")
    if force:
        if not reason.strip():
            raise ValidationFailed("a force release needs a reason", code="REASON_REQUIRED")
    elif held["user_id"] != actor.user_id:
        raise Forbidden("only the holder releases a session lock (or a supervisor forces it)", code="NOT_LOCK_HOLDER")
    conn.execute("DELETE FROM session_locks WHERE session_id = ?", (session_id,))
    log.record(
        conn,
        "session.unlocked",
        {
            "session_id": session_id,
            "token": held["token"],
            "forced": force,
            "reason": reason.strip(),
            "by": actor.user_id,
        },
    )


# -- projections ----------------------------------------------------------------------------------
def _rack_moved(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO rack_states (run_id, rack_id, state, session_id, user_id, device_id, token, hlc, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET state = excluded.state,"
        " session_id = excluded.session_id, user_id = excluded.user_id, device_id = excluded.device_id,"
        " token = excluded.token, hlc = excluded.hlc, reason = excluded.reason"
        " WHERE (excluded.token, excluded.hlc) > (rack_states.token, rack_states.hlc)",
        (
            p["run_id"],
            p["rack_id"],
            EVENT_STATE[event.type],
            p["session_id"],
            p["user_id"],
            p["device_id"],
            p["token"],
            event.hlc,
            p.get("reason", ""),
        ),
    )


for _event_type in EVENT_STATE:
    projector(_event_type)(_rack_moved)


@run_projector("scan.recorded")
def _scans_under_lease(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """What each lease's scans added, one upsert per (lease, code) for a run of scans, and when the
    newest of them was made (a scan under a lease of an epoch the store has moved past is late only
    if it was made after the move)."""
    sums: dict[tuple[str, str, str, int, str], list[int]] = {}
    for event in events:
        p = event.payload
        if p.get("token") is None or not p.get("rack_id"):
            continue
        key = (p["session_id"], p["rack_id"], event.writer_id, p["token"], p["code"])
        entry = sums.get(key)
        if entry is None:
            sums[key] = [p["qty"], event.hlc]
        else:
            entry[0] += p["qty"]
            entry[1] = max(entry[1], event.hlc)
    if sums:
        insert_rows(
            conn,
            "INSERT INTO lease_scans (session_id, rack_id, writer_id, token, code, qty, last_hlc)",
            [(*key, qty, hlc) for key, (qty, hlc) in sums.items()],
            " ON CONFLICT DO UPDATE SET qty = qty + excluded.qty, last_hlc = max(last_hlc, excluded.last_hlc)",
        )


# -- queries --------------------------------------------------------------------------------------
def rack_board(conn: sqlite3.Connection, run_id: str, *, authority: bool = True) -> list[dict[str, Any]]:
    """Every rack of the run as a tile: its state (a lapsed lease shows as available), holder, units.

    Leases live at the lock authority. Another box holds copies only of the leases granted through
    it, so there a held rack with no lease copy shows as held (the replicated moves say so), and only
    a copy that ran out shows it lapsed."""
    get_run(conn, run_id)
    now = wall_ms()
    scope = {r[0] for r in conn.execute("SELECT rack_id FROM run_racks WHERE run_id = ?", (run_id,))}
    units = dict(
        conn.execute(
            "SELECT c.rack_id, CAST(total(c.p - c.n) AS INTEGER)"
            " FROM counted_scans c JOIN sessions s ON s.session_id = c.session_id"
            " WHERE s.run_id = ? AND s.status != 'VOID' AND c.rack_id != '' GROUP BY c.rack_id",
            (run_id,),
        ).fetchall()
    )
    rows = conn.execute(
        "SELECT r.rack_id, r.code, f.code AS floor, f.name AS floor_name, st.state, st.user_id, st.device_id,"
        " st.token, st.session_id, l.expires_at, l.token AS lease_token, u.display_name AS holder_name"
        " FROM racks r JOIN floors f ON f.floor_id = r.floor_id"
        " LEFT JOIN rack_states st ON st.run_id = ? AND st.rack_id = r.rack_id"
        " LEFT JOIN rack_leases l ON l.run_id = ? AND l.rack_id = r.rack_id"
        " LEFT JOIN users u ON u.user_id = st.user_id"
        " ORDER BY f.position, r.code",
        (run_id, run_id),
    )
    board = []
    for row in rows:
        if scope and row["rack_id"] not in scope:
            continue
        state = row["state"] or "available"
        # A lease copy for an older grant than the rack's latest move says nothing about the holder now.
        expires_at = row["expires_at"] if authority or row["lease_token"] == row["token"] else None
        lapsed = state in HELD and (
            expires_at <= now if expires_at is not None else authority  # no lease at all: lapsed at the authority
        )
        board.append(
            {
                "rack_id": row["rack_id"],
                "rack": row["code"],
                "floor": row["floor"],
                "floor_name": row["floor_name"],
                "state": "available" if lapsed else state,
                "lapsed": lapsed,
                "holder": None if lapsed or state not in HELD else row["user_id"],
                "holder_name": None if lapsed or state not in HELD else row["holder_name"],
                "device_id": None if lapsed or state not in HELD else row["device_id"],
                "token": row["token"],
                "expires_at": None if lapsed else expires_at,
                "units": units.get(row["rack_id"], 0),
            }
        )
    return board


def expired_leases(conn: sqlite3.Connection, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Leases that lapsed in (since, until]: the dashboard hears of them though no event marks them."""
    rows = conn.execute(
        "SELECT l.run_id, l.rack_id, r.code, l.user_id, l.device_id, l.token FROM rack_leases l"
        " JOIN racks r ON r.rack_id = l.rack_id WHERE l.expires_at > ? AND l.expires_at <= ?",
        (since_ms, until_ms),
    )
    return [dict(row) for row in rows]
