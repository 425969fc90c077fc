"""Scanners plugged into the store's boxes: the list, their settings, stations, test mode, kept codes.

The list is the store's (every box's scanners, replicated), with what this box knows live of the ones
plugged into it: reading or failed and why, characters dropped, codes waiting, the last codes read.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, patch, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import LIST_BODY, SMALL_BODY, one_of
from appliance.auth.people import User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.counting import stations
from appliance.errors import Conflict, Forbidden
from appliance.scanners import MAX_TEST_MINUTES, ScannerService


class Configure(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    layout: str | None = None
    variant: str | None = None
    suffix: str | None = None
    baud: int | None = None


class Station(msgspec.Struct, forbid_unknown_fields=True):
    session_id: Annotated[str, msgspec.Meta(max_length=64)]
    rack_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class TestMode(msgspec.Struct, forbid_unknown_fields=True):
    minutes: Annotated[float, msgspec.Meta(ge=0, le=MAX_TEST_MINUTES)]


EventId = Annotated[str, msgspec.Meta(max_length=64)]
Id = Annotated[str, msgspec.Meta(max_length=64)]


class KeptDecision(msgspec.Struct, forbid_unknown_fields=True):
    event_ids: Annotated[list[EventId], msgspec.Meta(min_length=1, max_length=stations.MAX_DECIDED)]
    decision: Annotated[str, one_of(stations.DECISIONS)]
    session_id: Id | None = None
    rack_id: Id | None = None
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


def _with_status(box: Box, scanners: ScannerService | None, row: dict[str, Any]) -> dict[str, Any]:
    here = row["node_id"] == box.node.node_id
    status = scanners.status(row["writer_id"]) if scanners is not None and here else None
    return {**row, "on_this_box": here, "plugged": status is not None, "live": status}


def _service(scanners: ScannerService | None) -> dict[str, Any]:
    if scanners is None:
        return {"reading": False, "why": "scanners are off on this box (setting scanners)"}
    return {"reading": scanners.unavailable is None, "why": scanners.unavailable}


@get("/api/scanners", opt={"permission": "scanners.read"}, sync_to_thread=True)
def list_scanners(box: Box, scanners: ScannerService | None) -> dict[str, Any]:
    rows = stations.list_scanners(box.db.read())
    return {"scanners": [_with_status(box, scanners, row) for row in rows], "service": _service(scanners)}


@get("/api/scanners/kept", opt={"permission": "scanners.read"}, sync_to_thread=True)
def kept(box: Box, all: bool = False) -> list[dict[str, Any]]:
    return stations.kept(box.db.read(), open_only=not all)


@post(
    "/api/scanners/kept/decide",
    opt={"permission": "scanners.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def decide_kept(data: JSONBody[KeptDecision], box: Box, user: User) -> dict[str, Any]:
    results = box.db.write(
        lambda conn: stations.decide_kept(
            conn,
            box.log,
            box.node,
            user,
            data.event_ids,
            data.decision,
            session_id=data.session_id,
            rack_id=data.rack_id,
            reason=data.reason,
        )
    )
    return {"results": [r.to_dict() for r in results], "kept": stations.kept(box.db.read())}


@patch(
    "/api/scanners/{writer_id:str}",
    opt={"permission": "scanners.manage"},
    sync_to_thread=True,
    request_max_body_size=SMALL_BODY,
)
def configure(
    writer_id: str, data: JSONBody[Configure], box: Box, user: User, scanners: ScannerService | None
) -> dict[str, Any]:
    changes = msgspec.structs.asdict(data)
    row = box.db.write(lambda conn: stations.configure(conn, box.log, user, writer_id, **changes))
    if scanners is not None:
        scanners.reconfigured(writer_id)
    return _with_status(box, scanners, row)


# The three routes of one path are async: as sync handlers sharing a path, Litestar 2.25 answered with
# an unawaited coroutine (as appliance.api.locks found).
@put(
    "/api/scanners/{writer_id:str}/station",
    operation_id="AssignScannerStation",
    opt={"permission": "scanners.manage"},
    request_max_body_size=SMALL_BODY,
)
async def assign(
    writer_id: str, data: JSONBody[Station], box: Box, user: User, scanners: ScannerService | None
) -> dict[str, Any]:
    row = await box.db.awrite(
        lambda conn: stations.assign(conn, box.log, user, writer_id, data.session_id, data.rack_id)
    )
    return _with_status(box, scanners, row)


@delete(
    "/api/scanners/{writer_id:str}/station",
    operation_id="UnassignScannerStation",
    opt={"permission": "scanners.manage"},
    status_code=200,
)
async def unassign(writer_id: str, box: Box, user: User, scanners: ScannerService | None) -> dict[str, Any]:
    row = await box.db.awrite(lambda conn: stations.unassign(conn, box.log, user, writer_id))
    return _with_status(box, scanners, row)


@post(
    "/api/scanners/{writer_id:str}/test",
    opt={"permission": "scanners.manage"},
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
async def test_mode(writer_id: str, data: JSONBody[TestMode], scanners: ScannerService | None) -> dict[str, Any]:
    """For the next ``minutes`` (0 ends it) the scanner's codes are shown and recorded nowhere."""
    if scanners is None:
        raise Conflict("scanners are off on this box (setting scanners)", code="SCANNERS_OFF")
    return scanners.set_test(writer_id, data.minutes).status()


@get("/api/scanners/{writer_id:str}/station", operation_id="GetScannerStation", opt={"permission": "stations.view"})
async def station_view(writer_id: str, box: Box, user: User, scanners: ScannerService | None) -> dict[str, Any]:
    """What a station's screen shows: where it counts, its running totals and the last codes it read.
    A verifier sees only a station counting for one of their own sessions."""
    conn = box.db.read()
    row = stations.scanner_dict(conn, stations.get_scanner(conn, writer_id))
    station = row["station"]
    if not allowed("scanners.read", user.role) and (station is None or station["verifier_id"] != user.user_id):
        raise Forbidden("this station counts for another person's session", code="NOT_YOUR_STATION")
    return {
        **_with_status(box, scanners, row),
        "totals": stations.station_totals(conn, writer_id),
    }


ROUTES: list[HTTPRouteHandler] = [
    list_scanners,
    kept,
    decide_kept,
    configure,
    assign,
    unassign,
    test_mode,
    station_view,
]
