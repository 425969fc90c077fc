"""The conflict queue and its resolutions, and mapping unmatched codes to products."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler

from appliance.box import Box
from appliance.counting import conflicts, items
from appliance.errors import ValidationFailed
from appliance.people import User


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    reason: str = ""
    edits: dict[str, Any] = {}


class CodeMapping(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    sku: str


@get("/api/conflicts", opt={"permission": "conflicts.read"}, sync_to_thread=True)
def list_conflicts(box: Box, run_id: str | None = None, status: str = "open") -> list[dict[str, Any]]:
    if status not in ("open", "resolved", "all"):
        raise ValidationFailed("status must be open, resolved or all", details={"field": "status"})
    return conflicts.conflicts(box.db.read(), run_id, status)


@post(
    "/api/conflicts/{conflict_id:str}/resolve",
    opt={"permission": "conflicts.resolve"},
    sync_to_thread=True,
    status_code=200,
)
def resolve(conflict_id: str, data: Resolution, box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: conflicts.resolve(
            conn, box.log, user, conflict_id, action=data.action, reason=data.reason, edits=data.edits
        )
    )


@post("/api/codes/map", opt={"permission": "codes.map"}, sync_to_thread=True, status_code=201)
def map_code(data: CodeMapping, box: Box, user: User) -> dict[str, Any]:
    return box.db.write(lambda conn: items.map_code(conn, box.log, user, data.code, data.sku))


ROUTES: list[HTTPRouteHandler] = [list_conflicts, resolve, map_code]
