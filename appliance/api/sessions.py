"""Sessions and their items: what verifiers scan into and supervisors approve.

Verifiers see only their own sessions and never an expected quantity or another session's count:
a recount is blind to both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import user_id_for
from appliance.auth.people import User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.counting import codes, items, photos, rollups, sessions
from appliance.errors import Forbidden, NotFound


class Assign(msgspec.Struct, forbid_unknown_fields=True):
    verifier: str
    device_id: str | None = None


class Reason(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class Scan(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    qty: int = 1
    rack: str | None = None
    product_id: str | None = None


# An attribute's value is one scalar: typed so, a list or a map (or one nested 100,000 deep) is refused
# while the body is decoded, and ``items.check_attributes`` still names the field for a scalar it refuses.
AttributeValue = str | int | float | bool | None


class ItemEdit(msgspec.Struct, forbid_unknown_fields=True):
    qty: int | None = None
    damage_qty: int | None = None
    attributes: dict[str, AttributeValue] = {}


class Serial(msgspec.Struct, forbid_unknown_fields=True):
    serial: str


def _visible(box: Box, user: User, session_id: str) -> Any:
    conn = box.db.read()
    session = sessions.get_session(conn, session_id)
    if not allowed("sessions.manage", user.role) and user.role != "auditor" and session["verifier_id"] != user.user_id:
        raise Forbidden("this session belongs to another verifier", code="SESSION_NOT_YOURS")
    return session


def session_view(box: Box, session_id: str) -> dict[str, Any]:
    conn = box.db.read()
    session = sessions.get_session(conn, session_id)
    return {
        **sessions.session_dict(conn, session),
        **items.session_items(conn, session_id),
        "buckets": rollups.buckets(conn, session["run_id"], session_id),
    }


@get("/api/sessions", opt={"permission": "sessions.read"}, sync_to_thread=True)
def list_sessions(box: Box, user: User, run_id: str | None = None) -> list[dict[str, Any]]:
    mine_only = user.role == "verifier"
    return sessions.list_sessions(box.db.read(), run_id=run_id, verifier_id=user.user_id if mine_only else None)


@get("/api/sessions/{session_id:str}", opt={"permission": "sessions.read"}, sync_to_thread=True)
def get_session(box: Box, user: User, session_id: str) -> dict[str, Any]:
    _visible(box, user, session_id)
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/assign",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
)
def assign(session_id: str, data: JSONBody[Assign], box: Box, user: User) -> dict[str, Any]:
    box.db.write(
        lambda conn: sessions.assign_session(
            conn, box.log, user, session_id, verifier_id=user_id_for(conn, data.verifier), device_id=data.device_id
        )
    )
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/start", opt={"permission": "sessions.count"}, sync_to_thread=True, status_code=200
)
def start(session_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: sessions.start_session(conn, box.log, user, session_id))
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/submit", opt={"permission": "sessions.count"}, sync_to_thread=True, status_code=200
)
def submit(session_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: sessions.submit_session(conn, box.log, user, session_id))
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/approve",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
)
def approve(session_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: sessions.approve_session(conn, box.log, user, session_id))
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/send-back",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
)
def send_back(session_id: str, data: JSONBody[Reason], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: sessions.send_back_session(conn, box.log, user, session_id, reason=data.reason))
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/void",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
)
def void(session_id: str, data: JSONBody[Reason], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: sessions.void_session(conn, box.log, user, session_id, reason=data.reason))
    return session_view(box, session_id)


@post(
    "/api/sessions/{session_id:str}/scans",
    opt={"permission": "sessions.count"},
    sync_to_thread=True,
    status_code=201,
)
def scan(session_id: str, data: JSONBody[Scan], box: Box, user: User) -> dict[str, Any]:
    """The scan path: one event, one commit, and a small answer (the item's new quantity)."""
    event = box.db.write(
        lambda conn: items.record_scan(
            conn,
            box.log,
            user,
            session_id,
            code=data.code,
            qty=data.qty,
            rack_code=data.rack,
            product_id=data.product_id,
        )
    )
    conn = box.db.read()
    product_id, matched_by = codes.resolve_code(conn, event.payload["code"])
    return {
        "event_id": event.event_id,
        "code": event.payload["code"],
        "product_id": product_id,
        "matched_by": matched_by,
        "item_qty": items.item_quantity(conn, session_id, product_id) if product_id else None,
    }


@post(
    "/api/sessions/{session_id:str}/scans/{event_id:str}/undo",
    opt={"permission": "sessions.count"},
    sync_to_thread=True,
    status_code=200,
)
def undo(session_id: str, event_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: items.undo_scan(conn, box.log, user, session_id, event_id))
    return {"undone": event_id}


@put(
    "/api/sessions/{session_id:str}/items/{product_id:str}",
    opt={"permission": "sessions.count"},
    sync_to_thread=True,
)
def edit_item(session_id: str, product_id: str, data: JSONBody[ItemEdit], box: Box, user: User) -> dict[str, Any]:
    def job(conn: Any) -> None:
        if data.qty is not None:
            items.set_quantity(conn, box.log, user, session_id, product_id, data.qty)
        if data.damage_qty is not None:
            items.set_damage(conn, box.log, user, session_id, product_id, data.damage_qty)
        if data.attributes:
            items.set_attributes(conn, box.log, user, session_id, product_id, data.attributes)

    box.db.write(job)
    return _item(box, session_id, product_id)


def _item(box: Box, session_id: str, product_id: str) -> dict[str, Any]:
    for entry in items.session_items(box.db.read(), session_id)["items"]:
        if entry["product_id"] == product_id:
            return dict(entry)
    return {"product_id": product_id, "qty": 0, "damage_qty": 0, "serials": [], "photos": [], "attributes": {}}


@post(
    "/api/sessions/{session_id:str}/items/{product_id:str}/serials",
    opt={"permission": "sessions.count"},
    sync_to_thread=True,
    status_code=201,
)
def add_serial(session_id: str, product_id: str, data: JSONBody[Serial], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: items.add_serial(conn, box.log, user, session_id, product_id, data.serial))
    return _item(box, session_id, product_id)


@delete(
    "/api/sessions/{session_id:str}/items/{product_id:str}/serials/{serial:str}",
    opt={"permission": "sessions.count"},
    sync_to_thread=True,
    status_code=200,
)
def remove_serial(session_id: str, product_id: str, serial: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: items.remove_serial(conn, box.log, user, session_id, product_id, serial))
    return _item(box, session_id, product_id)


@post(
    "/api/sessions/{session_id:str}/items/{product_id:str}/photos",
    opt={"permission": "sessions.count"},
    status_code=201,
)
async def add_photo(
    session_id: str, product_id: str, request: Request[Any, Any, State], box: Box, user: User
) -> dict[str, Any]:
    """The photo is the raw body with its image content type; it is kept on disk by its hash."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    data = await request.body()
    photos_dir = box.settings.data_dir / "photos"
    # Checked before the file is written, so a refused upload leaves nothing on the disk.
    photos.check_photo_target(box.db.read(), user, session_id, product_id)
    digest = await asyncio.to_thread(photos.store_photo, photos_dir, data, content_type)
    try:
        await box.db.awrite(
            lambda conn: photos.attach_photo(
                conn, box.log, user, session_id, product_id, sha256=digest, content_type=content_type, size=len(data)
            )
        )
    except Exception:
        photos.forget_photo(box.db.read(), photos_dir, digest)
        raise
    return {"sha256": digest, "size": len(data)}


@get("/api/photos/{sha256:str}", opt={"permission": "runs.read"}, sync_to_thread=True)
def get_photo(box: Box, sha256: str) -> Response[bytes]:
    row = box.db.read().execute("SELECT content_type FROM photos WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
    path = photos.photo_path(box.settings.data_dir / "photos", sha256)
    if row is None or not path.exists():
        raise NotFound("no such photo", code="PHOTO_NOT_FOUND")
    return Response(path.read_bytes(), media_type=row[0])


ROUTES: list[HTTPRouteHandler] = [
    list_sessions,
    get_session,
    assign,
    start,
    submit,
    approve,
    send_back,
    void,
    scan,
    undo,
    edit_item,
    add_serial,
    remove_serial,
    add_photo,
    get_photo,
]
