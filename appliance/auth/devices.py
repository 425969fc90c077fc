"""Handheld devices: pairing, device credentials, renaming, revocation, presence and quarantine.

A device becomes a writer when it pairs with a short-lived code a supervisor made. Its credential is a
random token kept on the box only as a hash; its events are vouched for by its own key. Revoking a
device stops it at once (its next request is refused) and holds its counts in sessions that were not
yet approved in quarantine until a supervisor accepts or rejects them.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from appliance.auth.people import User
from appliance.errors import Conflict, Forbidden, NotFound, Unauthenticated, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event
from replication.wire.hlc import wall_ms

projection_tables("quarantine_decisions")

PAIRING_TTL_MS = 10 * 60 * 1000
PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True)
class Device:
    writer_id: str
    name: str
    public_key: bytes
    head_seq: int


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _normalise_code(code: str) -> str:
    return "".join(c for c in code if c.isdigit())


# -- pairing --------------------------------------------------------------------------------------
def make_pairing_code(conn: sqlite3.Connection, actor: User) -> dict[str, Any]:
    """A 6-digit code a device types (or reads from a QR code) within 10 minutes, once."""
    digits = f"{secrets.randbelow(1_000_000):06d}"
    now = wall_ms()
    conn.execute("DELETE FROM pairing_codes WHERE expires_at < ?", (now,))
    conn.execute(
        "INSERT OR REPLACE INTO pairing_codes (code_hash, created_by, expires_at) VALUES (?, ?, ?)",
        (_digest(digits), actor.user_id, now + PAIRING_TTL_MS),
    )
    return {"code": f"{digits[:3]}-{digits[3:]}", "expires_at": now + PAIRING_TTL_MS}


def pair(
    conn: sqlite3.Connection, log: EventLog, store_id: str, *, code: str, name: str, public_key: bytes
) -> dict[str, Any]:
    """Turn a pairing code and a device's public key into an enrolled writer and its credential."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValidationFailed("public_key must be 32 bytes (64 hex characters)", details={"field": "public_key"})
    label = name.strip()
    if not label or len(label) > 64:
        raise ValidationFailed("name must be 1-64 characters", details={"field": "name"})
    now = wall_ms()
    row = conn.execute(
        "SELECT created_by FROM pairing_codes WHERE code_hash = ? AND used_at IS NULL AND expires_at >= ?",
        (_digest(_normalise_code(code)), now),
    ).fetchone()
    if row is None:
        raise Unauthenticated("the pairing code is wrong, used or expired", code="PAIRING_CODE_INVALID")
    if conn.execute("SELECT 1 FROM writers WHERE public_key = ?", (public_key,)).fetchone():
        raise Conflict("this key is already paired; a wiped device pairs with a new key", code="KEY_ALREADY_PAIRED")
    conn.execute("UPDATE pairing_codes SET used_at = ? WHERE code_hash = ?", (now, _digest(_normalise_code(code))))
    writer_id = new_id()
    log.record(
        conn,
        "writer.enrolled",
        {
            "writer_id": writer_id,
            "kind": "device",
            "store_id": store_id,
            "name": label,
            "public_key": public_key,
            "by": row["created_by"],
        },
    )
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO device_tokens (token_hash, writer_id, created_at) VALUES (?, ?, ?)",
        (_digest(token), writer_id, now),
    )
    return {"writer_id": writer_id, "device_token": token}


def device_for_token(conn: sqlite3.Connection, token: str) -> Device:
    row = conn.execute(
        "SELECT w.writer_id, w.name, w.public_key, w.head_seq, w.status FROM device_tokens t"
        " JOIN writers w ON w.writer_id = t.writer_id WHERE t.token_hash = ?",
        (_digest(token),),
    ).fetchone()
    if row is None:
        raise Unauthenticated("unknown device credential; pair the device again")
    if row["status"] == "revoked":
        raise Forbidden("this device was revoked", code="REVOKED")
    return Device(row["writer_id"], row["name"], row["public_key"], row["head_seq"])


