"""The Litestar application: routes, the one guard, the one error mapping, dependencies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.serialization import encode_msgpack
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
from appliance.api.deps import authorizer, dependencies
from appliance.api.openapi import document
from appliance.box import Box
from appliance.errors import StockVerifyError
from appliance.services import Services, Tls
from web import routes as web_routes

log = logging.getLogger(__name__)

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


# msgspec's own words when a JSON or msgpack body nests deeper than it will follow: the request is
# malformed, answered as a body that fails to decode is. A RecursionError with any other message is a
# bug in the box and stays a 500.
_TOO_DEEP = "while deserializing an object"


MSGPACK = "application/msgpack"
JSON = "application/json"


def _wants_msgpack(request: Request[Any, Any, State] | None) -> bool:
    """Whether a refusal goes back as msgpack: the request's format (docs/sync-protocol.md §3), so a
    handheld that speaks msgpack reads its refusals with the decoder it reads its answers with.

    A request with a body is answered in the body's format; one without, in the format its Accept
    header prefers. Box-to-box routes keep JSON whatever they send: the peer client reads their
    refusals as JSON (``replication.peers.client``)."""
    if request is None:
        return False
    handler = request.scope.get("route_handler")
    if handler is not None and handler.opt.get("node"):
        return False
    content_type = request.headers.get("content-type")
    if content_type is not None:
        return content_type.strip().lower().startswith(MSGPACK)  # as the sync routes read it
    return request.accept.best_match([JSON, MSGPACK], default=JSON) == MSGPACK


def _refusal(
    request: Request[Any, Any, State] | None,
    body: dict[str, Any],
    status: int,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    if _wants_msgpack(request):
        return Response(encode_msgpack(body), status_code=status, headers=headers, media_type=MSGPACK)
    return Response(body, status_code=status, headers=headers)


def _error_response(request: Request[Any, Any, State] | None, exc: Exception) -> Response[Any]:
    """Every error leaves the box as ``{code, message, details}`` with a stable code, in the request's
    format (msgpack or JSON)."""
    if isinstance(exc, StockVerifyError):
        # A passing refusal (a full disk, a person another box has not pulled yet) says when to try
        # again in the header every HTTP client reads, as well as in its details.
        wait = exc.details.get("retry_after_s") if isinstance(exc.details, dict) else None
        headers = {"Retry-After": str(wait)} if isinstance(wait, int) else None
        return _refusal(request, exc.to_dict(), exc.status, headers)
    if isinstance(exc, RecursionError) and _TOO_DEEP in str(exc):
        too_deep = {"code": "VALIDATION", "message": "the body is nested too deep", "details": None}
        return _refusal(request, too_deep, 400)
    if isinstance(exc, ValidationException):
        body = {"code": "VALIDATION", "message": exc.detail, "details": exc.extra}
        return _refusal(request, body, 400)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        body = {"code": code, "message": exc.detail, "details": exc.extra or None}
        return _refusal(request, body, exc.status_code, exc.headers)
    log.exception("unhandled error", exc_info=exc)
    body = {"code": "INTERNAL", "message": "the box hit an internal error; see its log", "details": None}
    return _refusal(request, body, 500)


def _check_declared(routes: list[HTTPRouteHandler]) -> None:
    missing = [
        f"{sorted(handler.http_methods)} {sorted(handler.paths)}"
        for handler in routes
        if not any(handler.opt.get(kind) for kind in ("public", "device", "node")) and "permission" not in handler.opt
    ]
    if missing:
        raise RuntimeError(f"routes without a declared permission: {missing}")


def _bind_bus(box: Box) -> Callable[[], None]:
    """The live bus delivers on the server's event loop, which exists only once the app starts."""

    def bind() -> None:
        box.bus.bind(asyncio.get_running_loop())

    return bind


def create_app(box: Box, *, tls: Tls | None = None) -> Litestar:
    """``tls`` when the app is served over HTTPS: mDNS then advertises that port and fingerprint."""
    _check_declared(API_ROUTES)
    routes: list[ControllerRouterHandler] = [*API_ROUTES, *web_routes.ROUTES]
    services = Services.for_box(box, tls=tls)
    return Litestar(
        route_handlers=routes,
        guards=[authorizer(services)],
        dependencies=dependencies(services),
        exception_handlers={Exception: _error_response},
        openapi_config=OpenAPIConfig(title="StockVerify Edge", version=__version__),
        request_max_body_size=box.settings.max_request_bytes,
        on_startup=[_bind_bus(box), document],
        lifespan=services.lifespans(),
        on_shutdown=[services.close],
        logging_config=None,  # the CLI's key=value formatter stays in charge
        debug=False,
    )
