"""The device sync endpoints: batches, heartbeats, and the pull that refreshes a device before it writes."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.auth import devices
from appliance.auth.devices import Device
from appliance.box import Box
from appliance.counting import ingest as sync
from appliance.counting import items, locks, rollups, sessions
from appliance.errors import Forbidden
from appliance.replica import lock_forwarding
from appliance.replica.lock_forwarding import LockForwarder

# A handheld's outbox holds at most this many records in any sane state; the figure is shown to people
# and stored as an INTEGER, so a larger (or negative) one is a client fault, refused as VALIDATION.
MAX_QUEUE_DEPTH = 1_000_000_000
HEARTBEAT_MAX_BYTES = 64 * 1024  # a heartbeat is a few dozen bytes; the batch limit is for batches


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True):
    queue_depth: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUEUE_DEPTH)] = 0
    app_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    session_id: Annotated[str, msgspec.Meta(max_length=sync.MAX_ID)] | None = None


@post("/api/sync/batch", opt={"device": True}, status_code=200)
async def batch(request: Request[Any, Any, State], box: Box, device: Device) -> Response[bytes]:
    """Answered only once the batch's transaction is committed (group commit shares the fsync)."""
    content_type = request.headers.get("content-type", "application/json")
    wire = sync.decode_batch(await request.body(), content_type)
    events, refused = sync.precheck(device, wire, box.log.clock)
    if refused is None:
        outcome = await box.db.awrite(lambda conn: sync.ingest(conn, box.log, device, events, wire.head.signature))
        conflicts = sync.flagged(box.db.read(), outcome.stored) if outcome.stored else []
        box.bus.publish([(None, {"kind": "conflict", "type": "conflict.flagged", **c}) for c in conflicts])
    else:
        outcome, conflicts = refused, []
    answer = {
        "ok": outcome.ok,
        "conflicts": conflicts,
        "errors": outcome.errors,
        "expected_seq": outcome.expected_seq,
        "server_hlc": box.log.clock.now(),
    }
    body, media_type = sync.encode_answer(answer, content_type)
    return Response(body, media_type=media_type)


def _device_sessions(box: Box, device: Device) -> list[dict[str, Any]]:
    conn = box.db.read()
    rows = conn.execute(
        "SELECT * FROM sessions WHERE device_id = ? AND status NOT IN ('APPROVED', 'VOID') ORDER BY created_hlc",
        (device.writer_id,),
    )
    return [sessions.session_dict(conn, row) for row in rows]


@post(
    "/api/sync/heartbeat",
    opt={"device": True},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=HEARTBEAT_MAX_BYTES,
)
def heartbeat(
    data: JSONBody[Heartbeat],
    box: Box,
    device: Device,
    device_forwarder: LockForwarder | None,
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    address = request.client.host if request.client else ""

    def beat(conn: Any) -> int:
        devices.record_presence(
            conn, device.writer_id, queue_depth=data.queue_depth, app_version=data.app_version, address=address
        )
        return locks.renew(conn, ttl_ms=box.settings.lease_ttl_s * 1000, device_id=device.writer_id)

    renewed = box.db.write(beat)
    lock_forwarding.renew_at_authority(device_forwarder, device_id=device.writer_id)
    box.bus.publish(
        [
            (
                None,
                {
                    "kind": "presence",
                    "writer_id": device.writer_id,
                    "queue_depth": data.queue_depth,
                    "renewed": renewed,
                },
            )
        ]
    )
    head = box.db.read().execute("SELECT head_seq FROM writers WHERE writer_id = ?", (device.writer_id,)).fetchone()
    return {
        "server_hlc": box.log.clock.now(),
        "head_seq": head[0],
        "revoked": False,
        "leases_renewed": renewed,
        "lease_renew_s": box.settings.lease_renew_s,
        "sessions": _device_sessions(box, device),
    }


@get("/api/sync/pull", opt={"device": True}, sync_to_thread=True)
def pull(box: Box, device: Device, session_id: str) -> dict[str, Any]:
    """Refresh before write: the session as the box holds it (blind: no expected quantities)."""
    conn = box.db.read()
    session = sessions.get_session(conn, session_id)
    if session["device_id"] not in (None, device.writer_id):
        raise Forbidden("this session is held by another device", code="SESSION_NOT_YOURS")
    head = conn.execute("SELECT head_seq FROM writers WHERE writer_id = ?", (device.writer_id,)).fetchone()
    return {
        "session": sessions.session_dict(conn, session),
        **items.session_items(conn, session_id),
        "buckets": rollups.buckets(conn, session["run_id"], session_id),
        "head_seq": head[0],
        "server_hlc": box.log.clock.now(),
    }


ROUTES: list[HTTPRouteHandler] = [batch, heartbeat, pull]
