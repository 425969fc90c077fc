"""Replicas of one store's log: enrolled peers, the delta another replica lacks, applying a page.

What a replica holds is its version vector (each writer's stream is gap-free), so "send what I lack"
is "every event above your vector", sent in this box's arrival order. Arrival order is causal — a
device's events arrive after the event that enrolled it, a scan after its session's creation — so a
page can always be applied front to back through the one record path, ``EventLog.append_run``,
which checks every event's seq and hash link again. Applying a page twice changes nothing: events at
or below the receiver's vector are skipped, and the peer's row (its vector, counters, last success)
is written in the same transaction as the events, so the cursor can never run ahead of the data.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

from appliance.errors import BadRequest, Conflict, Forbidden
from appliance.replica import counters
from appliance.store.db import Database, collector_paused
from appliance.store.eventlog import EventLog, enroll_writer, version_vector
from replication.peers.store import COUNTERS, Mode
from replication.wire import vectors
from replication.wire.codec import Event, verify_chain_head
from replication.wire.hlc import ClockDriftError, wall_ms
from replication.wire.protocol import API_VERSION, ProtocolError, run_events

log = logging.getLogger(__name__)

_HLC = attrgetter("hlc")


# -- peers ------------------------------------------------------------------------------------------
def enrol_peer(
    conn: sqlite3.Connection, node_id: str, store_id: str, role: str, public_key: bytes, url: str = ""
) -> None:
    """Remember a node whose enrolment proof checked out. Its key can never change afterwards: a
    node that comes back with another key is someone else using its name."""
    row = conn.execute("SELECT public_key, store_id FROM peers WHERE node_id = ?", (node_id,)).fetchone()
    if row is not None and (bytes(row["public_key"]) != public_key or row["store_id"] != store_id):
        raise Forbidden(f"node {node_id} is enrolled with another key or store", code="PEER_KEY_MISMATCH", details=None)
    conn.execute(
        "INSERT INTO peers (node_id, store_id, role, public_key, url, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET url = CASE WHEN excluded.url != '' THEN excluded.url ELSE url END,"
        " role = excluded.role",
        (node_id, store_id, role, public_key, url, wall_ms()),
    )


def enrolled(
    conn: sqlite3.Connection, node_id: str, store_id: str, role: str, public_key: bytes, url: str = ""
) -> bool:
    """Whether ``enrol_peer`` would change nothing: a box that restarts says hello to every peer again,
    and a hello that needs no write does not wait behind the pages the writer is busy with."""
    row = peer(conn, node_id)
    return (
        row is not None
        and bytes(row["public_key"]) == public_key
        and (row["store_id"], row["role"]) == (store_id, role)
        and url in ("", row["url"])
    )


def peer(conn: sqlite3.Connection, node_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM peers WHERE node_id = ?", (node_id,)).fetchone()
    return row


def note_exchange(
    conn: sqlite3.Connection,
    node_id: str,
    *,
    their_vector: dict[str, int] | None = None,
    events_in: int = 0,
    events_out: int = 0,
    bytes_in: int = 0,
    bytes_out: int = 0,
) -> None:
    """Record a successful exchange with a peer (called inside the transaction that applied it)."""
    conn.execute(
        "UPDATE peers SET last_ok_at = ?, last_error = NULL,"
        " their_vector = coalesce(?, their_vector), events_in = events_in + ?, events_out = events_out + ?,"
        " bytes_in = bytes_in + ?, bytes_out = bytes_out + ? WHERE node_id = ?",
        (
            wall_ms(),
            None if their_vector is None else vectors.pack(their_vector),
            events_in,
            events_out,
            bytes_in,
            bytes_out,
            node_id,
        ),
    )


def note_failure(conn: sqlite3.Connection, node_id: str, error: str) -> None:
    conn.execute(
        "UPDATE peers SET last_error = ?, last_error_at = ? WHERE node_id = ?", (error[:500], wall_ms(), node_id)
    )


def status(conn: sqlite3.Connection, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Each peer as a field tech or a manager wants it: is it keeping up, and if not, since when."""
    now = wall_ms() if now_ms is None else now_ms
    ours = version_vector(conn)
    out = []
    for row in conn.execute("SELECT * FROM peers ORDER BY role, node_id"):
        theirs = vectors.unpack(row["their_vector"])
        last_ok = row["last_ok_at"]
        out.append(
            {
                "node_id": row["node_id"],
                "store_id": row["store_id"],
                "role": row["role"],
                "url": row["url"],
                "last_ok_at": last_ok,
                "lag_s": None if last_ok is None else round((now - last_ok) / 1000, 1),
                "pending": vectors.lacking(theirs, ours),  # events we hold that it has not confirmed
                "behind": vectors.lacking(ours, theirs),  # events it holds that we have not fetched yet
                "last_error": row["last_error"],
                "last_error_at": row["last_error_at"],
                "events_in": row["events_in"],
                "events_out": row["events_out"],
                "bytes_in": row["bytes_in"],
                "bytes_out": row["bytes_out"],
            }
        )
    return out


