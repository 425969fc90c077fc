"""Rack claims and moves, session locks, and the rack board of a run.

Claims, the holder's moves and session locks are granted by the store's lock authority: at any other
box they are forwarded to it (``appliance.replica.lock_forwarding``) and its answer is handed on unchanged."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter

from appliance.api.deps import SMALL_BODY
from appliance.auth.people import User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.counting import authority, conflicts, locks
from appliance.replica import lock_forwarding
from appliance.replica.lock_forwarding import LockForwarder, LockOp


class Claim(msgspec.Struct, forbid_unknown_fields=True):
    session_id: str
    device_id: str | None = None


class Reason(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class SessionLock(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str


class AuthorityMove(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str  # the box that grants the store's locks from now on


def _ttl_ms(box: Box) -> int:
    return box.settings.lease_ttl_s * 1000


@get("/api/runs/{run_id:str}/racks", opt={"permission": "sessions.read"}, sync_to_thread=True)
def rack_board(box: Box, user: User, run_id: str) -> list[dict[str, Any]]:
    """The floor map's tiles; for those who may read the conflict queue, each with its open conflicts."""
    conn = box.db.read()
    board = locks.rack_board(conn, run_id, authority=box.authority.standing().role == authority.GRANTING)
    if allowed("conflicts.read", user.role):
        per_rack = conflicts.open_by_rack(conn, run_id)
        for tile in board:
            tile["conflicts"] = per_rack.get(tile["rack_id"], 0)
    return board


@post(
    "/api/runs/{run_id:str}/racks/{rack:str}/claim",
    opt={"permission": "sessions.count"},
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
async def claim(
    run_id: str, rack: str, data: JSONBody[Claim], box: Box, user: User, forwarder: LockForwarder | None
) -> dict[str, Any]:
    """Exactly one claimant wins; the others get RACK_CLAIMED naming the holder. Async: the claim is
    one write job (or, at a box that is not the lock authority, one request to it), awaited without
    holding a worker thread, which keeps claim latency low."""
    op = LockOp("claim", user.user_id, run_id=run_id, rack=rack, session_id=data.session_id, device_id=data.device_id)
    return await lock_forwarding.perform(box, forwarder, user, op)


@post("/api/runs/{run_id:str}/racks/{rack:str}/{action:str}", opt={"permission": "sessions.count"}, status_code=200)
async def move(
    run_id: str,
    rack: str,
    action: Annotated[str, Parameter(schema_extra={"enum": list(locks.RACK_MOVES)})],
    box: Box,
    user: User,
    forwarder: LockForwarder | None,
) -> dict[str, Any]:
    """The holder's moves: start, pause, resume, finish, release."""
    op = LockOp("move", user.user_id, run_id=run_id, rack=rack, action=action)
    return await lock_forwarding.perform(box, forwarder, user, op)


@post(
    "/api/runs/{run_id:str}/racks/{rack:str}/force-release",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def force_release(run_id: str, rack: str, data: JSONBody[Reason], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: locks.supervise_rack(
            conn, box.log, user, run_id=run_id, rack_code=rack, action="force_release", reason=data.reason
        )
    )


@post(
    "/api/runs/{run_id:str}/racks/{rack:str}/reverify",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def reverify(run_id: str, rack: str, data: JSONBody[Reason], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: locks.supervise_rack(
            conn, box.log, user, run_id=run_id, rack_code=rack, action="reverify", reason=data.reason
        )
    )


@post("/api/leases/renew", opt={"permission": "sessions.count"}, status_code=200)
async def renew(box: Box, user: User, forwarder: LockForwarder | None) -> dict[str, Any]:
    """The browser handheld's heartbeat (paired devices renew through /api/sync/heartbeat)."""
    renewed = await box.db.awrite(lambda conn: locks.renew(conn, ttl_ms=_ttl_ms(box), user_id=user.user_id))
    lock_forwarding.renew_at_authority(forwarder, user_id=user.user_id)
    return {"renewed": renewed, "lease_renew_s": box.settings.lease_renew_s}


@get("/api/sessions/{session_id:str}/lock", opt={"permission": "sessions.read"}, operation_id="GetSessionLock")
async def get_lock(box: Box, session_id: str) -> dict[str, Any]:
    # Async on purpose (one indexed read): as a sync handler on this path, Litestar 2.25 answered
    # with an unawaited coroutine; the permission test calls every route and would show it again.
    return {"session_id": session_id, "lock": locks.session_lock(box.db.read(), session_id)}


@post(
    "/api/sessions/{session_id:str}/lock",
    opt={"permission": "sessions.count"},
    status_code=200,
    operation_id="LockSession",
    request_max_body_size=SMALL_BODY,
)
async def lock(
    session_id: str, data: JSONBody[SessionLock], box: Box, user: User, forwarder: LockForwarder | None
) -> dict[str, Any]:
    op = LockOp("lock_session", user.user_id, session_id=session_id, device_id=data.device_id)
    return await lock_forwarding.perform(box, forwarder, user, op)


@delete("/api/sessions/{session_id:str}/lock", opt={"permission": "sessions.count"}, status_code=200)
async def release(session_id: str, box: Box, user: User, forwarder: LockForwarder | None) -> dict[str, Any]:
    op = LockOp("release_session", user.user_id, session_id=session_id)
    return await lock_forwarding.perform(box, forwarder, user, op)


@post(
    "/api/sessions/{session_id:str}/lock/force-release",
    opt={"permission": "sessions.manage"},
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
async def force_release_lock(
    session_id: str, data: JSONBody[Reason], box: Box, user: User, forwarder: LockForwarder | None
) -> dict[str, Any]:
    op = LockOp("release_session", user.user_id, session_id=session_id, reason=data.reason, force=True)
    return await lock_forwarding.perform(box, forwarder, user, op)


@get("/api/locks/authority", opt={"permission": "replication.read"}, sync_to_thread=True)
def lock_authority(box: Box) -> dict[str, Any]:
    """Who grants the store's locks, this box's part, and every designation the store has made."""
    return {**box.authority.standing().to_dict(), "designations": authority.history(box.db.read())}


@post(
    "/api/locks/authority",
    opt={"permission": "locks.authority"},
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
async def move_authority(data: JSONBody[AuthorityMove], box: Box, user: User) -> dict[str, Any]:
    """Designate the box that grants locks from now on, at the next epoch: every later token is larger
    than any before, and leases of the earlier epochs are no longer honoured. Recorded at any box of
    the store; the others learn it by replication."""
    moved = await box.db.awrite(lambda conn: authority.move(conn, box.log, user.user_id, data.node_id))
    return {**moved, "here": box.authority.standing().to_dict()}


ROUTES: list[HTTPRouteHandler] = [
    lock_authority,
    move_authority,
    rack_board,
    claim,
    force_release,
    reverify,
    move,
    renew,
    get_lock,
    lock,
    release,
    force_release_lock,
]
