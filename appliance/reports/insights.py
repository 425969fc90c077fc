"""Insights: how a count went, not what it found — productivity, damage, serials, racks, data quality, KPIs.

Every function here only reads, one run at a time (``damage_trend`` and ``kpis`` go over the store's
runs, one bounded read per run), and answers plain dicts; ``as_table`` turns any of them into the
``Table`` the page and the exports share.

Two sources, chosen per question:

* **The counters** (``scan_counts``, ``counted_scans``, the approved facts): what was counted, cheap to
  sum whatever the number of scans. Everything that says "units counted" uses the same rule as the
  rollups (approved sessions, a later approved recount replacing the first counts).
* **The log** (``events``): when things happened. Per-scan times and rack moves exist only there. The
  run's events are read once through the HLC index, from shortly before the run's creation on, and only
  the payload fields needed are decoded; time is the physical part of the HLC (when the writer made the
  scan, as the activity chart has it), not when it reached the box.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from appliance.counting import conflicts as conflict_queue
from appliance.counting import rollups, variance
from appliance.counting.codes import PRODUCT_CODE_PREFIX
from appliance.counting.runs import get_run
from appliance.errors import ValidationFailed
from appliance.reports.table import Chart, Column, Table
from replication.wire.hlc import LOGICAL_BITS

KINDS = ("productivity", "damage", "serials", "heatmap", "quality", "kpis")

# A pause longer than this between two scans of one person is not counted as work (a break, a walk to
# another floor): active time is the sum of the shorter gaps.
IDLE_GAP_MS = 5 * 60_000
HOUR_MS = 3_600_000

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


# -- 1. productivity ----------------------------------------------------------------------------------
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


# -- 2. damage ----------------------------------------------------------------------------------------
_DAMAGE_BY_CATEGORY = f"""
    SELECT coalesce(category, '') AS category, CAST(total(qty) AS INTEGER) AS counted,
           CAST(total(damage) AS INTEGER) AS damaged
    FROM ({rollups.APPROVED_FACTS}) WHERE product_id IS NOT NULL GROUP BY 1 ORDER BY 1
"""


def damage(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Damaged units and their share of the counted units, by category and by floor, from approved counts.

    Damage is recorded per (session, product), not per rack: it goes to the floor where that session
    counted most of the product (floor "" when it counted none on a rack, as units typed in with no
    rack are)."""
    get_run(conn, run_id)
    categories: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    counted: dict[str, int] = defaultdict(int)
    placed: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    damaged_items: list[tuple[str, str, int]] = []
    for row in conn.execute(
        f"SELECT session_id, product_id, category, floor, qty, damage FROM ({rollups.APPROVED_FACTS})"
        " WHERE product_id IS NOT NULL",
        {"run_id": run_id},
    ):
        category = categories[row["category"] or ""]
        category[0] += row["qty"]
        category[1] += row["damage"]
        if row["damage"]:
            damaged_items.append((row["session_id"], row["product_id"], row["damage"]))
        else:
            counted[row["floor"] or ""] += row["qty"]
            if row["floor"] is not None:
                placed[(row["session_id"], row["product_id"])][row["floor"]] += row["qty"]
    damaged: dict[str, int] = defaultdict(int)
    for session_id, product_id, n in damaged_items:
        floors = placed.get((session_id, product_id))
        floor = max(sorted(floors), key=lambda f: floors[f]) if floors else ""
        damaged[floor] += n
    by_category: list[dict[str, Any]] = [
        {"category": name, "counted": n, "damaged": d, "share": _rate(d, n)}
        for name, (n, d) in sorted(categories.items())
    ]
    by_floor: list[dict[str, Any]] = [
        {"floor": floor, "counted": counted.get(floor, 0), "damaged": damaged.get(floor, 0)}
        for floor in sorted(set(counted) | set(damaged))
    ]
    for row in by_floor:
        row["share"] = _rate(row["damaged"], row["counted"])
    total_counted = sum(r["counted"] for r in by_category)
    total_damaged = sum(r["damaged"] for r in by_category)
    return {
        "run_id": run_id,
        "counted": total_counted,
        "damaged": total_damaged,
        "share": _rate(total_damaged, total_counted),
        "by_category": by_category,
        "by_floor": by_floor,
    }


