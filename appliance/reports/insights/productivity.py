"""Productivity per verifier: the work done, timed from the log, and first counts against recounts."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from appliance.counting import variance
from appliance.counting.runs import get_run
from appliance.reports.insights._common import _rate, _run_log, _session_product_qty, _sessions

# A pause longer than this between two scans of one person is not counted as work (a break, a walk to
# another floor): active time is the sum of the shorter gaps.
IDLE_GAP_MS = 5 * 60_000
HOUR_MS = 3_600_000


def active_ms(times: Iterable[int], idle_gap_ms: int = IDLE_GAP_MS) -> int:
    """Sum of the gaps between consecutive scans that are no longer than ``idle_gap_ms``."""
    total, last = 0, None
    for moment in sorted(times):
        if last is not None and moment - last <= idle_gap_ms:
            total += moment - last
        last = moment
    return total


def _per_hour(amount: int, ms: int) -> float | None:
    return round(amount * HOUR_MS / ms, 1) if ms else None


def productivity(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Per verifier: scans, units, active time, scans and units per hour, racks finished, and how close
    their first counts came to the recounts.

    Scans are those of every session of the run that is not VOID (submitted, sent back or approved
    alike): productivity is the work done, whatever a supervisor later decided about it. A scan later
    undone was still work, so it counts. A scan counts for the person who made it (its ``by``)."""
    run = get_run(conn, run_id)
    sessions = _sessions(conn, run_id)
    log = _run_log(conn, run, sessions)
    times: dict[str, list[int]] = defaultdict(list)
    units: dict[str, int] = defaultdict(int)
    for moment, person, _session, _rack, qty in log.scans:
        times[person].append(moment)
        units[person] += qty
    finished: dict[str, set[str]] = defaultdict(set)
    for _moment, kind, rack_id, person in log.moves:
        if kind == "rack.finished":
            finished[person].add(rack_id)
    accuracy = _recount_accuracy(conn, run_id, sessions)
    people = set(times) | set(finished) | set(accuracy)
    names = _names(conn, people)
    verifiers = []
    for person in sorted(people, key=lambda p: names.get(p) or p):
        active = active_ms(times[person])
        checked = accuracy.get(person, [])
        verifiers.append(
            {
                "verifier_id": person,
                "verifier": names.get(person),
                "scans": len(times[person]),
                "units": units[person],
                "first_scan_ms": min(times[person], default=None),
                "last_scan_ms": max(times[person], default=None),
                "active_ms": active,
                "scans_per_hour": _per_hour(len(times[person]), active),
                "units_per_hour": _per_hour(units[person], active),
                "racks_finished": len(finished[person]),
                "recounted_products": len(checked),
                "recount_abs_diff": sum(c["abs_diff"] for c in checked),
                "recount_within_tolerance": _rate(sum(c["within_tolerance"] for c in checked), len(checked))
                if checked
                else None,
                "recounts": checked,
            }
        )
    return {"run_id": run_id, "idle_gap_ms": IDLE_GAP_MS, "verifiers": verifiers}


def _names(conn: sqlite3.Connection, user_ids: Iterable[str]) -> dict[str, str]:
    ids = list(user_ids)
    if not ids:
        return {}
    marks = ",".join("?" for _ in ids)
    return dict(conn.execute(f"SELECT user_id, display_name FROM users WHERE user_id IN ({marks})", ids).fetchall())


def _recount_accuracy(
    conn: sqlite3.Connection, run_id: str, sessions: dict[str, sqlite3.Row]
) -> dict[str, list[dict[str, Any]]]:
    """Per first counter: each product an approved recount covered, the first count (every approved
    count session's, summed: what the recount was ordered to check) against the latest recount's, and
    whether they agree within the store's tolerance (the recount standing in for the expected)."""
    approved = {sid: row for sid, row in sessions.items() if row["status"] == "APPROVED"}
    recounts = sorted((row["created_hlc"] or 0, sid) for sid, row in approved.items() if row["kind"] == "recount")
    if not recounts:
        return {}
    marks = ",".join("?" for _ in recounts)
    latest: dict[str, str] = {}
    for product_id, session_id in conn.execute(
        f"SELECT product_id, session_id FROM session_products WHERE session_id IN ({marks})", [s for _, s in recounts]
    ):
        latest.setdefault(product_id, session_id)
        if approved[session_id]["created_hlc"] > approved[latest[product_id]]["created_hlc"]:
            latest[product_id] = session_id
    firsts = {sid for sid, row in approved.items() if row["kind"] != "recount"}
    qty = _session_product_qty(conn, [*firsts, *(s for _, s in recounts)])
    first: dict[str, int] = defaultdict(int)
    counters: dict[str, set[str]] = defaultdict(set)
    for (session_id, product_id), n in qty.items():
        if session_id in firsts and product_id in latest and n:
            first[product_id] += n
            counters[product_id].add(approved[session_id]["verifier_id"])
    tol = conn.execute("SELECT units, pct_bp FROM tolerances WHERE scope = 'store' AND scope_id = ''").fetchone()
    units, pct_bp = (tol[0], tol[1]) if tol else (0, 0)
    skus = _skus(conn, list(first))
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for product_id in sorted(first, key=lambda p: skus.get(p, p)):
        again = qty.get((latest[product_id], product_id), 0)
        line = {
            "product_id": product_id,
            "sku": skus.get(product_id),
            "first": first[product_id],
            "recount": again,
            "abs_diff": abs(first[product_id] - again),
            "within_tolerance": variance.within_tolerance(first[product_id], again, units, pct_bp),
            "shared": len(counters[product_id]) > 1,
        }
        for person in counters[product_id]:
            out[person].append(line)
    return dict(out)


def _skus(conn: sqlite3.Connection, product_ids: list[str]) -> dict[str, str]:
    if not product_ids:
        return {}
    marks = ",".join("?" for _ in product_ids)
    return dict(conn.execute(f"SELECT product_id, sku FROM products WHERE product_id IN ({marks})", product_ids))
