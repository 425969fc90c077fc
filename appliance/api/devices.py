"""Pairing handhelds, and the devices list a supervisor manages (rename, revoke, quarantine)."""

from __future__ import annotations

import io
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
import segno
from litestar import Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import SMALL_BODY, one_of
from appliance.auth import devices
from appliance.auth.people import LoginThrottle, User
from appliance.box import Box
from appliance.errors import ValidationFailed
from appliance.services import Tls

PAIRING_DIGITS = 6
ASCII_DIGITS = frozenset("0123456789")
QUARANTINE_DECISIONS = ("accepted", "rejected")


class PairRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    public_key: str


class Rename(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class Revoke(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class QuarantineDecision(msgspec.Struct, forbid_unknown_fields=True):
    writer_id: str
    session_id: str
    decision: Annotated[str, one_of(QUARANTINE_DECISIONS)]
    reason: str


def _pairing_uri(box: Box, request: Request[Any, Any, State], code: str, tls: Tls | None) -> str:
    """Over HTTPS the QR also carries the store CA's fingerprint and where to fetch it in the clear: the
    handheld checks the one against the other before it trusts the CA (docs/tls.md)."""
    base = str(request.base_url).rstrip("/")
    fields = {"box": base, "code": code, "store": box.node.store_id}
    if tls is not None and tls.ca_fingerprint is not None:
        host = request.url.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        fields.update(ca=tls.ca_fingerprint, ca_url=f"http://{host}:{box.settings.port}/ca.pem")
    return "stockverify://pair?" + urlencode(fields)


@post("/api/devices/pairing-codes", opt={"permission": "devices.manage"}, sync_to_thread=True, status_code=201)
def pairing_code(box: Box, user: User, request: Request[Any, Any, State], tls: Tls | None) -> dict[str, Any]:
    made = box.db.write(lambda conn: devices.make_pairing_code(conn, user))
    return {**made, "qr": _pairing_uri(box, request, made["code"], tls)}


@get("/api/devices/pairing-qr", opt={"permission": "devices.manage"}, sync_to_thread=True, media_type="image/svg+xml")
def pairing_qr(box: Box, request: Request[Any, Any, State], code: str, tls: Tls | None) -> Response[bytes]:
    """The pairing URI of ``code`` as an SVG QR code, drawn on the box: the store has no internet to
    fetch a QR library from, and a handheld's camera reads it off the supervisor's screen."""
    digits = "".join(c for c in code if c in ASCII_DIGITS)  # str.isdigit() takes other scripts' digits too
    if len(digits) != PAIRING_DIGITS or len(code) > PAIRING_DIGITS + 2:
        raise ValidationFailed("code must be a 6-digit pairing code", details={"field": "code"})
    pretty = f"{digits[:3]}-{digits[3:]}"
    svg = io.BytesIO()
    segno.make_qr(_pairing_uri(box, request, pretty, tls), error="m").save(
        svg, kind="svg", scale=6, border=2, dark="#000", light="#fff", xmldecl=False, title=f"Pairing code {pretty}"
    )
    return Response(svg.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@post(
    "/api/devices/pair",
    opt={"public": True},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def pair(
    data: JSONBody[PairRequest], box: Box, login_throttle: LoginThrottle, request: Request[Any, Any, State]
) -> dict[str, Any]:
    login_throttle.check(request.client.host if request.client else "?", "device pairing", what="pairing attempts")
    try:
        public_key = bytes.fromhex(data.public_key)
    except ValueError:
        raise ValidationFailed("public_key must be hex", details={"field": "public_key"}) from None
    made = box.db.write(
        lambda conn: devices.pair(
            conn, box.log, box.node.store_id, code=data.code, name=data.name, public_key=public_key
        )
    )
    return {
        **made,
        "store_id": box.node.store_id,
        "node_id": box.node.node_id,
        "head_seq": 0,
        "server_hlc": box.log.clock.now(),
    }


@get("/api/devices", opt={"permission": "devices.read"}, sync_to_thread=True)
def list_devices(box: Box) -> list[dict[str, Any]]:
    return devices.list_devices(box.db.read())


@patch(
    "/api/devices/{writer_id:str}",
    opt={"permission": "devices.manage"},
    sync_to_thread=True,
    request_max_body_size=SMALL_BODY,
)
def rename(writer_id: str, data: JSONBody[Rename], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: devices.rename(conn, box.log, user, writer_id, data.name))
    return {"writer_id": writer_id, "name": data.name.strip()}


@post(
    "/api/devices/{writer_id:str}/revoke",
    opt={"permission": "devices.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def revoke(writer_id: str, data: JSONBody[Revoke], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: devices.revoke(conn, box.log, user, writer_id, data.reason))
    return {"writer_id": writer_id, "status": "revoked", "quarantine": devices.quarantine(box.db.read())}


@get("/api/quarantine", opt={"permission": "devices.read"}, sync_to_thread=True)
def quarantine(box: Box) -> list[dict[str, Any]]:
    return devices.quarantine(box.db.read())


@post(
    "/api/quarantine/decide",
    opt={"permission": "devices.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def decide(data: JSONBody[QuarantineDecision], box: Box, user: User) -> list[dict[str, Any]]:
    box.db.write(
        lambda conn: devices.decide_quarantine(
            conn,
            box.log,
            user,
            writer_id=data.writer_id,
            session_id=data.session_id,
            decision=data.decision,
            reason=data.reason,
        )
    )
    return devices.quarantine(box.db.read())


ROUTES: list[HTTPRouteHandler] = [pairing_code, pairing_qr, pair, list_devices, rename, revoke, quarantine, decide]
