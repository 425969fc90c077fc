"""The device sync contract, box side (``docs/sync-protocol.md``).

A batch is checked in two steps. What needs no database — the envelope, each payload's schema, the
hashes, the links between the batch's own events, the head signature, the clock — is checked on the
request's thread. What needs the writer's stored head — which events are new, whether they continue
the stored chain, whether a resent event matches the stored one — is checked inside the write job,
which then appends the new events through the one record path and stores the signed head, all in one
transaction. The answer is built only after that transaction is committed.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec

from appliance.auth.devices import Device
from appliance.counting import admission, codes, held, items, photos
from appliance.counting.conflicts import detect
from appliance.errors import BadRequest, Forbidden, ValidationFailed
from appliance.store.eventlog import EventLog
from replication.wire.codec import Event, verify_chain, verify_chain_head
from replication.wire.hlc import ClockDriftError, HybridClock, wall_ms

MAX_EVENTS = 500
MSGPACK = "application/msgpack"
INT63_MAX = 2**63 - 1  # SQLite's INTEGER is signed 64-bit: a larger id, seq or time cannot be stored
# Wall-clock claims end at 9999-12-31T23:59:59.999Z, the last instant a date type can show.
MAX_WALL_MS = 253_402_300_799_999
MAX_ID = 64  # ids the box makes are 26-character ULIDs; room for other writers' ids, not for a megabyte
# A ULID: 48 bits of time then 80 of randomness in Crockford base32, upper case as every writer makes it.
# Each id's length is a decoding constraint; the characters are matched once per batch, all ids joined,
# which costs a tenth of a pattern matched per event.
ULID_LENGTH = 26
_ULIDS = re.compile("(?:[0-7][0-9A-HJKMNP-TV-Z]{25})+")

# How far past the box's own wall clock a handheld's hlc may move the box's clock (and server_hlc):
# a device up to 5 minutes fast is accepted, but every other writer's time does not jump with it.
DEVICE_HLC_LEAD_MS = 1000

# Bounds are msgspec constraints, checked in C while the body is decoded, so a batch of 500 events
# pays nothing per event for them beyond the decode itself.
Seq = Annotated[int, msgspec.Meta(ge=1, le=INT63_MAX)]
HeadSeq = Annotated[int, msgspec.Meta(ge=0, le=INT63_MAX)]  # must name the last event; checked against it
Hlc = Annotated[int, msgspec.Meta(ge=0, le=INT63_MAX)]
WallMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_WALL_MS)]
EventId = Annotated[str, msgspec.Meta(min_length=ULID_LENGTH, max_length=ULID_LENGTH)]
Id = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
Qty = Annotated[int, msgspec.Meta(ge=1, le=items.MAX_QTY)]
# |delta| and target within MAX_QTY: see ``items.check_adjustment`` for why no sum can overflow.
Delta = Annotated[int, msgspec.Meta(ge=-items.MAX_QTY, le=items.MAX_QTY)]
Target = Annotated[int, msgspec.Meta(ge=0, le=items.MAX_QTY)]
Token = Annotated[int, msgspec.Meta(ge=0, le=INT63_MAX)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=codes.MAX_CODE)]
Hex = Annotated[str, msgspec.Meta(max_length=2 * 1024)]
# A photo a device names: the SHA-256 of its bytes as lowercase hex, and its size within the protocol's
# bound. The box's own limit (setting max_photo_bytes, at most this) is applied when the photo is
# uploaded; an event cannot name a photo the box did not take (PHOTO_NOT_UPLOADED).
MAX_PHOTO_BYTES = 16 * 1024 * 1024
Sha256 = Annotated[str, msgspec.Meta(max_length=64, pattern="^[0-9a-f]{64}$")]
PhotoSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_PHOTO_BYTES)]


class WireEvent(msgspec.Struct, forbid_unknown_fields=True):
    seq: Seq
    event_id: EventId
    type: str
    hlc: Hlc
    occurred_at: WallMs | None
    prev_hash: bytes
    payload: dict[str, Any]


class WireHead(msgspec.Struct, forbid_unknown_fields=True):
    seq: HeadSeq
    hash: bytes
    signature: bytes


class WireBatch(msgspec.Struct, forbid_unknown_fields=True):
    writer_id: Id
    events: list[WireEvent]
    head: WireHead


# JSON carries each ``bin`` as a hex string; these mirror the structs above with those fields as text,
# so JSON is checked by the same constraints, in C, before anything of it is touched.
class _JsonEvent(msgspec.Struct, forbid_unknown_fields=True):
    seq: Seq
    event_id: EventId
    type: str
    hlc: Hlc
    occurred_at: WallMs | None
    prev_hash: Hex
    payload: dict[str, Any]


class _JsonHead(msgspec.Struct, forbid_unknown_fields=True):
    seq: HeadSeq
    hash: Hex
    signature: Hex


class _JsonBatch(msgspec.Struct, forbid_unknown_fields=True):
    writer_id: Id
    events: list[_JsonEvent]
    head: _JsonHead


_MSGPACK_BATCH = msgspec.msgpack.Decoder(WireBatch)
_JSON_BATCH = msgspec.json.Decoder(_JsonBatch)


# -- payload schemas (docs/sync-protocol.md §5) ----------------------------------------------------
class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    session_id: Id
    by: Id


class ScanRecorded(_Payload):
    code: Code
    qty: Qty
    rack_id: Id
    product_id: Id | None
    token: Token | None


class ScanUndone(_Payload):
    undoes: Id
    of_writer: Id
    code: Code
    rack_id: Id
    qty: Qty


class Adjusted(_Payload):
    product_id: Id
    delta: Delta
    target: Target


class AttributesSet(_Payload):
    product_id: Id
    attrs: dict[str, Any]


class SerialAdded(_Payload):
    product_id: Id
    serial: str


class SerialRemoved(_Payload):
    product_id: Id
    serial: str
    tags: list[Id]


class PhotoAttached(_Payload):
    product_id: Id
    sha256: Sha256
    content_type: str
    size: PhotoSize


DEVICE_EVENT_TYPES: dict[str, type[_Payload]] = {
    "scan.recorded": ScanRecorded,
    "scan.undone": ScanUndone,
    "count.adjusted": Adjusted,
    "damage.adjusted": Adjusted,
    "item.attributes_set": AttributesSet,
    "serial.added": SerialAdded,
    "serial.removed": SerialRemoved,
    "photo.attached": PhotoAttached,
}


def _check_adjusted(value: Any, event_type: str) -> None:
    items.check_adjustment(value.delta, value.target, nonzero=event_type == "count.adjusted")


def _check_attributes(value: Any, event_type: str) -> None:
    items.check_attributes(value.attrs)


def _check_serial(value: Any, event_type: str) -> None:
    items.check_serial(value.serial)


def _check_photo(value: Any, event_type: str) -> None:
    if value.content_type not in photos.PHOTO_TYPES:
        raise ValidationFailed(f"content_type must be one of {', '.join(photos.PHOTO_TYPES)}")


# The checks a schema's constraints cannot say, by type; scans (nearly every event) have none, so they
# pay one dictionary lookup here and nothing else.
_DOMAIN_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "count.adjusted": _check_adjusted,
    "damage.adjusted": _check_adjusted,
    "item.attributes_set": _check_attributes,
    "serial.added": _check_serial,
    "serial.removed": _check_serial,
    "photo.attached": _check_photo,
}


def check_payload(event_type: str, payload: dict[str, Any]) -> None:
    schema = DEVICE_EVENT_TYPES.get(event_type)
    if schema is None:
        raise ValueError(f"a device may not send {event_type!r} events")
    try:
        value = msgspec.convert(payload, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    check = _DOMAIN_CHECKS.get(event_type)
    if check is not None:
        try:
            check(value, event_type)
        except ValidationFailed as exc:
            raise ValueError(exc.message) from None


# -- decoding -------------------------------------------------------------------------------------
def decode_batch(body: bytes, content_type: str) -> WireBatch:
    """Parse a msgpack or JSON batch; JSON carries ``bin`` fields as hex strings.

    Every malformed envelope is one answer, 400 ``VALIDATION``, in either format: the shape is
    checked while decoding, before any of it is used, and a body nested deeper than the decoder
    follows is malformed too rather than an error of the box.
    """
    try:
        if content_type.startswith(MSGPACK):
            batch = _MSGPACK_BATCH.decode(body)
        else:
            batch = _from_json(_JSON_BATCH.decode(body))
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadRequest(f"the batch is not a valid envelope: {exc}", code="VALIDATION") from None
    if not 1 <= len(batch.events) <= MAX_EVENTS:
        raise BadRequest(f"a batch holds 1 to {MAX_EVENTS} events", code="VALIDATION")
    seqs = [e.seq for e in batch.events]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise BadRequest("a batch's events are in increasing seq order without holes", code="VALIDATION")
    if _ULIDS.fullmatch("".join([e.event_id for e in batch.events])) is None:
        bad = next(e for e in batch.events if _ULIDS.fullmatch(e.event_id) is None)
        raise BadRequest(f"event_id {bad.event_id!r} of seq {bad.seq} is not a ULID", code="VALIDATION")
    return batch


def _from_json(raw: _JsonBatch) -> WireBatch:
    """The hex fields as bytes (``ValueError`` for one that is not hex); nothing else to check."""
    events = [
        WireEvent(e.seq, e.event_id, e.type, e.hlc, e.occurred_at, bytes.fromhex(e.prev_hash), e.payload)
        for e in raw.events
    ]
    head = WireHead(raw.head.seq, bytes.fromhex(raw.head.hash), bytes.fromhex(raw.head.signature))
    return WireBatch(raw.writer_id, events, head)


# -- ingest ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    expected_seq: int = 1
    stored: list[Event] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)

    def refuse_all(self, events: list[Event], code: str, message: str, at: int | None = None) -> Outcome:
        """Refuse the whole batch: the event at ``at`` gets ``code``, the rest NOT_PROCESSED (or all ``code``)."""
        self.ok = []
        self.stored = []
        self.held = []
        for index, event in enumerate(events):
            if at is None or index == at:
                self.errors.append({"seq": event.seq, "code": code, "message": message})
            else:
                self.errors.append(
                    {"seq": event.seq, "code": "NOT_PROCESSED", "message": "an earlier event was refused"}
                )
        return self


def precheck(device: Device, batch: WireBatch, clock: HybridClock) -> tuple[list[Event], Outcome | None]:
    """The checks that need no database. Returns the events and, if refused, the outcome."""
    events = [
        Event(device.writer_id, e.seq, e.event_id, e.type, e.payload, e.hlc, e.prev_hash, e.occurred_at)
        for e in batch.events
    ]
    outcome = Outcome(expected_seq=device.head_seq + 1)
    if batch.writer_id != device.writer_id:
        raise BadRequest("the batch names another writer than this device", code="VALIDATION")
    for index, event in enumerate(events):
        try:
            event.payload_bytes  # noqa: B018 - canonical form is checked (and cached for the hash) here
            check_payload(event.type, event.payload)
        except (ValueError, RecursionError) as exc:
            message = str(exc) if isinstance(exc, ValueError) else "the payload is nested too deep"
            return events, outcome.refuse_all(events, "VALIDATION", message, at=index)
    reused = _reused_in_batch(events)
    if reused is not None:
        return events, outcome.refuse_all(
            events, "EVENT_ID_REUSED", f"event_id {events[reused].event_id} is used twice in the batch", at=reused
        )
    backwards = _hlc_backwards(events)
    if backwards is not None:
        return events, outcome.refuse_all(
            events, "CLOCK_BACKWARDS", "an event's hlc is not above the hlc of the event before it", at=backwards
        )
    broken = verify_chain(events[1:], events[0].hash, events[0].seq)
    if broken is not None:
        return events, outcome.refuse_all(
            events, "CHAIN_BROKEN", "an event's prev_hash does not follow the one before", at=broken + 1
        )
    last = events[-1]
    if batch.head.seq != last.seq or batch.head.hash != last.hash:
        return events, outcome.refuse_all(
            events, "CHAIN_BROKEN", "the signed head does not match the batch's last event"
        )
    if not verify_chain_head(device.public_key, device.writer_id, last.seq, last.hash, batch.head.signature):
        return events, outcome.refuse_all(
            events, "BAD_SIGNATURE", "the head signature does not verify with the device key"
        )
    try:
        clock.check(max(event.hlc for event in events))  # the latest passing means every one does
    except ClockDriftError:
        for index, event in enumerate(events):
            try:
                clock.check(event.hlc)
            except ClockDriftError as exc:
                return events, outcome.refuse_all(events, "CLOCK_AHEAD", str(exc), at=index)
    return events, None


def _hlc_backwards(events: list[Event]) -> int | None:
    """The index of the first event whose hlc does not rise above the one before it in the batch."""
    hlcs = [event.hlc for event in events]
    if all(a < b for a, b in itertools.pairwise(hlcs)):
        return None
    return next(i for i in range(1, len(hlcs)) if hlcs[i] <= hlcs[i - 1])


def _reused_in_batch(events: list[Event]) -> int | None:
    """The index of the first event whose id an earlier event of the batch already has."""
    if len({event.event_id for event in events}) == len(events):  # one set per batch: the common case
        return None
    seen: set[str] = set()
    for index, event in enumerate(events):
        if event.event_id in seen:
            return index
        seen.add(event.event_id)
    return None


def _reused_in_store(conn: sqlite3.Connection, events: list[Event]) -> int | None:
    """The index of the first of these (new) events whose id the log already holds, under any writer.

    One statement per batch on the ``event_id`` unique index, rather than one lookup per event.
    """
    ids = [event.event_id for event in events]
    marks = ",".join("?" * len(ids))
    taken = {row[0] for row in conn.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", ids)}
    return next((index for index, event_id in enumerate(ids) if event_id in taken), None)


def ingest(
    conn: sqlite3.Connection,
    log: EventLog,
    device: Device,
    events: list[Event],
    signature: bytes,
    *,
    photos_dir: Path | None = None,
) -> Outcome:
    """The write job: compare with what is stored, append what is new, keep the signed head.

    ``photos_dir`` is where uploaded photos are kept; without one no photo is on the box, so a
    ``photo.attached`` event is refused ``PHOTO_NOT_UPLOADED`` rather than naming a file nobody has."""
    head = conn.execute(
        "SELECT head_seq, head_hash, status,"
        " (SELECT hlc FROM events e WHERE e.writer_id = w.writer_id AND e.seq = w.head_seq) AS head_hlc"
        " FROM writers w WHERE writer_id = ?",
        (device.writer_id,),
    ).fetchone()
    outcome = Outcome(expected_seq=head["head_seq"] + 1)
    if head["status"] == "revoked":
        raise Forbidden("this device was revoked", code="REVOKED")
    stored_part = [e for e in events if e.seq <= head["head_seq"]]
    new = [e for e in events if e.seq > head["head_seq"]]
    for index, event in enumerate(stored_part):
        row = conn.execute(
            "SELECT hash FROM events WHERE writer_id = ? AND seq = ?", (device.writer_id, event.seq)
        ).fetchone()
        if row["hash"] != event.hash:
            return outcome.refuse_all(
                events, "DUPLICATE_OR_REPLAY", f"seq {event.seq} is already stored with other content", at=index
            )
    if new and new[0].seq != head["head_seq"] + 1:
        outcome.ok = [e.seq for e in stored_part]
        outcome.errors = [
            {"seq": e.seq, "code": "SEQUENCE_GAP", "message": f"expected seq {head['head_seq'] + 1}"} for e in new
        ]
        return outcome
    if new and new[0].prev_hash != head["head_hash"]:
        return outcome.refuse_all(
            events, "CHAIN_BROKEN", "the batch does not continue the stored chain", at=len(stored_part)
        )
    if new and head["head_hlc"] is not None and new[0].hlc <= head["head_hlc"]:
        return outcome.refuse_all(
            events,
            "CLOCK_BACKWARDS",
            f"the hlc of seq {new[0].seq} is not above {head['head_hlc']}, the hlc of the writer's stored seq"
            f" {head['head_seq']}",
            at=len(stored_part),
        )
    verdict = admission.admit(conn, device.writer_id, new, photos_dir=photos_dir) if new else admission.Verdict()
    if verdict.refusal is not None:
        refusal = verdict.refusal
        return outcome.refuse_all(events, refusal.code, refusal.message, at=len(stored_part) + refusal.index)
    if new:
        # Optimistic: the events table's unique index refuses a reused id as the rows go in, and only
        # then is the batch looked at for which one (a lookup per batch cost every batch 3 % of ingest).
        conn.execute("SAVEPOINT append")
        try:
            log.append_run(conn, new)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO append")
            conn.execute("RELEASE append")
            clash = _reused_in_store(conn, new) if "event_id" in str(exc) else None
            if clash is None:
                raise
            # The stored part is a prefix of the batch: its events are not new.
            return outcome.refuse_all(
                events,
                "EVENT_ID_REUSED",
                f"event_id {new[clash].event_id} is already stored for another event",
                at=len(stored_part) + clash,
            )
        conn.execute("RELEASE append")
        log.clock.observe(max(event.hlc for event in new), lead_ms=DEVICE_HLC_LEAD_MS)
        if verdict.held:
            held.hold_checked(conn, log, verdict.held)
            outcome.held = [
                {"seq": e.seq, "event_id": e.event_id, "session_id": e.payload["session_id"], "reason": reason}
                for e, reason in verdict.held
            ]
        last = new[-1]
        conn.execute(
            "INSERT OR REPLACE INTO chain_heads (writer_id, seq, hash, signature, signed_at) VALUES (?, ?, ?, ?, ?)",
            (device.writer_id, last.seq, last.hash, signature, wall_ms()),
        )
    if stored_part:  # a resend after a lost answer learns again which of its events are held
        outcome.held += held.held_answer(conn, stored_part)
    outcome.ok = [e.seq for e in events]
    outcome.stored = new
    outcome.expected_seq = events[-1].seq + 1 if new else head["head_seq"] + 1
    return outcome


def _kinds(conn: sqlite3.Connection, event: Event, run_id: str) -> set[str]:
    """The conflict kinds this event could take part in; a plain scan under a live lease takes part
    in none, so the common batch costs no conflict query at all."""
    p = event.payload
    kinds: set[str] = set()
    if p.get("product_id"):
        kinds.add("damage_exceeds")
        if event.type == "scan.recorded":
            kinds.add("barcode_mismatch")
    if event.type == "serial.added":
        kinds.add("serial_duplicate")
    if event.type == "item.attributes_set" and "mfg_date" in p.get("attrs", {}):
        kinds.add("mfg_date_impossible")
    if event.type == "scan.recorded" and p.get("token") is not None:
        # A token of an epoch the lock authority has since moved past is as stale as an older lease.
        current = conn.execute(
            "SELECT token, (SELECT coalesce(max(epoch), 0) FROM lock_designations) FROM rack_states"
            " WHERE run_id = ? AND rack_id = ?",
            (run_id, p.get("rack_id") or ""),
        ).fetchone()
        if current is not None and (p["token"] < current[0] or p["token"] >> 32 < current[1]):
            kinds.add("late_lease")
    return kinds


def flagged(conn: sqlite3.Connection, events: list[Event]) -> list[dict[str, Any]]:
    """Which of these (stored) events a supervisor will look at: conflicts on their items."""
    if not events:
        return []
    run_of: dict[str, str | None] = {}
    kinds: dict[str, set[str]] = {}
    for event in events:
        session_id = event.payload.get("session_id")
        if not session_id:
            continue
        if session_id not in run_of:
            row = conn.execute("SELECT run_id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            run_of[session_id] = row[0] if row else None
        run_id = run_of[session_id]
        if run_id:
            kinds.setdefault(run_id, set()).update(_kinds(conn, event, run_id))
    found = [c for run_id, wanted in kinds.items() if wanted for c in detect(conn, run_id, wanted)]
    out = []
    for event in events:
        p = event.payload
        for conflict in found:
            if _implicates(conflict, event.event_id, p):
                out.append(
                    {
                        "seq": event.seq,
                        "event_id": event.event_id,
                        "conflict_id": conflict["conflict_id"],
                        "kind": conflict["kind"],
                    }
                )
    return out


def _implicates(conflict: dict[str, Any], event_id: str, p: dict[str, Any]) -> bool:
    kind = conflict["kind"]
    if kind == "barcode_mismatch":
        return bool(conflict["event_id"] == event_id)
    if kind == "serial_duplicate":
        return p.get("serial") == conflict["serial"] and any(
            c["session_id"] == p.get("session_id") for c in conflict["claims"]
        )
    if kind == "late_lease":
        return bool(
            conflict["session_id"] == p.get("session_id")
            and conflict["rack_id"] == p.get("rack_id")
            and conflict["token"] == p.get("token")
        )
    same_item = conflict.get("session_id") == p.get("session_id") and conflict.get("product_id") == p.get("product_id")
    if kind == "mfg_date_impossible":
        return same_item and "mfg_date" in p.get("attrs", {})
    return same_item  # damage_exceeds
