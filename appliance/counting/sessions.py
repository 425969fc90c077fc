"""Sessions: one verifier's count inside a run, over a set of racks (or, for a recount, of products).

Rules from the seeds: a user or a device never holds two active sessions; a session starts only in a
running run; a supervisor approves, voids, or sends a submitted session back for recount.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.auth.people import User
from appliance.counting.lifecycle import ACTIVE_SESSION, SESSION_ACTIONS, SESSION_RANK, TERMINAL_SESSION, session_can
from appliance.counting.runs import get_run, on_run_ended
from appliance.errors import Conflict, Forbidden, NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event

projection_tables("sessions", "session_racks", "session_products")

COUNTING_ROLES = ("verifier", "supervisor", "admin")
MANAGER_ROLES = ("supervisor", "admin")


def get_session(conn: sqlite3.Connection, session_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM sessions WHERE session_id = ? AND run_id IS NOT NULL", (session_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"session {session_id} does not exist", code="SESSION_NOT_FOUND")
    return row


def check_counter(conn: sqlite3.Connection, user_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT user_id, username, role FROM users WHERE user_id = ? AND active = 1", (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} does not exist", code="USER_NOT_FOUND")
    if row["role"] not in COUNTING_ROLES:
        raise ValidationFailed(f"a {row['role']} cannot count", code="USER_CANNOT_COUNT")
    return row


def _check_free(
    conn: sqlite3.Connection, verifier_id: str | None, device_id: str | None, except_session: str = ""
) -> None:
    marks = ", ".join("?" for _ in ACTIVE_SESSION)
    if verifier_id:
        busy = conn.execute(
            f"SELECT session_id FROM sessions WHERE verifier_id = ? AND status IN ({marks}) AND session_id != ?",
            (verifier_id, *ACTIVE_SESSION, except_session),
        ).fetchone()
        if busy:
            raise Conflict(
                "this verifier already holds an active session",
                code="VERIFIER_BUSY",
                details={"session_id": busy[0]},
            )
    if device_id:
        busy = conn.execute(
            f"SELECT session_id FROM sessions WHERE device_id = ? AND status IN ({marks}) AND session_id != ?",
            (device_id, *ACTIVE_SESSION, except_session),
        ).fetchone()
        if busy:
            raise Conflict(
                "this device already holds an active session",
                code="DEVICE_BUSY",
                details={"session_id": busy[0]},
            )


def _status(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session: sqlite3.Row,
    action: str,
    *,
    reason: str = "",
) -> None:
    target = SESSION_ACTIONS[action][1]
    if not session_can(action, session["status"]):
        raise Conflict(
            f"a {session['status']} session cannot {action.replace('_', ' ')}",
            code="SESSION_INVALID_TRANSITION",
            details={"from": session["status"], "to": target, "action": action},
        )
    payload: dict[str, Any] = {
        "session_id": session["session_id"],
        "status": target,
        "round": session["status_round"] + (1 if action == "send_back" else 0),
        "reason": reason,
        "by": actor.user_id,
    }
    if target in TERMINAL_SESSION:
        # What the supervisor signs: anything of the session beyond this is held (counting/held.py).
        payload["vector"] = closing_vector(conn, session["session_id"])
    log.record(conn, "session.status_changed", payload)


def closing_vector(conn: sqlite3.Connection, session_id: str) -> dict[str, int]:
    """The seqs of the session's writers this box holds: what a supervisor closing it now has seen."""
    return {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT w.writer_id, w.head_seq FROM session_writers s JOIN writers w ON w.writer_id = s.writer_id"
            " WHERE s.session_id = ?",
            (session_id,),
        )
    }


def _require_actor(actor: User, session: sqlite3.Row) -> None:
    """Verifiers act only on their own session; supervisors and admins on any."""
    if actor.role not in MANAGER_ROLES and session["verifier_id"] != actor.user_id:
        raise Forbidden("this session belongs to another verifier", code="SESSION_NOT_YOURS")


