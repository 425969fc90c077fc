"""``GET /api/health``: unauthenticated, for discovery and connectivity checks."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from appliance import __version__
from appliance.box import Box

log = logging.getLogger(__name__)


@get("/api/health", opt={"public": True}, sync_to_thread=True)
def health(box: Box) -> Response[dict[str, Any]]:
    database_ok = True
    try:
        box.db.read().execute("SELECT 1 FROM node").fetchone()
    except Exception:
        log.exception("health check could not read the database")
        database_ok = False
    body = {
        "status": "ok" if database_ok else "degraded",
        "node_id": box.node.node_id,
        "store_id": box.node.store_id,
        "role": box.node.role,
        "version": __version__,
        "database": "ok" if database_ok else "error",
    }
    return Response(body, status_code=200 if database_ok else 503)


ROUTES: list[HTTPRouteHandler] = [health]
