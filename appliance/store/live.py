"""The live event bus: what the dashboard and handhelds hear about as it happens.

Committed log events are published after their COMMIT (never before: a listener must not see a scan
that could still roll back), tagged with their log position so a client that reconnects with
``Last-Event-ID`` replays what it missed from the log itself. Ephemeral news (device presence, a
conflict found) has no position. Each subscriber has a bounded queue; one that falls behind is told
to resync and its backlog is dropped, so a slow browser can never slow the scan path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.store.eventlog import row_to_event
from replication.wire.codec import Event

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
RESYNC = {"kind": "resync"}

# Event types worth telling people about, and the message each becomes.
_RACK_MOVES = {
    "rack.claimed": "claimed",
    "rack.started": "active",
    "rack.paused": "paused",
    "rack.resumed": "active",
    "rack.finished": "completed",
    "rack.released": "available",
    "rack.reverify_requested": "re-verify",
}

# A scanner on the box enrolled, reconfigured, given a station or taken off one, a code kept or decided.
_SCANNER_NEWS = frozenset(
    {
        "scanner.enrolled",
        "scanner.configured",
        "station.assigned",
        "station.unassigned",
        "scanner.code_kept",
        "scanner.kept_decided",
    }
)


def message_for(event: Event) -> dict[str, Any] | None:
    """The live message for a log event, or None for events nobody watches live."""
    p = event.payload
    if event.type in _RACK_MOVES:
        return {
            "kind": "rack",
            "type": event.type,
            "state": _RACK_MOVES[event.type],
            "run_id": p.get("run_id"),
            "rack_id": p.get("rack_id"),
            "rack": p.get("rack"),
            "holder": p.get("user_id"),
            "holder_name": p.get("user_name"),
            "device_id": p.get("device_id"),
            "token": p.get("token"),
        }
    if event.type == "scan.recorded":
        return {
            "kind": "scan",
            "session_id": p["session_id"],
            "rack_id": p["rack_id"],
            "qty": p["qty"],
            "writer_id": event.writer_id,
            "hlc": event.hlc,
        }
    if event.type in ("session.status_changed", "session.assigned", "session.created"):
        return {"kind": "session", "type": event.type, "session_id": p["session_id"], "status": p.get("status")}
    if event.type in ("run.status_changed", "run.created"):
        return {"kind": "run", "type": event.type, "run_id": p["run_id"], "status": p.get("status")}
    if event.type in ("conflict.resolved",):
        return {"kind": "conflict", "type": event.type, "conflict_id": p["conflict_id"], "action": p["action"]}
    if event.type in _SCANNER_NEWS:
        return {"kind": "scanner", "type": event.type, "writer_id": p.get("writer_id")}
    if event.type in ("writer.enrolled", "writer.revoked", "writer.renamed"):
        return {"kind": "device", "type": event.type, "writer_id": p["writer_id"]}
    return None


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[tuple[int | None, dict[str, Any]]] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    behind: bool = False


class EventBus:
    """In-process pub/sub bridging the writer thread to asyncio listeners."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, messages: list[tuple[int | None, dict[str, Any]]]) -> None:
        """Hand messages to every subscriber; safe from any thread, never blocks."""
        if not messages or self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._deliver, messages)

    def _deliver(self, messages: list[tuple[int | None, dict[str, Any]]]) -> None:
        for sub in list(self._subscribers):
            if sub.behind:
                continue
            for item in messages:
                try:
                    sub.queue.put_nowait(item)
                except asyncio.QueueFull:
                    # Too slow: drop its backlog and tell it to fetch the current state afresh.
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    sub.queue.put_nowait((None, RESYNC))
                    sub.behind = True
                    break

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def listeners(self) -> int:
        return len(self._subscribers)


class LogTap:
    """Collects the events a write group appends; publishes their messages after COMMIT.

    Messages are made only at COMMIT and only if someone is listening then: a box catching up on a
    peer's 20,000 events with no dashboard open does not build 20,000 messages for nobody."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._job: list[tuple[int, Sequence[Event]]] = []  # runs: the first event's position, the events
        self._group: list[tuple[int, Sequence[Event]]] = []

    def appended(self, first_pos: int, events: Sequence[Event]) -> None:
        self._job.append((first_pos, events))

    def job_done(self, _conn: sqlite3.Connection) -> None:
        self._group.extend(self._job)
        self._job = []

    def job_failed(self) -> None:
        self._job = []

    def committed(self) -> None:
        group, self._group = self._group, []
        if not self._bus.listeners:
            return
        messages: list[tuple[int | None, dict[str, Any]]] = []
        for first_pos, events in group:
            for offset, event in enumerate(events):
                message = message_for(event)
                if message is not None:
                    messages.append((first_pos + offset, message))
        self._bus.publish(messages)

    def rolled_back(self) -> None:
        self._job, self._group = [], []


def replay(conn: sqlite3.Connection, after_pos: int, limit: int = 5000) -> list[tuple[int, dict[str, Any]]]:
    """Messages for log events after ``after_pos`` (for a client resuming with Last-Event-ID)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for row in conn.execute("SELECT * FROM events WHERE pos > ? ORDER BY pos LIMIT ?", (after_pos, limit)):
        message = message_for(row_to_event(row))
        if message is not None:
            out.append((row["pos"], message))
    return out


async def stream(
    bus: EventBus, conn: sqlite3.Connection, last_event_id: int | None, heartbeat_s: float = 15.0
) -> AsyncIterator[tuple[int | None, dict[str, Any]]]:
    """Replay from the log after ``last_event_id``, then follow the bus; a comment keeps proxies awake."""
    sub = bus.subscribe()
    try:
        if last_event_id is not None:
            missed = replay(conn, last_event_id)
            seen = missed[-1][0] if missed else last_event_id
            for item in missed:
                yield item
        else:
            seen = 0
        while True:
            try:
                async with asyncio.timeout(heartbeat_s):
                    pos, message = await sub.queue.get()
            except TimeoutError:
                yield None, {"kind": "ping"}
                continue
            if pos is not None and pos <= seen:
                continue  # already replayed from the log
            yield pos, message
            if message is RESYNC:
                return
    finally:
        bus.unsubscribe(sub)
