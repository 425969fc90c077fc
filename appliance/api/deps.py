"""What a route can ask for by name (``box``, ``user``, ``device``, ``hub``, ``forwarder``, …) and the
app-wide guard, both made from the app's ``Services`` so that nothing is looked up on the app's state."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.serialization import encode_msgpack

from appliance.auth.devices import Device, device_for_token
from appliance.auth.people import LoginThrottle, Passwords, StreamTickets, User, user_for_ticket, user_for_token
from appliance.auth.permissions import PUBLIC_PREFIXES, allowed
from appliance.auth.throttle import TokenBuckets
from appliance.box import Box
from appliance.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from appliance.hq.hub import Hub
from appliance.replica.lock_forwarding import LockForwarder
from appliance.reports.jobs import ExportJobs
from appliance.scanners import ScannerService
from appliance.services import Services, Tls

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]

# Body limits per route, below the app-wide ``max_request_bytes`` (sized for a handheld's batch): a
# form's worth of JSON, and a body that carries lists of SKUs or racks. Without them any route,
# login included, would buffer megabytes for whoever sent them.
SMALL_BODY = 16 * 1024
LIST_BODY = 1024 * 1024

# The largest integer SQLite stores; a larger one handed to a query raises OverflowError (a 500), so
# numbers that reach SQL unchecked are bounded where they are read.
SQL_INT_MAX = 2**63 - 1


MSGPACK = "application/msgpack"
JSON = "application/json"


def wants_msgpack(request: Request[Any, Any, State] | None) -> bool:
    """Whether an answer goes back as msgpack: the request's format (docs/sync-protocol.md §3), so a
    handheld that speaks msgpack reads answers and refusals alike with one decoder.

    A request with a body is answered in the body's format; one without, in the format its Accept
    header prefers. Box-to-box routes keep JSON refusals whatever they send: the peer client reads
    them as JSON (``replication.peers.client``)."""
    if request is None:
        return False
    handler = request.scope.get("route_handler")
    if handler is not None and handler.opt.get("node"):
        return False
    content_type = request.headers.get("content-type")
    if content_type is not None:
        return content_type.strip().lower().startswith(MSGPACK)
    return request.accept.best_match([JSON, MSGPACK], default=JSON) == MSGPACK


def in_requests_format(
    request: Request[Any, Any, State] | None,
    body: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    if wants_msgpack(request):
        return Response(encode_msgpack(body), status_code=status, headers=headers, media_type=MSGPACK)
    return Response(body, status_code=status, headers=headers)


def one_of(values: Iterable[str]) -> msgspec.Meta:
    """A Struct field's fixed vocabulary, for the OpenAPI document only.

    The domain still checks the value and answers 422 with its own code, as it always has; typing the
    field as a ``Literal`` would move the refusal to the decoder's 400 and change what clients see."""
    return msgspec.Meta(extra_json_schema={"extra": {"enum": list(values)}})


def dependencies(services: Services) -> dict[str, Provide]:
    """Every service by name. A route names only what it uses, and only those are resolved for it."""

    def provide_box() -> Box:
        return services.box

    def provide_hub() -> Hub | None:
        return services.hub

    def provide_passwords() -> Passwords:
        return services.passwords

    def provide_login_throttle() -> LoginThrottle:
        return services.login_throttle

    def provide_stream_tickets() -> StreamTickets:
        return services.stream_tickets

    def provide_tls() -> Tls | None:
        return services.tls

    # Chained after ``user``, like ``user`` after ``box``, for the reason given at provide_device.
    def provide_forwarder(user: User) -> LockForwarder | None:
        return services.lock_forwarder

    def provide_device_forwarder(device: Device) -> LockForwarder | None:
        return services.lock_forwarder

    def provide_scanners(user: User) -> ScannerService | None:
        return services.scanners

    def provide_exports(user: User) -> ExportJobs:
        if services.exports is None:
            raise Unavailable("the box is starting or stopping: export again in a moment", code="EXPORTS_NOT_RUNNING")
        return services.exports

    return {
        "box": Provide(provide_box, sync_to_thread=False),
        "user": Provide(provide_user, sync_to_thread=False),
        "device": Provide(provide_device, sync_to_thread=False),
        "hub": Provide(provide_hub, sync_to_thread=False),
        "passwords": Provide(provide_passwords, sync_to_thread=False),
        "login_throttle": Provide(provide_login_throttle, sync_to_thread=False),
        "tickets": Provide(provide_stream_tickets, sync_to_thread=False),
        "tls": Provide(provide_tls, sync_to_thread=False),
        "forwarder": Provide(provide_forwarder, sync_to_thread=False),
        "device_forwarder": Provide(provide_device_forwarder, sync_to_thread=False),
        "scanners": Provide(provide_scanners, sync_to_thread=False),
        "exports": Provide(provide_exports, sync_to_thread=False),
    }


