"""The Litestar application: routes, the one guard, the one error mapping, dependencies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.compression import CompressionConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from appliance import __version__
from appliance.api import (
    conflicts,
    devices,
    exports,
    health,
    hq_reports,
    imports,
    insights,
    layout,
    live,
    locks,
    products,
    reports,
    runs,
    scanners,
    session,
    sessions,
    sync,
    users,
)
from appliance.api import hq as hq_api
from appliance.api import log as log_api
from appliance.api import replication as replication_api
from appliance.api.deps import authorizer, dependencies, in_requests_format
from appliance.api.openapi import document
from appliance.box import Box
from appliance.errors import StockVerifyError
from appliance.services import Services, Tls
from web import handheld
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
    *scanners.ROUTES,
    *sync.ROUTES,
    *live.ROUTES,
    *locks.ROUTES,
    *log_api.ROUTES,
    *replication_api.ROUTES,
    *hq_api.ROUTES,
    *reports.ROUTES,
    *exports.ROUTES,
    *hq_reports.ROUTES,
    *insights.ROUTES,
    *imports.ROUTES,
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


def _error_response(request: Request[Any, Any, State] | None, exc: Exception) -> Response[Any]:
    """Every error leaves the box as ``{code, message, details}`` with a stable code, in the request's
    format (msgpack or JSON)."""
    if isinstance(exc, StockVerifyError):
        # A passing refusal (a full disk, a person another box has not pulled yet) says when to try
        # again in the header every HTTP client reads, as well as in its details.
        wait = exc.details.get("retry_after_s") if isinstance(exc.details, dict) else None
        headers = {"Retry-After": str(wait)} if isinstance(wait, int) else None
        return in_requests_format(request, exc.to_dict(), exc.status, headers)
    if isinstance(exc, RecursionError) and _TOO_DEEP in str(exc):
        too_deep = {"code": "VALIDATION", "message": "the body is nested too deep", "details": None}
        return in_requests_format(request, too_deep, 400)
    if isinstance(exc, ValidationException):
        body = {"code": "VALIDATION", "message": exc.detail, "details": exc.extra}
        return in_requests_format(request, body, 400)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        body = {"code": code, "message": exc.detail, "details": exc.extra or None}
        return in_requests_format(request, body, exc.status_code, exc.headers)
    log.exception("unhandled error", exc_info=exc)
    body = {"code": "INTERNAL", "message": "the box hit an internal error; see its log", "details": None}
    return in_requests_format(request, body, 500)


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
    routes: list[ControllerRouterHandler] = [*API_ROUTES, *web_routes.ROUTES, *handheld.ROUTES]
    services = Services.for_box(box, tls=tls)
    return Litestar(
        route_handlers=routes,
        guards=[authorizer(services)],
        dependencies=dependencies(services),
        exception_handlers={Exception: _error_response},
        openapi_config=OpenAPIConfig(title="StockVerify Edge", version=__version__),
        request_max_body_size=box.settings.max_request_bytes,
        # The pages' files and the handheld's catalog (1.2 MB for 5,000 products, 135 KB gzipped) go
        # compressed over a handheld's Wi-Fi; the rest of the API does not: its answers are small, and the
        # scan path should not spend the box's CPU on them.
        compression_config=CompressionConfig(
            backend="gzip", gzip_compress_level=6, minimum_size=1024, exclude="^/api/(?!sync/catalog)"
        ),
        on_startup=[_bind_bus(box), document],
        lifespan=services.lifespans(),
        on_shutdown=[services.close],
        logging_config=None,  # the CLI's key=value formatter stays in charge
        debug=False,
    )
