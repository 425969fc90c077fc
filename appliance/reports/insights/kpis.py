"""KPIs: one run's key figures, and every run's, to compare counts across the store's runs."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from appliance.counting import rollups, variance
from appliance.counting.runs import get_run
from appliance.reports.insights._common import _DAMAGE_BY_CATEGORY, _ms, _rate
from appliance.reports.insights.quality import quality
from replication.wire.hlc import LOGICAL_BITS


class _Status(msgspec.Struct):
    run_id: str = ""
    status: str = ""


_STATUS = msgspec.msgpack.Decoder(_Status)


def run_kpis(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """One run's key figures: sessions, units and SKUs counted (approved), accuracy (the share of its
    variance lines within tolerance, a line with no variance being within), damage share, data quality
    score and counting time (from the run's start to its last scan)."""
    run = get_run(conn, run_id)
    counts = rollups.approved_counts(conn, run_id)
    within, lines = _accuracy(conn, run_id, counts)
    damaged = conn.execute(_DAMAGE_BY_CATEGORY, {"run_id": run_id}).fetchall()
    counted, damage_units = sum(r["counted"] for r in damaged), sum(r["damaged"] for r in damaged)
    statuses = dict(
        conn.execute("SELECT status, count(*) FROM sessions WHERE run_id = ? GROUP BY status", (run_id,)).fetchall()
    )
    started = _started_ms(conn, run)
    last_scan = conn.execute(
        "SELECT max(c.last_hlc) FROM scan_counts c JOIN sessions s ON s.session_id = c.session_id"
        " WHERE s.run_id = ? AND s.status != 'VOID'",
        (run_id,),
    ).fetchone()[0]
    end = _ms(last_scan) if last_scan else None
    return {
        "run_id": run_id,
        "name": run["name"],
        "kind": run["kind"],
        "status": run["status"],
        "created_ms": _ms(run["created_hlc"]),
        "sessions": sum(n for status, n in statuses.items() if status != "VOID"),
        "sessions_approved": statuses.get("APPROVED", 0),
        "units": sum(counts.values()),
        "skus_counted": sum(1 for n in counts.values() if n > 0),
        "variance_lines": lines,
        "accuracy": _rate(within, lines) if lines else None,
        "damage_share": _rate(damage_units, counted),
        "quality_score": quality(conn, run_id)["run"]["score"],
        "started_ms": started,
        "last_scan_ms": end,
        "duration_ms": end - started if started is not None and end is not None and end >= started else None,
    }


def _accuracy(conn: sqlite3.Connection, run_id: str, counts: dict[str, int]) -> tuple[int, int]:
    """Variance lines within tolerance, and all of them, as ``variance.variance_lines`` judges them.

    With only a store-wide tolerance every line is judged by it, so the lines are made here from the
    counts already read; a floor or rack tolerance needs each product's racks, and the full variance
    read (several times slower on a big count) is used."""
    scoped = conn.execute("SELECT 1 FROM tolerances WHERE scope != 'store' LIMIT 1").fetchone()
    if scoped is not None:
        lines = variance.variance_lines(conn, run_id)
        return sum(1 for line in lines if line["within_tolerance"]), len(lines)
    tol = conn.execute("SELECT units, pct_bp FROM tolerances WHERE scope = 'store' AND scope_id = ''").fetchone()
    units, pct_bp = (tol[0], tol[1]) if tol else (0, 0)
    expected = dict(
        conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,)).fetchall()
    )
    products = rollups.directed_products(conn, run_id) | {pid for pid, n in counts.items() if n}
    within = sum(variance.within_tolerance(counts.get(pid, 0), expected.get(pid, 0), units, pct_bp) for pid in products)
    return within, len(products)


def _started_ms(conn: sqlite3.Connection, run: sqlite3.Row) -> int | None:
    """When the run moved to IN_PROGRESS: the first such status change after its creation, read forward
    on the HLC index (a run is started soon after it is planned, so the read stops early)."""
    if run["status"] == "PLANNED":
        return None
    for hlc, payload in conn.execute(
        "SELECT hlc, payload FROM events WHERE hlc >= ? AND type = 'run.status_changed' ORDER BY hlc",
        (run["created_hlc"] or 0,),
    ):
        change = _STATUS.decode(payload)
        if change.run_id == run["run_id"] and change.status == "IN_PROGRESS":
            return int(hlc) >> LOGICAL_BITS
    return None


def kpis(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """``run_kpis`` for every run of the store, in the order they were created."""
    return [
        run_kpis(conn, row[0])
        for row in conn.execute(
            "SELECT run_id FROM runs WHERE kind IS NOT NULL ORDER BY created_hlc, run_id"
        ).fetchall()
    ]
