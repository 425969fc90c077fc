"""``GET /api/events``: the live stream (Server-Sent Events) the dashboard and handhelds follow.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page first trades its bearer
token for a **stream ticket** (``POST /api/events/ticket``) and opens ``/api/events?ticket=…``. A ticket
is good for one connection within ``TICKET_TTL_S``, is held only in this process's memory, and names the
person, so the login token itself never travels in a URL (where proxies, history and logs keep it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.response import ServerSentEvent, ServerSentEventMessage

from appliance.auth.people import TICKET_TTL_S, StreamTickets, User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.errors import ValidationFailed
from appliance.store import live


@post("/api/events/ticket", opt={"permission": "live.read"}, status_code=201)
async def ticket(user: User, tickets: StreamTickets) -> dict[str, Any]:
    return {
        "ticket": tickets.issue(user.user_id),
        "expires_in_s": TICKET_TTL_S,
    }


def _readable(box: Box, user: User) -> Callable[[dict[str, Any]], bool] | None:
    """What of the stream this person may read: everything for those who may read every session, and
    for a verifier the scans (and held events) of their own sessions only, as ``GET /api/sessions/{id}``
    allows. An
    owner is looked up once per session and again when it is reassigned."""
    if allowed("sessions.manage", user.role) or user.role == "auditor":
        return None
    conn = box.db.read()
    owners: dict[str, str | None] = {}

    def readable(message: dict[str, Any]) -> bool:
        if message["kind"] == "session" and message.get("type") == "session.assigned":
            owners.pop(message["session_id"], None)
        if message["kind"] == "scanner" and not (message.get("type") == "code" and message.get("session_id")):
            return False  # the box's scanners are the supervisors' page; a station's codes, its session's
        if message["kind"] not in ("scan", "held", "scanner") or "session_id" not in message:
            return True
        session_id = message["session_id"]
        if session_id not in owners:
            row = conn.execute("SELECT verifier_id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            owners[session_id] = row[0] if row else None
        return owners[session_id] == user.user_id

    return readable


@get("/api/events", opt={"permission": "live.read", "token_in_query": True})
async def events(request: Request[Any, Any, State], box: Box, user: User) -> ServerSentEvent:
    """Resumable: a client that sends ``Last-Event-ID`` (or ``?last_event_id=``) gets what it missed
    from the log first. A message of kind ``resync`` means the client fell behind and should reload."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        last_id = int(raw) if raw else None
    except ValueError:
        raise ValidationFailed("Last-Event-ID must be a number", details={"field": "Last-Event-ID"}) from None

    readable = _readable(box, user)

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        async for pos, message in live.stream(box.bus, box.db.read(), last_id):
            if readable is not None and not readable(message):
                continue
            if message["kind"] == "ping":
                yield ServerSentEventMessage(comment="ping")
            else:
                yield ServerSentEventMessage(data=json.dumps(message), event=message["kind"], id=pos)

    return ServerSentEvent(messages(), retry_duration=2000)


ROUTES: list[HTTPRouteHandler] = [ticket, events]
