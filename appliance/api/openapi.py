"""The OpenAPI document made to say what the box does, once, when the app starts.

Litestar documents every 400 as its own ``{status_code, detail, extra}``, which the box never sends,
and nothing else a route refuses with; and it leaves a Struct that forbids unknown fields open to
them. A client generated from such a document would expect bodies the box never sends and send ones it
refuses, so the document is corrected from what each route declares (its access, path, method and the
services it asks for), at no cost per request. For the same reason it is told what the types alone do
not say: the rules the domain checks on a field (a reason that must say something, a tolerance's
bounds), the msgpack bodies the node and handheld routes read themselves, and who may call a route.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
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
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute

from appliance.api.deps import RATE_LIMITED
from appliance.api.sync import MAX_QUEUE_DEPTH
from appliance.auth.people import MIN_PASSWORD
from appliance.auth.permissions import PUBLIC_PREFIXES
from appliance.catalog.layout import MAX_CODE
from appliance.counting.ingest import MAX_ID
from appliance.replica import lock_forwarding

ERROR_BODY = "ErrorBody"

# A value the box strips and refuses when nothing is left (a reason, a name): Python's ``\S`` and
# ``str.strip`` agree on what whitespace is, so the pattern allows exactly what the domain accepts.
_SAID = {"pattern": r"\S"}
# A code made of letters and digits of any script and a few marks, surrounding whitespace stripped
# (``layout._code``). Said in words: a pattern is ECMA regex, where ``\w`` is ASCII only.
_CODE = {"description": f"1-{MAX_CODE} letters or digits (any script), '-', '_' or '.'; stored upper-case"}

# Rules the domain checks past what a body's types say, by component and field, so that a client
# following the document sends nothing the box refuses for its shape. The domain stays the judge
# (its codes, such as REASON_REQUIRED, are what clients switch on); the document only tells them.
_FIELD_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "NewUser": {  # auth.people.check_new_user
        "username": {"description": "1-64 letters or digits (any script), '-', '_', '.' or '@'"},
        "password": {"min_length": MIN_PASSWORD},
    },
    "NewFloor": {"code": _CODE, "position": {"minimum": 0}},
    "NewRack": {"code": _CODE},
    "NewRun": {"name": _SAID},
    "PlannedRun": {"name": _SAID},
    "RunEdit": {"name": _SAID},
    "Tolerance": {  # the bounds counting.variance checks
        "units": {"minimum": 0, "maximum": 1_000_000},
        "pct_bp": {"minimum": 0, "maximum": 10_000},
    },
    "sessions_Reason": {"reason": _SAID},
    "locks_Reason": {"reason": _SAID},
    "AuthorityMove": {"node_id": _SAID},
    "Revoke": {"reason": _SAID},
    "QuarantineDecision": {"reason": _SAID},
    # auth.devices.pair: a label of 1-64 characters once stripped; the key as bytes.fromhex reads it
    # (ASCII whitespace allowed between byte pairs).
    "PairRequest": {
        "name": {"pattern": r"^\s*\S(?:[\s\S]{0,62}\S)?\s*$"},
        "public_key": {"pattern": r"^[ \t\n\r\x0b\x0c]*(?:[0-9a-fA-F]{2}[ \t\n\r\x0b\x0c]*){32}$"},
    },
}

# Rules that hold for one operation's use of a shared body: a reason one transition needs and
# another does not, or one that only some actions need.
_BODY_RULES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("POST", "/api/runs/{run_id}/cancel"): ("Transition", {"required": ["reason"], "properties": {"reason": _SAID}}),
    ("POST", "/api/runs/{run_id}/complete"): (
        "Transition",
        {
            "anyOf": [
                {"properties": {"force": {"enum": [False]}}},
                {"required": ["reason"], "properties": {"reason": _SAID}},
            ]
        },
    ),
    ("POST", "/api/conflicts/{conflict_id}/resolve"): (
        "Resolution",
        {
            "anyOf": [
                {"properties": {"action": {"enum": ["accept", "edit"]}}},
                {"required": ["reason"], "properties": {"reason": _SAID}},
            ]
        },
    ),
}

_INT64 = (-(2**63), 2**63 - 1)
_MSGPACK = "application/msgpack"
_PAGE = "application/vnd.stockverify.page+msgpack"  # replication.wire.protocol.MEDIA_TYPE: deflated msgpack
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_LOCK_OPERATION = {  # replica.lock_forwarding.LockOp, as msgspec decodes it
    "type": "object",
    "required": ["op"],
    "additionalProperties": False,
    "properties": {
        "op": {"type": "string", "enum": [*lock_forwarding.PERMISSION, "renew"]},
        **dict.fromkeys(("user_id", "run_id", "rack", "action", "session_id", "reason"), _TEXT),
        "device_id": {"oneOf": [_TEXT, {"type": "null"}]},
        "force": {"type": "boolean"},
    },
}

_HEARTBEAT = {  # api.sync.Heartbeat, in either format
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "queue_depth": {"type": "integer", "minimum": 0, "maximum": MAX_QUEUE_DEPTH},
        "app_version": {"type": "string", "maxLength": 64},
        "session_id": {"oneOf": [{"type": "string", "maxLength": MAX_ID}, {"type": "null"}]},
    },
}

# Routes that read their body themselves, in a format Litestar cannot see (msgpack, or a handheld's
# batch or heartbeat in either msgpack or JSON): the request and the 200 answer by media type. The node
# routes' bodies are signed over their exact bytes, so they are read raw; what a map carries is what
# ``api.replication`` reads from it.
_WIRE_BODIES: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {
    ("POST", "/api/sync/batch"): (
        {_MSGPACK: _BINARY, "application/json": {"type": "object"}},  # counting.ingest.decode_batch
        {_MSGPACK: _BINARY, "application/json": {"type": "object"}},
    ),
    ("POST", "/api/sync/heartbeat"): (
        {_MSGPACK: _HEARTBEAT, "application/json": _HEARTBEAT},  # api.sync.decode_heartbeat
        {_MSGPACK: {"type": "object"}, "application/json": {"type": "object"}},
    ),
    ("POST", "/api/replication/hello"): (
        {
            _MSGPACK: {
                "type": "object",
                "required": ["node_id", "store_id", "role", "public_key", "proof"],
                "properties": {
                    **dict.fromkeys(("node_id", "store_id", "role"), _TEXT),
                    "url": {"oneOf": [_TEXT, {"type": "null"}]},
                    "public_key": _BINARY,
                    "proof": _BINARY,
                },
            }
        },
        {_MSGPACK: _BINARY},
    ),
    ("POST", "/api/replication/pull"): (
        {
            _MSGPACK: {
                "type": "object",
                "properties": {
                    "vector": {
                        "oneOf": [
                            {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                            {"type": "null"},
                        ]
                    },
                    "limit": {"oneOf": [{"type": "integer"}, {"type": "null"}]},
                },
            }
        },
        {_PAGE: _BINARY},
    ),
    ("POST", "/api/replication/push"): ({_PAGE: _BINARY}, {_MSGPACK: _BINARY}),
    ("POST", "/api/replication/locks"): ({_MSGPACK: _LOCK_OPERATION}, {_MSGPACK: _BINARY}),
}

# Answers a route encodes itself, in the format the request's Accept header asks for.
_WIRE_ANSWERS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/sync/pull"): {"application/json": {"type": "object"}, _MSGPACK: {"type": "object"}},
    # A rack's blind count sheet, in the format ?format= asks for (reports.count_sheets).
    ("GET", "/api/sessions/{session_id}/racks/{rack}/count-sheet"): {"text/csv": _TEXT, _XLSX: _BINARY},
}

# Query and path values the route itself checks, by operation and parameter name.
_PARAMETER_RULES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # Six ASCII digits, with at most two other characters (the "123-456" the box shows, a space).
    ("GET", "/api/devices/pairing-qr"): {"code": {"pattern": r"^[^0-9]*(?:[0-9][^0-9]*){6}$", "max_length": 8}},
}

# What each refusal status means here, for the document; the body is always an ErrorBody.
_REFUSALS = {
    400: "Malformed request: a body, path or query value the box cannot read (code VALIDATION or BAD_REQUEST)",
    401: "No credential, or an unknown or expired one (UNAUTHENTICATED, BAD_CREDENTIALS, ...)",
    403: "Authenticated, but this role, device or node may not do this (FORBIDDEN, REVOKED, ...)",
    404: "Something the request names does not exist on this box (NOT_FOUND, RUN_NOT_FOUND, NOT_HQ, ...)",
    409: "Refused because of the current state: a transition not allowed now, a duplicate, a held lock",
    413: "The body is larger than this route accepts (PAYLOAD_TOO_LARGE)",
    422: "Well-formed, but a value is not acceptable (VALIDATION, REASON_REQUIRED, IMPORT_INVALID, ...)",
    429: (
        "Too many attempts from this address or for this name, or requests from this device; try after"
        " Retry-After seconds (RATE_LIMITED)"
    ),
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
    if handler.opt.get("device") and route.path in RATE_LIMITED:
        statuses.append(429)  # a device's own limit on the route (auth.throttle)
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


def _nested(schema: Any) -> Iterator[str]:
    """The components a component's properties refer to, at any depth of arrays and unions: a body's
    nested Structs (a comparison's sides, a query's filters) are closed as the body is."""
    if isinstance(schema, Reference):
        yield schema.ref.rsplit("/", 1)[-1]
    elif isinstance(schema, Schema):
        parts = [*(schema.one_of or ()), *(schema.any_of or ()), *(schema.properties or {}).values()]
        if schema.items is not None:
            parts.append(schema.items)
        for part in parts:
            yield from _nested(part)


# JSON Schema's spelling of the keywords whose Schema field is named otherwise.
_FIELD_NAMES = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "additionalProperties": "additional_properties",
    "minLength": "min_length",
    "maxLength": "max_length",
}


def _schema(rule: dict[str, Any]) -> Schema:
    """A rule above, in JSON Schema's spelling, as the Schema the document is made of."""
    fields: dict[str, Any] = {}
    for keyword, value in rule.items():
        if keyword == "properties":
            value = {name: _schema(sub) for name, sub in value.items()}
        elif keyword in ("anyOf", "oneOf"):
            value = [_schema(sub) for sub in value]
        elif keyword in ("additionalProperties", "items") and isinstance(value, dict):
            value = _schema(value)
        elif keyword == "type":
            value = OpenAPIType(value)
        fields[_FIELD_NAMES.get(keyword, keyword)] = value
    return Schema(**fields)


