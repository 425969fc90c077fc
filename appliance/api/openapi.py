"""The OpenAPI document made to say what the box does, once, when the app starts.

Litestar documents every 400 as its own ``{status_code, detail, extra}``, which the box never sends,
and nothing else a route refuses with; and it leaves a Struct that forbids unknown fields open to
them. A client generated from such a document would expect bodies the box never sends and send ones it
refuses, so the document is corrected from what each route declares (its access, path, method and the
services it asks for), at no cost per request.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from appliance.auth.permissions import PUBLIC_PREFIXES

ERROR_BODY = "ErrorBody"

# What each refusal status means here, for the document; the body is always an ErrorBody.
_REFUSALS = {
    400: "Malformed request: a body, path or query value the box cannot read (code VALIDATION or BAD_REQUEST)",
    401: "No credential, or an unknown or expired one (UNAUTHENTICATED, BAD_CREDENTIALS, ...)",
    403: "Authenticated, but this role, device or node may not do this (FORBIDDEN, REVOKED, ...)",
    404: "Something the request names does not exist on this box (NOT_FOUND, RUN_NOT_FOUND, NOT_HQ, ...)",
    409: "Refused because of the current state: a transition not allowed now, a duplicate, a held lock",
    413: "The body is larger than this route accepts (PAYLOAD_TOO_LARGE)",
    422: "Well-formed, but a value is not acceptable (VALIDATION, REASON_REQUIRED, IMPORT_INVALID, ...)",
    429: "Too many attempts from this address or for this name; try later (RATE_LIMITED)",
    503: "A box this one depends on (the lock authority) cannot be reached (UNAVAILABLE)",
    507: "The box's disk is full; nothing was written (DISK_FULL)",
}


def _refusals(route: HTTPRoute, handler: HTTPRouteHandler, method: str, injected: frozenset[str]) -> list[int]:
    """The refusals a route can answer, from what it declares: its access, its path, its method and
    the services it asks for. Generous where the domain decides (a body may name a rack that does not
    exist): a status listed and never sent misleads no client; one sent and not listed does."""
    params = handler.parsed_fn_signature.parameters
    public = bool(handler.opt.get("public")) or route.path.startswith(PUBLIC_PREFIXES)
    writes = method != "GET"
    statuses = [400]
    if not public:
        statuses += [401, 403]
    if "login_throttle" in params:
        statuses += [401, 429]  # a public route that checks a secret (a password, a pairing code)
    if route.path_parameters or writes or handler.opt.get("permission", "").startswith("hq."):
        statuses.append(404)
    elif any(name not in injected for name in params):
        statuses.append(404)  # a query value that names something (a code to resolve, a floor)
    if writes:
        statuses += [409, 413, 422, 507]
    elif any(name not in injected for name in params if name not in route.path_parameters):
        statuses.append(422)
    if "forwarder" in params or "device_forwarder" in params:
        statuses.append(503)
    return sorted(set(statuses))


# Handler parameters Litestar fills from the connection rather than from the path or query string; the
# app's dependencies (services by name) are the others that are not the request's values.
_CONNECTION_KWARGS = frozenset({"request", "state", "headers", "cookies", "query", "scope", "socket", "data", "body"})


def _structs(annotation: Any) -> Iterator[type[msgspec.Struct]]:
    """The msgspec Structs a body annotation decodes to (``JSONBody[X]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _structs(arg)


def _references(schema: Any) -> Iterator[str]:
    if isinstance(schema, Reference):
        yield schema.ref.rsplit("/", 1)[-1]
    elif isinstance(schema, Schema):
        for part in (*(schema.one_of or ()), *(schema.any_of or ())):
            yield from _references(part)


def _operations(app: Litestar) -> Iterator[tuple[HTTPRoute, HTTPRouteHandler, str, Operation]]:
    paths = app.openapi_schema.paths or {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in paths:
            continue
        item = paths[route.path_format]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield route, handler, method, operation


def document(app: Litestar) -> OpenAPI:
    """Make the generated OpenAPI document say what the box does, once, when the app starts.

    Litestar documents every 400 as its own ``{status_code, detail, extra}``, which ``_error_response``
    never sends, and nothing else that a route refuses with; and it leaves a Struct that forbids unknown
    fields open to them, so a client generated from the document would send what the box refuses."""
    openapi = app.openapi_schema
    components = openapi.components
    schemas = components.schemas = dict(components.schemas or {})
    schemas[ERROR_BODY] = Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "code": Schema(type=OpenAPIType.STRING, description="stable; clients switch on it"),
            "message": Schema(type=OpenAPIType.STRING, description="for people"),
            "details": Schema(description="any JSON value, or null: what the code is about (a field, a holder)"),
        },
        required=["code", "details", "message"],
        description="Every refusal the box sends",
    )
    error = {"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{ERROR_BODY}"))}
    closed: set[str] = set()
    injected = frozenset(app.dependencies) | _CONNECTION_KWARGS
    for route, handler, method, operation in _operations(app):
        responses = dict(operation.responses or {})
        for status in _refusals(route, handler, method, injected):
            responses[str(status)] = OpenAPIResponse(description=_REFUSALS[status], content=error)
        operation.responses = dict(sorted(responses.items()))
        body = handler.parsed_fn_signature.parameters.get("data")
        if body is None or operation.request_body is None or isinstance(operation.request_body, Reference):
            continue
        if any(struct.__struct_config__.forbid_unknown_fields for struct in _structs(body.annotation)):
            for media in (operation.request_body.content or {}).values():
                closed.update(_references(media.schema))
    for name in closed:
        schema = schemas.get(name)
        if isinstance(schema, Schema):
            schema.additional_properties = False
    return openapi
