"""People: users and their roles, passwords (argon2id, memory-hard) and expiring login tokens.

Users are store state (events, replicated to the store's other boxes so a verifier can log in on any
of them); login tokens are this box's local credentials, kept only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.auth.permissions import ROLES
from appliance.errors import Conflict, NotFound, RateLimited, Unauthenticated, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event
from replication.wire.hlc import wall_ms

projection_tables("users")

MIN_PASSWORD = 8
# Verifying against this keeps a login for an unknown user as slow as one for a known user.
_DUMMY_PASSWORD = "not-a-real-password"  # noqa: S105


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    display_name: str
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role,
        }


class Passwords:
    """Argon2id hashing with the box's configured cost."""

    def __init__(self, memory_kib: int, time_cost: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._dummy = self._hasher.hash(_DUMMY_PASSWORD)

    def hash(self, password: str) -> str:
        return str(self._hasher.hash(password))

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return bool(self._hasher.verify(stored_hash or self._dummy, password)) and stored_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def check_new_user(username: str, role: str, password: str) -> str:
    name = username.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise ValidationFailed(
            "username must be 1-64 letters, digits, '-', '_', '.' or '@'", details={"field": "username"}
        )
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}", details={"field": "role"})
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD} characters", details={"field": "password"})
    return name


# -- commands -------------------------------------------------------------------------------------
def add_user(
    conn: sqlite3.Connection, log: EventLog, username: str, display_name: str, role: str, password_hash: str
) -> User:
    """Record a new user. The password is hashed by the caller, off the writer thread."""
    if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
        raise Conflict(f"user {username} already exists", code="USER_EXISTS")
    user = User(new_id(), username, display_name.strip() or username, role)
    log.record(conn, "user.added", {**user.to_dict(), "password_hash": password_hash})
    return user


def set_active(conn: sqlite3.Connection, log: EventLog, actor: User, user_id: str, active: bool) -> dict[str, Any]:
    """Deactivate a person who left (or bring them back). Their events stay; a deactivated person cannot
    log in, and what a handheld sends in their name afterwards is held for a supervisor."""
    person = get_user(conn, user_id)
    if user_id == actor.user_id and not active:
        raise Conflict("an admin cannot deactivate themselves", code="CANNOT_DEACTIVATE_SELF")
    if person["active"] != active:
        log.record(conn, "user.active_set", {"user_id": user_id, "active": active, "by": actor.user_id})
    return get_user(conn, user_id)


def issue_token(conn: sqlite3.Connection, user_id: str, ttl_s: int) -> tuple[str, int]:
    token = secrets.token_urlsafe(32)
    now = wall_ms()
    expires_at = now + ttl_s * 1000
    conn.execute("DELETE FROM login_tokens WHERE expires_at < ?", (now,))
    conn.execute(
        "INSERT INTO login_tokens (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_digest(token), user_id, now, expires_at),
    )
    return token, expires_at


def revoke_token(conn: sqlite3.Connection, token: str) -> None:
    conn.execute("DELETE FROM login_tokens WHERE token_hash = ?", (token_digest(token),))


# -- projections ----------------------------------------------------------------------------------
@projector("user.added")
def _user_added(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO users (user_id, username, display_name, role, password_hash) VALUES (?, ?, ?, ?, ?)",
        (p["user_id"], p["username"], p["display_name"], p["role"], p["password_hash"]),
    )


@projector("user.active_set")
def _user_active_set(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "UPDATE users SET active = ?, active_hlc = ?, active_writer = ? WHERE user_id = ?"
        " AND (active_hlc, active_writer) < (?, ?)",
        (int(p["active"]), event.hlc, event.writer_id, p["user_id"], event.hlc, event.writer_id),
    )
    if not p["active"]:
        conn.execute("DELETE FROM login_tokens WHERE user_id = ?", (p["user_id"],))


# -- queries --------------------------------------------------------------------------------------
def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def user_for_token(conn: sqlite3.Connection, token: str) -> User:
    row = conn.execute(
        "SELECT u.user_id, u.username, u.display_name, u.role FROM login_tokens t"
        " JOIN users u ON u.user_id = t.user_id"
        " WHERE t.token_hash = ? AND t.expires_at > ? AND u.active = 1",
        (token_digest(token), wall_ms()),
    ).fetchone()
    if row is None:
        raise Unauthenticated("the login token is unknown or has expired; log in again")
    return User(**dict(row))


def find_login(conn: sqlite3.Connection, username: str) -> tuple[User | None, str | None]:
    row = conn.execute(
        "SELECT user_id, username, display_name, role, password_hash FROM users WHERE username = ? AND active = 1",
        (username.strip(),),
    ).fetchone()
    if row is None:
        return None, None
    data = dict(row)
    stored_hash = data.pop("password_hash")
    return User(**data), stored_hash


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT user_id, username, display_name, role, active FROM users ORDER BY username")
    return [{**dict(row), "active": bool(row["active"])} for row in rows]


def get_user(conn: sqlite3.Connection, user_id: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT user_id, username, display_name, role, active FROM users WHERE user_id = ?", (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} does not exist", code="USER_NOT_FOUND")
    return {**dict(row), "active": bool(row["active"])}


class LoginThrottle:
    """Counts login attempts per (address, username) in a sliding minute; in memory on purpose:
    a restart forgiving a few attempts is fine, and it keeps the login path off the disk."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._attempts: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def check(self, address: str, username: str, *, what: str = "login attempts") -> None:
        key = (address, username.strip().lower())
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._attempts.get(key, []) if now - t < 60]
            if len(recent) >= self._per_minute:
                self._attempts[key] = recent
                raise RateLimited(
                    f"too many {what}; wait a minute and try again",
                    details={"retry_after_s": int(60 - (now - recent[0])) + 1},
                )
            recent.append(now)
            self._attempts[key] = recent
            if len(self._attempts) > 10_000:  # forget stale keys so memory stays bounded
                self._attempts = {k: v for k, v in self._attempts.items() if now - v[-1] < 60}


# -- stream tickets (docs: appliance/api/live.py) ----------------------------------------------------
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


def user_for_ticket(tickets: StreamTickets, conn: sqlite3.Connection, ticket: str) -> User:
    """The guard's check for ``?ticket=``: a live ticket of a person who is still active."""
    person = get_user(conn, tickets.redeem(ticket))
    if not person["active"]:
        raise Unauthenticated("this person can no longer log in")
    return User(person["user_id"], person["username"], person["display_name"], person["role"])
