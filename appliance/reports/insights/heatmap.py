"""The floor heatmap: per rack and per floor, time from claim to finish, scans, units and variance rate."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from appliance.counting import rollups
from appliance.counting.runs import get_run
from appliance.reports.insights._common import _rate, _run_log, _sessions


def heatmap(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Per rack (with its floor): time from the first claim to the last finish, scans, units and the
    variance rate; and the same per floor.

    Scans are those of the run's sessions that are not VOID; units are approved counts (the rollup's);
    the variance rate is the share of the rack's counted products whose run-level variance (approved
    count less the run's expected quantity) is not 0 — a product counted on several racks is judged on
    its whole count, on each of them."""
    run = get_run(conn, run_id)
    sessions = _sessions(conn, run_id)
    log = _run_log(conn, run, sessions)
    claimed: dict[str, int] = {}
    finished: dict[str, int] = {}
    for moment, kind, rack_id, _person in log.moves:
        if kind == "rack.claimed":
            claimed.setdefault(rack_id, moment)
        elif kind == "rack.finished":
            finished[rack_id] = moment
    scans: dict[str, int] = defaultdict(int)
    for _moment, _person, _session, rack_id, _qty in log.scans:
        scans[rack_id] += 1
    units: dict[str, int] = defaultdict(int)
    products: dict[str, set[str]] = defaultdict(set)
    # The approved count per product is the sum of its facts (the rollup's rule), rack or not.
    counts: dict[str, int] = defaultdict(int)
    for rack_id, product_id, qty in conn.execute(
        f"SELECT rack_id, product_id, CAST(total(qty) AS INTEGER) FROM ({rollups.APPROVED_FACTS})"
        " WHERE product_id IS NOT NULL GROUP BY rack_id, product_id",
        {"run_id": run_id},
    ):
        counts[product_id] += qty
        if rack_id is None:
            continue
        units[rack_id] += qty
        if qty:
            products[rack_id].add(product_id)
    expected = dict(
        conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,)).fetchall()
    )
    varied = {pid for pids in products.values() for pid in pids if counts.get(pid, 0) != expected.get(pid, 0)}
    states = dict(conn.execute("SELECT rack_id, state FROM rack_states WHERE run_id = ?", (run_id,)).fetchall())
    scope = _rack_scope(conn, run, list(sessions)) | set(claimed) | set(scans) | set(units)
    scope.discard("")
    racks = []
    floors: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        "SELECT r.rack_id, r.code, f.code AS floor, f.name AS floor_name FROM racks r"
        " JOIN floors f ON f.floor_id = r.floor_id ORDER BY f.position, r.code"
    ):
        rack_id = row["rack_id"]
        if rack_id not in scope:
            continue
        start, end = claimed.get(rack_id), finished.get(rack_id)
        duration = end - start if start is not None and end is not None and end >= start else None
        with_variance = len(products[rack_id] & varied)
        racks.append(
            {
                "rack": row["code"],
                "floor": row["floor"],
                "state": states.get(rack_id, "available"),
                "first_claim_ms": start,
                "finished_ms": end,
                "duration_ms": duration,
                "scans": scans.get(rack_id, 0),
                "units": units.get(rack_id, 0),
                "products": len(products[rack_id]),
                "products_with_variance": with_variance,
                "variance_rate": _rate(with_variance, len(products[rack_id])),
            }
        )
        floor = floors.setdefault(
            row["floor"],
            {
                "floor": row["floor"],
                "name": row["floor_name"],
                "racks": 0,
                "racks_finished": 0,
                "rack_ms_total": 0,
                "scans": 0,
                "units": 0,
                "_products": set(),
            },
        )
        floor["racks"] += 1
        floor["racks_finished"] += int(duration is not None)
        floor["rack_ms_total"] += duration or 0
        floor["scans"] += scans.get(rack_id, 0)
        floor["units"] += units.get(rack_id, 0)
        floor["_products"] |= products[rack_id]
    for floor in floors.values():
        own = floor.pop("_products")
        floor["mean_rack_ms"] = floor["rack_ms_total"] // floor["racks_finished"] if floor["racks_finished"] else None
        floor["products"] = len(own)
        floor["products_with_variance"] = len(own & varied)
        floor["variance_rate"] = _rate(len(own & varied), len(own))
    return {"run_id": run_id, "racks": racks, "floors": list(floors.values())}


def _rack_scope(conn: sqlite3.Connection, run: sqlite3.Row, session_ids: list[str]) -> set[str]:
    """The run's racks: its list, else its sessions' racks, else (a hard count) every rack."""
    scope = {r[0] for r in conn.execute("SELECT rack_id FROM run_racks WHERE run_id = ?", (run["run_id"],))}
    if not scope and session_ids:
        marks = ",".join("?" for _ in session_ids)
        scope = {
            r[0] for r in conn.execute(f"SELECT rack_id FROM session_racks WHERE session_id IN ({marks})", session_ids)
        }
    if not scope and run["kind"] == "hard":
        scope = {r[0] for r in conn.execute("SELECT rack_id FROM racks")}
    return scope
