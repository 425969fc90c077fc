"""The device's outbox: its chain of events and their send status, in a SQLite file of its own.

"Append, fsync, show, then send": a scan is shown to the verifier only once it is committed here
(WAL, ``synchronous=FULL``), so a crash, a flat battery or ``kill -9`` never loses a scan that was
shown, and the sender works from this file alone. Each append reads the chain head and writes the new
event and the new head in one ``BEGIN IMMEDIATE`` transaction, so two processes appending to the same
outbox (a scanner and a load simulator, say) still get consecutive seqs; a seq is never skipped or reused.

Files, in the device's data folder:

* ``outbox.db`` — identity (writer id, device token, box URL, store, the box's CA when it serves
  https), chain head, last HLC, events and their status, the sender's last error.
* ``device.key`` — the Ed25519 seed (32 bytes, mode 0600, folder 0700). It stays out of the database
  so that a copy of the queue (for support, say) never carries the key that signs for the device.

Record status: ``pending`` (not yet acknowledged), ``synced`` (stored by the box), ``conflict`` (stored
and flagged for a supervisor) and ``failed`` (refused; a person must look).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from replication.device.payloads import check_payload
from replication.errors import NeedsPerson
from replication.wire.codec import Event, unpack
from replication.wire.codec import load_or_create_key as codec_load_key
from replication.wire.hlc import HybridClock, wall_ms

KEY_FILE = "device.key"
STATUSES = ("pending", "synced", "conflict", "failed")

_SCHEMA = """
CREATE TABLE identity (
    singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
    writer_id    TEXT NOT NULL,
    device_token TEXT NOT NULL,
    box_url      TEXT NOT NULL,
    store_id     TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    paired_at    INTEGER NOT NULL
);
CREATE TABLE chain (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_seq  INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    last_hlc  INTEGER NOT NULL
);
INSERT INTO chain VALUES (1, 0, zeroblob(32), 0);
CREATE TABLE records (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    hlc         INTEGER NOT NULL,
    occurred_at INTEGER,
    prev_hash   BLOB NOT NULL,
    payload     BLOB NOT NULL,
    hash        BLOB NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    code        TEXT,
    message     TEXT,
    conflict    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX records_by_status ON records (status, seq);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
"""
# Version 2: the CA a box's https certificate must chain to, pinned at pairing (NULL: plain http, or
# the device's trusted CAs for a box with a retailer's certificate).
_V2 = "ALTER TABLE identity ADD COLUMN box_ca TEXT"


class NotPaired(NeedsPerson, RuntimeError):
    """The outbox has no writer id yet: events cannot be chained before the box names the writer.

    Someone has to run ``device pair``; still a ``RuntimeError`` for callers that catch it as one.
    """


@dataclass(frozen=True)
class Identity:
    writer_id: str
    device_token: str
    box_url: str
    store_id: str
    node_id: str
    name: str
    paired_at: int
    box_ca: str | None = None  # PEM


@dataclass(frozen=True)
class Record:
    """One event in the outbox and what the box said about it."""

    seq: int
    event_id: str
    type: str
    hlc: int
    occurred_at: int | None
    prev_hash: bytes
    payload: dict[str, Any]
    hash: bytes
    status: str
    code: str | None = None
    message: str | None = None
    conflict: dict[str, Any] | None = None

    def event(self, writer_id: str) -> Event:
        return Event(
            writer_id, self.seq, self.event_id, self.type, self.payload, self.hlc, self.prev_hash, self.occurred_at
        )


@dataclass(frozen=True)
class Mark:
    """A status change for one record, as the sender learns it from an answer."""

    seq: int
    status: str
    code: str | None = None
    message: str | None = None
    conflict: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: bytes
    hlc: int


def load_or_create_key(folder: Path) -> Ed25519PrivateKey:
    """The device key, made on first use (see ``codec.load_or_create_key``)."""
    key, _ = codec_load_key(folder / KEY_FILE)
    return key


class Outbox:
    """The queue of one device. Methods are thread-safe; the sender calls them from a worker thread."""

    def __init__(self, path: Path, *, wall: Callable[[], int] = wall_ms) -> None:
        self.path = path
        self._wall = wall
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA busy_timeout = 10000")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version < 2:
                conn.execute(_V2)
                conn.execute("PRAGMA user_version = 2")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; returns only after COMMIT, which is the fsync under synchronous=FULL."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    # -- identity and key -------------------------------------------------------------------------
    def key(self) -> Ed25519PrivateKey:
        return load_or_create_key(self.path.parent)

    def identity(self) -> Identity | None:
        rows = self._read("SELECT * FROM identity")
        if not rows:
            return None
        return Identity(**{name: rows[0][name] for name in Identity.__dataclass_fields__})

    def require_identity(self) -> Identity:
        found = self.identity()
        if found is None:
            raise NotPaired(f"{self.path} is not paired with a box yet; run `stockverify device pair` first")
        return found

    def save_identity(self, identity: Identity) -> None:
        """Keep what pairing gave. Once only: a device that paired again would restart a chain."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM identity").fetchone():
                raise ValueError(f"{self.path} is already paired; a device pairs again with a new data folder")
            conn.execute(
                "INSERT INTO identity VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    identity.writer_id,
                    identity.device_token,
                    identity.box_url,
                    identity.store_id,
                    identity.node_id,
                    identity.name,
                    identity.paired_at,
                    identity.box_ca,
                ),
            )

    def get_meta(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0]["value"] if rows else None

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        with self._write() as conn:
            _set_meta(conn, values)

    # -- the chain --------------------------------------------------------------------------------
    def head(self) -> ChainHead:
        row = self._read("SELECT last_seq, last_hash, last_hlc FROM chain")[0]
        return ChainHead(row["last_seq"], bytes(row["last_hash"]), row["last_hlc"])

    def append(self, event_type: str, payload: Mapping[str, Any]) -> Record:
        """Chain a new event and store it as pending; returns once it is on disk.

        The payload is checked first (``ValueError``), so nothing the box would refuse enters the chain.
        """
        check_payload(event_type, payload)
        writer_id = self.require_identity().writer_id
        with self._write() as conn:
            head = conn.execute("SELECT last_seq, last_hash, last_hlc FROM chain").fetchone()
            clock = HybridClock(head["last_hlc"], wall=self._wall)
            now = self._wall()
            event = Event(
                writer_id=writer_id,
                seq=head["last_seq"] + 1,
                event_id=str(ULID()),
                type=event_type,
                payload=dict(payload),
                hlc=clock.now(),
                prev_hash=bytes(head["last_hash"]),
                occurred_at=now,
            )
            conn.execute(
                "INSERT INTO records (seq, event_id, type, hlc, occurred_at, prev_hash, payload, hash, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.seq,
                    event.event_id,
                    event.type,
                    event.hlc,
                    event.occurred_at,
                    event.prev_hash,
                    event.payload_bytes,
                    event.hash,
                    now,
                    now,
                ),
            )
            conn.execute(
                "UPDATE chain SET last_seq = ?, last_hash = ?, last_hlc = ?", (event.seq, event.hash, event.hlc)
            )
        return Record(
            event.seq,
            event.event_id,
            event.type,
            event.hlc,
            event.occurred_at,
            event.prev_hash,
            event.payload,
            event.hash,
            "pending",
        )

    def observe_server_hlc(self, server_hlc: int) -> None:
        """``last_hlc = max(last_hlc, server_hlc)`` (§1), so our next event sorts after what the box saw."""
        with self._write() as conn:
            _observe(conn, server_hlc)

    # -- status -----------------------------------------------------------------------------------
    def record(self, seq: int) -> Record | None:
        rows = self._read("SELECT * FROM records WHERE seq = ?", (seq,))
        return _record(rows[0]) if rows else None

    def records(self, status: str | None = None, *, after_seq: int = 0, limit: int = -1) -> list[Record]:
        """Records in seq order, of one status or all."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        rows = self._read(
            "SELECT * FROM records WHERE (? IS NULL OR status = ?) AND seq > ? ORDER BY seq LIMIT ?",
            (status, status, after_seq, limit),
        )
        return [_record(row) for row in rows]

    def pending(self, limit: int, *, after_seq: int = 0) -> list[Record]:
        return self.records("pending", after_seq=after_seq, limit=limit)

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._read("SELECT status, count(*) AS n FROM records GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    def mark(self, seqs: Iterable[int], status: str, error: str | None = None) -> None:
        self.settle([Mark(seq, status, message=error) for seq in seqs])

    def settle(
        self, marks: Iterable[Mark], *, server_hlc: int | None = None, meta: Mapping[str, str | None] | None = None
    ) -> None:
        """Apply what one answer said, its HLC and the sender's notes, in one transaction."""
        now = self._wall()
        with self._write() as conn:
            for mark in marks:
                if mark.status not in STATUSES:
                    raise ValueError(f"status must be one of {', '.join(STATUSES)}")
                conn.execute(
                    "UPDATE records SET status = ?, code = ?, message = ?, conflict = ?, updated_at = ? WHERE seq = ?",
                    (
                        mark.status,
                        mark.code,
                        mark.message,
                        json.dumps(dict(mark.conflict)) if mark.conflict is not None else None,
                        now,
                        mark.seq,
                    ),
                )
            if server_hlc is not None:
                _observe(conn, server_hlc)
            if meta:
                _set_meta(conn, meta)

    def requeue(self, from_seq: int) -> int:
        """Make settled records from ``from_seq`` on pending again (the box says it lacks them)."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE records SET status = 'pending', code = NULL, message = NULL, conflict = NULL"
                " WHERE seq >= ? AND status IN ('synced', 'conflict')",
                (from_seq,),
            )
            return cursor.rowcount

    def retry_failed(self) -> int:
        """A person looked at the failed records (fixed a clock, paired again…): send them once more."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE records SET status = 'pending', code = NULL, message = NULL WHERE status = 'failed'"
            )
            return cursor.rowcount


def _observe(conn: sqlite3.Connection, server_hlc: int) -> None:
    conn.execute("UPDATE chain SET last_hlc = max(last_hlc, ?)", (server_hlc,))


def _set_meta(conn: sqlite3.Connection, values: Mapping[str, str | None]) -> None:
    conn.executemany(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
        list(values.items()),
    )


def _record(row: sqlite3.Row) -> Record:
    return Record(
        seq=row["seq"],
        event_id=row["event_id"],
        type=row["type"],
        hlc=row["hlc"],
        occurred_at=row["occurred_at"],
        prev_hash=bytes(row["prev_hash"]),
        payload=unpack(row["payload"]),
        hash=bytes(row["hash"]),
        status=row["status"],
        code=row["code"],
        message=row["message"],
        conflict=json.loads(row["conflict"]) if row["conflict"] else None,
    )