# -- the delta --------------------------------------------------------------------------------------
def delta(conn: sqlite3.Connection, store_id: str, theirs: dict[str, int], limit: int) -> dict[str, Any]:
    """A page of the events this replica holds above ``theirs``, in arrival order.

    Each writer's lacking events are read off the (writer, seq) index from the first one lacking,
    and the streams merged by log position: rows the other side holds are never read. (Scanning the
    log from the earliest lacking position and skipping held rows cost a box 20-36 ms of CPU for a
    page of two events, and a third more for every page while three boxes caught up at once.)
    """
    ours = version_vector(conn)
    after = {writer: theirs.get(writer, 0) for writer, head in ours.items() if head > theirs.get(writer, 0)}
    streams: list[sqlite3.Cursor] = []
    for writer, have in after.items():
        rows = conn.cursor()
        rows.row_factory = None  # plain tuples: a page reads thousands of rows and packs them as arrays
        # Position first, so that tuples merge by it. prev_hash is read for a stream's first row only:
        # the receiver has just hashed the predecessor of every other, and the 32 bytes were a quarter
        # of reading the rows (and two thirds of a compressed page).
        streams.append(
            rows.execute(
                "SELECT pos, writer_id, seq, event_id, type, payload, hlc, occurred_at,"
                " CASE WHEN seq = ? THEN prev_hash END"
                " FROM events WHERE writer_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (have + 1, writer, have, limit),
            )
        )
    merged: Iterable[tuple[Any, ...]] = streams[0] if len(streams) == 1 else heapq.merge(*streams)
    events = []
    shipped: dict[str, int] = {}
    current = ""
    for row in itertools.islice(merged, limit):
        if row[1] != current:
            current = row[1]
            if row[8] is None:  # the writer's stream resumes after another's rows: the receiver needs the link
                link = conn.execute("SELECT prev_hash FROM events WHERE writer_id = ? AND seq = ?", (current, row[2]))
                row = (*row[:8], link.fetchone()[0])
        events.append(row[1:])
        shipped[current] = row[2]
    for rows in streams:
        rows.close()  # no statement left open to hold back the WAL's checkpoint
    more = sum(ours[writer] - have for writer, have in after.items()) > len(events)
    new_writers = [w for w in shipped if theirs.get(w, 0) == 0]
    writers = [
        list(r)
        for r in _rows_in(
            conn, "SELECT writer_id, kind, store_id, name, public_key FROM writers WHERE writer_id IN ({})", new_writers
        )
    ]
    heads = []
    for writer, last in shipped.items():
        head = conn.execute(
            "SELECT writer_id, seq, hash, signature FROM chain_heads WHERE writer_id = ? AND seq > ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (writer, theirs.get(writer, 0), last),
        ).fetchone()
        if head is not None:
            heads.append(list(head))
    return {
        "v": API_VERSION,
        "store": store_id,
        "vector": ours,
        "writers": writers,
        "events": events,
        "heads": heads,
        "more": more,
    }


