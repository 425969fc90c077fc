"""Each insight as a ``Table`` for the exports: its main list as rows, its totals on the summary page."""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.reports.insights.kinds import insight
from appliance.reports.insights.productivity import IDLE_GAP_MS
from appliance.reports.insights.quality import QUALITY_WEIGHTS
from appliance.reports.table import Chart, Column, Table


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
