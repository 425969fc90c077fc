"""Count runs: create, edit, scope (directed lists), start with a frozen snapshot, complete, close, cancel.

Every command checks its gate against the current projections and records one event; the projector
folds events so that any replica, in any order, lands on the same row (header LWW, status by rank).
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Callable
from typing import Any

from appliance.auth.people import User
from appliance.counting.lifecycle import RUN_RANK, TERMINAL_SESSION, run_can_move
from appliance.counting.rollups import uncounted_without_decision
from appliance.errors import Conflict, NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event

projection_tables("runs", "run_products", "run_racks", "run_expected")

RUN_KINDS = ("hard", "directed")

# A run that ends early (cancelled, or completed by force) ends its open sessions in the same
# transaction. Sessions belong to a run, so ``sessions`` imports this module and registers how.
SessionEnder = Callable[[sqlite3.Connection, EventLog, User, str, str], object]
_session_enders: list[SessionEnder] = []


def on_run_ended(ender: SessionEnder) -> SessionEnder:
    _session_enders.append(ender)
    return ender


def _end_sessions(conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str, reason: str) -> None:
    for ender in _session_enders:
        ender(conn, log, actor, run_id, reason)


def get_run(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM runs WHERE run_id = ? AND kind IS NOT NULL", (run_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"run {run_id} does not exist", code="RUN_NOT_FOUND")
    return row


def _text(value: str, field: str, max_len: int = 200, *, required: bool = False) -> str:
    text = value.strip()
    if required and not text:
        raise ValidationFailed(f"{field} must not be empty", details={"field": field})
    if len(text) > max_len:
        raise ValidationFailed(f"{field} must be at most {max_len} characters", details={"field": field})
    return text


# -- commands -------------------------------------------------------------------------------------
def create_run(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    *,
    name: str,
    kind: str,
    notes: str = "",
    planned_start: str | None = None,
) -> str:
    if kind not in RUN_KINDS:
        raise ValidationFailed("kind must be 'hard' or 'directed'", details={"field": "kind"})
    run_id = new_id()
    log.record(
        conn,
        "run.created",
        {
            "run_id": run_id,
            "kind": kind,
            "name": _text(name, "name", required=True),
            "notes": _text(notes, "notes", 2000),
            "planned_start": planned_start,
            "by": actor.user_id,
        },
    )
    return run_id


def edit_run(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    name: str | None = None,
    notes: str | None = None,
    planned_start: str | None = None,
) -> None:
    run = get_run(conn, run_id)
    if run["status"] not in ("PLANNED", "IN_PROGRESS"):
        raise Conflict(f"a {run['status']} run can no longer be edited", code="RUN_NOT_EDITABLE")
    log.record(
        conn,
        "run.edited",
        {
            "run_id": run_id,
            "name": _text(name, "name", required=True) if name is not None else run["name"],
            "notes": _text(notes, "notes", 2000) if notes is not None else run["notes"],
            "planned_start": planned_start if planned_start is not None else run["planned_start"],
            "by": actor.user_id,
        },
    )


def add_scope(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    skus: list[str] | None = None,
    rack_codes: list[str] | None = None,
) -> dict[str, int]:
    """Add products (by SKU) and racks (by code) to what a run covers; unknown ones are errors."""
    run = get_run(conn, run_id)
    if run["status"] not in ("PLANNED", "IN_PROGRESS"):
        raise Conflict(f"a {run['status']} run's scope is fixed", code="RUN_NOT_EDITABLE")
    product_ids, missing_skus = _lookup(conn, "products", "sku", "product_id", skus or [])
    rack_ids, missing_racks = _lookup(conn, "racks", "code", "rack_id", rack_codes or [])
    if missing_skus or missing_racks:
        raise ValidationFailed(
            "some SKUs or racks are not known to this store",
            code="UNKNOWN_SCOPE",
            details={"skus": missing_skus, "racks": missing_racks},
        )
    if product_ids or rack_ids:
        log.record(
            conn,
            "run.scope_added",
            {"run_id": run_id, "product_ids": product_ids, "rack_ids": rack_ids, "by": actor.user_id},
        )
    return {"products": len(product_ids), "racks": len(rack_ids)}


def parse_scope_csv(data: bytes) -> tuple[list[str], list[str]]:
    """A directed list as CSV: a ``sku`` column and/or a ``rack`` column, header on line 1."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationFailed("the directed list must be UTF-8 CSV", code="BAD_FILE") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip().lower() for c in reader.fieldnames or []}
    if not columns & {"sku", "rack"}:
        raise ValidationFailed("the directed list needs a 'sku' or 'rack' column", code="BAD_FILE")
    skus: list[str] = []
    racks: list[str] = []
    for row in reader:
        clean = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        if clean.get("sku"):
            skus.append(clean["sku"])
        if clean.get("rack"):
            racks.append(clean["rack"].upper())
    return skus, racks