def _rows_in(conn: sqlite3.Connection, sql: str, keys: list[str]) -> Iterable[sqlite3.Row]:
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        yield from conn.execute(sql.format(",".join("?" for _ in chunk)), chunk)


# -- applying a page --------------------------------------------------------------------------------
@dataclass
class Incoming:
    """A page checked, decoded and hashed: the work on a page that needs no database. HQ does it in a
    worker thread, beside the writing of the page before; a box pulling does it in the writer's job."""

    writers: list[tuple[str, str, str, str, bytes]]
    runs: list[list[Event]]
    heads: list[tuple[str, int, bytes, bytes]]
    vector: Any


def incoming(store_id: str, page: dict[str, Any], held: dict[str, int] | None = None) -> Incoming:
    """Check a page for ``store_id`` and decode its events, leaving out those ``held`` already covers
    (a run held whole is not decoded at all)."""
    if page.get("store") != store_id:
        raise Forbidden(
            f"page of store {page.get('store')!r} offered to store {store_id!r}", code="WRONG_STORE", details=None
        )
    held = held or {}
    try:
        writers = []
        for writer_id, kind, writer_store, name, public_key in page.get("writers") or []:
            if writer_store != store_id:
                raise Forbidden(f"writer {writer_id} belongs to store {writer_store}", code="WRONG_STORE")
            if kind not in ("box", "device", "scanner"):
                raise BadRequest(f"writer {writer_id} has unknown kind {kind!r}", code="VALIDATION")
            writers.append((str(writer_id), str(kind), str(writer_store), str(name), _bin(public_key)))
        runs = []
        for rows in _runs(page.get("events") or []):
            have = held.get(rows[0][0], 0)
            if rows[-1][1] > have:
                events = run_events(rows)
                runs.append(events if rows[0][1] > have else [event for event in events if event.seq > have])
        heads = [(str(w), int(seq), _bin(digest), _bin(sig)) for w, seq, digest, sig in page.get("heads") or []]
    except (TypeError, ValueError, IndexError, ProtocolError) as exc:
        raise BadRequest(f"malformed page: {exc}", code="BAD_PAGE") from None
    return Incoming(writers, runs, heads, page.get("vector"))


def apply_page(
    conn: sqlite3.Connection,
    event_log: EventLog,
    store_id: str,
    page: dict[str, Any] | Incoming,
    source: str | None,
    nbytes: int = 0,
) -> int:
    """Apply a page from ``source`` (a peer's node id) in the caller's transaction; returns how many
    events were new. A page that breaks a chain or carries a forged head is refused whole."""
    if not isinstance(page, Incoming):
        page = incoming(store_id, page, version_vector(conn))
    for writer_id, kind, writer_store, name, public_key in page.writers:
        enroll_writer(conn, writer_id, kind, writer_store, name, public_key)
    applied, newest = 0, 0
    for run in page.runs:
        head = conn.execute("SELECT head_seq FROM writers WHERE writer_id = ?", (run[0].writer_id,)).fetchone()
        have = head["head_seq"] if head is not None else 0
        fresh = run if run[0].seq > have else [e for e in run if e.seq > have]
        if fresh:
            try:
                event_log.append_run(conn, fresh)
            except sqlite3.IntegrityError as exc:
                if "event_id" not in str(exc):
                    raise
                # Another writer's event here holds the id: no page is applied in part.
                raise Conflict(
                    f"an event of writer {fresh[0].writer_id} reuses an event_id this store already holds",
                    code="EVENT_ID_REUSED",
                ) from None
            applied += len(fresh)
            newest = max(newest, max(map(_HLC, fresh)))
    if newest:
        try:
            event_log.clock.observe(newest)
        except ClockDriftError:
            log.warning(
                "a replicated event is far ahead of this box's clock; check the clocks", extra={"source": source}
            )
    for writer_id, seq, digest, signature in page.heads:
        _store_head(conn, writer_id, seq, digest, signature)
    if source is not None:
        note_exchange(conn, source, their_vector=page.vector, events_in=applied, bytes_in=nbytes)
    return applied