# ``user`` and ``device`` name ``box`` although they do not use it. Litestar resolves dependencies
# that do not depend on one another in an anyio task group, a fifth of a millisecond per request
# here; chained, they are awaited one after the other at no cost.
def provide_device(request: Request[Any, Any, Any], box: Box) -> Device:
    """The paired device the guard authenticated for this request."""
    device: Device = request.state.device
    return device


def provide_user(request: Request[Any, Any, Any], box: Box) -> User:
    """The user the guard authenticated for this request."""
    user: User = request.state.user
    return user


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("log in first and send the token as 'Authorization: Bearer <token>'")
    return token.strip()


# The device routes a device may flood, by path, each held to its own per-device limit: a batch is
# the heaviest request the box takes, a heartbeat a write of its own.
RATE_LIMITED = ("/api/sync/batch", "/api/sync/heartbeat")


def device_limits(services: Services) -> dict[str, TokenBuckets]:
    throttle = services.device_throttle
    return dict(zip(RATE_LIMITED, (throttle.batches, throttle.heartbeats), strict=True))


def authorizer(services: Services) -> Guard:
    """The app-wide guard for ``services``' box."""
    limits = device_limits(services)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        await authorize(services, connection, handler, limits)

    return guard


async def authorize(
    services: Services,
    connection: ASGIConnection[Any, Any, Any, Any],
    handler: BaseRouteHandler,
    limits: Mapping[str, TokenBuckets],
) -> None:
    """Deny by default: a route passes only if it is public, a device route called with a live device
    credential (within the device's limit on that route, ``limits`` by path), or a person's route whose
    permission the person's role holds.

    Async although it awaits nothing: Litestar runs a plain guard in a worker thread, and that hop
    cost more than the one indexed read the guard makes, on every request. The limit is checked here,
    where the device is first known and before its body is read, so a flood costs a lookup each."""
    if handler.opt.get("public") or connection.scope["path"].startswith(PUBLIC_PREFIXES):
        return
    if handler.opt.get("node"):
        return  # box-to-box routes check the calling node's signature over the body themselves
    if handler.opt.get("device"):
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "device" or not token.strip():
            raise Unauthenticated("send the device credential as 'Authorization: Device <token>'")
        device = device_for_token(services.box.db.read(), token.strip())
        for path in handler.paths:
            bucket = limits.get(path)
            if bucket is not None:
                bucket.take(device.writer_id)
        connection.state.device = device
        return
    permission = handler.opt.get("permission")
    if not isinstance(permission, str):
        raise Forbidden("this route declares no permission, so nobody may use it")
    box = services.box
    # A browser's EventSource cannot send headers, so the live stream also takes a single-use
    # ?ticket= (what the dashboard uses) or ?access_token=.
    in_query = bool(handler.opt.get("token_in_query"))
    ticket = connection.query_params.get("ticket") if in_query else None
    if ticket:
        user = user_for_ticket(services.stream_tickets, box.db.read(), ticket)
    else:
        query_token = connection.query_params.get("access_token") if in_query else None
        user = user_for_token(box.db.read(), query_token or bearer_token(connection))
    if not allowed(permission, user.role):
        raise Forbidden(
            f"a {user.role} may not do this ({permission})",
            details={"permission": permission, "role": user.role},
        )
    connection.state.user = user


def user_id_for(conn: sqlite3.Connection, who: str) -> str:
    """Requests name people by username (or id); the domain speaks user ids."""
    row = conn.execute(
        "SELECT user_id FROM users WHERE username = ? COLLATE NOCASE OR user_id = ?", (who.strip(), who.strip())
    ).fetchone()
    if row is None:
        raise NotFound(f"user {who} does not exist", code="USER_NOT_FOUND")
    return str(row[0])
