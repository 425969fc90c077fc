"""The device sync endpoints: batches, heartbeats, the pull that refreshes a device before it writes,
the photos a device uploads before the events that name them, and the catalog it resolves codes with
while the box is out of reach."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import RawBody

from appliance.api.deps import JSON, MSGPACK, in_requests_format, wants_msgpack
from appliance.auth import devices
from appliance.auth.devices import Device
from appliance.box import Box
from appliance.catalog import products
from appliance.counting import ingest as sync
from appliance.counting import items, locks, photos, rollups, sessions
from appliance.errors import BadRequest, Forbidden, PayloadTooLarge
from appliance.replica import lock_forwarding
from appliance.replica.lock_forwarding import LockForwarder

# A handheld's outbox holds at most this many records in any sane state; the figure is shown to people
# and stored as an INTEGER, so a larger (or negative) one is a client fault, refused as VALIDATION.
MAX_QUEUE_DEPTH = 1_000_000_000
HEARTBEAT_MAX_BYTES = 64 * 1024  # a heartbeat is a few dozen bytes; the batch limit is for batches


# JSON has one kind of number, and the document calls the depth an integer: a whole number written
# as 44970.0 is that number, in either format. A fraction, a string or a bool is not a depth.
WholeFloat = Annotated[float, msgspec.Meta(ge=0, le=MAX_QUEUE_DEPTH, multiple_of=1)]


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True):
    queue_depth: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUEUE_DEPTH)] | WholeFloat = 0
    app_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    session_id: Annotated[str, msgspec.Meta(max_length=sync.MAX_ID)] | None = None


_MSGPACK_HEARTBEAT = msgspec.msgpack.Decoder(Heartbeat)
_JSON_HEARTBEAT = msgspec.json.Decoder(Heartbeat)


def decode_heartbeat(body: bytes, content_type: str) -> Heartbeat:
    """A heartbeat in msgpack or JSON, checked against the same struct and bounds in either.

    Every malformed one is ``400 VALIDATION``, as a malformed batch is (docs/sync-protocol.md §3.2):
    a device acts on the code alone, so the format it sent must not change the code it gets."""
    try:
        if content_type.startswith(MSGPACK):
            return _MSGPACK_HEARTBEAT.decode(body)
        return _JSON_HEARTBEAT.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadRequest(f"the heartbeat is not valid: {exc}", code="VALIDATION") from None


@post("/api/sync/batch", opt={"device": True}, status_code=200)
async def batch(request: Request[Any, Any, State], box: Box, device: Device) -> Response[Any]:
    """Answered only once the batch's transaction is committed (group commit shares the fsync)."""
    content_type = MSGPACK if wants_msgpack(request) else JSON  # the body's format, read as answers are
    wire = sync.decode_batch(await request.body(), content_type)
    events, refused = sync.precheck(device, wire, box.log.clock)
    if refused is None:
        photos_dir = box.settings.data_dir / "photos"
        outcome = await box.db.awrite(
            lambda conn: sync.ingest(conn, box.log, device, events, wire.head.signature, photos_dir=photos_dir)
        )
        conflicts = sync.flagged(box.db.read(), outcome.stored) if outcome.stored else []
        box.bus.publish([(None, {"kind": "conflict", "type": "conflict.flagged", **c}) for c in conflicts])
        box.bus.publish([(None, {"kind": "held", "type": "events.held", **h}) for h in outcome.held])
    else:
        outcome, conflicts = refused, []
    answer = {
        "ok": outcome.ok,
        "conflicts": conflicts,
        "held": outcome.held,
        "errors": outcome.errors,
        "expected_seq": outcome.expected_seq,
        "server_hlc": box.log.clock.now(),
    }
    return in_requests_format(request, answer)


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
    body: RawBody,
    box: Box,
    device: Device,
    device_forwarder: LockForwarder | None,
    request: Request[Any, Any, State],
) -> Response[Any]:
    """Read in a worker thread: it writes the device's presence and renews its leases."""
    content_type = MSGPACK if wants_msgpack(request) else JSON  # the body's format, read as answers are
    data = decode_heartbeat(body, content_type)
    depth = int(data.queue_depth)
    address = request.client.host if request.client else ""

    def beat(conn: Any) -> int:
        devices.record_presence(
            conn, device.writer_id, queue_depth=depth, app_version=data.app_version, address=address
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
                    "queue_depth": depth,
                    "renewed": renewed,
                },
            )
        ]
    )
    head = box.db.read().execute("SELECT head_seq FROM writers WHERE writer_id = ?", (device.writer_id,)).fetchone()
    answer = {
        "server_hlc": box.log.clock.now(),
        "head_seq": head[0],
        "revoked": False,
        "leases_renewed": renewed,
        "lease_renew_s": box.settings.lease_renew_s,
        "sessions": _device_sessions(box, device),
    }
    return in_requests_format(request, answer)


