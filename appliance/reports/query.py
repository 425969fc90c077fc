"""Query and group-by over a run's facts or a snapshot's rows: filters, any grouping, totals.

A query is data (``Spec``), so it can be saved by name, sent to HQ, exported, and run again against a
snapshot or the live run alike: the two sources have the same columns (``facts.FIELDS``), and the one
statement built here runs over either. Filtering and grouping happen in SQLite; what Python adds is
the expected quantities, which belong to whole products and are joined only where a group is made of
whole products (grouped by product, category or subcategory, or not grouped at all).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.auth.people import User
from appliance.errors import NotFound, ValidationFailed
from appliance.reports import facts
from appliance.reports.table import Chart, Column, Table
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event

projection_tables("saved_queries")

# Group keys a person may choose, and the columns each shows.
GROUPS: dict[str, tuple[str, ...]] = {
    "floor": ("floor",),
    "rack": ("floor", "rack"),
    "category": ("category",),
    "subcategory": ("category", "subcategory"),
    "condition": ("condition",),
    "verifier": ("verifier_id", "verifier"),
    "device": ("writer_id", "device"),
    "product": ("product_id", "sku", "name", "code"),
}
# Filters on a column's value (any of a list), and the flags.
LIST_FILTERS = {
    "floor": "floor",
    "rack": "rack",
    "category": "category",
    "subcategory": "subcategory",
    "condition": "condition",
    "verifier": "verifier_id",
    "device": "writer_id",
    "sku": "sku",
}
FLAGS = ("with_variance", "damaged", "unmatched")
PRODUCT_GROUPS = {"product", "category", "subcategory"}
MEASURES = ("qty", "damage", "lines", "expected", "variance")
MAX_LIMIT = 100_000
MAX_VALUES = 1000


@dataclass
class Spec:
    """What a person asks: a source (a run, or a snapshot), filters, a grouping, an order."""

    run_id: str | None = None
    snapshot_id: str | None = None
    filters: dict[str, list[str]] = field(default_factory=dict)
    with_variance: bool = False
    damaged: bool = False
    unmatched: bool = False
    group_by: list[str] = field(default_factory=list)
    sort: str = ""
    descending: bool = False
    limit: int = 1000
    offset: int = 0

    def check(self) -> None:
        if (self.run_id is None) == (self.snapshot_id is None):
            raise ValidationFailed("name a run_id or a snapshot_id (one of them)", details={"field": "run_id"})
        unknown = [g for g in self.group_by if g not in GROUPS]
        if unknown or len(set(self.group_by)) != len(self.group_by):
            raise ValidationFailed(
                f"group_by takes each of {', '.join(GROUPS)} at most once", details={"field": "group_by"}
            )
        for name, values in self.filters.items():
            if name not in LIST_FILTERS:
                raise ValidationFailed(
                    f"unknown filter {name!r}: filters are {', '.join(LIST_FILTERS)}", details={"field": name}
                )
            if not 1 <= len(values) <= MAX_VALUES:
                raise ValidationFailed(f"filter {name} takes 1 to {MAX_VALUES} values", details={"field": name})
        if self.sort and self.sort not in (*self.columns(), *MEASURES):
            raise ValidationFailed(f"cannot sort by {self.sort!r}", details={"field": "sort"})
        if not 1 <= self.limit <= MAX_LIMIT or self.offset < 0:
            raise ValidationFailed(f"limit is 1 to {MAX_LIMIT}, offset 0 or more", details={"field": "limit"})

    def columns(self) -> list[str]:
        """The group columns, in the order the groups were chosen."""
        out: list[str] = []
        for group in self.group_by:
            out += [c for c in GROUPS[group] if c not in out]
        return out

    @property
    def with_expected(self) -> bool:
        return set(self.group_by) <= PRODUCT_GROUPS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _source(spec: Spec) -> tuple[str, dict[str, Any]]:
    """The rows to query and the expected quantities, as a ``WITH`` clause naming ``src`` (the rows,
    the same columns whichever the source), ``prod`` (counted and damaged per product over the whole
    source: a product's variance is the run's, whatever is filtered) and ``exp``."""
    if spec.snapshot_id is not None:
        rows = f"SELECT {', '.join(facts.FIELDS)} FROM snapshot_rows WHERE snapshot_id = :source"
        exp = "SELECT product_id, expected FROM snapshot_expected WHERE snapshot_id = :source"
        params: dict[str, Any] = {"source": spec.snapshot_id}
    else:
        rows = facts.FACTS_SQL
        exp = "SELECT product_id, expected_qty AS expected FROM run_expected WHERE run_id = :run_id"
        params = {"run_id": spec.run_id}
    with_clause = (
        f"WITH src AS MATERIALIZED ({rows}),"
        " prod AS (SELECT product_id, sum(qty) AS qty, sum(damage) AS damage FROM src"
        " WHERE product_id IS NOT NULL GROUP BY product_id),"
        f" exp AS ({exp}) "
    )
    return with_clause, params


def check(conn: sqlite3.Connection, spec: Spec) -> None:
    """What ``run_query`` refuses, without running it: an export checks its query before queueing it."""
    spec.check()
    _check_source(conn, spec)


def _check_source(conn: sqlite3.Connection, spec: Spec) -> None:
    if spec.snapshot_id is not None:
        if conn.execute("SELECT 1 FROM report_snapshots WHERE snapshot_id = ?", (spec.snapshot_id,)).fetchone() is None:
            raise NotFound(f"snapshot {spec.snapshot_id} does not exist", code="SNAPSHOT_NOT_FOUND")
    elif conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (spec.run_id,)).fetchone() is None:
        raise NotFound(f"run {spec.run_id} does not exist", code="RUN_NOT_FOUND")


_VARIANCE = (
    "SELECT p.product_id FROM prod p LEFT JOIN exp e ON e.product_id = p.product_id"
    " WHERE p.qty != coalesce(e.expected, 0)"
    " UNION SELECT e.product_id FROM exp e LEFT JOIN prod p ON p.product_id = e.product_id"
    " WHERE p.product_id IS NULL AND e.expected != 0"
)


def _where(spec: Spec, params: dict[str, Any]) -> str:
    clauses = []
    for name, values in sorted(spec.filters.items()):
        marks = []
        for i, value in enumerate(values):
            params[f"{name}_{i}"] = value
            marks.append(f":{name}_{i}")
        clauses.append(f"{LIST_FILTERS[name]} IN ({', '.join(marks)})")
    if spec.unmatched:
        clauses.append("code IS NOT NULL")
    if spec.damaged:
        clauses.append("product_id IN (SELECT product_id FROM prod WHERE damage > 0)")
    if spec.with_variance:
        clauses.append(f"product_id IN ({_VARIANCE})")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def run_query(conn: sqlite3.Connection, spec: Spec) -> dict[str, Any]:
    """Groups with their totals (``qty``, ``damage``, ``lines``: distinct products or codes; and where
    the groups are whole products, ``expected`` and ``variance``), the grand totals, and the number of
    groups before ``limit``."""
    check(conn, spec)
    groups = _all_groups(conn, spec)
    total = {
        "qty": sum(g["qty"] for g in groups),
        "damage": sum(g["damage"] for g in groups),
        "groups": len(groups),
    }
    if spec.with_expected:
        total["expected"] = sum(g["expected"] for g in groups)
        total["variance"] = total["qty"] - total["expected"]
    if spec.sort:
        groups.sort(key=lambda g: (g.get(spec.sort) is None, g.get(spec.sort) or 0), reverse=spec.descending)
    return {
        "columns": spec.columns(),
        "measures": [m for m in MEASURES if spec.with_expected or m not in ("expected", "variance")],
        "groups": groups[spec.offset : spec.offset + spec.limit],
        "total": total,
        "spec": spec.to_dict(),
    }


def _all_groups(conn: sqlite3.Connection, spec: Spec) -> list[dict[str, Any]]:
    with_clause, params = _source(spec)
    where = _where(spec, params)
    columns = spec.columns()
    if spec.with_expected:
        return _product_groups(conn, spec, with_clause, params, where)
    keys = ", ".join(columns)
    select = (keys + ", " if keys else "") + (
        "sum(qty) AS qty, sum(damage) AS damage, count(DISTINCT coalesce(product_id, '#' || code)) AS lines"
    )
    sql = f"{with_clause}SELECT {select} FROM src{where}" + (f" GROUP BY {keys} ORDER BY {keys}" if keys else "")
    return list(_rows(conn, sql, params))


def _rows(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def _product_groups(
    conn: sqlite3.Connection, spec: Spec, with_clause: str, params: dict[str, Any], where: str
) -> list[dict[str, Any]]:
    """Groups of whole products: counted per product (or unmatched code) from the filtered rows, then
    every expected product the filters allow that nobody counted, with 0, so a variance report shows
    what is missing as well as what is over."""
    counted = list(
        _rows(
            conn,
            f"{with_clause}SELECT product_id, code, max(sku) AS sku, max(name) AS name, max(category) AS category,"
            " max(subcategory) AS subcategory, sum(qty) AS qty, sum(damage) AS damage,"
            " (SELECT expected FROM exp WHERE exp.product_id = src.product_id) AS expected"
            f" FROM src{where} GROUP BY product_id, code",
            params,
        )
    )
    row_filters = {"floor", "rack", "condition", "verifier", "device"} & set(spec.filters)
    if not row_filters and not spec.unmatched and not spec.damaged:
        # Expected products nobody counted (none of them is in src): counted 0.
        missing = (
            f"{with_clause}SELECT e.product_id, p.sku, p.name, p.category, p.subcategory, NULL AS code, 0 AS qty,"
            " 0 AS damage, e.expected FROM exp e JOIN products p ON p.product_id = e.product_id"
            " WHERE e.expected != 0 AND e.product_id NOT IN (SELECT product_id FROM prod)"
        )
        counted += [row for row in _rows(conn, missing, params) if _passes(spec, row)]
    columns = spec.columns()
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in counted:
        key = tuple(row.get(c) for c in columns)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                **dict(zip(columns, key, strict=True)),
                "qty": 0,
                "damage": 0,
                "lines": 0,
                "expected": 0,
            }
        group["qty"] += row["qty"]
        group["damage"] += row["damage"]
        group["lines"] += 1
        group["expected"] += row["expected"] or 0
    out = sorted(groups.values(), key=lambda g: tuple((g[c] is None, g[c] or "") for c in columns))
    for group in out:
        group["variance"] = group["qty"] - group["expected"]
    return out


def _passes(spec: Spec, item: dict[str, Any]) -> bool:
    """An expected product nobody counted, against the filters that speak of products."""
    return all(item[name] in spec.filters[name] for name in ("category", "subcategory", "sku") if name in spec.filters)


def as_table(conn: sqlite3.Connection, spec: Spec, title: str = "Query") -> Table:
    """The query's groups as a ``Table`` for an export (every group, not a page of them)."""
    whole = Spec.from_dict({**spec.to_dict(), "limit": MAX_LIMIT, "offset": 0})
    answer = run_query(conn, whole)
    labels = {
        "floor": "Floor",
        "rack": "Rack",
        "category": "Category",
        "subcategory": "Subcategory",
        "condition": "Condition",
        "verifier_id": "Verifier id",
        "verifier": "Verifier",
        "writer_id": "Device id",
        "device": "Device",
        "product_id": "Product id",
        "sku": "SKU",
        "name": "Name",
        "code": "Unmatched code",
        "qty": "Counted",
        "damage": "Damaged",
        "lines": "Lines",
        "expected": "Expected",
        "variance": "Variance",
    }
    columns = [Column(c, labels[c]) for c in answer["columns"]]
    columns += [Column(m, labels[m], "int") for m in answer["measures"]]
    groups = answer["groups"]
    summary = [("Source", f"snapshot {spec.snapshot_id}" if spec.snapshot_id else f"run {spec.run_id}")]
    summary += [("Grouped by", ", ".join(spec.group_by) or "(everything)")]
    summary += [("Filters", json.dumps(spec.filters, ensure_ascii=False) if spec.filters else "(none)")]
    summary += [(k.capitalize(), str(v)) for k, v in answer["total"].items()]
    label = next(
        (
            c
            for c in ("name", "rack", "category", "subcategory", "verifier", "device", "floor")
            if c in answer["columns"]
        ),
        None,
    )
    chart = Chart("Counted by " + (label or "group"), label, "qty") if label else None
    return Table(title, columns, lambda: iter(groups), total_rows=len(groups), summary=summary, chart=chart)


