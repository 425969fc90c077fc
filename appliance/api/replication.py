"""Box ⇄ box ⇄ HQ endpoints: enrol (hello), pull, push, and the replication status people read.

The node routes are not for people: each verifies the calling node's Ed25519 signature over the exact
body before doing anything, and each answer is signed by this node, so a box acts only on bytes a
node it enrolled sent, and the caller can tell the answer came from the node it enrolled.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler

from appliance.api.deps import SMALL_BODY
from appliance.box import Box
from appliance.counting.authority import GRANTING
from appliance.errors import BadRequest, Forbidden, NotFound, Unauthenticated
from appliance.hq.hub import Hub
from appliance.replica import counters, lock_forwarding
from appliance.replica import store as replicas
from appliance.store.db import collector_paused
from appliance.store.eventlog import ChainError, version_vector
from replication.peers.store import COUNTERS
from replication.wire import protocol, vectors
from replication.wire.hlc import wall_ms

MSGPACK = "application/msgpack"
DEFAULT_PAGE = 2000
PUSH_ORDER_WAIT_S = 30.0


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData) as exc:
        raise BadRequest(f"body is not msgpack: {exc}", code="BAD_PAGE") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a msgpack map", code="BAD_PAGE")
    return data


class Hello(msgspec.Struct):
    """What a node sends to enrol. Read by type, not converted: ``bytes(n)`` of a number would make
    a key of n zero bytes (or try to), so a field of the wrong type is refused as BAD_HELLO. Fields
    a later version adds are ignored."""

    node_id: str
    store_id: str
    role: str
    public_key: bytes
    proof: bytes
    url: str | None = None


_HELLO = msgspec.msgpack.Decoder(Hello)


def _signed(box: Box, request: Request[Any, Any, State], body: bytes, media_type: str) -> Response[bytes]:
    headers = protocol.signed_headers(
        box.node.key, box.node.node_id, request.method, request.url.path, body, wall_ms(), answer=True
    )
    return Response(body, media_type=media_type, headers=headers)


async def _caller(request: Request[Any, Any, State], box: Box, hub: Hub | None, body: bytes) -> tuple[sqlite3.Row, Box]:
    """The enrolled node that signed this request, and the store replica it may touch."""
    try:
        signed = protocol.read_signature(request.headers)
    except protocol.ProtocolError as exc:
        raise Unauthenticated(str(exc), code="NODE_SIGNATURE_REQUIRED") from None
    row = replicas.peer(box.db.read(), signed.node_id)
    if row is None:
        raise Unauthenticated(f"node {signed.node_id} is not enrolled here; say hello first", code="NOT_ENROLLED")
    problem = protocol.verify(bytes(row["public_key"]), signed, request.method, request.url.path, body, wall_ms())
    if problem is not None:
        raise Unauthenticated(problem, code="BAD_SIGNATURE")
    target = await asyncio.to_thread(hub.replica, row["store_id"]) if hub is not None else box
    return row, target


async def _enrol(box: Box, node_id: str, store_id: str, role: str, public_key: bytes, url: str) -> None:
    if not replicas.enrolled(box.db.read(), node_id, store_id, role, public_key, url):
        await box.db.awrite(lambda conn: replicas.enrol_peer(conn, node_id, store_id, role, public_key, url))


@post("/api/replication/hello", opt={"node": True}, status_code=200, request_max_body_size=SMALL_BODY)
async def hello(request: Request[Any, Any, State], box: Box, hub: Hub | None) -> Response[bytes]:
    """Enrol a node that proves it belongs to this store (or, at HQ, to a store HQ serves)."""
    body = await request.body()
    try:
        data = _HELLO.decode(body)
        signed = protocol.read_signature(request.headers)
    except (msgspec.DecodeError, protocol.ProtocolError) as exc:
        raise BadRequest(
            f"hello needs node_id, store_id, role, public_key and proof: {exc}", code="BAD_HELLO"
        ) from None
    node_id, store_id, role, public_key, proof = data.node_id, data.store_id, data.role, data.public_key, data.proof
    url = data.url or ""
    if signed.node_id != node_id:
        raise Unauthenticated("the hello is signed by another node than it names", code="BAD_SIGNATURE")
    problem = protocol.verify(public_key, signed, request.method, request.url.path, body, wall_ms())
    if problem is not None:
        raise Unauthenticated(problem, code="BAD_SIGNATURE")
    settings = box.settings
    if hub is not None:
        secret, peer_role = settings.hq_secret, "store"
    else:
        if store_id != box.node.store_id:
            raise Forbidden(f"this box serves store {box.node.store_id}, not {store_id}", code="WRONG_STORE")
        secret, peer_role = settings.store_secret, "box"
    if role != "box":
        raise Forbidden(f"only store boxes enrol here, not {role!r}", code="NOT_ENROLLED")
    if not protocol.proof_ok(secret, store_id, node_id, public_key, proof):
        raise Forbidden("the enrolment proof does not match this box's secret", code="NOT_ENROLLED")
    await _enrol(box, node_id, store_id, peer_role, public_key, url)
    target = box
    if hub is not None:
        target = await asyncio.to_thread(hub.replica, store_id)
        await _enrol(target, node_id, store_id, peer_role, public_key, url)
    conn = target.db.read()
    answer = {
        "node_id": box.node.node_id,
        "store_id": store_id,
        "role": "hq" if hub is not None else "box",
        "public_key": box.node.public_key,
        "proof": protocol.enrol_proof(secret, store_id, box.node.node_id, box.node.public_key),
        "vector": version_vector(conn),
        "covered": counters.covered(conn),
        "api": protocol.API_VERSION,
        # Whether this box grants the store's locks, and at which epoch: a peer that grants at the same
        # epoch learns from this that two boxes do, before the designations themselves have replicated.
        "lock_authority": hub is None and box.authority.standing().role == GRANTING,
        "lock_epoch": box.authority.standing().epoch if hub is None else 0,
    }
    return _signed(box, request, msgpack.packb(answer, use_bin_type=True), MSGPACK)


@post("/api/replication/pull", opt={"node": True}, status_code=200)
async def pull(request: Request[Any, Any, State], box: Box, hub: Hub | None) -> Response[bytes]:
    """ "Here is my vector; send what I lack": one page, oldest arrivals first."""
    body = await request.body()
    row, target = await _caller(request, box, hub, body)
    data = _unpack(body)
    asked = data.get("limit")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)):
        raise BadRequest(f"malformed pull: limit is {type(asked).__name__}, not a whole number", code="BAD_PAGE")
    try:
        theirs = vectors.parse(data.get("vector"))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"malformed pull: {exc}", code="BAD_PAGE") from None
    limit = max(1, min(asked or DEFAULT_PAGE, protocol.MAX_PAGE_EVENTS))
    store_id = target.node.store_id

    def build() -> tuple[dict[str, Any], bytes]:
        page = replicas.delta(target.db.read(), store_id, theirs, limit)
        return page, protocol.pack_page(page)

    page, packed = await asyncio.to_thread(build)
    if page["events"] or vectors.unpack(row["their_vector"]) != theirs:
        # Bookkeeping for the status page only: written along with the next commit, not waited for,
        # so a page is never held back by a write that does not change what it carries.
        target.db.submit(
            lambda conn: replicas.note_exchange(
                conn, row["node_id"], their_vector=theirs, events_out=len(page["events"]), bytes_out=len(packed)
            )
        )
    return _signed(box, request, packed, protocol.MEDIA_TYPE)


@post("/api/replication/push", opt={"node": True}, status_code=200)
async def push(request: Request[Any, Any, State], box: Box, hub: Hub | None) -> Response[bytes]:
    """Apply a page another node sent; answered only once it is committed, with what we now hold."""
    body = await request.body()
    row, target = await _caller(request, box, hub, body)
    try:
        page = protocol.unpack_page(body)
    except protocol.ProtocolError as exc:
        raise BadRequest(str(exc), code="BAD_PAGE") from None
    store_id, node_id = target.node.store_id, row["node_id"]
    if page.get("mode") == COUNTERS:

        def merge(conn: sqlite3.Connection) -> dict[str, Any]:
            covered = counters.merge(conn, store_id, page)
            replicas.note_exchange(conn, node_id, their_vector=page.get("vector"), bytes_in=len(body))
            return {"covered": covered}

        answer = await target.db.awrite(merge)
    else:

        def decode() -> replicas.Incoming:
            with collector_paused():
                return replicas.incoming(store_id, page, version_vector(target.db.read()))

        checked = await asyncio.to_thread(decode)

        def apply(conn: sqlite3.Connection) -> dict[str, Any]:
            with collector_paused():
                applied = replicas.apply_page(conn, target.log, store_id, checked, node_id, len(body))
            return {"applied": applied, "vector": version_vector(conn)}

        answer = await _in_order(target, apply)
    return _signed(box, request, msgpack.packb(answer, use_bin_type=True), MSGPACK)


async def _in_order(target: Box, apply: Callable[[sqlite3.Connection], dict[str, Any]]) -> dict[str, Any]:
    """Apply a pushed page once the page before it is in. A box keeps two pages in flight so that
    HQ decodes one while it writes the other; should the second be decoded first, it waits for the
    next commits, for at most PUSH_ORDER_WAIT_S, before its gap (or unknown writer) is an error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PUSH_ORDER_WAIT_S
    while True:
        seen = target.db.commits
        try:
            return await target.db.awrite(apply, bulk=True)
        except (ChainError, NotFound) as exc:
            # The page before it brings the missing seqs, or the writer itself.
            if exc.code not in ("SEQUENCE_GAP", "UNKNOWN_WRITER") or loop.time() > deadline:
                raise
        while target.db.commits == seen and loop.time() < deadline:
            await asyncio.sleep(0.002)


