"""Scans per minute and progress over time: the dashboard's charts, derived from the log on read.

Nothing is stored for them (DESIGN §7: rollups are derived), and nothing on the scan path waits for
them. Time is the physical part of each event's HLC, i.e. when the scan was made as the writer's
clock (kept honest by the HLC) saw it, not when it reached the box: a handheld that was offline for
an hour fills in the minutes it actually worked.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.counting.locks import EVENT_STATE
from appliance.counting.runs import get_run
from replication.wire.codec import unpack
from replication.wire.hlc import LOGICAL_BITS, wall_ms

MINUTE_MS = 60_000
MAX_MINUTES = 24 * 60


def activity(conn: sqlite3.Connection, run_id: str, minutes: int = 60, now_ms: int | None = None) -> dict[str, Any]:
    """Per minute for the last ``minutes``: scans and units recorded in the run, and how many of its
    racks stood completed at the end of that minute."""
    run = get_run(conn, run_id)
    minutes = max(1, min(minutes, MAX_MINUTES))
    end_minute = (now_ms if now_ms is not None else wall_ms()) // MINUTE_MS
    start_ms = (end_minute - minutes + 1) * MINUTE_MS
    sessions = {r[0] for r in conn.execute("SELECT session_id FROM sessions WHERE run_id = ?", (run_id,))}
    scans = [0] * minutes
    units = [0] * minutes
    for hlc, payload in conn.execute(
        "SELECT hlc, payload FROM events WHERE hlc >= ? AND type = 'scan.recorded'", (start_ms << LOGICAL_BITS,)
    ):
        slot = (hlc >> LOGICAL_BITS) // MINUTE_MS - (end_minute - minutes + 1)
        if 0 <= slot < minutes:
            scan = unpack(payload)
            if scan.get("session_id") in sessions:
                scans[slot] += 1
                units[slot] += int(scan.get("qty") or 0)
    return {
        "run_id": run_id,
        "minute_ms": [start_ms + i * MINUTE_MS for i in range(minutes)],
        "scans": scans,
        "units": units,
        "racks_completed": _racks_completed(conn, run_id, run["created_hlc"] or 0, start_ms, minutes),
        "racks_total": _racks_total(conn, run_id),
    }


def _racks_completed(conn: sqlite3.Connection, run_id: str, since_hlc: int, start_ms: int, minutes: int) -> list[int]:
    """Replays the run's rack moves in HLC order; a rack counts from the minute it was finished until a
    re-verify (or any later move) takes it out of completed."""
    marks = ",".join("?" for _ in EVENT_STATE)
    state: dict[str, str] = {}
    done = 0
    series: list[int] = []
    slot_end = start_ms + MINUTE_MS
    rows = conn.execute(
        f"SELECT hlc, type, payload FROM events WHERE hlc >= ? AND type IN ({marks}) ORDER BY hlc",
        (since_hlc, *EVENT_STATE),
    )
    for hlc, event_type, payload in rows:
        while (hlc >> LOGICAL_BITS) >= slot_end and len(series) < minutes:
            series.append(done)
            slot_end += MINUTE_MS
        move = unpack(payload)
        if move.get("run_id") != run_id:
            continue
        rack_id = move.get("rack_id", "")
        before, after = state.get(rack_id), EVENT_STATE[event_type]
        state[rack_id] = after
        done += (after == "completed") - (before == "completed")
    series.extend([done] * (minutes - len(series)))
    return series


def _racks_total(conn: sqlite3.Connection, run_id: str) -> int:
    scoped = conn.execute("SELECT count(*) FROM run_racks WHERE run_id = ?", (run_id,)).fetchone()[0]
    return int(scoped or conn.execute("SELECT count(*) FROM racks").fetchone()[0])
