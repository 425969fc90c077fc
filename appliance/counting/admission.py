"""What a device's events may do to the sessions they name: refused, held, or taken.

The box a batch reaches checks each new event against the session it names, in the write job,
before anything of the batch is stored (docs/sync-protocol.md §4):

* **Refused** — wrong whatever the device knew: the session, rack, person, product or undone scan
  does not exist here, or the rack is not the session's. Nothing of the batch is stored; the device
  replaces the event (the box never accepted it). A photo the box does not have yet is refused too
  (``PHOTO_NOT_UPLOADED``), but that one the device cures itself: it uploads the photo and resends, so
  no event ever names a file that is not on the box.
* **Held** — right when the device made it, perhaps, but not now: the session was approved, voided,
  submitted or handed to someone else while the device was offline, another device holds its lock,
  or the person was deactivated. The event is stored and held for a supervisor
  (``appliance.counting.held``); the device's chain goes on.

Every lookup is one statement per batch over the batch's distinct ids, not one per event, so a batch
of 500 scans of one session costs a handful of indexed reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from appliance.counting.held import SESSION_EVENT_TYPES
from appliance.counting.photos import photo_path
from appliance.counting.sessions import COUNTING_ROLES, MANAGER_ROLES
from replication.wire.codec import Event, unpack
from replication.wire.hlc import wall_ms

RACK_TYPES = ("scan.recorded", "scan.undone")


@dataclass(frozen=True)
class Refusal:
    index: int  # of the event in the list checked
    code: str
    message: str


@dataclass
class Verdict:
    refusal: Refusal | None = None
    held: list[tuple[Event, str]] = field(default_factory=list)


def _rows(conn: sqlite3.Connection, sql: str, ids: Iterable[str]) -> list[sqlite3.Row]:
    wanted = list(ids)
    if not wanted:
        return []
    return conn.execute(sql.format(marks=",".join("?" * len(wanted))), wanted).fetchall()


@dataclass
class _Known:
    """Everything the batch names, read once."""

    sessions: dict[str, sqlite3.Row]
    session_racks: dict[str, set[str]]
    racks: set[str]
    people: dict[str, sqlite3.Row]
    products: set[str]
    locks: dict[str, str]
    scans: dict[str, tuple[str, dict[str, Any]]]  # event_id: (writer_id, payload) of undone scans
    undone: set[str]
    photos: set[str]  # the sha256 of the batch's photos that are on the box's disk

    @classmethod
    def read(
        cls,
        conn: sqlite3.Connection,
        keys: set[tuple[str, tuple[Any, ...]]],
        events: list[Event],
        photos_dir: Path | None,
    ) -> _Known:
        """``keys``: the batch's distinct (type, (session_id, by, product_id[, rack_id])), so that what the
        batch names is gathered from a few keys rather than from every event again."""
        session_ids = {k[0] for _, k in keys}
        rack_ids = {k[3] for t, k in keys if t in RACK_TYPES} - {""}
        undone = (
            {e.payload["undoes"] for e in events if e.type == "scan.undone"}
            if "scan.undone" in {t for t, _ in keys}
            else set()
        )
        sessions = {
            r["session_id"]: r
            for r in _rows(
                conn,
                "SELECT session_id, run_id, status, verifier_id, device_id FROM sessions"
                " WHERE session_id IN ({marks}) AND run_id IS NOT NULL",
                session_ids,
            )
        }
        named = {k[3] for t, k in keys if t == "photo.attached"}
        photos = {sha for sha in named if photo_path(photos_dir, sha).is_file()} if photos_dir is not None else set()
        session_racks: dict[str, set[str]] = {}
        for r in _rows(conn, "SELECT session_id, rack_id FROM session_racks WHERE session_id IN ({marks})", sessions):
            session_racks.setdefault(r[0], set()).add(r[1])
        return cls(
            sessions=sessions,
            session_racks=session_racks,
            racks={r[0] for r in _rows(conn, "SELECT rack_id FROM racks WHERE rack_id IN ({marks})", rack_ids)},
            people={
                r["user_id"]: r
                for r in _rows(
                    conn,
                    "SELECT user_id, role, active FROM users WHERE user_id IN ({marks})",
                    {k[1] for _, k in keys},
                )
            },
            products={
                r[0]
                for r in _rows(
                    conn,
                    "SELECT product_id FROM products WHERE product_id IN ({marks})",
                    {k[2] for _, k in keys if k[2]},
                )
            },
            locks={
                r[0]: r[1]
                for r in _rows(
                    conn,
                    # A lock of an epoch before the lock authority last moved is not honoured.
                    f"SELECT session_id, device_id FROM session_locks WHERE expires_at > {wall_ms()}"
                    " AND token >> 32 >= (SELECT epoch FROM lock_authority) AND session_id IN ({marks})",
                    sessions,
                )
            },
            undone=undone,
            scans={
                r["event_id"]: (r["writer_id"], unpack(r["payload"]))
                for r in _rows(
                    conn,
                    "SELECT event_id, writer_id, payload FROM events WHERE type = 'scan.recorded'"
                    " AND event_id IN ({marks})",
                    undone,
                )
            },
            photos=photos,
        )


# What an event's verdict depends on, besides its type (an undo also depends on the scan it names).
_SCAN_KEY = itemgetter("session_id", "by", "product_id", "rack_id")
_ITEM_KEY = itemgetter("session_id", "by", "product_id")
_KEY: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = dict.fromkeys(SESSION_EVENT_TYPES, _ITEM_KEY)
_KEY["scan.recorded"] = _SCAN_KEY
_KEY["scan.undone"] = lambda p: (p["session_id"], p["by"], None, p["rack_id"])
_KEY["photo.attached"] = itemgetter("session_id", "by", "product_id", "sha256")  # each photo is looked for
_CLEAR: tuple[tuple[str, str] | None, str | None] = (None, None)


def admit(conn: sqlite3.Connection, device_id: str, events: list[Event], *, photos_dir: Path | None = None) -> Verdict:
    """Refuse the first event that is wrong outright; otherwise list the events to hold, with why.

    An event's verdict depends only on its type, session, person, product and rack (and, for an undo,
    the scan it names; for a photo, whether its file is in ``photos_dir``), so it is worked out once per
    distinct combination: a batch of 500 scans of one session on one rack is judged once, and when
    every combination is clear nothing is looked at per event again."""
    first: dict[tuple[str, tuple[Any, ...]], Event] = {}
    for event in events:
        first.setdefault((event.type, _KEY[event.type](event.payload)), event)
    known = _Known.read(conn, set(first), events, photos_dir)
    judged = {key: _judge(known, device_id, event) for key, event in first.items()}
    if not known.undone and all(found == _CLEAR for found in judged.values()):
        return Verdict()
    verdict = Verdict()
    for index, event in enumerate(events):
        if event.type == "scan.undone":
            found = _judge(known, device_id, event)
        else:
            found = judged[(event.type, _KEY[event.type](event.payload))]
            if known.undone and event.type == "scan.recorded":  # an undo later in the batch may name it
                known.scans[event.event_id] = (event.writer_id, event.payload)
        refused, reason = found
        if refused is not None:
            return Verdict(refusal=Refusal(index, *refused))
        if reason is not None:
            verdict.held.append((event, reason))
    return verdict


def _judge(known: _Known, device_id: str, event: Event) -> tuple[tuple[str, str] | None, str | None]:
    session = known.sessions.get(event.payload["session_id"])
    refused = _refusal(known, event, session)
    if refused is not None or session is None:
        return refused, None
    return None, _hold_reason(known, device_id, event, session)


def _refusal(known: _Known, event: Event, session: sqlite3.Row | None) -> tuple[str, str] | None:
    p = event.payload
    if session is None:
        return "SESSION_NOT_FOUND", f"session {p['session_id']} does not exist in this store"
    if p["by"] not in known.people:
        return "USER_NOT_FOUND", f"'by' names {p['by']!r}, who is not a person of this store"
    product_id = p.get("product_id")
    if product_id and product_id not in known.products:
        return "PRODUCT_NOT_FOUND", f"product {product_id} is not in this store's product master"
    if event.type == "photo.attached" and p["sha256"] not in known.photos:
        return "PHOTO_NOT_UPLOADED", (
            f"photo {p['sha256']} is not on this box: upload it (PUT /api/sync/photos/{p['sha256']}), then resend"
        )
    if event.type in RACK_TYPES:
        wrong = _rack_refusal(known, session, p["rack_id"])
        if wrong is not None:
            return wrong
    if event.type == "scan.undone":
        scan = known.scans.get(p["undoes"])
        if scan is None:
            return "SCAN_NOT_FOUND", f"the undone scan {p['undoes']} is not stored on this box"
        writer_id, sp = scan
        if (writer_id, sp["session_id"], sp["code"], sp["rack_id"], sp["qty"]) != (
            p["of_writer"],
            p["session_id"],
            p["code"],
            p["rack_id"],
            p["qty"],
        ):
            return "SCAN_NOT_FOUND", (
                f"the undo of {p['undoes']} does not match that scan: of_writer, session_id, code, rack_id and qty"
                " are copied from it"
            )
    return None


def _rack_refusal(known: _Known, session: sqlite3.Row, rack_id: str) -> tuple[str, str] | None:
    racks = known.session_racks.get(session["session_id"], set())
    if rack_id in racks or (not racks and (rack_id == "" or rack_id in known.racks)):
        return None
    if rack_id == "":
        return "RACK_NOT_IN_SESSION", "this session counts named racks: rack_id names the rack the scan was made on"
    if rack_id in known.racks:
        return "RACK_NOT_IN_SESSION", f"rack {rack_id} is not one of this session's racks"
    return "RACK_NOT_FOUND", (
        f"rack_id {rack_id!r} is not a rack of this store: it is the rack's id (the session's 'rack_ids'),"
        " not the code printed on the shelf"
    )


def _hold_reason(known: _Known, device_id: str, event: Event, session: sqlite3.Row) -> str | None:
    status = session["status"]
    if status in ("APPROVED", "VOID"):
        return f"SESSION_{status}"
    if status != "IN_PROGRESS":
        return "SESSION_NOT_IN_PROGRESS"
    person = known.people[event.payload["by"]]
    if not person["active"] or person["role"] not in COUNTING_ROLES:
        return "PERSON_INACTIVE"
    lock = known.locks.get(session["session_id"])
    if lock is not None and lock != device_id:
        return "SESSION_LOCKED"
    if session["device_id"] not in (None, device_id) and lock != device_id:
        return "NOT_ASSIGNED"
    if person["user_id"] != session["verifier_id"] and person["role"] not in MANAGER_ROLES:
        return "NOT_ASSIGNED"
    return None