# -- commands -------------------------------------------------------------------------------------
def create_session(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    verifier_id: str | None = None,
    device_id: str | None = None,
    rack_codes: list[str] | None = None,
    product_ids: list[str] | None = None,
    kind: str = "count",
) -> str:
    run = get_run(conn, run_id)
    if run["status"] not in ("PLANNED", "IN_PROGRESS"):
        raise Conflict(f"a {run['status']} run takes no new sessions", code="RUN_NOT_OPEN")
    rack_ids: list[str] = []
    missing: list[str] = []
    for code in dict.fromkeys(c.strip().upper() for c in rack_codes or [] if c.strip()):
        row = conn.execute("SELECT rack_id FROM racks WHERE code = ?", (code,)).fetchone()
        if row is None:
            missing.append(code)
        else:
            rack_ids.append(row[0])
    if missing:
        raise ValidationFailed("some racks are not known to this store", code="UNKNOWN_RACK", details=missing)
    if verifier_id:
        check_counter(conn, verifier_id)
        _check_free(conn, verifier_id, device_id)
    session_id = new_id()
    log.record(
        conn,
        "session.created",
        {
            "session_id": session_id,
            "run_id": run_id,
            "kind": kind,
            "rack_ids": rack_ids,
            "product_ids": product_ids or [],
            "by": actor.user_id,
        },
    )
    if verifier_id:
        _assign(conn, log, actor, get_session(conn, session_id), verifier_id, device_id)
    return session_id


def _assign(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session: sqlite3.Row,
    verifier_id: str,
    device_id: str | None,
) -> None:
    log.record(
        conn,
        "session.assigned",
        {
            "session_id": session["session_id"],
            "verifier_id": verifier_id,
            "device_id": device_id,
            "by": actor.user_id,
        },
    )
    if session["status"] == "CREATED":
        _status(conn, log, actor, session, "assign")


def assign_session(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    *,
    verifier_id: str,
    device_id: str | None = None,
) -> None:
    """Assign, or reassign to another verifier or device; the new holder must be free."""
    session = get_session(conn, session_id)
    if session["status"] not in ("CREATED", "ASSIGNED", "IN_PROGRESS"):
        raise Conflict(f"a {session['status']} session cannot be reassigned", code="SESSION_NOT_ASSIGNABLE")
    check_counter(conn, verifier_id)
    _check_free(conn, verifier_id, device_id, except_session=session_id)
    _assign(conn, log, actor, session, verifier_id, device_id)


def start_session(conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str) -> None:
    session = get_session(conn, session_id)
    _require_actor(actor, session)
    if get_run(conn, session["run_id"])["status"] != "IN_PROGRESS":
        raise Conflict("the run has not started", code="RUN_NOT_IN_PROGRESS")
    _status(conn, log, actor, session, "start")


def submit_session(conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str) -> None:
    session = get_session(conn, session_id)
    _require_actor(actor, session)
    _status(conn, log, actor, session, "submit")


def approve_session(conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str) -> None:
    session = get_session(conn, session_id)
    if session["status"] == "SUBMITTED" and session["verifier_id"] == actor.user_id:
        raise Forbidden("a count is approved by someone other than its verifier", code="OWN_SESSION")
    _status(conn, log, actor, session, "approve")


def send_back_session(conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str, *, reason: str) -> None:
    """Return a submitted session to its verifier for a recount (a new round of the same session)."""
    session = get_session(conn, session_id)
    if not reason.strip():
        raise ValidationFailed("sending a session back needs a reason", code="REASON_REQUIRED")
    if session["status"] == "SUBMITTED":
        _check_free(conn, session["verifier_id"], session["device_id"], except_session=session_id)
    _status(conn, log, actor, session, "send_back", reason=reason.strip())


def void_session(conn: sqlite3.Connection, log: EventLog, actor: User, session_id: str, *, reason: str) -> None:
    session = get_session(conn, session_id)
    if not reason.strip():
        raise ValidationFailed("voiding a session needs a reason", code="REASON_REQUIRED")
    _status(conn, log, actor, session, "void", reason=reason.strip())


