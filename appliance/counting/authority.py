"""Which box grants the store's locks: a designation replicated as an event, folded the same everywhere.

Leases are not a CRDT (DESIGN §6): two boxes granting would hand one rack to two people, so exactly
one box per store grants. Who that is must not depend on each box's settings, which nobody can keep
in step across a store; it is state every replica agrees on. A ``lock_authority.designated`` event
(``{node_id, epoch, by}``) names the box for an epoch; the fold keeps every designation, and the
highest epoch wins. Two designations at that epoch naming different boxes are a conflict nobody may
settle by guessing: every box that sees it refuses claims (``LOCK_AUTHORITY_CONFLICT``) until an admin
moves the authority, which designates one box at the next epoch.

The epoch is the high half of every fencing token (``epoch << 32 | counter``), so every token the new
authority hands out is larger than any the old one did, and a scan carrying a token of an earlier
epoch is recognised as made under a lease the store no longer honours.

The claim path asks ``LockAuthority.standing()``, an answer kept in memory: it is worked out again
only when a designation is folded (a job hook, on the writer thread, inside the transaction that
folded it) or a peer's hello says whether it grants.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import NotFound, Unavailable, ValidationFailed
from appliance.store.eventlog import EventLog, projection_tables, projector
from replication.wire.codec import Event

log = logging.getLogger(__name__)

projection_tables("lock_designations")

DESIGNATED = "lock_authority.designated"

GRANTING = "granting"
FORWARDING = "forwarding"
CONFLICT = "conflict"
UNKNOWN = "unknown"  # no box of the store is designated yet (as far as this box has heard)

FIX = (
    "an admin moves the lock authority to one box (POST /api/locks/authority, or"
    " 'stockverify locks move-authority --to NODE_ID' on any box of the store)"
)


# -- the fold -------------------------------------------------------------------------------------
@projector(DESIGNATED)
def _designated(conn: sqlite3.Connection, event: Event) -> None:
    """Keep every designation; the newest epoch is read off the table, so arrival order does not matter.

    Only a box writes one: a handheld's batch carrying this type must not pick the store's authority."""
    writer = conn.execute("SELECT kind FROM writers WHERE writer_id = ?", (event.writer_id,)).fetchone()
    if writer is None or writer[0] != "box":
        log.warning("a lock authority designation not written by a box was ignored", extra={"writer": event.writer_id})
        return
    p = event.payload
    epoch = int(p["epoch"])
    conn.execute(
        "INSERT INTO lock_designations (epoch, node_id, by_user, hlc, writer_id) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET hlc = min(hlc, excluded.hlc)",
        (epoch, str(p["node_id"]), str(p.get("by") or ""), event.hlc, event.writer_id),
    )
    # The token sequence moves to the new epoch at once, on every box: whichever box grants next
    # starts above every token of the epochs before. Not a projection: a rebuild leaves it alone,
    # and refolding an epoch already reached changes nothing.
    conn.execute("UPDATE lock_authority SET epoch = ?, counter = 0 WHERE singleton = 1 AND epoch < ?", (epoch, epoch))


@dataclass(frozen=True)
class Designations:
    """The fold's answer: the newest epoch and the boxes designated at it (one, unless in conflict)."""

    epoch: int = 0
    nodes: tuple[str, ...] = ()

    @property
    def node_id(self) -> str | None:
        return self.nodes[0] if len(self.nodes) == 1 else None


def designations(conn: sqlite3.Connection) -> Designations:
    rows = conn.execute(
        "SELECT epoch, node_id FROM lock_designations"
        " WHERE epoch = (SELECT max(epoch) FROM lock_designations) ORDER BY node_id"
    ).fetchall()
    if not rows:
        return Designations()
    return Designations(int(rows[0][0]), tuple(str(row[1]) for row in rows))


