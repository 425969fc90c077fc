"""``GET /api/events``: the live stream (Server-Sent Events) the dashboard and handhelds follow.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page first trades its bearer
token for a **stream ticket** (``POST /api/events/ticket``) and opens ``/api/events?ticket=…``. A ticket
is good for one connection within ``TICKET_TTL_S``, is held only in this process's memory, and names the
person, so the login token itself never travels in a URL (where proxies, history and logs keep it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.response import ServerSentEvent, ServerSentEventMessage

from appliance.auth.people import TICKET_TTL_S, StreamTickets, User
from appliance.box import Box
from appliance.errors import ValidationFailed
from appliance.store import live


@post("/api/events/ticket", opt={"permission": "live.read"}, status_code=201)
async def ticket(user: User, tickets: StreamTickets) -> dict[str, Any]:
    return {
        "ticket": tickets.issue(user.user_id),
        "expires_in_s": TICKET_TTL_S,
    }


@get("/api/events", opt={"permission": "live.read", "token_in_query": True})
async def events(request: Request[Any, Any, State], box: Box) -> ServerSentEvent:
    """Resumable: a client that sends ``Last-Event-ID`` (or ``?last_event_id=``) gets what it missed
    from the log first. A message of kind ``resync`` means the client fell behind and should reload."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        last_id = int(raw) if raw else None
    except ValueError:
        raise ValidationFailed("Last-Event-ID must be a number", details={"field": "Last-Event-ID"}) from None

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        async for pos, message in live.stream(box.bus, box.db.read(), last_id):
            if message["kind"] == "ping":
                yield ServerSentEventMessage(comment="ping")
            else:
                yield ServerSentEventMessage(data=json.dumps(message), event=message["kind"], id=pos)

    return ServerSentEvent(messages(), retry_duration=2000)


ROUTES: list[HTTPRouteHandler] = [ticket, events]
