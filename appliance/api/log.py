"""The event log as an auditor sees it: writers, the version vector, events, chain verification."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from appliance.api.deps import SQL_INT_MAX
from appliance.box import Box
from appliance.store import eventlog


def _event_dict(event: Any) -> dict[str, Any]:
    return {
        "writer_id": event.writer_id,
        "seq": event.seq,
        "event_id": event.event_id,
        "type": event.type,
        "payload": _jsonable(event.payload),
        "hlc": event.hlc,
        "occurred_at": event.occurred_at,
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "password_hash"}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@get("/api/writers", opt={"permission": "log.read"}, sync_to_thread=True)
def writers(box: Box) -> dict[str, Any]:
    conn = box.db.read()
    rows = conn.execute(
        "SELECT writer_id, kind, store_id, name, status, head_seq, public_key FROM writers ORDER BY created_at"
    )
    return {
        "version_vector": eventlog.version_vector(conn),
        "writers": [{**dict(row), "public_key": row["public_key"].hex()} for row in rows],
    }


@get("/api/writers/{writer_id:str}/events", opt={"permission": "log.read"}, sync_to_thread=True)
def writer_events(
    box: Box,
    writer_id: str,
    after_seq: int = Parameter(default=0, ge=0, le=SQL_INT_MAX),
    limit: int = Parameter(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    return [_event_dict(e) for e in eventlog.events_of(box.db.read(), writer_id, after_seq, limit)]


@get("/api/writers/{writer_id:str}/verify", opt={"permission": "log.read"}, sync_to_thread=True)
def verify_writer(box: Box, writer_id: str) -> dict[str, Any]:
    report = eventlog.verify_writer_chain(box.db.read(), writer_id)
    return {
        "writer_id": report.writer_id,
        "ok": report.ok,
        "events": report.events,
        "head_seq": report.head_seq,
        "signed_seq": report.signed_seq,
        "problems": report.problems,
    }


ROUTES: list[HTTPRouteHandler] = [writers, writer_events, verify_writer]
