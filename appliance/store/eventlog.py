"""The event log and the one record path.

Every change of state is an event appended here; projections (the tables people query) are folds of
the log, updated by the projector registered for the event's type *in the same transaction* as the
append. ``append`` is the single record path: the box's own commands (``record``), handheld batches
and replication all go through it, so the same validation and the same projection code run whoever
wrote the event. ``rebuild`` drops the projections and refolds them from the log.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.errors import Conflict, NotFound
from appliance.store.db import blob, insert_values
from replication.wire.codec import ZERO_HASH, Event, sign_chain_head, unpack_payload, verify_chain_head
from replication.wire.hlc import HybridClock, wall_ms

log = logging.getLogger(__name__)

Projector = Callable[[sqlite3.Connection, Event], None]
RunProjector = Callable[[sqlite3.Connection, Sequence[Event]], None]
_PROJECTORS: dict[str, list[Projector]] = {}
_RUN_PROJECTORS: dict[str, list[RunProjector]] = {}
_PROJECTION_TABLES: list[str] = []


def projector(event_type: str) -> Callable[[Projector], Projector]:
    """Register a fold of one event type into the projections.

    A type may have several folds (each module keeps its own tables); they run in the order the
    modules were imported, which ``appliance.box`` fixes.
    """

    def register(fn: Projector) -> Projector:
        if event_type in _RUN_PROJECTORS:
            raise ValueError(f"{event_type} is folded in runs; add a run fold")
        _PROJECTORS.setdefault(event_type, []).append(fn)
        return fn

    return register


def run_projector(event_type: str) -> Callable[[RunProjector], RunProjector]:
    """Register a fold that takes consecutive events of one type at once.

    For the types that arrive by the thousand (scans) one statement per counter entry, rather than one
    per event, is most of the cost of a batch. A run fold must leave the projections exactly as
    folding its events one by one would; a type's folds are either all run folds or none, so no fold
    ever sees another's tables half a run ahead.
    """

    def register(fn: RunProjector) -> RunProjector:
        if event_type in _PROJECTORS:
            raise ValueError(f"{event_type} is folded event by event; add a plain fold")
        _RUN_PROJECTORS.setdefault(event_type, []).append(fn)
        return fn

    return register


def projection_tables(*tables: str) -> None:
    """Declare tables that are pure projections (dropped and refolded by ``rebuild``).

    Declare parents before children; rebuild empties them in reverse order for foreign keys.
    """
    for table in tables:
        if table not in _PROJECTION_TABLES:
            _PROJECTION_TABLES.append(table)


def apply_run(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Fold events in order; each stretch of one type goes to that type's run folds in one call."""
    start, count = 0, len(events)
    while start < count:
        event_type = events[start].type
        end = start + 1
        while end < count and events[end].type == event_type:
            end += 1
        if event_type in _RUN_PROJECTORS:
            stretch = events[start:end]
            for run_fold in _RUN_PROJECTORS[event_type]:
                run_fold(conn, stretch)
        else:
            folds = _PROJECTORS.get(event_type, ())
            for index in range(start, end):
                for fold in folds:
                    fold(conn, events[index])
        start = end


class ChainError(Conflict):
    """An event does not continue its writer's chain (gap, replay or altered history)."""


def new_id() -> str:
    return str(ULID())


def row_to_event(row: sqlite3.Row) -> Event:
    return Event(
        writer_id=row["writer_id"],
        seq=row["seq"],
        event_id=row["event_id"],
        type=row["type"],
        payload=unpack_payload(row["payload"]),
        hlc=row["hlc"],
        prev_hash=row["prev_hash"],
        occurred_at=row["occurred_at"],
    )