def history(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT epoch, node_id, by_user, hlc FROM lock_designations ORDER BY epoch, node_id")
    return [{"epoch": r[0], "node_id": r[1], "by": r[2] or None, "hlc": r[3]} for r in rows]


# -- commands -------------------------------------------------------------------------------------
def designate_self(conn: sqlite3.Connection, event_log: EventLog, node_id: str) -> bool:
    """The ``lock_authority`` setting at start: designate this box only if the store has no authority
    yet as far as this box knows (a box that has already received the store's designation forwards)."""
    if designations(conn).epoch:
        return False
    event_log.record(conn, DESIGNATED, {"node_id": node_id, "epoch": 1, "by": None})
    return True


def _store_boxes(conn: sqlite3.Connection) -> set[str]:
    """Boxes of this store that may grant: its box writers, less HQ (a writer in every store it serves)."""
    store_id = conn.execute("SELECT store_id FROM node").fetchone()[0]
    hq = {r[0] for r in conn.execute("SELECT node_id FROM peers WHERE role = 'hq'")}
    rows = conn.execute("SELECT writer_id FROM writers WHERE kind = 'box' AND store_id = ?", (store_id,))
    return {r[0] for r in rows} - hq


def move(conn: sqlite3.Connection, event_log: EventLog, by: str, node_id: str) -> dict[str, Any]:
    """Designate ``node_id`` at the next epoch: the one way out of a conflict, and the way to retire a box.

    ``by``: the admin's user id, or who ran it at the box's shell, for the audit trail."""
    node_id = node_id.strip()
    if not node_id:
        raise ValidationFailed("name the box to move the lock authority to", code="NODE_REQUIRED")
    if node_id not in _store_boxes(conn):
        raise NotFound(
            f"{node_id} is not a box of this store that this box knows of",
            code="NODE_NOT_FOUND",
            details={"boxes": sorted(_store_boxes(conn))},
        )
    before = designations(conn)
    epoch = before.epoch + 1
    event_log.record(conn, DESIGNATED, {"node_id": node_id, "epoch": epoch, "by": by})
    return {"node_id": node_id, "epoch": epoch, "previous": {"epoch": before.epoch, "nodes": list(before.nodes)}}


# -- the answer the claim path reads --------------------------------------------------------------
@dataclass(frozen=True)
class Standing:
    """Who grants, as this box sees it now, and what this box does with a claim."""

    role: str  # granting | forwarding | conflict | unknown
    epoch: int
    node_id: str | None  # the authority, when there is exactly one
    rivals: tuple[str, ...] = ()  # in conflict: every box that claims the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "authority": self.node_id, "epoch": self.epoch, "rivals": list(self.rivals)}

    def reason(self) -> str | None:
        """What a person reads in health when claims are refused for this."""
        if self.role != CONFLICT:
            return None
        return (
            f"More than one box is the store's lock authority at epoch {self.epoch} ({', '.join(self.rivals)}):"
            f" rack claims and session locks are refused until {FIX}."
        )


class LockAuthority:
    """One per box: the fold's answer and what peers' hellos said, combined into a ``Standing``.

    A plain class, not a dataclass: routes receive the ``Box`` through Litestar, which would otherwise
    try to validate its fields (a lock among them)."""

    def __init__(self, node_id: str, url: str = "") -> None:
        self.node_id = node_id
        self.url = url  # lock_authority_url: an explicit pointer, forwarded to whatever the fold says
        self._folded = Designations()
        self._heard: dict[str, int] = {}  # peers whose hello said they grant, and at which epoch
        self._stale = True
        self._standing: Standing | None = None
        self._lock = threading.Lock()

    # -- keeping the answer fresh --------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> None:
        folded = designations(conn)
        with self._lock:
            changed = folded != self._folded
            self._folded, self._stale, self._standing = folded, False, None
        if changed:
            log.info("lock authority", extra=self.standing().to_dict())

    def appended(self, _first_pos: int, events: Sequence[Event]) -> None:
        """Event log listener (writer thread): a designation was just folded in this transaction."""
        if not self._stale and any(event.type == DESIGNATED for event in events):
            self._stale = True

    def job_done(self, conn: sqlite3.Connection) -> None:
        """Job hook (writer thread, in the transaction): read the fold again once a designation moved it,
        before the next job (a claim, perhaps) runs."""
        if self._stale:
            self.load(conn)

    def behind(self, conn: sqlite3.Connection) -> bool:
        """Whether the committed designations differ from the answer held here: another process
        (``stockverify locks move-authority``) wrote to this box's database, past the event log's hooks."""
        return designations(conn) != self._folded

    def rolled_back(self) -> None:
        self._stale = True  # what was read inside the transaction may be gone; read it again

    def heard(self, node_id: str, grants: bool, epoch: int) -> None:
        """A peer's hello answer: it says it grants (at ``epoch``) or that it does not."""
        with self._lock:
            if grants:
                self._heard[node_id] = epoch
            else:
                self._heard.pop(node_id, None)
            self._standing = None

    # -- reading it ----------------------------------------------------------------------------
    def standing(self) -> Standing:
        with self._lock:
            if self._standing is None:
                self._standing = self._work_out()
            return self._standing

    def _work_out(self) -> Standing:
        folded = self._folded
        if len(folded.nodes) > 1:
            return Standing(CONFLICT, folded.epoch, None, folded.nodes)
        authority = folded.node_id
        # A peer granting at our very epoch that the fold does not name: its designation has not
        # reached us yet, or it grants by an older rule. Either way two boxes grant at one epoch.
        rivals = sorted(n for n, epoch in self._heard.items() if epoch == folded.epoch and n != authority)
        if rivals and authority is not None:
            return Standing(CONFLICT, folded.epoch, None, tuple(sorted({authority, *rivals})))
        if authority == self.node_id:
            return Standing(GRANTING, folded.epoch, authority)
        if authority is not None or self.url:
            return Standing(FORWARDING, folded.epoch, authority)
        return Standing(UNKNOWN, folded.epoch, None)

    def refuse_unless_granting(self) -> None:
        """Called in the claim's write job: the last word on whether this box may hand out a token."""
        standing = self.standing()
        if standing.role == GRANTING:
            return
        if standing.role == CONFLICT:
            raise conflict_error(standing)
        raise Unavailable(
            "this box does not grant the store's locks"
            + (f"; box {standing.node_id} does (epoch {standing.epoch})" if standing.node_id else ""),
            code="NOT_LOCK_AUTHORITY",
            details={"authority": standing.node_id, "epoch": standing.epoch},
        )


def conflict_error(standing: Standing) -> Unavailable:
    return Unavailable(
        f"claims are refused: more than one box ({', '.join(standing.rivals)}) is the store's lock authority"
        f" at epoch {standing.epoch}, and either could hand the same rack to two people; {FIX}",
        code="LOCK_AUTHORITY_CONFLICT",
        details={"epoch": standing.epoch, "nodes": list(standing.rivals)},
    )
