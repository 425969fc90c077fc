"""The Litestar application: routes, the one guard, the one error mapping, dependencies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from appliance import __version__
from appliance.api import (
    conflicts,
    devices,
    health,
    layout,
    live,
    locks,
    products,
    runs,
    session,
    sessions,
    sync,
    users,
)
from appliance.api import hq as hq_api
from appliance.api import log as log_api
from appliance.api import replication as replication_api
from appliance.api.deps import authorize, provide_box, provide_device, provide_user
from appliance.auth.people import LoginThrottle, Passwords
from appliance.box import Box
from appliance.counting import locks as locks_domain
from appliance.errors import StockVerifyError
from appliance.hq.hub import Hub
from appliance.replica.lock_forwarding import lock_forwarding_lifespan
from replication.discovery import mdns_lifespan
from replication.peers.replicator import replication_lifespan
from replication.tasks import running
from replication.wire.hlc import wall_ms
from web import routes as web_routes

log = logging.getLogger(__name__)

LEASE_WATCH_S = 0.5

API_ROUTES: list[HTTPRouteHandler] = [
    *health.ROUTES,
    *session.ROUTES,
    *users.ROUTES,
    *layout.ROUTES,
    *products.ROUTES,
    *runs.ROUTES,
    *sessions.ROUTES,
    *conflicts.ROUTES,
    *devices.ROUTES,
    *sync.ROUTES,
    *live.ROUTES,
    *locks.ROUTES,
    *log_api.ROUTES,
    *replication_api.ROUTES,
    *hq_api.ROUTES,
]

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


def _error_response(_: Request[Any, Any, State], exc: Exception) -> Response[dict[str, Any]]:
    """Every error leaves the box as ``{code, message, details}`` with a stable code."""
    if isinstance(exc, StockVerifyError):
        return Response(exc.to_dict(), status_code=exc.status)
    if isinstance(exc, ValidationException):
        body = {"code": "VALIDATION", "message": exc.detail, "details": exc.extra}
        return Response(body, status_code=400)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        return Response(
            {"code": code, "message": exc.detail, "details": exc.extra or None},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    log.exception("unhandled error", exc_info=exc)
    body = {"code": "INTERNAL", "message": "the box hit an internal error; see its log", "details": None}
    return Response(body, status_code=500)


def _check_declared(routes: list[HTTPRouteHandler]) -> None:
    missing = [
        f"{sorted(handler.http_methods)} {sorted(handler.paths)}"
        for handler in routes
        if not any(handler.opt.get(kind) for kind in ("public", "device", "node")) and "permission" not in handler.opt
    ]
    if missing:
        raise RuntimeError(f"routes without a declared permission: {missing}")


async def _bind_bus(app: Litestar) -> None:
    """The live bus delivers on the server's event loop, which exists only once the app starts."""
    box: Box = app.state.box
    box.bus.bind(asyncio.get_running_loop())


def _expired(box: Box, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    return locks_domain.expired_leases(box.db.read(), since_ms, until_ms)


@asynccontextmanager
async def _lease_watch(app: Litestar) -> AsyncIterator[None]:
    """A lease lapses by itself, with no event to mark it; this tells live listeners when one has."""
    box: Box = app.state.box

    async def watch() -> None:
        last = wall_ms()
        while True:
            await asyncio.sleep(LEASE_WATCH_S)
            now = wall_ms()
            lapsed = await asyncio.to_thread(_expired, box, last, now)
            last = now
            box.bus.publish(
                [
                    (
                        None,
                        {
                            "kind": "rack",
                            "type": "lease.lapsed",
                            "state": "available",
                            "lapsed": True,
                            "run_id": row["run_id"],
                            "rack_id": row["rack_id"],
                            "rack": row["code"],
                            "holder": row["user_id"],
                            "token": row["token"],
                        },
                    )
                    for row in lapsed
                ]
            )

    async with running(watch(), "lease-watch"):
        yield


def create_app(box: Box) -> Litestar:
    _check_declared(API_ROUTES)
    routes: list[ControllerRouterHandler] = [*API_ROUTES, *web_routes.ROUTES]
    settings = box.settings
    state = State(
        {
            "box": box,
            "passwords": Passwords(settings.password_memory_kib, settings.password_time_cost),
            "login_throttle": LoginThrottle(settings.login_attempts_per_minute),
        }
    )
    shutdown = [box.close]
    if box.node.role == "hq":
        hub = Hub(box)
        state["hub"] = hub  # HQ keeps a replica per store behind the same endpoints
        shutdown.insert(0, hub.close)
    return Litestar(
        route_handlers=routes,
        state=state,
        guards=[authorize],
        dependencies={
            "box": Provide(provide_box, sync_to_thread=False),
            "user": Provide(provide_user, sync_to_thread=False),
            "device": Provide(provide_device, sync_to_thread=False),
        },
        exception_handlers={Exception: _error_response},
        openapi_config=OpenAPIConfig(title="StockVerify Edge", version=__version__),
        request_max_body_size=settings.max_request_bytes,
        on_startup=[_bind_bus],
        lifespan=[_lease_watch, mdns_lifespan, replication_lifespan, lock_forwarding_lifespan],
        on_shutdown=shutdown,
        logging_config=None,  # the CLI's key=value formatter stays in charge
        debug=False,
    )