def _lookup(
    conn: sqlite3.Connection, table: str, key: str, id_column: str, values: list[str]
) -> tuple[list[str], list[str]]:
    found: list[str] = []
    missing: list[str] = []
    for value in dict.fromkeys(v.strip() for v in values if v.strip()):
        row = conn.execute(f"SELECT {id_column} FROM {table} WHERE {key} = ? COLLATE NOCASE", (value,)).fetchone()
        if row is None:
            missing.append(value)
        else:
            found.append(row[0])
    return found, missing


def _move(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run: sqlite3.Row,
    target: str,
    *,
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    if not run_can_move(run["status"], target):
        raise Conflict(
            f"a {run['status']} run cannot move to {target}",
            code="RUN_INVALID_TRANSITION",
            details={"from": run["status"], "to": target},
        )
    payload = {"run_id": run["run_id"], "status": target, "reason": reason, "by": actor.user_id}
    log.record(conn, "run.status_changed", {**payload, **(extra or {})})


def start_run(conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str) -> None:
    """Start a run and freeze the expected quantities (S) it will be compared against."""
    run = get_run(conn, run_id)
    if run["status"] == "PLANNED":
        ready = conn.execute(
            "SELECT 1 FROM sessions WHERE run_id = ? AND status IN ('ASSIGNED', 'IN_PROGRESS') LIMIT 1",
            (run_id,),
        ).fetchone()
        if ready is None:
            raise Conflict(
                "a run starts only once at least one session is assigned or in progress",
                code="RUN_NEEDS_ASSIGNED_SESSION",
            )
    if run["kind"] == "directed":
        rows = conn.execute(
            "SELECT p.product_id, p.expected_qty FROM run_products rp"
            " JOIN products p ON p.product_id = rp.product_id WHERE rp.run_id = ? ORDER BY p.product_id",
            (run_id,),
        )
    else:
        rows = conn.execute("SELECT product_id, expected_qty FROM products ORDER BY product_id")
    snapshot = [[row[0], row[1]] for row in rows]
    _move(conn, log, actor, run, "IN_PROGRESS", extra={"expected": snapshot})


def complete_run(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    run_id: str,
    *,
    force: bool = False,
    reason: str = "",
) -> None:

    run = get_run(conn, run_id)
    if run["status"] != "IN_PROGRESS":
        _move(conn, log, actor, run, "COMPLETED")  # raises RUN_INVALID_TRANSITION
    open_sessions = [
        dict(row)
        for row in conn.execute(
            "SELECT session_id, status, verifier_id FROM sessions WHERE run_id = ? AND status NOT IN (?, ?)",
            (run_id, *TERMINAL_SESSION),
        )
    ]
    if open_sessions and not force:
        raise Conflict(
            "every session must be APPROVED or VOID first (or force with a reason)",
            code="RUN_HAS_OPEN_SESSIONS",
            details={"sessions": open_sessions},
        )
    if force and not reason.strip():
        raise ValidationFailed("forcing completion needs a reason", code="REASON_REQUIRED")
    uncounted = uncounted_without_decision(conn, run_id)
    if uncounted:
        raise Conflict(
            "directed SKUs nobody counted must be zeroed or skipped with a reason first",
            code="RUN_HAS_UNCOUNTED_SKUS",
            details={"skus": uncounted[:100], "count": len(uncounted)},
        )
    _move(
        conn,
        log,
        actor,
        run,
        "COMPLETED",
        reason=reason.strip(),
        extra={"forced": bool(open_sessions), "open_sessions": [s["session_id"] for s in open_sessions]},
    )
    if open_sessions:
        _end_sessions(conn, log, actor, run_id, f"run completed by force: {reason.strip()}")


def close_run(conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str) -> None:
    _move(conn, log, actor, get_run(conn, run_id), "CLOSED")


def cancel_run(conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str, *, reason: str) -> None:
    if not reason.strip():
        raise ValidationFailed("cancelling a run needs a reason", code="REASON_REQUIRED")
    _move(conn, log, actor, get_run(conn, run_id), "CANCELLED", reason=reason.strip())
    _end_sessions(conn, log, actor, run_id, f"run cancelled: {reason.strip()}")


# -- projections ----------------------------------------------------------------------------------
# Each fold first makes sure the run's row exists, then moves only the columns its event owns, and
# only forward: creation fields once, the header by (hlc, writer), the status by (rank, hlc).
def _ensure(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (run_id,))


def _set_header(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "UPDATE runs SET name = ?, notes = ?, planned_start = ?, header_hlc = ?, header_writer = ?"
        " WHERE run_id = ? AND (header_hlc, header_writer) < (?, ?)",
        (
            p["name"],
            p["notes"],
            p["planned_start"],
            event.hlc,
            event.writer_id,
            p["run_id"],
            event.hlc,
            event.writer_id,
        ),
    )


@projector("run.created")
def _run_created(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    _ensure(conn, p["run_id"])
    conn.execute(
        "UPDATE runs SET kind = ?, created_by = ?, created_hlc = ? WHERE run_id = ?",
        (p["kind"], p["by"], event.hlc, p["run_id"]),
    )
    _set_header(conn, event)


@projector("run.edited")
def _run_edited(conn: sqlite3.Connection, event: Event) -> None:
    _ensure(conn, event.payload["run_id"])
    _set_header(conn, event)


@projector("run.scope_added")
def _run_scope_added(conn: sqlite3.Connection, event: Event) -> None:
    run_id = event.payload["run_id"]
    conn.executemany(
        "INSERT OR IGNORE INTO run_products (run_id, product_id) VALUES (?, ?)",
        [(run_id, pid) for pid in event.payload["product_ids"]],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO run_racks (run_id, rack_id) VALUES (?, ?)",
        [(run_id, rid) for rid in event.payload["rack_ids"]],
    )


@projector("run.status_changed")
def _run_status_changed(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    rank = RUN_RANK[p["status"]]
    _ensure(conn, p["run_id"])
    conn.execute(
        "UPDATE runs SET status = ?, status_rank = ?, status_reason = ?, status_by = ?, status_hlc = ?,"
        " status_writer = ? WHERE run_id = ? AND (status_rank, status_hlc, status_writer) < (?, ?, ?)",
        (
            p["status"],
            rank,
            p["reason"],
            p["by"],
            event.hlc,
            event.writer_id,
            p["run_id"],
            rank,
            event.hlc,
            event.writer_id,
        ),
    )
    if "expected" in p:
        conn.executemany(
            "INSERT OR IGNORE INTO run_expected (run_id, product_id, expected_qty) VALUES (?, ?, ?)",
            [(p["run_id"], pid, qty) for pid, qty in p["expected"]],
        )


# -- queries --------------------------------------------------------------------------------------
def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "kind": row["kind"],
        "name": row["name"],
        "notes": row["notes"],
        "planned_start": row["planned_start"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "created_by": row["created_by"],
    }


def list_runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM runs WHERE kind IS NOT NULL ORDER BY created_hlc DESC")
    return [run_dict(row) for row in rows]
