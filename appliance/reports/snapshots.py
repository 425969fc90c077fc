"""Saved snapshots of a run: what the run's facts were when a supervisor saved them, kept unchanged.

A snapshot is events of the box's chain, so it reaches the store's other boxes and HQ and nobody can
change it afterwards: ``report.snapshot_taken`` says who took it, when, in what state the run was,
which sessions it includes (the approved ones, each with the version vector it was closed at) and its
summary; ``report.snapshot_rows`` events carry the rows, a thousand at a time (one event of 50,000 rows
would be megabytes in one replication page), and ``report.snapshot_expected`` the run's expected
quantities. The snapshot's ``rows_hash`` (BLAKE2b over the rows) lets any replica show that its copy is
whole: ``complete`` is true once every row is held.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from appliance.auth.people import User
from appliance.counting.runs import get_run
from appliance.errors import NotFound, ValidationFailed
from appliance.reports import facts
from appliance.reports.table import Chart, Column, Table
from appliance.store.db import insert_rows
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event, pack
from replication.wire.hlc import wall_ms

projection_tables("report_snapshots", "snapshot_rows", "snapshot_expected")

ROWS_PER_EVENT = 1000
MAX_NAME = 120
MAX_NOTE = 1000


def rows_hash(rows: list[list[Any]]) -> str:
    digest = hashlib.blake2b(digest_size=32)
    for at in range(0, len(rows), ROWS_PER_EVENT):
        digest.update(pack(rows[at : at + ROWS_PER_EVENT]))
    return digest.hexdigest()


def take(
    conn: sqlite3.Connection, log: EventLog, actor: User, run_id: str, name: str, note: str = ""
) -> dict[str, Any]:
    """Save the run's facts as they are now. A run with no approved session has nothing to report yet:
    refused, so a snapshot is never an empty file that looks like a count of nothing."""
    run = get_run(conn, run_id)
    label = name.strip()
    if not 1 <= len(label) <= MAX_NAME:
        raise ValidationFailed(f"name the snapshot (1-{MAX_NAME} characters)", details={"field": "name"})
    if len(note) > MAX_NOTE:
        raise ValidationFailed(f"a note is at most {MAX_NOTE} characters", details={"field": "note"})
    sessions = facts.included_sessions(conn, run_id)
    rows = [[row[f] for f in facts.FIELDS] for row in facts.run_facts(conn, run_id)]
    expected = facts.expected(conn, run_id)
    snapshot_id = new_id()
    summary = _summary(rows, expected, len(sessions))
    log.record(
        conn,
        "report.snapshot_taken",
        {
            "snapshot_id": snapshot_id,
            "run_id": run_id,
            "name": label,
            "note": note.strip(),
            "by": actor.user_id,
            "taken_at": wall_ms(),
            "run_status": run["status"],
            "sessions": sessions,
            "summary": summary,
            "row_count": len(rows),
            "rows_hash": rows_hash(rows),
        },
    )
    items = sorted([pid, sku, qty] for pid, (sku, qty) in expected.items())
    for at in range(0, len(items), ROWS_PER_EVENT * 4):
        log.record(
            conn, "report.snapshot_expected", {"snapshot_id": snapshot_id, "items": items[at : at + ROWS_PER_EVENT * 4]}
        )
    for at in range(0, len(rows), ROWS_PER_EVENT):
        log.record(
            conn,
            "report.snapshot_rows",
            {"snapshot_id": snapshot_id, "first": at, "rows": rows[at : at + ROWS_PER_EVENT]},
        )
    return get_snapshot(conn, snapshot_id)


def _summary(rows: list[list[Any]], expected: dict[str, tuple[str, int]], sessions: int) -> dict[str, Any]:
    at = {name: i for i, name in enumerate(facts.FIELDS)}
    counted: dict[str, int] = {}
    racks, unmatched = set(), set()
    qty = damage = 0
    for row in rows:
        qty += row[at["qty"]]
        damage += row[at["damage"]]
        if row[at["product_id"]] is not None:
            counted[row[at["product_id"]]] = counted.get(row[at["product_id"]], 0) + row[at["qty"]]
        elif row[at["code"]] is not None:
            unmatched.add(row[at["code"]])
        if row[at["rack_id"]]:
            racks.add(row[at["rack_id"]])
    total_expected = sum(e for _sku, e in expected.values())
    with_variance = sum(1 for pid, (_sku, e) in expected.items() if counted.get(pid, 0) != e)
    with_variance += sum(1 for pid, n in counted.items() if pid not in expected and n != 0)
    return {
        "sessions": sessions,
        "rows": len(rows),
        "qty": qty,
        "damage": damage,
        "products_counted": sum(1 for n in counted.values() if n),
        "unmatched_codes": len(unmatched),
        "racks": len(racks),
        "expected": total_expected,
        "variance": sum(counted.values()) - total_expected,
        "products_with_variance": with_variance,
    }


# -- reading --------------------------------------------------------------------------------------
def _dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["sessions"] = json.loads(row["sessions"])
    out["summary"] = json.loads(row["summary"])
    out["complete"] = row["rows_held"] == row["row_count"]
    return out


def get_snapshot(conn: sqlite3.Connection, snapshot_id: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT s.*, u.display_name AS by_name FROM report_snapshots s LEFT JOIN users u ON u.user_id = s.by_user"
        " WHERE s.snapshot_id = ?",
        (snapshot_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"snapshot {snapshot_id} does not exist", code="SNAPSHOT_NOT_FOUND")
    return _dict(row)


def list_snapshots(conn: sqlite3.Connection, run_id: str | None = None) -> list[dict[str, Any]]:
    where, args = ("WHERE s.run_id = ?", (run_id,)) if run_id else ("", ())
    rows = conn.execute(
        "SELECT s.*, u.display_name AS by_name FROM report_snapshots s LEFT JOIN users u ON u.user_id = s.by_user"
        f" {where} ORDER BY s.taken_at DESC, s.snapshot_id",
        args,
    )
    out = []
    for row in rows:
        item = _dict(row)
        del item["sessions"]  # the list stays light; the snapshot itself says which
        out.append(item)
    return out


def snapshot_rows(conn: sqlite3.Connection, snapshot_id: str) -> list[dict[str, Any]]:
    cursor = conn.execute(
        f"SELECT {', '.join(facts.FIELDS)} FROM snapshot_rows WHERE snapshot_id = ? ORDER BY n", (snapshot_id,)
    )
    return [dict(zip(facts.FIELDS, row, strict=True)) for row in cursor]


COLUMNS = [
    Column("floor", "Floor"),
    Column("rack", "Rack"),
    Column("sku", "SKU"),
    Column("name", "Name"),
    Column("category", "Category"),
    Column("subcategory", "Subcategory"),
    Column("condition", "Condition"),
    Column("code", "Unmatched code"),
    Column("verifier", "Verifier"),
    Column("device", "Device"),
    Column("qty", "Counted", "int"),
    Column("damage", "Damaged", "int"),
]


def as_table(conn: sqlite3.Connection, snapshot_id: str) -> Table:
    """The snapshot's rows for an export, streamed from its table, with its summary page."""
    snap = get_snapshot(conn, snapshot_id)
    summary = [
        ("Snapshot", snap["name"]),
        ("Run", snap["run_id"]),
        ("Run state when taken", snap["run_status"]),
        ("Taken by", snap["by_name"] or snap["by_user"]),
        ("Taken at (UTC)", _when(snap["taken_at"])),
        ("Sessions included", str(len(snap["sessions"]))),
        *[(k.replace("_", " ").capitalize(), str(v)) for k, v in snap["summary"].items()],
    ]

    def rows() -> Any:
        cursor = conn.execute(
            f"SELECT {', '.join(facts.FIELDS)} FROM snapshot_rows WHERE snapshot_id = ? ORDER BY n", (snapshot_id,)
        )
        for row in cursor:
            yield dict(zip(facts.FIELDS, row, strict=True))

    return Table(
        f"Snapshot: {snap['name']}",
        COLUMNS,
        rows,
        total_rows=snap["row_count"],
        summary=summary,
        chart=Chart("Counted by category", "category", "qty"),
    )


def _when(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- projections ----------------------------------------------------------------------------------
@projector("report.snapshot_taken")
def _taken(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO report_snapshots (snapshot_id, run_id, name, note, by_user, taken_at, run_status,"
        " sessions, summary, row_count, rows_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p["snapshot_id"],
            p["run_id"],
            p["name"],
            p["note"],
            p["by"],
            p["taken_at"],
            p["run_status"],
            json.dumps(p["sessions"]),
            json.dumps(p["summary"]),
            p["row_count"],
            p["rows_hash"],
        ),
    )


@projector("report.snapshot_expected")
def _expected(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO snapshot_expected (snapshot_id, product_id, sku, expected)",
        [(p["snapshot_id"], *item) for item in p["items"]],
    )


@projector("report.snapshot_rows")
def _rows(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    rows = [(p["snapshot_id"], p["first"] + i, *row) for i, row in enumerate(p["rows"])]
    insert_rows(conn, f"INSERT OR IGNORE INTO snapshot_rows (snapshot_id, n, {', '.join(facts.FIELDS)})", rows)
    conn.execute(
        "UPDATE report_snapshots SET rows_held = rows_held + ? WHERE snapshot_id = ?", (len(rows), p["snapshot_id"])
    )