@get("/api/sync/pull", opt={"device": True}, sync_to_thread=True)
def pull(box: Box, device: Device, session_id: str, request: Request[Any, Any, State]) -> Response[Any]:
    """Refresh before write: the session as the box holds it (blind: no expected quantities), in the
    format the request's Accept header asks for, as its refusals are."""
    conn = box.db.read()
    session = sessions.get_session(conn, session_id)
    if session["device_id"] not in (None, device.writer_id):
        raise Forbidden("this session is held by another device", code="SESSION_NOT_YOURS")
    head = conn.execute("SELECT head_seq FROM writers WHERE writer_id = ?", (device.writer_id,)).fetchone()
    answer = {
        "session": sessions.session_dict(conn, session),
        **items.session_items(conn, session_id),
        "buckets": rollups.buckets(conn, session["run_id"], session_id),
        "head_seq": head[0],
        "server_hlc": box.log.clock.now(),
    }
    return in_requests_format(request, answer)


_SHA256 = re.compile("[0-9a-f]{64}")


def _photo_too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a photo is at most {limit} bytes; this one is {size}", details={"max_photo_bytes": limit, "size": size}
    )


@put("/api/sync/photos/{sha256:str}", opt={"device": True}, status_code=201)
async def upload_photo(sha256: str, request: Request[Any, Any, State], box: Box, device: Device) -> Response[Any]:
    """A photo taken offline, sent before the ``photo.attached`` event that names it (which the box
    refuses until the file is here). Kept under its hash, so sending it again after a lost answer
    changes nothing: ``201`` when it is new, ``200`` when the box already had it.

    The size is checked against the declared length before the body is read, so an oversized photo
    costs the box no memory; the hash and the write run in a worker thread, off the event loop."""
    if _SHA256.fullmatch(sha256) is None:
        raise BadRequest("the path names the photo by its SHA-256: 64 lowercase hex digits", code="VALIDATION")
    limit = box.settings.max_photo_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _photo_too_large(int(declared), limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in photos.PHOTO_TYPES:
        raise BadRequest(
            f"a photo is sent as one of {', '.join(photos.PHOTO_TYPES)}",
            code="BAD_PHOTO",
            details={"content_type": content_type},
        )
    data = await request.body()
    if len(data) > limit:
        raise _photo_too_large(len(data), limit)
    if not data:
        raise BadRequest("the photo is empty", code="BAD_PHOTO")
    photos_dir = box.settings.data_dir / "photos"

    def keep() -> bool:
        """Whether the box already had it."""
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise BadRequest(
                "the body's SHA-256 is not the one the path names: the photo was cut short or changed on the way",
                code="PHOTO_HASH_MISMATCH",
                details={"sha256": digest},
            )
        had = photos.photo_path(photos_dir, digest).is_file()
        photos.store_photo(photos_dir, data, content_type)
        return had

    had = await asyncio.to_thread(keep)
    return in_requests_format(request, {"sha256": sha256, "size": len(data)}, 200 if had else 201)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


@get("/api/sync/catalog", opt={"device": True}, sync_to_thread=True)
def catalog(box: Box, device: Device, request: Request[Any, Any, State]) -> Response[Any]:
    """The product master for a handheld to resolve codes and show names offline, blind (no expected
    quantities). A device that already holds this version (``If-None-Match``) gets ``304`` and no body.

    The version is read before the products: a master that changes in between is sent under the older
    version, which the device then fetches again, never the other way round."""
    conn = box.db.read()
    version = products.catalog_version(conn, box.node.node_id)
    etag = f'"{version}"'
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(content=b"", status_code=304, headers={"ETag": etag})
    answer = {**products.catalog(conn), "version": version}
    return in_requests_format(request, answer, headers={"ETag": etag})


ROUTES: list[HTTPRouteHandler] = [batch, heartbeat, pull, upload_photo, catalog]