@on_run_ended
def void_open_sessions(conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str, reason: str) -> list[str]:
    """When a run is cancelled or force-completed, its unfinished sessions end too (VOID), so that
    nobody stays tied to a session of a run that is over."""
    voided = []
    for row in conn.execute(
        "SELECT * FROM sessions WHERE run_id = ? AND status NOT IN ('APPROVED', 'VOID')", (run_id,)
    ).fetchall():
        _status(conn, log, actor, row, "void", reason=reason)
        voided.append(row["session_id"])
    return voided


# -- projections ----------------------------------------------------------------------------------
def _ensure(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute("INSERT OR IGNORE INTO sessions (session_id) VALUES (?)", (session_id,))


@projector("session.created")
def _session_created(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    _ensure(conn, p["session_id"])
    conn.execute(
        "UPDATE sessions SET run_id = ?, kind = ?, created_by = ?, created_hlc = ? WHERE session_id = ?",
        (p["run_id"], p["kind"], p["by"], event.hlc, p["session_id"]),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO session_racks (session_id, rack_id) VALUES (?, ?)",
        [(p["session_id"], rack_id) for rack_id in p["rack_ids"]],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO session_products (session_id, product_id) VALUES (?, ?)",
        [(p["session_id"], product_id) for product_id in p["product_ids"]],
    )


@projector("session.assigned")
def _session_assigned(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    _ensure(conn, p["session_id"])
    conn.execute(
        "UPDATE sessions SET verifier_id = ?, device_id = ?, assign_hlc = ?, assign_writer = ?"
        " WHERE session_id = ? AND (assign_hlc, assign_writer) < (?, ?)",
        (
            p["verifier_id"],
            p["device_id"],
            event.hlc,
            event.writer_id,
            p["session_id"],
            event.hlc,
            event.writer_id,
        ),
    )


@projector("session.status_changed")
def _session_status_changed(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    rank = SESSION_RANK[p["status"]]
    _ensure(conn, p["session_id"])
    conn.execute(
        "UPDATE sessions SET status = ?, status_round = ?, status_rank = ?, status_reason = ?, status_by = ?,"
        " status_hlc = ?, status_writer = ? WHERE session_id = ?"
        " AND (status_round, status_rank, status_hlc, status_writer) < (?, ?, ?, ?)",
        (
            p["status"],
            p["round"],
            rank,
            p["reason"],
            p["by"],
            event.hlc,
            event.writer_id,
            p["session_id"],
            p["round"],
            rank,
            event.hlc,
            event.writer_id,
        ),
    )


# -- queries --------------------------------------------------------------------------------------
def session_dict(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    racks = conn.execute(
        "SELECT r.code, r.rack_id FROM session_racks s JOIN racks r ON r.rack_id = s.rack_id"
        " WHERE s.session_id = ? ORDER BY r.code",
        (row["session_id"],),
    ).fetchall()
    return {
        "session_id": row["session_id"],
        "run_id": row["run_id"],
        "kind": row["kind"],
        "verifier_id": row["verifier_id"],
        "device_id": row["device_id"],
        "status": row["status"],
        "round": row["status_round"],
        "status_reason": row["status_reason"],
        "racks": [r[0] for r in racks],
        "rack_ids": [r[1] for r in racks],  # in the order of "racks": what a device's scans name
    }


def list_sessions(
    conn: sqlite3.Connection, *, run_id: str | None = None, verifier_id: str | None = None
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM sessions WHERE run_id IS NOT NULL"
    args: list[Any] = []
    if run_id:
        sql += " AND run_id = ?"
        args.append(run_id)
    if verifier_id:
        sql += " AND verifier_id = ?"
        args.append(verifier_id)
    return [session_dict(conn, row) for row in conn.execute(sql + " ORDER BY created_hlc", args)]
