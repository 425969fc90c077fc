"""Comparing two counts: two snapshots, a snapshot and the live run, or two runs of the store.

Per product (or unmatched code) and rack, what the second has that the first had not (``added``), what
it lost (``removed``), and what changed, with the difference; ``same`` rows are left out unless asked
for. Each side is first summed to that grain in SQLite (a 5,000-SKU snapshot is a few thousand rows),
and the two are merged here, so any pair of sources compares the same way.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import NotFound, ValidationFailed
from appliance.reports import facts
from appliance.reports.table import Chart, Column, Table

CHANGES = ("added", "removed", "changed", "same")
SORTS = ("rack", "sku", "name", "category", "a_qty", "b_qty", "diff", "abs_diff", "change")
MAX_LIMIT = 100_000

_GRAIN = (
    "SELECT rack_id, max(rack) AS rack, max(floor) AS floor, product_id, code, max(sku) AS sku, max(name) AS name,"
    " max(category) AS category, sum(qty) AS qty, sum(damage) AS damage FROM ({rows})"
    " GROUP BY rack_id, product_id, code"
)


@dataclass
class Side:
    """One side of a comparison: a snapshot, or a run as it is now (its approved sessions)."""

    snapshot_id: str | None = None
    run_id: str | None = None

    def check(self, conn: sqlite3.Connection, name: str) -> None:
        if (self.snapshot_id is None) == (self.run_id is None):
            raise ValidationFailed(f"{name} names a snapshot_id or a run_id (one of them)", details={"field": name})
        if self.snapshot_id is not None:
            if (
                conn.execute("SELECT 1 FROM report_snapshots WHERE snapshot_id = ?", (self.snapshot_id,)).fetchone()
                is None
            ):
                raise NotFound(f"snapshot {self.snapshot_id} does not exist", code="SNAPSHOT_NOT_FOUND")
        elif conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (self.run_id,)).fetchone() is None:
            raise NotFound(f"run {self.run_id} does not exist", code="RUN_NOT_FOUND")

    def label(self, conn: sqlite3.Connection) -> str:
        if self.snapshot_id is not None:
            row = conn.execute(
                "SELECT name FROM report_snapshots WHERE snapshot_id = ?", (self.snapshot_id,)
            ).fetchone()
            return f"snapshot {row[0]}"
        row = conn.execute("SELECT name FROM runs WHERE run_id = ?", (self.run_id,)).fetchone()
        return f"run {row[0]} (now)"

    def grain(self, conn: sqlite3.Connection) -> dict[tuple[Any, ...], dict[str, Any]]:
        if self.snapshot_id is not None:
            rows = f"SELECT {', '.join(facts.FIELDS)} FROM snapshot_rows WHERE snapshot_id = :source"
            params: dict[str, Any] = {"source": self.snapshot_id}
        else:
            rows, params = facts.FACTS_SQL, {"run_id": self.run_id}
        cursor = conn.execute(_GRAIN.format(rows=rows), params)
        names = [d[0] for d in cursor.description]
        out = {}
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            out[(row["rack_id"], row["product_id"], row["code"])] = row
        return out


@dataclass
class Comparison:
    a: Side
    b: Side
    changes: list[str] = field(default_factory=lambda: ["added", "removed", "changed"])
    rack: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    sku: list[str] = field(default_factory=list)
    sort: str = "abs_diff"
    descending: bool = True
    limit: int = 1000
    offset: int = 0

    def check(self, conn: sqlite3.Connection) -> None:
        self.a.check(conn, "a")
        self.b.check(conn, "b")
        if not self.changes or any(c not in CHANGES for c in self.changes):
            raise ValidationFailed(f"changes are some of {', '.join(CHANGES)}", details={"field": "changes"})
        if self.sort not in SORTS:
            raise ValidationFailed(f"sort is one of {', '.join(SORTS)}", details={"field": "sort"})
        if not 1 <= self.limit <= MAX_LIMIT or self.offset < 0:
            raise ValidationFailed(f"limit is 1 to {MAX_LIMIT}, offset 0 or more", details={"field": "limit"})


def compare(conn: sqlite3.Connection, spec: Comparison) -> dict[str, Any]:
    spec.check(conn)
    rows = _merged(conn, spec)
    counts = dict.fromkeys(CHANGES, 0)
    for row in rows:
        counts[row["change"]] += 1
    wanted = [
        row
        for row in rows
        if row["change"] in spec.changes
        and (not spec.rack or row["rack"] in spec.rack)
        and (not spec.category or row["category"] in spec.category)
        and (not spec.sku or row["sku"] in spec.sku)
    ]
    key = spec.sort
    wanted.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else ""), reverse=spec.descending)
    return {
        "a": {**_side(spec.a), "label": spec.a.label(conn), "qty": sum(r["a_qty"] for r in rows)},
        "b": {**_side(spec.b), "label": spec.b.label(conn), "qty": sum(r["b_qty"] for r in rows)},
        "counts": counts,
        "matching": len(wanted),
        "rows": wanted[spec.offset : spec.offset + spec.limit],
    }


def _side(side: Side) -> dict[str, Any]:
    return {"snapshot_id": side.snapshot_id, "run_id": side.run_id}


def _merged(conn: sqlite3.Connection, spec: Comparison) -> list[dict[str, Any]]:
    first, second = spec.a.grain(conn), spec.b.grain(conn)
    out = []
    for key in first.keys() | second.keys():
        a, b = first.get(key), second.get(key)
        seen = b or a
        assert seen is not None
        a_qty, b_qty = (a["qty"] if a else 0), (b["qty"] if b else 0)
        change = "added" if a is None else "removed" if b is None else "changed" if a_qty != b_qty else "same"
        out.append(
            {
                "floor": seen["floor"],
                "rack": seen["rack"],
                "product_id": seen["product_id"],
                "sku": seen["sku"],
                "name": seen["name"],
                "category": seen["category"],
                "code": seen["code"],
                "a_qty": a_qty,
                "b_qty": b_qty,
                "diff": b_qty - a_qty,
                "abs_diff": abs(b_qty - a_qty),
                "change": change,
            }
        )
    # A stable order under the chosen sort: the same answer on every replica, and page after page.
    out.sort(key=lambda r: tuple((r[k] is None, r[k] or "") for k in ("floor", "rack", "sku", "code")))
    return out


COLUMNS = [
    Column("floor", "Floor"),
    Column("rack", "Rack"),
    Column("sku", "SKU"),
    Column("name", "Name"),
    Column("category", "Category"),
    Column("code", "Unmatched code"),
    Column("change", "Change"),
    Column("a_qty", "First", "int"),
    Column("b_qty", "Second", "int"),
    Column("diff", "Difference", "int"),
]


def as_table(conn: sqlite3.Connection, spec: Comparison) -> Table:
    whole = Comparison(**{**spec.__dict__, "limit": MAX_LIMIT, "offset": 0})
    answer = compare(conn, whole)
    rows = answer["rows"]
    summary = [
        ("First", answer["a"]["label"]),
        ("Second", answer["b"]["label"]),
        ("Counted in the first", str(answer["a"]["qty"])),
        ("Counted in the second", str(answer["b"]["qty"])),
        *[(change.capitalize(), str(n)) for change, n in answer["counts"].items()],
    ]
    return Table(
        f"Comparison: {answer['a']['label']} and {answer['b']['label']}",
        COLUMNS,
        lambda: iter(rows),
        total_rows=len(rows),
        summary=summary,
        chart=Chart("Largest differences", "sku", "abs_diff"),
    )
