"""The device sync contract, box side (``docs/sync-protocol.md``).

A batch is checked in two steps. What needs no database — the envelope, each payload's schema, the
hashes, the links between the batch's own events, the head signature, the clock — is checked on the
request's thread. What needs the writer's stored head — which events are new, whether they continue
the stored chain, whether a resent event matches the stored one — is checked inside the write job,
which then appends the new events through the one record path and stores the signed head, all in one
transaction. The answer is built only after that transaction is committed.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgspec

from appliance.auth.devices import Device
from appliance.counting import codes, items
from appliance.counting.conflicts import detect
from appliance.errors import BadRequest, Forbidden, ValidationFailed
from appliance.store.eventlog import EventLog
from replication.wire.codec import Event, verify_chain, verify_chain_head
from replication.wire.hlc import ClockDriftError, HybridClock, wall_ms

MAX_EVENTS = 500
MSGPACK = "application/msgpack"


class WireEvent(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    event_id: str
    type: str
    hlc: int
    occurred_at: int | None
    prev_hash: bytes
    payload: dict[str, Any]


class WireHead(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    hash: bytes
    signature: bytes


class WireBatch(msgspec.Struct, forbid_unknown_fields=True):
    writer_id: str
    events: list[WireEvent]
    head: WireHead


_MSGPACK_BATCH = msgspec.msgpack.Decoder(WireBatch)


# -- payload schemas (docs/sync-protocol.md §5) ----------------------------------------------------
class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    session_id: str
    by: str


class ScanRecorded(_Payload):
    code: str
    qty: int
    rack_id: str
    product_id: str | None
    token: int | None


class ScanUndone(_Payload):
    undoes: str
    of_writer: str
    code: str
    rack_id: str
    qty: int


class Adjusted(_Payload):
    product_id: str
    delta: int
    target: int


class AttributesSet(_Payload):
    product_id: str
    attrs: dict[str, Any]


class SerialAdded(_Payload):
    product_id: str
    serial: str


class SerialRemoved(_Payload):
    product_id: str
    serial: str
    tags: list[str]


DEVICE_EVENT_TYPES: dict[str, type[_Payload]] = {
    "scan.recorded": ScanRecorded,
    "scan.undone": ScanUndone,
    "count.adjusted": Adjusted,
    "damage.adjusted": Adjusted,
    "item.attributes_set": AttributesSet,
    "serial.added": SerialAdded,
    "serial.removed": SerialRemoved,
}


def _check_payload(event_type: str, payload: dict[str, Any]) -> None:
    schema = DEVICE_EVENT_TYPES.get(event_type)
    if schema is None:
        raise ValueError(f"a device may not send {event_type!r} events")
    try:
        value = msgspec.convert(payload, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    if isinstance(value, ScanRecorded | ScanUndone):
        if not 0 < len(value.code) <= codes.MAX_CODE:
            raise ValueError(f"code must be 1-{codes.MAX_CODE} characters")
        if not 0 < value.qty <= items.MAX_QTY:
            raise ValueError(f"qty must be 1-{items.MAX_QTY}")
    elif isinstance(value, Adjusted):
        if value.target < 0 or (value.delta == 0 and event_type == "count.adjusted"):
            raise ValueError("target must be >= 0 and delta non-zero")
    elif isinstance(value, AttributesSet):
        try:
            items.check_attributes(value.attrs)
        except ValidationFailed as exc:
            raise ValueError(exc.message) from None
    elif isinstance(value, SerialAdded | SerialRemoved) and not 0 < len(value.serial.strip()) <= 64:
        raise ValueError("serial must be 1-64 characters")


# -- decoding -------------------------------------------------------------------------------------
def decode_batch(body: bytes, content_type: str) -> WireBatch:
    """Parse a msgpack or JSON batch; JSON carries ``bin`` fields as hex strings."""
    try:
        if content_type.startswith(MSGPACK):
            batch = _MSGPACK_BATCH.decode(body)
        else:
            raw = json.loads(body)
            for event in raw.get("events", []) if isinstance(raw, dict) else []:
                if isinstance(event, dict) and isinstance(event.get("prev_hash"), str):
                    event["prev_hash"] = bytes.fromhex(event["prev_hash"])
            head = raw.get("head") if isinstance(raw, dict) else None
            if isinstance(head, dict):
                for key in ("hash", "signature"):
                    if isinstance(head.get(key), str):
                        head[key] = bytes.fromhex(head[key])
            batch = msgspec.convert(raw, WireBatch, strict=True)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"the batch is not a valid envelope: {exc}", code="VALIDATION") from None
    if not 1 <= len(batch.events) <= MAX_EVENTS:
        raise BadRequest(f"a batch holds 1 to {MAX_EVENTS} events", code="VALIDATION")
    seqs = [e.seq for e in batch.events]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) or seqs[0] < 1:
        raise BadRequest("a batch's events are in increasing seq order without holes", code="VALIDATION")
    return batch


def encode_answer(answer: dict[str, Any], content_type: str) -> tuple[bytes, str]:
    if content_type.startswith(MSGPACK):
        return msgpack.packb(answer, use_bin_type=True), MSGPACK
    return json.dumps(answer).encode(), "application/json"


# -- ingest ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    expected_seq: int = 1
    stored: list[Event] = field(default_factory=list)

    def refuse_all(self, events: list[Event], code: str, message: str, at: int | None = None) -> Outcome:
        """Refuse the whole batch: the event at ``at`` gets ``code``, the rest NOT_PROCESSED (or all ``code``)."""
        self.ok = []
        self.stored = []
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
            _check_payload(event.type, event.payload)
            if len(event.event_id) != 26:
                raise ValueError("event_id must be a 26-character ULID")
        except ValueError as exc:
            return events, outcome.refuse_all(events, "VALIDATION", str(exc), at=index)
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


def ingest(conn: sqlite3.Connection, log: EventLog, device: Device, events: list[Event], signature: bytes) -> Outcome:
    """The write job: compare with what is stored, append what is new, keep the signed head."""
    head = conn.execute(
        "SELECT head_seq, head_hash, status FROM writers WHERE writer_id = ?", (device.writer_id,)
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
    if new:
        log.clock.observe(max(event.hlc for event in new))
    log.append_run(conn, new)
    if new:
        last = new[-1]
        conn.execute(
            "INSERT OR REPLACE INTO chain_heads (writer_id, seq, hash, signature, signed_at) VALUES (?, ?, ?, ?, ?)",
            (device.writer_id, last.seq, last.hash, signature, wall_ms()),
        )
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
        current = conn.execute(
            "SELECT token FROM rack_states WHERE run_id = ? AND rack_id = ?", (run_id, p.get("rack_id") or "")
        ).fetchone()
        if current is not None and p["token"] < current[0]:
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