# -- saved queries --------------------------------------------------------------------------------
MAX_QUERY_NAME = 120


def save_query(conn: sqlite3.Connection, log: EventLog, actor: User, name: str, spec: Spec) -> dict[str, Any]:
    """Keep a query by name for everyone of the store (and HQ): saving a name again replaces it."""
    spec.check()
    label = name.strip()
    if not 1 <= len(label) <= MAX_QUERY_NAME:
        raise ValidationFailed(f"name the query (1-{MAX_QUERY_NAME} characters)", details={"field": "name"})
    row = conn.execute("SELECT query_id FROM saved_queries WHERE name = ? AND deleted = 0", (label,)).fetchone()
    query_id = row[0] if row else new_id()
    log.record(
        conn, "report.query_saved", {"query_id": query_id, "name": label, "spec": spec.to_dict(), "by": actor.user_id}
    )
    return get_query(conn, query_id)


def delete_query(conn: sqlite3.Connection, log: EventLog, actor: User, query_id: str) -> None:
    get_query(conn, query_id)
    log.record(conn, "report.query_deleted", {"query_id": query_id, "by": actor.user_id})


def get_query(conn: sqlite3.Connection, query_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM saved_queries WHERE query_id = ? AND deleted = 0", (query_id,)).fetchone()
    if row is None:
        raise NotFound(f"saved query {query_id} does not exist", code="QUERY_NOT_FOUND")
    return _query_dict(row)


def list_queries(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_query_dict(r) for r in conn.execute("SELECT * FROM saved_queries WHERE deleted = 0 ORDER BY name")]


def _query_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "query_id": row["query_id"],
        "name": row["name"],
        "spec": json.loads(row["spec"]),
        "by_user": row["by_user"],
        "saved_at": row["saved_at"],
    }


@projector("report.query_saved")
def _query_saved(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO saved_queries (query_id, name, spec, by_user, saved_at, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (query_id) DO UPDATE SET name = excluded.name,"
        " spec = excluded.spec, by_user = excluded.by_user, saved_at = excluded.saved_at, deleted = 0,"
        " hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (saved_queries.hlc, saved_queries.writer_id)",
        (
            p["query_id"],
            p["name"],
            json.dumps(p["spec"]),
            p["by"],
            event.occurred_at or 0,
            event.hlc,
            event.writer_id,
        ),
    )


@projector("report.query_deleted")
def _query_deleted(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "UPDATE saved_queries SET deleted = 1, hlc = ?, writer_id = ? WHERE query_id = ? AND (?, ?) > (hlc, writer_id)",
        (event.hlc, event.writer_id, event.payload["query_id"], event.hlc, event.writer_id),
    )