# -- management -----------------------------------------------------------------------------------
def _device_row(conn: sqlite3.Connection, writer_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM writers WHERE writer_id = ? AND kind = 'device'", (writer_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"device {writer_id} does not exist", code="DEVICE_NOT_FOUND")
    return row


def rename(conn: sqlite3.Connection, log: EventLog, actor: User, writer_id: str, name: str) -> None:
    _device_row(conn, writer_id)
    label = name.strip()
    if not label or len(label) > 64:
        raise ValidationFailed("name must be 1-64 characters", details={"field": "name"})
    log.record(conn, "writer.renamed", {"writer_id": writer_id, "name": label, "by": actor.user_id})


def revoke(conn: sqlite3.Connection, log: EventLog, actor: User, writer_id: str, reason: str) -> None:
    row = _device_row(conn, writer_id)
    if row["status"] == "revoked":
        raise Conflict("this device is already revoked", code="ALREADY_REVOKED")
    if not reason.strip():
        raise ValidationFailed("revoking a device needs a reason", code="REASON_REQUIRED")
    # The credential stays on file so that the device's next request is told REVOKED, not "unknown".
    log.record(conn, "writer.revoked", {"writer_id": writer_id, "reason": reason.strip(), "by": actor.user_id})


def decide_quarantine(
    conn: sqlite3.Connection, log: EventLog, actor: User, *, writer_id: str, session_id: str, decision: str, reason: str
) -> None:
    if decision not in ("accepted", "rejected"):
        raise ValidationFailed("decision must be accepted or rejected", details={"field": "decision"})
    if not reason.strip():
        raise ValidationFailed("a quarantine decision needs a reason", code="REASON_REQUIRED")
    held = conn.execute(
        "SELECT 1 FROM quarantined WHERE writer_id = ? AND session_id = ?", (writer_id, session_id)
    ).fetchone()
    if held is None:
        raise NotFound("nothing of this device is in quarantine for that session", code="NOT_QUARANTINED")
    log.record(
        conn,
        "quarantine.decided",
        {
            "writer_id": writer_id,
            "session_id": session_id,
            "decision": decision,
            "reason": reason.strip(),
            "by": actor.user_id,
        },
    )


def record_presence(
    conn: sqlite3.Connection, writer_id: str, *, queue_depth: int, app_version: str, address: str
) -> None:
    conn.execute(
        "INSERT INTO device_presence (writer_id, last_seen, queue_depth, app_version, address) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET last_seen = excluded.last_seen, queue_depth = excluded.queue_depth,"
        " app_version = excluded.app_version, address = excluded.address",
        (writer_id, wall_ms(), queue_depth, app_version[:64], address[:64]),
    )


# -- projections ----------------------------------------------------------------------------------
@projector("writer.renamed")
def _writer_renamed(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "UPDATE writers SET name = ?, name_hlc = ? WHERE writer_id = ? AND name_hlc < ?",
        (event.payload["name"], event.hlc, event.payload["writer_id"], event.hlc),
    )


@projector("writer.revoked")
def _writer_revoked(conn: sqlite3.Connection, event: Event) -> None:
    # The earliest revocation wins, so every replica holds back the same counts.
    conn.execute(
        "UPDATE writers SET status = 'revoked', revoke_reason = ?, revoked_hlc = ?"
        " WHERE writer_id = ? AND (revoked_hlc IS NULL OR revoked_hlc > ?)",
        (event.payload["reason"], event.hlc, event.payload["writer_id"], event.hlc),
    )


@projector("quarantine.decided")
def _quarantine_decided(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO quarantine_decisions (writer_id, session_id, decision, reason, by_user, hlc, writer)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET decision = excluded.decision,"
        " reason = excluded.reason, by_user = excluded.by_user, hlc = excluded.hlc, writer = excluded.writer"
        " WHERE (excluded.hlc, excluded.writer) > (quarantine_decisions.hlc, quarantine_decisions.writer)",
        (p["writer_id"], p["session_id"], p["decision"], p["reason"], p["by"], event.hlc, event.writer_id),
    )


# -- queries --------------------------------------------------------------------------------------
def list_devices(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT w.writer_id, w.name, w.status, w.head_seq, w.revoke_reason, w.created_at, p.last_seen,"
        " p.queue_depth, p.app_version, p.address FROM writers w"
        " LEFT JOIN device_presence p ON p.writer_id = w.writer_id WHERE w.kind = 'device' ORDER BY w.created_at"
    )
    return [dict(row) for row in rows]


def quarantine(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT q.writer_id, w.name AS device, q.session_id, q.decision, s.status AS session_status,"
        " (SELECT coalesce(sum(p - n), 0) FROM scan_counts c WHERE c.writer_id = q.writer_id"
        "   AND c.session_id = q.session_id) AS units"
        " FROM quarantined q JOIN writers w ON w.writer_id = q.writer_id JOIN sessions s ON s.session_id = q.session_id"
        " ORDER BY w.name, q.session_id"
    )
    return [{**dict(row), "decision": row["decision"] or "pending"} for row in rows]