def damage_trend(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The store's runs in the order they were created, each with its damaged units and share, in all
    and by category: whether damage is growing, and where."""
    out = []
    for run in conn.execute(
        "SELECT run_id, name, status, created_hlc FROM runs WHERE kind IS NOT NULL ORDER BY created_hlc, run_id"
    ).fetchall():
        rows = conn.execute(_DAMAGE_BY_CATEGORY, {"run_id": run["run_id"]}).fetchall()
        counted, damaged = sum(r["counted"] for r in rows), sum(r["damaged"] for r in rows)
        out.append(
            {
                "run_id": run["run_id"],
                "name": run["name"],
                "status": run["status"],
                "created_ms": _ms(run["created_hlc"]),
                "counted": counted,
                "damaged": damaged,
                "share": _rate(damaged, counted),
                "by_category": {
                    r["category"]: {"damaged": r["damaged"], "share": _rate(r["damaged"], r["counted"])}
                    for r in rows
                    if r["damaged"]
                },
            }
        )
    return out


# -- 3. serials ---------------------------------------------------------------------------------------
def serials(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """Every serial on an item of the run (added and not removed, in a session that is not VOID): where
    (session, rack, product) and when; a serial on two items is a duplicate, and those come first.

    The rack is the one the session counted the product on, else the session's own rack if it has just
    one; none when that is not a single rack."""
    get_run(conn, run_id)
    rows = conn.execute(
        """
        SELECT a.tag, a.serial, a.session_id, a.product_id, p.sku, e.hlc, e.writer_id, u.display_name AS verifier,
               a.tag IN (SELECT event_id FROM held_open WHERE kind = 'serial') AS held
        FROM serial_adds a
        JOIN sessions se ON se.session_id = a.session_id
        LEFT JOIN serial_removes r ON r.tag = a.tag
        LEFT JOIN events e ON e.event_id = a.tag
        LEFT JOIN products p ON p.product_id = a.product_id
        LEFT JOIN users u ON u.user_id = se.verifier_id
        WHERE se.run_id = ? AND se.status != 'VOID' AND r.tag IS NULL
        ORDER BY a.serial, e.hlc
        """,
        (run_id,),
    ).fetchall()
    pairs = {(r["session_id"], r["product_id"]) for r in rows}
    racks = _item_racks(conn, pairs)
    places: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        places[row["serial"]].add((row["session_id"], row["product_id"]))
    seen = []
    for row in rows:
        rack = racks.get((row["session_id"], row["product_id"]))
        seen.append(
            {
                "serial": row["serial"],
                "duplicate": len(places[row["serial"]]) > 1,
                "session_id": row["session_id"],
                "verifier": row["verifier"],
                "rack": rack,
                "product_id": row["product_id"],
                "sku": row["sku"],
                "seen_ms": _ms(row["hlc"]),
                "writer_id": row["writer_id"],
                "held": bool(row["held"]),
            }
        )
    seen.sort(key=lambda s: (not s["duplicate"], s["serial"], s["seen_ms"] or 0))
    duplicates = sorted(s for s, where in places.items() if len(where) > 1)
    return {"run_id": run_id, "serials": len(places), "duplicates": duplicates, "seen": seen}


def _item_racks(conn: sqlite3.Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    sessions = sorted({s for s, _ in pairs})
    if not sessions:
        return {}
    marks = ",".join("?" for _ in sessions)
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for session_id, product_id, rack in conn.execute(
        "SELECT DISTINCT c.session_id, s.product_id, r.code FROM scan_counts c JOIN scan_codes s ON s.code = c.code"
        f" JOIN racks r ON r.rack_id = c.rack_id WHERE c.session_id IN ({marks}) AND s.product_id IS NOT NULL",
        sessions,
    ):
        if (session_id, product_id) in pairs:
            found[(session_id, product_id)].add(rack)
    own: dict[str, set[str]] = defaultdict(set)
    for session_id, rack in conn.execute(
        "SELECT sr.session_id, r.code FROM session_racks sr JOIN racks r ON r.rack_id = sr.rack_id"
        f" WHERE sr.session_id IN ({marks})",
        sessions,
    ):
        own[session_id].add(rack)
    out = {}
    for pair in pairs:
        racks = found.get(pair) or own.get(pair[0], set())
        if len(racks) == 1:
            out[pair] = next(iter(racks))
    return out


# -- 4. floor heatmap ---------------------------------------------------------------------------------
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


# -- 5. data quality ----------------------------------------------------------------------------------
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


# -- 6. KPIs across runs ------------------------------------------------------------------------------
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


def insight(conn: sqlite3.Connection, kind: str, run_id: str | None) -> dict[str, Any]:
    """The insight of ``kind``; damage and KPIs without a run cover every run of the store."""
    if kind not in KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", details={"field": "kind"})
    if kind == "kpis":
        return {"runs": kpis(conn)} if run_id is None else {"runs": [run_kpis(conn, run_id)]}
    if kind == "damage" and run_id is None:
        return {"runs": damage_trend(conn)}
    if run_id is None:
        raise ValidationFailed(f"the {kind} insight is of one run: name it (run_id)", details={"field": "run_id"})
    return _BY_RUN[kind](conn, run_id)


_BY_RUN: dict[str, Callable[[sqlite3.Connection, str], dict[str, Any]]] = {
    "productivity": productivity,
    "damage": damage,
    "serials": serials,
    "heatmap": heatmap,
    "quality": quality,
}


# -- tables for export ----------------------------------------------------------------------------------
def _table(
    title: str, columns: list[Column], rows: list[dict[str, Any]], summary: list[tuple[str, str]], chart: Chart | None
) -> Table:
    return Table(title, columns, lambda: iter(rows), total_rows=len(rows), summary=summary, chart=chart)


def _c(key: str, label: str, kind: Any = "int") -> Column:
    return Column(key, label, kind)


def as_table(conn: sqlite3.Connection, kind: str, run_id: str | None) -> Table:
    """The insight of ``kind`` as a ``Table``: its main list as rows, its totals on the summary page."""
    answer = insight(conn, kind, run_id)
    run = [("Run", run_id)] if run_id else [("Runs", "all runs of the store")]
    if kind == "productivity":
        rows = [{**v, "active_min": round(v["active_ms"] / 60_000, 1)} for v in answer["verifiers"]]
        return _table(
            "Productivity per verifier",
            [
                _c("verifier", "Verifier", "text"),
                _c("scans", "Scans"),
                _c("units", "Units"),
                _c("active_min", "Active minutes"),
                _c("scans_per_hour", "Scans per hour"),
                _c("units_per_hour", "Units per hour"),
                _c("racks_finished", "Racks finished"),
                _c("recounted_products", "Products recounted"),
                _c("recount_abs_diff", "Recount |difference|"),
                _c("recount_within_tolerance", "Recounts within tolerance (share)"),
            ],
            rows,
            [*run, ("Idle gap not counted as work", f"over {IDLE_GAP_MS // 60_000} minutes")],
            Chart("Units per hour", "verifier", "units_per_hour"),
        )
    if kind == "damage":
        if run_id is None:
            return _table(
                "Damage across runs",
                [
                    _c("name", "Run", "text"),
                    _c("created_ms", "Created", "datetime"),
                    _c("status", "Status", "text"),
                    _c("counted", "Units counted"),
                    _c("damaged", "Units damaged"),
                    _c("share", "Damaged share"),
                ],
                answer["runs"],
                run,
                Chart("Damaged units per run", "name", "damaged"),
            )
        rows = [{"by": "category", "group": r["category"], **r} for r in answer["by_category"]]
        rows += [{"by": "floor", "group": r["floor"], **r} for r in answer["by_floor"]]
        return _table(
            "Damage by category and floor",
            [
                _c("by", "By", "text"),
                _c("group", "Group", "text"),
                _c("counted", "Units counted"),
                _c("damaged", "Units damaged"),
                _c("share", "Damaged share"),
            ],
            rows,
            [*run, ("Units counted", str(answer["counted"])), ("Units damaged", str(answer["damaged"]))],
            Chart("Damaged units", "group", "damaged"),
        )
    if kind == "serials":
        return _table(
            "Serial usage",
            [
                _c("serial", "Serial", "text"),
                _c("duplicate", "Duplicate"),
                _c("sku", "SKU", "text"),
                _c("rack", "Rack", "text"),
                _c("session_id", "Session", "text"),
                _c("verifier", "Verifier", "text"),
                _c("seen_ms", "Seen", "datetime"),
                _c("held", "Held"),
            ],
            answer["seen"],
            [*run, ("Serials", str(answer["serials"])), ("Duplicates", str(len(answer["duplicates"])))],
            None,
        )
    if kind == "heatmap":
        rows = [
            {**r, "duration_min": None if r["duration_ms"] is None else round(r["duration_ms"] / 60_000, 1)}
            for r in answer["racks"]
        ]
        return _table(
            "Floor performance per rack",
            [
                _c("floor", "Floor", "text"),
                _c("rack", "Rack", "text"),
                _c("state", "State", "text"),
                _c("first_claim_ms", "First claimed", "datetime"),
                _c("finished_ms", "Finished", "datetime"),
                _c("duration_min", "Minutes"),
                _c("scans", "Scans"),
                _c("units", "Units"),
                _c("products", "Products"),
                _c("products_with_variance", "With variance"),
                _c("variance_rate", "Variance rate"),
            ],
            rows,
            [
                *run,
                *(
                    (
                        f"Floor {f['floor']}",
                        f"{f['racks_finished']}/{f['racks']} racks finished, variance rate {f['variance_rate']}",
                    )
                    for f in answer["floors"]
                ),
            ],
            Chart("Variance rate per rack", "rack", "variance_rate"),
        )
    if kind == "quality":
        rows = [_quality_row(s) for s in answer["sessions"]]
        total = answer["run"]
        weights = ", ".join(f"{name} {w:g} (0 at {z:.0%})" for name, (w, z) in QUALITY_WEIGHTS.items())
        return _table(
            "Data quality per session",
            [
                _c("session_id", "Session", "text"),
                _c("verifier", "Verifier", "text"),
                _c("kind", "Kind", "text"),
                _c("status", "Status", "text"),
                _c("score", "Score"),
                *(_c(f"{n}_rate", f"{n.title()} rate") for n in QUALITY_WEIGHTS),
                *(_c(f"{n}_points", f"{n.title()} points") for n in QUALITY_WEIGHTS),
                _c("conflicts_open", "Open conflicts"),
                _c("conflicts_resolved", "Resolved conflicts"),
            ],
            rows,
            [*run, ("Run score", str(total["score"])), ("Weights", weights)],
            Chart("Score per session", "session_id", "score"),
        )
    return _table(
        "KPIs per run",
        [
            _c("name", "Run", "text"),
            _c("created_ms", "Created", "datetime"),
            _c("status", "Status", "text"),
            _c("sessions", "Sessions"),
            _c("units", "Units"),
            _c("skus_counted", "SKUs counted"),
            _c("accuracy", "Accuracy"),
            _c("damage_share", "Damage share"),
            _c("quality_score", "Quality score"),
            _c("duration_ms", "Counting time (ms)"),
        ],
        answer["runs"],
        run,
        Chart("Quality score per run", "name", "quality_score"),
    )


def _quality_row(session: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in session.items() if k != "parts"}
    for name, part in session["parts"].items():
        row[f"{name}_rate"] = part["rate"]
        row[f"{name}_points"] = part["points"]
    return row