def _narrowed(schema: Any, component: str, rule: Schema) -> Any:
    """``schema`` with each reference to ``component`` also held to ``rule``."""
    if isinstance(schema, Reference) and schema.ref.rsplit("/", 1)[-1] == component:
        return Schema(all_of=[schema, rule])
    if isinstance(schema, Schema) and schema.one_of:
        schema.one_of = [_narrowed(part, component, rule) for part in schema.one_of]
    return schema


def _apply_rules(schemas: Mapping[str, Schema | Reference], operations: dict[tuple[str, str], Operation]) -> None:
    for component, fields in _FIELD_RULES.items():
        target = schemas[component]
        assert isinstance(target, Schema) and target.properties is not None, component
        for name, rule in fields.items():
            field = target.properties[name]
            assert isinstance(field, Schema), (component, name)
            for keyword, value in rule.items():
                setattr(field, keyword, value)
    for key, (component, rule) in _BODY_RULES.items():
        body = operations[key].request_body
        assert body is not None and not isinstance(body, Reference) and body.content, key
        for media in body.content.values():
            media.schema = _narrowed(media.schema, component, _schema(rule))
    for key, (requests, answers) in _WIRE_BODIES.items():
        operation = operations[key]
        operation.request_body = RequestBody(
            content={media: OpenAPIMediaType(schema=_schema(schema)) for media, schema in requests.items()},
            required=True,
        )
        ok = operation.responses["200"] if operation.responses else None
        assert isinstance(ok, OpenAPIResponse), key
        ok.content = {media: OpenAPIMediaType(schema=_schema(schema)) for media, schema in answers.items()}
    for key, answers in _WIRE_ANSWERS.items():
        responses = operations[key].responses
        ok = responses["200"] if responses else None
        assert isinstance(ok, OpenAPIResponse), key
        ok.content = {media: OpenAPIMediaType(schema=_schema(schema)) for media, schema in answers.items()}
    for operation in operations.values():
        for parameter in operation.parameters or ():
            schema = None if isinstance(parameter, Reference) else parameter.schema
            if isinstance(schema, Schema) and schema.type == OpenAPIType.INTEGER:
                # Query and path integers are read as 64-bit signed; a larger one is a 400. Litestar
                # writes a route's bounds as floats, and 2**63 - 1 as a float is 2**63: made exact.
                low, high = schema.minimum, schema.maximum
                schema.minimum = _INT64[0] if low is None else max(int(low), _INT64[0])
                schema.maximum = _INT64[1] if high is None else min(int(high), _INT64[1])
    for key, parameters in _PARAMETER_RULES.items():
        for parameter in operations[key].parameters or ():
            if not isinstance(parameter, Reference) and parameter.name in parameters:
                assert isinstance(parameter.schema, Schema), (key, parameter.name)
                for keyword, value in parameters[parameter.name].items():
                    setattr(parameter.schema, keyword, value)


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
    # Who may call what: a person's token, or a paired handheld's credential on the device routes.
    # Node routes carry a signature over the body instead, which no security scheme describes.
    components.security_schemes = {
        "person": SecurityScheme(type="http", scheme="bearer", description="a token from POST /api/auth/login"),
        "device": SecurityScheme(
            type="apiKey",
            name="Authorization",
            security_scheme_in="header",
            description="'Device <token>', the credential POST /api/devices/pair returned",
        ),
    }
    error_body = OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{ERROR_BODY}"))
    # A refusal comes back in the request's format (``deps.wants_msgpack``); box-to-box routes keep JSON.
    error_json = {"application/json": error_body}
    error_either = {**error_json, _MSGPACK: error_body}
    closed: set[str] = set()
    injected = frozenset(app.dependencies) | _CONNECTION_KWARGS
    for route, handler, method, operation in _operations(app):
        if handler.opt.get("device"):
            operation.security = [{"device": []}]
        elif not (handler.opt.get("public") or handler.opt.get("node") or route.path.startswith(PUBLIC_PREFIXES)):
            operation.security = [{"person": []}]
        responses = dict(operation.responses or {})
        error = error_json if handler.opt.get("node") else error_either
        for status in _refusals(route, handler, method, injected):
            responses[str(status)] = OpenAPIResponse(description=_REFUSALS[status], content=error)
        operation.responses = dict(sorted(responses.items()))
        body = handler.parsed_fn_signature.parameters.get("data")
        if body is None or operation.request_body is None or isinstance(operation.request_body, Reference):
            continue
        if any(struct.__struct_config__.forbid_unknown_fields for struct in _structs(body.annotation)):
            for media in (operation.request_body.content or {}).values():
                closed.update(_references(media.schema))
    pending = list(closed)
    while pending:  # every Struct a closed body holds is one of ours, with forbid_unknown_fields too
        schema = schemas.get(pending.pop())
        for name in _nested(schema) if isinstance(schema, Schema) else ():
            if name not in closed and isinstance(schemas.get(name), Schema) and schemas[name].properties:
                closed.add(name)
                pending.append(name)
    for name in closed:
        schema = schemas.get(name)
        if isinstance(schema, Schema):
            schema.additional_properties = False
    _apply_rules(schemas, {(method, route.path_format): op for route, _, method, op in _operations(app)})
    return openapi
