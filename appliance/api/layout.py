"""The store, its floors and racks."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import SMALL_BODY
from appliance.box import Box
from appliance.catalog import layout

# Floors are ordered by position. Bounded well inside SQLite's integers: past them the insert failed as a 500.
MAX_POSITION = 1_000_000


class NewFloor(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str = ""
    position: Annotated[int, msgspec.Meta(ge=0, le=MAX_POSITION)] | None = None


class NewRack(msgspec.Struct, forbid_unknown_fields=True):
    floor: str
    code: str
    name: str = ""


@get("/api/store", opt={"permission": "layout.read"}, sync_to_thread=True)
def store(box: Box) -> dict[str, Any]:
    conn = box.db.read()
    return {"store": layout.store(conn), "floors": layout.floors(conn)}


@get("/api/floors", opt={"permission": "layout.read"}, sync_to_thread=True)
def floors(box: Box) -> list[dict[str, Any]]:
    return layout.floors(box.db.read())


@post(
    "/api/floors",
    opt={"permission": "layout.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def add_floor(data: JSONBody[NewFloor], box: Box) -> dict[str, Any]:
    return box.db.write(lambda conn: layout.add_floor(conn, box.log, data.code, data.name, data.position))


@get("/api/racks", opt={"permission": "layout.read"}, sync_to_thread=True)
def racks(box: Box, floor: str | None = None) -> list[dict[str, Any]]:
    return layout.racks(box.db.read(), floor)


@post(
    "/api/racks",
    opt={"permission": "layout.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def add_rack(data: JSONBody[NewRack], box: Box) -> dict[str, Any]:
    return box.db.write(lambda conn: layout.add_rack(conn, box.log, data.floor, data.code, data.name))


ROUTES: list[HTTPRouteHandler] = [store, floors, add_floor, racks, add_rack]
