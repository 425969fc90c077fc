"""``GET /api/events``: the live stream (Server-Sent Events) the dashboard and handhelds follow.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page first trades its bearer
token for a **stream ticket** (``POST /api/events/ticket``) and opens ``/api/events?ticket=…``. A ticket
is good for one connection within ``TICKET_TTL_S``, is held only in this process's memory, and names the
person, so the login token itself never travels in a URL (where proxies, history and logs keep it).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.response import ServerSentEvent, ServerSentEventMessage

from appliance.auth.people import User, get_user
from appliance.box import Box
from appliance.errors import Unauthenticated, ValidationFailed
from appliance.store import live

TICKET_TTL_S = 30
_MAX_TICKETS = 10_000


class StreamTickets:
    """Single-use stream tickets: ticket -> (user id, monotonic deadline). Locked because the guard
    that redeems them runs on Litestar's worker threads."""

    def __init__(self, ttl_s: float = TICKET_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._open: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, user_id: str) -> str:
        ticket = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            if len(self._open) >= _MAX_TICKETS:  # tickets nobody redeemed: forget the stale ones
                self._open = {t: v for t, v in self._open.items() if v[1] > now}
            self._open[ticket] = (user_id, now + self._ttl_s)
        return ticket

    def redeem(self, ticket: str) -> str:
        """The ticket's user id; the ticket is spent whether or not it was still good."""
        with self._lock:
            held = self._open.pop(ticket, None)
        if held is None or held[1] <= time.monotonic():
            raise Unauthenticated("the stream ticket is unknown, used or expired; ask for a new one")
        return held[0]


_BOOK_LOCK = threading.Lock()


def stream_tickets(app: Litestar) -> StreamTickets:
    """The app's ticket book, made on first use so that it lives and dies with the app."""
    with _BOOK_LOCK:
        book: StreamTickets | None = app.state.get("stream_tickets")
        if book is None:
            book = StreamTickets()
            app.state["stream_tickets"] = book
        return book


def user_for_ticket(app: Litestar, conn: sqlite3.Connection, ticket: str) -> User:
    """The guard's check for ``?ticket=``: a live ticket of a person who is still active."""
    person = get_user(conn, stream_tickets(app).redeem(ticket))
    if not person["active"]:
        raise Unauthenticated("this person can no longer log in")
    return User(person["user_id"], person["username"], person["display_name"], person["role"])


@post("/api/events/ticket", opt={"permission": "live.read"}, status_code=201)
async def ticket(request: Request[Any, Any, State], user: User) -> dict[str, Any]:
    return {
        "ticket": stream_tickets(request.app).issue(user.user_id),
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