# A forwarded lock operation carries what a person sent another box (at most SMALL_BODY) and the
# forwarding box's envelope around it.
@post("/api/replication/locks", opt={"node": True}, status_code=200, request_max_body_size=4 * SMALL_BODY)
async def forwarded_lock(request: Request[Any, Any, State], box: Box, hub: Hub | None) -> Response[bytes]:
    """A claim, rack move, session lock or lease renewal another box of the store forwards for one of
    its people; answered with the result or the refusal a person at this box would get."""
    body = await request.body()
    row, _ = await _caller(request, box, hub, body)
    answer = await lock_forwarding.answer(box, row, body)
    return _signed(box, request, msgpack.packb(answer, use_bin_type=True), MSGPACK)


@get("/api/replication/status", opt={"permission": "replication.read"}, sync_to_thread=True)
def replication_status(box: Box, hub: Hub | None) -> dict[str, Any]:
    """Every peer (and at HQ every store): lag, pending events, last success, bytes."""
    conn = box.db.read()
    vector = version_vector(conn)
    out: dict[str, Any] = {
        "node_id": box.node.node_id,
        "store_id": box.node.store_id,
        "role": box.node.role,
        "events": sum(vector.values()),
        "peers": replicas.status(conn),
        # Who grants the store's locks, and this box's part: granting, forwarding, conflict or unknown.
        "locks": box.authority.standing().to_dict() if hub is None else None,
    }
    if hub is not None:
        stores = []
        for store_id in hub.store_ids():
            replica = hub.replica(store_id)
            rconn = replica.db.read()
            held = version_vector(rconn)
            stores.append(
                {
                    "store_id": store_id,
                    "events": sum(held.values()),
                    "counter_events": sum(counters.covered(rconn).values()),
                    "peers": replicas.status(rconn),
                }
            )
        out["stores"] = stores
    return out


ROUTES: list[HTTPRouteHandler] = [hello, pull, push, forwarded_lock, replication_status]
