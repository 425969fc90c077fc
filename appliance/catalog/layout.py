"""The store's layout: the store itself, its floors and the racks (locations) on them."""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.errors import Conflict, NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event

projection_tables("stores", "floors", "racks")

MAX_CODE = 32


def _code(value: str, what: str) -> str:
    code = value.strip().upper()
    if not code or len(code) > MAX_CODE or not all(c.isalnum() or c in "-_." for c in code):
        raise ValidationFailed(
            f"{what} code must be 1-{MAX_CODE} letters, digits, '-', '_' or '.'",
            details={"field": "code", "value": value},
        )
    return code


# -- commands -------------------------------------------------------------------------------------
def add_floor(
    conn: sqlite3.Connection, log: EventLog, code: str, name: str, position: int | None = None
) -> dict[str, Any]:
    code = _code(code, "floor")
    if conn.execute("SELECT 1 FROM floors WHERE code = ?", (code,)).fetchone():
        raise Conflict(f"floor {code} already exists", code="FLOOR_EXISTS")
    if position is None:
        position = conn.execute("SELECT coalesce(max(position), 0) + 1 FROM floors").fetchone()[0]
    payload = {"floor_id": new_id(), "code": code, "name": name.strip() or code, "position": position}
    log.record(conn, "floor.added", payload)
    return payload


def add_rack(conn: sqlite3.Connection, log: EventLog, floor_code: str, code: str, name: str = "") -> dict[str, Any]:
    floor = conn.execute("SELECT floor_id FROM floors WHERE code = ?", (floor_code.strip().upper(),)).fetchone()
    if floor is None:
        raise NotFound(f"floor {floor_code} does not exist", code="FLOOR_NOT_FOUND")
    code = _code(code, "rack")
    if conn.execute("SELECT 1 FROM racks WHERE code = ?", (code,)).fetchone():
        raise Conflict(f"rack {code} already exists", code="RACK_EXISTS")
    payload = {"rack_id": new_id(), "floor_id": floor["floor_id"], "code": code, "name": name.strip() or code}
    log.record(conn, "rack.added", payload)
    return payload


# -- projections ----------------------------------------------------------------------------------
@projector("store.created")
def _store_created(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "INSERT INTO stores (store_id, name, hlc, writer_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET name = excluded.name, hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (stores.hlc, stores.writer_id)",
        (event.payload["store_id"], event.payload["name"], event.hlc, event.writer_id),
    )


@projector("floor.added")
def _floor_added(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO floors (floor_id, code, name, position) VALUES (?, ?, ?, ?)",
        (p["floor_id"], p["code"], p["name"], p["position"]),
    )


@projector("rack.added")
def _rack_added(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO racks (rack_id, floor_id, code, name) VALUES (?, ?, ?, ?)",
        (p["rack_id"], p["floor_id"], p["code"], p["name"]),
    )


# -- queries --------------------------------------------------------------------------------------
def store(conn: sqlite3.Connection) -> dict[str, Any] | None:
    row = conn.execute("SELECT store_id, name FROM stores LIMIT 1").fetchone()
    return dict(row) if row else None


def floors(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT f.floor_id, f.code, f.name, f.position, count(r.rack_id) AS racks"
        " FROM floors f LEFT JOIN racks r ON r.floor_id = f.floor_id"
        " GROUP BY f.floor_id ORDER BY f.position"
    )
    return [dict(row) for row in rows]


def racks(conn: sqlite3.Connection, floor_code: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT r.rack_id, r.code, r.name, f.code AS floor_code, f.name AS floor_name"
        " FROM racks r JOIN floors f ON f.floor_id = r.floor_id"
    )
    args: tuple[Any, ...] = ()
    if floor_code:
        sql += " WHERE f.code = ?"
        args = (floor_code.strip().upper(),)
    sql += " ORDER BY f.position, r.code"
    return [dict(row) for row in conn.execute(sql, args)]
