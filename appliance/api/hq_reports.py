"""HQ's reports: each store's, from the replica HQ keeps of it, and across stores.

A store's report at HQ is the store's own report run over HQ's copy of that store's log: the same
facts, queries, snapshots, comparisons and audit, so the figures agree with the store's dashboard as
soon as HQ has pulled what the store holds. Across stores, one query runs over each store's replica
and the groups come back side by side, each with its store.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter

from appliance.api.deps import LIST_BODY
from appliance.api.hq import hub_for
from appliance.api.reports import CompareSpec, Id, QuerySpec
from appliance.box import Box
from appliance.counting.runs import get_run
from appliance.hq.hub import Hub
from appliance.reports import audit, query, snapshots
from appliance.reports import compare as comparing

MAX_STORES = 500


class StoreRun(msgspec.Struct, forbid_unknown_fields=True):
    store_id: Annotated[str, msgspec.Meta(max_length=64)]
    run_id: Id


class AcrossStores(msgspec.Struct, forbid_unknown_fields=True):
    runs: Annotated[list[StoreRun], msgspec.Meta(min_length=1, max_length=MAX_STORES)]
    spec: QuerySpec


def _replica(hub: Hub | None, box: Box, store_id: str) -> Box:
    return hub_for(hub, box).held(store_id)


@post(
    "/api/hq/stores/{store_id:str}/reports/query",
    opt={"permission": "hq.stores.read"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def store_query(store_id: str, data: JSONBody[QuerySpec], box: Box, hub: Hub | None) -> dict[str, Any]:
    return {"store_id": store_id, **query.run_query(_replica(hub, box, store_id).db.read(), data.spec())}


@get("/api/hq/stores/{store_id:str}/reports/snapshots", opt={"permission": "hq.stores.read"}, sync_to_thread=True)
def store_snapshots(
    store_id: str, box: Box, hub: Hub | None, run_id: Annotated[str | None, Parameter(max_length=64)] = None
) -> list[dict[str, Any]]:
    return snapshots.list_snapshots(_replica(hub, box, store_id).db.read(), run_id)


@post(
    "/api/hq/stores/{store_id:str}/reports/compare",
    opt={"permission": "hq.stores.read"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def store_compare(store_id: str, data: JSONBody[CompareSpec], box: Box, hub: Hub | None) -> dict[str, Any]:
    return comparing.compare(_replica(hub, box, store_id).db.read(), data.spec())


@get("/api/hq/stores/{store_id:str}/reports/audit", opt={"permission": "hq.stores.read"}, sync_to_thread=True)
def store_audit(
    store_id: str,
    box: Box,
    hub: Hub | None,
    run_id: Annotated[str | None, Parameter(max_length=64)] = None,
    limit: Annotated[int, Parameter(ge=1, le=audit.MAX_ENTRIES)] = 1000,
) -> dict[str, Any]:
    conn = _replica(hub, box, store_id).db.read()
    if run_id is not None:
        get_run(conn, run_id)
    return audit.report(conn, run_id=run_id, limit=limit)


@post(
    "/api/hq/reports/query",
    opt={"permission": "hq.stores.read"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def across_stores(data: JSONBody[AcrossStores], box: Box, hub: Hub | None) -> dict[str, Any]:
    """One query over a run of each store: each store's groups, with the store, and the totals of all."""
    central = hub_for(hub, box)
    groups: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    per_store = []
    for item in data.runs:
        spec = query.Spec.from_dict({**data.spec.spec().to_dict(), "run_id": item.run_id, "snapshot_id": None})
        answer = query.run_query(central.held(item.store_id).db.read(), spec)
        groups += [{"store_id": item.store_id, **g} for g in answer["groups"]]
        per_store.append({"store_id": item.store_id, "run_id": item.run_id, **answer["total"]})
        for key, value in answer["total"].items():
            totals[key] = totals.get(key, 0) + value
    return {"groups": groups, "stores": per_store, "total": totals}


ROUTES: list[HTTPRouteHandler] = [store_query, store_snapshots, store_compare, store_audit, across_stores]
