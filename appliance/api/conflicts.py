"""What a supervisor decides: the conflict queue, events held for a supervisor, and mapping unmatched codes."""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter

from appliance.api.deps import SMALL_BODY, one_of
from appliance.auth.people import User
from appliance.box import Box
from appliance.counting import codes, conflicts, held
from appliance.errors import ValidationFailed

QUEUE_STATUSES = ("open", "resolved", "all")


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    action: Annotated[str, one_of(conflicts.ACTIONS)]
    reason: str = ""
    edits: dict[str, Any] = {}


EventId = Annotated[str, msgspec.Meta(max_length=64)]


class HeldDecision(msgspec.Struct, forbid_unknown_fields=True):
    event_ids: Annotated[list[EventId], msgspec.Meta(min_length=1, max_length=held.MAX_DECIDE)]
    decision: Annotated[str, one_of(held.DECISIONS)]
    reason: Annotated[str, msgspec.Meta(max_length=500)]


class CodeMapping(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    sku: str


@get("/api/conflicts", opt={"permission": "conflicts.read"}, sync_to_thread=True)
def list_conflicts(
    box: Box,
    run_id: str | None = None,
    status: Annotated[str, Parameter(schema_extra={"enum": list(QUEUE_STATUSES)})] = "open",
) -> list[dict[str, Any]]:
    if status not in QUEUE_STATUSES:
        raise ValidationFailed("status must be open, resolved or all", details={"field": "status"})
    conn = box.db.read()
    return _named(conn, conflicts.conflicts(conn, run_id, status))


def _named(conn: sqlite3.Connection, queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids alone mean nothing to a supervisor: add the SKU and name of each product a conflict
    mentions, the verifier of each session, and the rack codes its scans were made on."""
    product_ids = {c[key] for c in queue for key in ("product_id", "resolves_to") if c.get(key)}
    product_ids |= {claim["product_id"] for c in queue for claim in c.get("claims", [])}
    session_ids = {c["session_id"] for c in queue if c.get("session_id")}
    session_ids |= {claim["session_id"] for c in queue for claim in c.get("claims", [])}
    products = _rows(conn, "SELECT product_id, sku, name FROM products WHERE product_id IN ({})", product_ids)
    verifiers = _rows(
        conn,
        "SELECT s.session_id, u.display_name FROM sessions s JOIN users u ON u.user_id = s.verifier_id"
        " WHERE s.session_id IN ({})",
        session_ids,
    )
    rack_codes = dict(conn.execute("SELECT rack_id, code FROM racks").fetchall()) if queue else {}
    for conflict in queue:
        conflict["products"] = {pid: products[pid] for pid in _mentioned(conflict) if pid in products}
        conflict["verifiers"] = {sid: verifiers[sid]["display_name"] for sid in _sessions(conflict) if sid in verifiers}
        conflict["racks"] = sorted(rack_codes.get(r, r) for r in conflicts.racks_of(conn, conflict))
    return queue


def _rows(conn: sqlite3.Connection, sql: str, keys: set[str]) -> dict[str, dict[str, Any]]:
    if not keys:
        return {}
    rows = conn.execute(sql.format(",".join("?" for _ in keys)), list(keys))
    return {row[0]: dict(row) for row in rows}


def _mentioned(conflict: dict[str, Any]) -> list[str]:
    found = [conflict[key] for key in ("product_id", "resolves_to") if conflict.get(key)]
    return found + [claim["product_id"] for claim in conflict.get("claims", [])]


def _sessions(conflict: dict[str, Any]) -> list[str]:
    found = [conflict["session_id"]] if conflict.get("session_id") else []
    return found + [claim["session_id"] for claim in conflict.get("claims", [])]


@post(
    "/api/conflicts/{conflict_id:str}/resolve",
    opt={"permission": "conflicts.resolve"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def resolve(conflict_id: str, data: JSONBody[Resolution], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: conflicts.resolve(
            conn, box.log, user, conflict_id, action=data.action, reason=data.reason, edits=data.edits
        )
    )


@post(
    "/api/codes/map",
    opt={"permission": "codes.map"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def map_code(data: JSONBody[CodeMapping], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(lambda conn: codes.map_code(conn, box.log, user, data.code, data.sku))


@get("/api/held", opt={"permission": "conflicts.read"}, sync_to_thread=True)
def list_held(
    box: Box,
    run_id: str | None = None,
    session_id: str | None = None,
    status: Annotated[str, Parameter(schema_extra={"enum": ["open", "decided", "all"]})] = "open",
) -> list[dict[str, Any]]:
    """Events stored but not counted until a supervisor accepts them, with why each is held."""
    return held.held(box.db.read(), run_id=run_id, session_id=session_id, status=status)


@post(
    "/api/held/decide",
    opt={"permission": "conflicts.resolve"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def decide_held(data: JSONBody[HeldDecision], box: Box, user: User) -> dict[str, Any]:
    decided = box.db.write(lambda conn: held.decide(conn, box.log, user, data.event_ids, data.decision, data.reason))
    box.bus.publish([(None, {"kind": "held", "decision": data.decision, "events": decided})])
    return {"decided": decided, "decision": data.decision}


ROUTES: list[HTTPRouteHandler] = [list_conflicts, resolve, map_code, list_held, decide_held]
