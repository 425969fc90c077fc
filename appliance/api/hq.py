"""HQ staff's endpoints: the stores HQ holds, and the product master and planned runs HQ sends down.

HQ writes into a store's replica as one more writer of that store (its node id and key); the store's
boxes receive the events at their next pull from HQ, so nothing here calls a store. The bodies, the
checks and the error codes are the store box's own (``/api/products/import``, ``POST /api/runs``):
a file that a store's import refuses, HQ refuses the same way.

A store box has these routes too, so that every box runs one program, and answers them 404
``NOT_HQ``: a store has no other stores to write for, and 404 rather than 403 because the person
is allowed; the thing asked for does not exist on this box.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, RawBody

from appliance.api.deps import LIST_BODY
from appliance.api.products import DRY_RUN
from appliance.api.runs import NewRun, run_view
from appliance.auth.people import User
from appliance.box import Box
from appliance.catalog import product_import
from appliance.counting import runs
from appliance.errors import NotFound
from appliance.hq.hub import Hub

log = logging.getLogger(__name__)


class PlannedRun(NewRun, forbid_unknown_fields=True):
    """``POST /api/runs``'s body with the scope of ``POST /api/runs/{id}/scope`` alongside, so a planned
    run reaches the store whole: one request, one transaction, never a run without its list."""

    skus: list[str] = []
    racks: list[str] = []


def hub_for(hub: Hub | None, box: Box) -> Hub:
    if hub is None:
        raise NotFound(
            "this is a store box, not HQ; send HQ requests to HQ's address",
            code="NOT_HQ",
            details={"store_id": box.node.store_id},
        )
    return hub


@get("/api/hq/stores", opt={"permission": "hq.stores.read"}, sync_to_thread=True)
def list_stores(box: Box, hub: Hub | None) -> dict[str, Any]:
    hub = hub_for(hub, box)
    return {"hq_node_id": hub.box.node.node_id, "stores": [hub.figures(store_id) for store_id in hub.store_ids()]}


@post(
    "/api/hq/stores/{store_id:str}/products/import",
    opt={"permission": "hq.stores.write"},
    sync_to_thread=True,
    status_code=201,
    responses=DRY_RUN,
)
def import_products(
    box: Box,
    hub: Hub | None,
    store_id: str,
    body: RawBody,
    user: User,
    filename: str = "",
    dry_run: bool = False,
    create: bool = False,
) -> Response[dict[str, Any]]:
    """The body is the CSV or XLSX file, as at a store box.

    ``create`` makes the replica of a store no box of which has reached HQ yet (it is made before the
    file is checked, exactly as the store's first contact would make it). A dry run never makes one:
    against a store HQ does not hold yet the file alone is checked, and every row would be new.
    """
    hub = hub_for(hub, box)
    plan = product_import.parse_file(body, filename)
    if dry_run:
        if not create or hub.holds(store_id):
            return Response(product_import.preview(hub.held(store_id).db.read(), plan), status_code=200)
        return Response({**plan.preview(), "created": len(plan.rows), "updated": 0}, status_code=200)
    replica = hub.held(store_id, create=create)
    result = replica.db.write(lambda conn: product_import.commit(conn, replica.log, plan))
    log.info(
        "HQ imported a product master for a store",
        extra={"store_id": store_id, "user_id": user.user_id, "import_id": result["import_id"], "rows": result["rows"]},
    )
    return Response({"store_id": store_id, **result}, status_code=201)


@get("/api/hq/stores/{store_id:str}/runs", opt={"permission": "hq.stores.read"}, sync_to_thread=True)
def list_runs(box: Box, hub: Hub | None, store_id: str) -> list[dict[str, Any]]:
    return runs.list_runs(hub_for(hub, box).held(store_id).db.read())


@post(
    "/api/hq/stores/{store_id:str}/runs",
    opt={"permission": "hq.stores.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=LIST_BODY,
)
def plan_run(
    box: Box, hub: Hub | None, store_id: str, data: JSONBody[PlannedRun], user: User, create: bool = False
) -> dict[str, Any]:
    """A PLANNED run with its scope; the store's supervisor makes sessions and starts it there."""
    replica = hub_for(hub, box).held(store_id, create=create)

    def job(conn: sqlite3.Connection) -> str:
        run_id = runs.create_run(
            conn, replica.log, user, name=data.name, kind=data.kind, notes=data.notes, planned_start=data.planned_start
        )
        if data.skus or data.racks:
            runs.add_scope(conn, replica.log, user, run_id, skus=data.skus, rack_codes=data.racks)
        return run_id

    run_id = replica.db.write(job)
    log.info("HQ planned a run for a store", extra={"store_id": store_id, "user_id": user.user_id, "run_id": run_id})
    return {"store_id": store_id, **run_view(replica, run_id)}


ROUTES: list[HTTPRouteHandler] = [list_stores, import_products, list_runs, plan_run]