@dataclass(frozen=True)
class ChainReport:
    writer_id: str
    events: int
    head_seq: int
    signed_seq: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class EventLog:
    """Appends events and keeps this box's own chain signed."""

    def __init__(self, box_writer_id: str, signing_key: Ed25519PrivateKey, clock: HybridClock) -> None:
        self.box_writer_id = box_writer_id
        self._key = signing_key
        self.clock = clock
        self._unsigned = False  # touched only on the writer thread
        # Told of every appended run and the log position of its first event (the live bus).
        self.listeners: list[Callable[[int, Sequence[Event]], None]] = []

    # -- the record path ---------------------------------------------------------------------
    def append_run(
        self, conn: sqlite3.Connection, events: Sequence[Event], head: tuple[int, bytes] | None = None
    ) -> None:
        """Store consecutive events of one writer after its head and fold each into the projections.

        The same checks as one event at a time — each event must carry the next seq and its
        predecessor's hash — but the writer's head is read and moved once for the whole run, and the
        rows go in with one statement: a batch of 500 scans costs one head lookup, not 500.
        """
        if not events:
            return
        writer_id = events[0].writer_id
        if head is None:  # ``head``: the writer's (seq, hash), when the caller has just read it
            row = conn.execute("SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (writer_id,)).fetchone()
            if row is None:
                raise NotFound(f"writer {writer_id} is not enrolled", code="UNKNOWN_WRITER")
            head = (row["head_seq"], row["head_hash"])
        seq, prev = head
        # Plain max() so that SQLite reads it off the end of the primary key (no scan).
        pos = int(conn.execute("SELECT max(pos) FROM events").fetchone()[0] or 0)
        first_pos = pos + 1
        received = wall_ms()
        values: list[Any] = []  # the statement's parameters, built in the pass that checks the chain
        for event in events:
            if event.writer_id != writer_id:
                raise ValueError("a run holds events of one writer")
            if event.seq != seq + 1:
                raise ChainError(
                    f"writer {writer_id}: expected seq {seq + 1}, got {event.seq}",
                    code="SEQUENCE_GAP" if event.seq > seq else "DUPLICATE_OR_REPLAY",
                    details={"expected_seq": seq + 1},
                )
            if event.prev_hash != prev:
                raise ChainError(
                    f"writer {writer_id}: event {event.seq} does not follow the stored chain",
                    code="CHAIN_BROKEN",
                    details={"expected_seq": seq + 1},
                )
            seq, prev, pos = event.seq, event.hash, pos + 1
            values += (
                pos,
                writer_id,
                seq,
                event.event_id,
                event.type,
                blob(event.payload_bytes),
                event.hlc,
                event.occurred_at,
                blob(event.prev_hash),
                blob(prev),
                received,
            )
        insert_values(
            conn,
            "INSERT INTO events (pos, writer_id, seq, event_id, type, payload, hlc, occurred_at, prev_hash, hash,"
            " received_at)",
            11,
            values,
        )
        conn.execute("UPDATE writers SET head_seq = ?, head_hash = ? WHERE writer_id = ?", (seq, prev, writer_id))
        apply_run(conn, events)
        for listener in self.listeners:
            listener(first_pos, events)

    def record(self, conn: sqlite3.Connection, event_type: str, payload: dict[str, Any]) -> Event:
        """Append an event written by this box itself (a command it carried out)."""
        head = conn.execute(
            "SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (self.box_writer_id,)
        ).fetchone()
        event = Event(
            writer_id=self.box_writer_id,
            seq=head["head_seq"] + 1,
            event_id=new_id(),
            type=event_type,
            payload=payload,
            hlc=self.clock.now(),
            prev_hash=head["head_hash"],
            occurred_at=wall_ms(),
        )
        self.append_run(conn, [event], (head["head_seq"], head["head_hash"]))
        self._unsigned = True
        return event

    def sign_head(self, conn: sqlite3.Connection) -> None:
        """Sign this box's chain head if a job moved it (run once per write job, not per event)."""
        if not self._unsigned:
            return
        head = conn.execute(
            "SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (self.box_writer_id,)
        ).fetchone()
        signature = sign_chain_head(self._key, self.box_writer_id, head["head_seq"], head["head_hash"])
        conn.execute(
            "INSERT OR REPLACE INTO chain_heads (writer_id, seq, hash, signature, signed_at) VALUES (?, ?, ?, ?, ?)",
            (self.box_writer_id, head["head_seq"], head["head_hash"], signature, wall_ms()),
        )
        self._unsigned = False


def enroll_writer(
    conn: sqlite3.Connection, writer_id: str, kind: str, store_id: str, name: str, public_key: bytes
) -> None:
    """Make a writer known so that its events can be appended (its chain starts at the zero hash)."""
    conn.execute(
        "INSERT OR IGNORE INTO writers (writer_id, kind, store_id, name, public_key, head_seq, head_hash,"
        " created_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
        (writer_id, kind, store_id, name, public_key, ZERO_HASH, wall_ms()),
    )


@projector("writer.enrolled")
def _writer_enrolled(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    enroll_writer(conn, p["writer_id"], p["kind"], p["store_id"], p["name"], p["public_key"])


# -- reading the log ----------------------------------------------------------------------------
def version_vector(conn: sqlite3.Connection) -> dict[str, int]:
    """``{writer_id: highest contiguous seq}`` of what this replica holds."""
    return {
        row["writer_id"]: row["head_seq"]
        for row in conn.execute("SELECT writer_id, head_seq FROM writers WHERE head_seq > 0")
    }


def events_of(conn: sqlite3.Connection, writer_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
    rows = conn.execute(
        "SELECT * FROM events WHERE writer_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (writer_id, after_seq, limit),
    )
    return [row_to_event(row) for row in rows]


def all_events(conn: sqlite3.Connection) -> Iterator[Event]:
    """Every event in causal (HLC) order; ties broken by writer and seq, so the order is total."""
    for row in conn.execute("SELECT * FROM events ORDER BY hlc, writer_id, seq"):
        yield row_to_event(row)


def verify_writer_chain(conn: sqlite3.Connection, writer_id: str) -> ChainReport:
    """Walk a writer's whole chain: seqs gap-free from 1, every hash recomputed and linked, and the
    latest signed head verified against the writer's public key."""
    writer = conn.execute("SELECT * FROM writers WHERE writer_id = ?", (writer_id,)).fetchone()
    if writer is None:
        raise NotFound(f"writer {writer_id} is not enrolled", code="UNKNOWN_WRITER")
    problems: list[str] = []
    expected_seq, expected_prev, count = 1, ZERO_HASH, 0
    for row in conn.execute("SELECT * FROM events WHERE writer_id = ? ORDER BY seq", (writer_id,)):
        event = row_to_event(row)
        count += 1
        if event.seq != expected_seq:
            problems.append(f"seq {event.seq} found where {expected_seq} was expected")
        if event.prev_hash != expected_prev:
            problems.append(f"seq {event.seq}: prev_hash does not match the previous event")
        if event.hash != row["hash"]:
            problems.append(f"seq {event.seq}: content does not match its stored hash")
        expected_seq, expected_prev = event.seq + 1, event.hash
    if count and (writer["head_seq"] != expected_seq - 1 or writer["head_hash"] != expected_prev):
        problems.append("the writer's recorded head is not the last event of its chain")
    signed = conn.execute(
        "SELECT * FROM chain_heads WHERE writer_id = ? ORDER BY seq DESC LIMIT 1", (writer_id,)
    ).fetchone()
    signed_seq = 0
    if signed is not None:
        signed_seq = signed["seq"]
        stored = conn.execute(
            "SELECT hash FROM events WHERE writer_id = ? AND seq = ?", (writer_id, signed_seq)
        ).fetchone()
        if stored is None or stored["hash"] != signed["hash"]:
            problems.append(f"signed head {signed_seq} does not match the stored event")
        elif not verify_chain_head(writer["public_key"], writer_id, signed_seq, signed["hash"], signed["signature"]):
            problems.append(f"signature on head {signed_seq} does not verify with the writer's key")
    elif count:
        problems.append("no signed chain head")
    return ChainReport(writer_id, count, writer["head_seq"], signed_seq, problems)


def rebuild(conn: sqlite3.Connection) -> int:
    """Empty every projection and refold it from the log; returns the number of events folded.

    Rows outside the projections (a person's login tokens) point into them; the refold puts back the
    very rows they point to, so the foreign keys are checked once, at COMMIT, not as the tables empty."""
    conn.execute("PRAGMA defer_foreign_keys = ON")  # lasts until this transaction ends
    for table in reversed(_PROJECTION_TABLES):
        conn.execute(f"DELETE FROM {table}")
    count = 0
    chunk: list[Event] = []
    for event in all_events(conn):
        chunk.append(event)
        if len(chunk) == 1000:
            apply_run(conn, chunk)
            count, chunk = count + len(chunk), []
    apply_run(conn, chunk)
    count += len(chunk)
    log.info("projections rebuilt", extra={"events": count, "tables": len(_PROJECTION_TABLES)})
    return count
