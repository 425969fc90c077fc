"""Data quality: a 0-100 score per session and per run, from how much of a count went wrong."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from appliance.counting import conflicts as conflict_queue
from appliance.counting.codes import PRODUCT_CODE_PREFIX
from appliance.counting.runs import get_run
from appliance.reports.insights._common import _rate, _session_product_qty, _sessions

# The data quality score, 0-100: each part is a rate; it earns its weight in full at rate 0 and nothing
# from ``zero_at`` up, linearly between. The weights add up to 100, so a clean session scores 100.
#   unmatched  units of codes matching no product / units scanned
#   conflicts  (open + RESOLVED_CONFLICT_COST x resolved conflicts) / products counted
#   recounts   products counted that a recount was later ordered for / products counted
#   late       units scanned under a lease that had passed on, plus units held back / units scanned
#   undo       units undone / units scanned
QUALITY_WEIGHTS: dict[str, tuple[float, float]] = {
    "unmatched": (30.0, 0.10),
    "conflicts": (25.0, 0.10),
    "recounts": (15.0, 0.20),
    "late": (15.0, 0.05),
    "undo": (15.0, 0.20),
}
# A resolved conflict still says something went wrong, but a supervisor has dealt with it.
RESOLVED_CONFLICT_COST = 0.5


def score(rates: dict[str, float]) -> dict[str, Any]:
    """The 0-100 score of ``QUALITY_WEIGHTS`` for the given rates, with each part's points shown."""
    parts = {}
    for name, (weight, zero_at) in QUALITY_WEIGHTS.items():
        rate = rates.get(name, 0.0)
        points = weight * (1 - min(1.0, rate / zero_at))
        parts[name] = {"rate": round(rate, 4), "weight": weight, "zero_at": zero_at, "points": round(points, 2)}
    return {"score": round(sum(p["points"] for p in parts.values()), 1), "parts": parts}


@dataclass
class _Tally:
    scanned: int = 0
    unmatched: int = 0
    undone: int = 0
    products: set[str] = field(default_factory=set)
    recounted: set[str] = field(default_factory=set)
    open_conflicts: int = 0
    resolved_conflicts: int = 0
    late_units: int = 0
    held_events: int = 0

    def rates(self) -> dict[str, float]:
        conflicts = self.open_conflicts + RESOLVED_CONFLICT_COST * self.resolved_conflicts
        return {
            "unmatched": _rate(self.unmatched, self.scanned),
            "conflicts": min(1.0, conflicts / max(1, len(self.products))),
            "recounts": _rate(len(self.recounted), len(self.products)),
            "late": min(1.0, _rate(self.late_units, self.scanned)),
            "undo": _rate(self.undone, self.scanned),
        }

    def shown(self) -> dict[str, Any]:
        return {
            "units_scanned": self.scanned,
            "units_unmatched": self.unmatched,
            "units_undone": self.undone,
            "products_counted": len(self.products),
            "products_recounted": len(self.recounted),
            "conflicts_open": self.open_conflicts,
            "conflicts_resolved": self.resolved_conflicts,
            "units_late": self.late_units,
            "events_held": self.held_events,
            **score(self.rates()),
        }


def quality(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """The data quality score of each session of the run that is not VOID, and of the run as a whole
    (its parts summed over those sessions, each conflict once), by ``QUALITY_WEIGHTS``."""
    get_run(conn, run_id)
    sessions = _sessions(conn, run_id)
    tallies = {sid: _Tally() for sid in sessions}
    run = _Tally()
    ids = list(sessions)
    marks = ",".join("?" for _ in ids) or "NULL"
    # Scanned units: what scans put on the counters, not "set to N" adjustments (their codes name a product).
    for session_id, scanned, unmatched, undone in conn.execute(
        "SELECT c.session_id, CAST(total(c.p) AS INTEGER),"
        " CAST(total(CASE WHEN s.product_id IS NULL THEN c.p END) AS INTEGER), CAST(total(c.u) AS INTEGER)"
        f" FROM scan_counts c JOIN scan_codes s ON s.code = c.code WHERE c.session_id IN ({marks})"
        " AND substr(c.code, 1, ?) != ? GROUP BY c.session_id",
        (*ids, len(PRODUCT_CODE_PREFIX), PRODUCT_CODE_PREFIX),
    ):
        tally = tallies[session_id]
        tally.scanned, tally.unmatched, tally.undone = scanned, unmatched, undone
    for (session_id, product_id), qty in _session_product_qty(conn, ids).items():
        if qty > 0:
            tallies[session_id].products.add(product_id)
    recounts = [(row["created_hlc"] or 0, sid) for sid, row in sessions.items() if row["kind"] == "recount"]
    if recounts:
        rmarks = ",".join("?" for _ in recounts)
        ordered: dict[str, int] = {}  # product -> the latest hlc a recount of it was ordered at
        created = {sid: hlc for hlc, sid in recounts}
        for product_id, session_id in conn.execute(
            f"SELECT product_id, session_id FROM session_products WHERE session_id IN ({rmarks})",
            [sid for _, sid in recounts],
        ):
            ordered[product_id] = max(ordered.get(product_id, 0), created[session_id])
        for session_id, tally in tallies.items():
            since = sessions[session_id]["created_hlc"] or 0
            tally.recounted = {pid for pid in tally.products if ordered.get(pid, -1) > since}
    for conflict in conflict_queue.conflicts(conn, run_id, status="all"):
        opened = conflict["status"] == "open"
        owners = {c["session_id"] for c in conflict.get("claims", [])} or {conflict.get("session_id")}
        for tally in [tallies[s] for s in owners if s in tallies] + [run]:
            tally.open_conflicts += int(opened)
            tally.resolved_conflicts += int(not opened)
            if conflict["kind"] == "late_lease":
                tally.late_units += conflict["qty"]
                resolution = conflict.get("resolution") or {}
                if resolution.get("action") == "reject" and tally is not run:
                    # The rejected scans were taken back as an undo on the counters: late, not undone.
                    tally.undone = max(0, tally.undone - conflict["qty"])
    for session_id, events, units in conn.execute(
        "SELECT session_id, count(*), CAST(total(dp) AS INTEGER) FROM ("
        " SELECT event_id, session_id, max(CASE WHEN kind = 'scan' THEN dp ELSE 0 END) AS dp FROM held_events"
        f" WHERE session_id IN ({marks}) GROUP BY event_id) GROUP BY session_id",
        ids,
    ):
        tallies[session_id].held_events += events
        tallies[session_id].late_units += units
        run.late_units += units
    for tally in tallies.values():
        run.scanned += tally.scanned
        run.unmatched += tally.unmatched
        run.undone += tally.undone
        run.products |= tally.products
        run.recounted |= tally.recounted
        run.held_events += tally.held_events
    out = []
    for session_id, tally in tallies.items():
        row = sessions[session_id]
        out.append(
            {
                "session_id": session_id,
                "kind": row["kind"],
                "status": row["status"],
                "verifier": row["verifier"],
                **tally.shown(),
            }
        )
    return {"run_id": run_id, "weights": QUALITY_WEIGHTS, "run": run.shown(), "sessions": out}
