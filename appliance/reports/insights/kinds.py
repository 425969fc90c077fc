"""The insight kinds, and the answer of one: what the API and ``as_table`` ask for by name."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from appliance.errors import ValidationFailed
from appliance.reports.insights.damage import damage, damage_trend
from appliance.reports.insights.heatmap import heatmap
from appliance.reports.insights.kpis import kpis, run_kpis
from appliance.reports.insights.productivity import productivity
from appliance.reports.insights.quality import quality
from appliance.reports.insights.serials import serials

KINDS = ("productivity", "damage", "serials", "heatmap", "quality", "kpis")


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