def _bin(value: Any) -> bytes:
    """A page's key, hash or signature: ``bytes(7)`` would be seven zero bytes, not a refusal."""
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _runs(rows: list[list[Any]]) -> Iterable[list[list[Any]]]:
    """Consecutive wire rows of one writer, in page order."""
    run: list[list[Any]] = []
    for row in rows:
        if not isinstance(row, list | tuple) or not row:
            raise ValueError(f"an event row is a list of fields, not {row!r:.40}")
        if run and row[0] != run[-1][0]:
            yield run
            run = []
        run.append(row)
    if run:
        yield run


def _store_head(conn: sqlite3.Connection, writer_id: str, seq: int, digest: bytes, signature: bytes) -> None:
    """Keep a writer's signed head only if it signs the event we hold at that seq, with its key."""
    row = conn.execute(
        "SELECT w.public_key, e.hash FROM writers w JOIN events e ON e.writer_id = w.writer_id AND e.seq = ?"
        " WHERE w.writer_id = ?",
        (seq, writer_id),
    ).fetchone()
    if row is None or bytes(row["hash"]) != digest:
        raise Conflict(f"signed head {writer_id}:{seq} does not match the events sent", code="CHAIN_BROKEN")
    if not verify_chain_head(bytes(row["public_key"]), writer_id, seq, digest, signature):
        raise Conflict(f"signed head {writer_id}:{seq} does not verify with the writer's key", code="BAD_SIGNATURE")
    conn.execute(
        "INSERT OR IGNORE INTO chain_heads (writer_id, seq, hash, signature, signed_at) VALUES (?, ?, ?, ?, ?)",
        (writer_id, seq, digest, signature, wall_ms()),
    )


# -- the store the replicator follows ---------------------------------------------------------------
class BoxReplica:
    """This box's database as ``replication.peers.store.ReplicaStore``: every write goes through the
    box's one writer thread, so a page, a peer's row and a handheld's batch never interleave."""

    def __init__(self, db: Database, event_log: EventLog, store_id: str) -> None:
        self.db = db
        self.log = event_log
        self.store_id = store_id

    def vector(self) -> dict[str, int]:
        return version_vector(self.db.read())

    def is_enrolled(self, node_id: str, store_id: str, role: str, public_key: bytes, url: str) -> bool:
        return enrolled(self.db.read(), node_id, store_id, role, public_key, url)

    async def enrol(self, node_id: str, store_id: str, role: str, public_key: bytes, url: str) -> None:
        await self.db.awrite(lambda conn: enrol_peer(conn, node_id, store_id, role, public_key, url))

    async def note_failure(self, node_id: str, error: str) -> None:
        await self.db.awrite(lambda conn: note_failure(conn, node_id, error))

    async def apply_page(self, page: dict[str, Any], source: str, nbytes: int) -> int:
        # Decoded and hashed in the writer's job, against what is on disk then. Decoding in a worker
        # thread beforehand, beside the writing of the page before, cost each box 7 % more CPU while
        # three caught up at once (threads taking the GIL from one another), and was no faster with a
        # core free.
        def apply(conn: sqlite3.Connection) -> int:
            with collector_paused():
                return apply_page(conn, self.log, self.store_id, page, source, nbytes)

        return await self.db.awrite(apply, bulk=True)

    def next_page(self, theirs: dict[str, int], mode: Mode, limit: int) -> tuple[dict[str, Any], int] | None:
        conn = self.db.read()
        if mode == COUNTERS:
            page = counters.export(conn, self.store_id, theirs)
            if page["vector"] == theirs:
                return None
            return page, sum(len(page[k]) for k in ("scan_counts", "damage_counts", "item_attrs", "sessions"))
        page = delta(conn, self.store_id, theirs, limit)
        return (page, len(page["events"])) if page["events"] else None

    def note_sent(self, node_id: str, their_vector: dict[str, int], events_out: int, bytes_out: int) -> None:
        # Status bookkeeping only: committed with the next write, never waited for.
        self.db.submit(
            partial(
                note_exchange, node_id=node_id, their_vector=their_vector, events_out=events_out, bytes_out=bytes_out
            )
        )
