"""Damage from approved counts: by category and floor for one run, and run over run for the store."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from appliance.counting import rollups
from appliance.counting.runs import get_run
from appliance.reports.insights._common import _DAMAGE_BY_CATEGORY, _ms, _rate


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
