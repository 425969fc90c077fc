"""Insights of a run (productivity, damage, serials, heatmap, quality, KPIs), and trends across runs.

Each is a read of the projections and the log answered as the domain's dicts (``appliance.reports.
insights``); an unknown kind or a missing run is the domain's to refuse, with its own code.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from appliance.box import Box
from appliance.reports import insights


@get("/api/reports/insights/{kind:str}", opt={"permission": "reports.read"}, sync_to_thread=True)
def insight(
    kind: Annotated[str, Parameter(schema_extra={"enum": list(insights.KINDS)})],
    box: Box,
    run_id: Annotated[str, Parameter(max_length=64)],
) -> dict[str, Any]:
    """One run's insight of ``kind``: productivity, damage, serials, heatmap, quality or kpis."""
    return insights.insight(box.db.read(), kind, run_id)


@get("/api/reports/trends", opt={"permission": "reports.read"}, sync_to_thread=True)
def trends(box: Box) -> dict[str, Any]:
    """Across the store's runs: damage, and the KPIs of each run."""
    conn = box.db.read()
    return {"damage": insights.damage_trend(conn), "kpis": insights.kpis(conn)}


ROUTES: list[HTTPRouteHandler] = [insight, trends]
