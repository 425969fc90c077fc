"""What several insights share: time from an HLC, rates, the run's sessions and one read of its log.

The log is read once per insight through the HLC index, from shortly before the run's creation on, and
only the payload fields needed are decoded; time is the physical part of the HLC (when the writer made
the scan), not when it reached the box.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import msgspec

from appliance.counting import rollups
from replication.wire.hlc import LOGICAL_BITS

# A handheld's clock may run behind the box's: its first scans can carry an HLC a little before the run
# was created on the box. The log is read from this much earlier (the box refuses clocks further out).
CLOCK_MARGIN_MS = 5 * 60_000


def _ms(hlc: int | None) -> int | None:
    return None if hlc is None else hlc >> LOGICAL_BITS


def _rate(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def _sessions(conn: sqlite3.Connection, run_id: str) -> dict[str, sqlite3.Row]:
    """The run's sessions that are not VOID: a voided session's work was thrown away."""
    return {
        row["session_id"]: row
        for row in conn.execute(
            "SELECT s.session_id, s.kind, s.status, s.created_hlc, s.verifier_id, u.display_name AS verifier"
            " FROM sessions s LEFT JOIN users u ON u.user_id = s.verifier_id"
            " WHERE s.run_id = ? AND s.status != 'VOID'",
            (run_id,),
        )
    }


# -- the run's log ------------------------------------------------------------------------------------
class _Scan(msgspec.Struct):
    session_id: str = ""
    qty: int = 0
    rack_id: str | None = None
    by: str = ""


class _Move(msgspec.Struct):
    run_id: str = ""
    rack_id: str = ""
    user_id: str | None = None


_SCAN = msgspec.msgpack.Decoder(_Scan)
_MOVE = msgspec.msgpack.Decoder(_Move)
_MOVE_TYPES = ("rack.claimed", "rack.started", "rack.paused", "rack.resumed", "rack.finished", "rack.released")


@dataclass
class _RunLog:
    # (ms, person, session, rack, qty) per scan of a session of the run, in HLC order
    scans: list[tuple[int, str, str, str, int]] = field(default_factory=list)
    # (ms, type, rack, person) per rack move of the run, in HLC order
    moves: list[tuple[int, str, str, str]] = field(default_factory=list)


def _run_log(conn: sqlite3.Connection, run: sqlite3.Row, sessions: dict[str, sqlite3.Row]) -> _RunLog:
    """Scans and rack moves of the run: one read of the log from the run's creation, on the HLC index."""
    out = _RunLog()
    marks = ",".join("?" for _ in _MOVE_TYPES)
    rows = conn.execute(
        f"SELECT hlc, type, payload FROM events WHERE hlc >= ? AND type IN ('scan.recorded', {marks}) ORDER BY hlc",
        (max(0, (run["created_hlc"] or 0) - (CLOCK_MARGIN_MS << LOGICAL_BITS)), *_MOVE_TYPES),
    )
    run_id = run["run_id"]
    for hlc, kind, payload in rows:
        try:
            if kind == "scan.recorded":
                scan = _SCAN.decode(payload)
                if scan.session_id in sessions:
                    out.scans.append((hlc >> LOGICAL_BITS, scan.by, scan.session_id, scan.rack_id or "", scan.qty))
            else:
                move = _MOVE.decode(payload)
                if move.run_id == run_id:
                    out.moves.append((hlc >> LOGICAL_BITS, kind, move.rack_id, move.user_id or ""))
        except msgspec.DecodeError:
            continue  # an event of a shape the checks of its day let through: left out, not a failed report
    return out


def _session_product_qty(conn: sqlite3.Connection, session_ids: list[str]) -> dict[tuple[str, str], int]:
    if not session_ids:
        return {}
    marks = ",".join("?" for _ in session_ids)
    return {
        (row[0], row[1]): row[2]
        for row in conn.execute(
            "SELECT c.session_id, s.product_id, CAST(total(c.p - c.n) AS INTEGER) FROM counted_scans c"
            f" JOIN scan_codes s ON s.code = c.code WHERE c.session_id IN ({marks}) AND s.product_id IS NOT NULL"
            " GROUP BY c.session_id, s.product_id",
            session_ids,
        )
    }


_DAMAGE_BY_CATEGORY = f"""
    SELECT coalesce(category, '') AS category, CAST(total(qty) AS INTEGER) AS counted,
           CAST(total(damage) AS INTEGER) AS damaged
    FROM ({rollups.APPROVED_FACTS}) WHERE product_id IS NOT NULL GROUP BY 1 ORDER BY 1
"""
