"""Scanners plugged into a box: each a writer, each counting for the station a supervisor assigns it.

A scanner is enrolled the first time a box sees it, as a writer of its own whose key the box derives
from its node key (``store.identity.derived_key``), and it is remembered by its identity (USB serial,
or the port it is in) so that an unplug and replug is the same scanner with the same chain and the
same station. Which session and rack it counts for, how it is read (keyboard layout, suffix, baud) and
every decision about its kept codes are events of the box's own chain: they reach the store's other
boxes and HQ, and an auditor sees who did what.

A code a scanner reads becomes the same events a handheld would send — a ``scan.recorded``, and for a
GS1 code its serial and its batch and dates as the item's fields — made, chained and signed here, and
taken through ``counting.ingest``, the handheld's record path: the same session rules refuse, hold or
take them. A code that no session takes is **kept**: read while the scanner was assigned to no
station, refused by the session (its rack was taken out of it, say), or unreadable as a count. A kept
code is an event too; a supervisor counts it into a session or sets it aside with a reason. Nothing a
scanner read is ever lost, and nothing is counted anywhere a person did not choose.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.auth.devices import Device
from appliance.auth.people import User
from appliance.counting import codes, ingest, locks
from appliance.counting.sessions import get_session
from appliance.errors import Conflict, NotFound, ValidationFailed
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from appliance.store.identity import Node, derived_key, public_bytes
from hardware import gs1
from hardware.keyboard import KeyDecoder
from hardware.udev import ScannerDevice, ScannerKind
from replication.wire.codec import Event, sign_chain_head
from replication.wire.hlc import wall_ms

projection_tables("scanners", "kept_scans")

SUFFIXES = {ScannerKind.HID.value: ("enter", "tab"), ScannerKind.SERIAL.value: ("cr", "lf", "crlf", "none")}
DEFAULT_SUFFIX = {ScannerKind.HID.value: "enter", ScannerKind.SERIAL.value: "cr"}
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
MAX_NAME = 64
MAX_KEPT_CODE = 4096  # the longest code a reader passes on (hardware.evdev_reader's max_code_chars)
OPEN_STATUSES = ("ASSIGNED", "IN_PROGRESS")
DECISIONS = ("counted", "discarded")
MAX_DECIDED = 1000  # kept codes one decision takes

# Why a code was kept, as the kept list and the station view show it.
UNASSIGNED = "UNASSIGNED"
CODE_TOO_LONG = "CODE_TOO_LONG"


@dataclass(frozen=True)
class Read:
    """A code as the reader decoded it, and when (wall clock, ms)."""

    code: str
    read_at: int


@dataclass
class Result:
    """What became of one read: ``counted`` (stored in the session), ``held`` (stored, held for a
    supervisor by the session's rules, ``reason`` says why) or ``kept`` (in the kept list, ``reason``)."""

    code: str
    read_at: int
    outcome: str
    counted_as: str | None = None
    product_id: str | None = None
    session_id: str | None = None
    rack_id: str | None = None
    reason: str | None = None
    message: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scanner_key(node_key: Ed25519PrivateKey, writer_id: str) -> Ed25519PrivateKey:
    return derived_key(node_key, f"scanner {writer_id}")


# -- enrolment and configuration ------------------------------------------------------------------
def get_scanner(conn: sqlite3.Connection, scanner_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM scanners WHERE writer_id = ?", (scanner_id,)).fetchone()
    if row is None:
        raise NotFound(f"scanner {scanner_id} is not known to this store", code="SCANNER_NOT_FOUND")
    return row


def _tag(device: ScannerDevice) -> str:
    """A short tag that tells two scanners of one model apart on the page: the end of the serial's
    number, or the port."""
    if device.serial:
        digits = max(re.findall(r"\d+", device.serial), key=len, default="")
        return f"…{digits[-6:]}" if len(digits) >= 4 else device.serial[-8:]
    # ID_PATH ends "-usb-0:3:1.0": hub port 3 (its interface 1.0 says nothing to a person).
    return "port " + device.identity.rpartition("usb-")[2].removeprefix("0:").split(":")[0]


def enroll(
    conn: sqlite3.Connection, log: EventLog, node: Node, device: ScannerDevice, *, layout: str = "us"
) -> sqlite3.Row:
    """The scanner this device is, enrolled as a writer the first time this box sees it; a new
    keyboard-wedge scanner is taken to type in ``layout`` (setting scanner_layout) until told otherwise."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM scanners WHERE node_id = ? AND identity = ?", (node.node_id, device.identity)
    ).fetchone()
    if row is not None:
        return row
    writer_id = new_id()
    name = f"{device.model or 'Scanner'} ({_tag(device)})"[-MAX_NAME:]
    log.record(
        conn,
        "writer.enrolled",
        {
            "writer_id": writer_id,
            "kind": "scanner",
            "store_id": node.store_id,
            "name": name,
            "public_key": public_bytes(scanner_key(node.key, writer_id)),
        },
    )
    log.record(
        conn,
        "scanner.enrolled",
        {
            "writer_id": writer_id,
            "identity": device.identity,
            "node_id": node.node_id,
            "kind": device.kind.value,
            "model": device.model,
            "vendor_id": device.vendor_id,
            "product_id": device.product_id,
            "serial": device.serial,
            "name": name,
            "layout": layout,
        },
    )
    return get_scanner(conn, writer_id)


def configure(conn: sqlite3.Connection, log: EventLog, actor: User, scanner_id: str, **changes: Any) -> dict[str, Any]:
    """Name a scanner and say how it is read: the keyboard layout a wedge scanner types in, its suffix,
    a serial scanner's baud. Checked here, so a layout xkbcommon does not know is refused now rather
    than found when the scanner is next plugged in."""
    scanner = get_scanner(conn, scanner_id)
    wanted = {k: v for k, v in changes.items() if v is not None}
    if not wanted:
        raise ValidationFailed("say what to change: name, layout, variant, suffix or baud")
    if "name" in wanted:
        wanted["name"] = wanted["name"].strip()
        if not 1 <= len(wanted["name"]) <= MAX_NAME:
            raise ValidationFailed(f"name must be 1-{MAX_NAME} characters", details={"field": "name"})
    kind = scanner["kind"]
    if "suffix" in wanted and wanted["suffix"] not in SUFFIXES[kind]:
        raise ValidationFailed(
            f"a {kind} scanner's suffix is one of {', '.join(SUFFIXES[kind])}", details={"field": "suffix"}
        )
    if "baud" in wanted and wanted["baud"] not in BAUDS:
        raise ValidationFailed(f"baud is one of {', '.join(map(str, BAUDS))}", details={"field": "baud"})
    if "layout" in wanted or "variant" in wanted:
        layout = wanted.get("layout", scanner["layout"])
        variant = wanted.get("variant", scanner["variant"])
        try:
            KeyDecoder(layout, variant)
        except ValueError as exc:
            raise ValidationFailed(str(exc), details={"field": "layout"}) from None
    if any(scanner[k] != v for k, v in wanted.items()):  # the same settings again change nothing
        log.record(conn, "scanner.configured", {"writer_id": scanner_id, **wanted, "by": actor.user_id})
    return scanner_dict(conn, get_scanner(conn, scanner_id))


# -- stations -------------------------------------------------------------------------------------
def assign(
    conn: sqlite3.Connection, log: EventLog, actor: User, scanner_id: str, session_id: str, rack_id: str | None
) -> dict[str, Any]:
    """Make a scanner count for a session (and rack): a station. Refused now for what would make
    every code it reads be held — a closed session, one with nobody to count it, a rack that is not
    the session's, the session held by a handheld — so the person assigning hears it, not the kept list."""
    get_scanner(conn, scanner_id)
    session = get_session(conn, session_id)
    if session["status"] not in OPEN_STATUSES:
        raise Conflict(
            f"session {session_id} is {session['status']}: a station counts for an assigned or started session",
            code="SESSION_NOT_OPEN",
        )
    if session["verifier_id"] is None:
        raise Conflict("the session has no verifier: assign it to someone first", code="SESSION_NOT_ASSIGNED")
    racks = {r[0] for r in conn.execute("SELECT rack_id FROM session_racks WHERE session_id = ?", (session_id,))}
    rack = (rack_id or "").strip()
    if racks and rack not in racks:
        raise ValidationFailed(
            "choose one of the session's racks" if not rack else f"rack {rack} is not one of this session's racks",
            code="RACK_NOT_IN_SESSION",
            details={"field": "rack_id", "rack_ids": sorted(racks)},
        )
    if not racks and rack and conn.execute("SELECT 1 FROM racks WHERE rack_id = ?", (rack,)).fetchone() is None:
        raise NotFound(f"rack {rack} is not a rack of this store", code="RACK_NOT_FOUND")
    lock = locks.session_lock(conn, session_id)
    if lock is not None and lock["device_id"] not in (None, scanner_id):
        raise Conflict(
            f"a handheld of {lock['holder_name'] or lock['user_id']} holds this session: release it there first,"
            " or the station's scans would be held",
            code="SESSION_LOCKED",
            details={"device_id": lock["device_id"]},
        )
    log.record(
        conn,
        "station.assigned",
        {"writer_id": scanner_id, "session_id": session_id, "rack_id": rack, "by": actor.user_id},
    )
    return scanner_dict(conn, get_scanner(conn, scanner_id))


def unassign(conn: sqlite3.Connection, log: EventLog, actor: User, scanner_id: str) -> dict[str, Any]:
    scanner = get_scanner(conn, scanner_id)
    if scanner["session_id"] is not None:
        log.record(conn, "station.unassigned", {"writer_id": scanner_id, "by": actor.user_id})
    return scanner_dict(conn, get_scanner(conn, scanner_id))


# -- the record path ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Station:
    session_id: str
    rack_id: str
    verifier_id: str


def _station(conn: sqlite3.Connection, scanner: sqlite3.Row) -> _Station | None:
    if scanner["session_id"] is None:
        return None
    row = conn.execute("SELECT verifier_id FROM sessions WHERE session_id = ?", (scanner["session_id"],)).fetchone()
    if row is None or row[0] is None:
        return None
    return _Station(scanner["session_id"], scanner["rack_id"] or "", row[0])


def _events_for(
    read: Read, station: _Station, product_id: str | None, counted_as: str, fields: gs1.ItemFields
) -> list[tuple[str, dict[str, Any]]]:
    """The events a handheld would send for this scan: the scan, then what its GS1 code says of the item."""
    base = {"session_id": station.session_id, "by": station.verifier_id}
    made: list[tuple[str, dict[str, Any]]] = [
        (
            "scan.recorded",
            {**base, "code": counted_as, "qty": 1, "rack_id": station.rack_id, "product_id": None, "token": None},
        )
    ]
    if product_id is None:
        return made
    attrs = {
        name: value
        for name, value in (
            ("batch", fields["batch"]),
            ("expiry_date", fields["expiry"] or fields["best_before"]),
            ("mfg_date", fields["production_date"]),
        )
        if value
    }
    if attrs:
        made.append(("item.attributes_set", {**base, "product_id": product_id, "attrs": attrs}))
    if fields["serial"]:
        made.append(("serial.added", {**base, "product_id": product_id, "serial": fields["serial"]}))
    return made


def record_codes(
    conn: sqlite3.Connection,
    log: EventLog,
    node: Node,
    scanner_id: str,
    reads: list[Read],
    *,
    station: tuple[str, str] | None = None,
) -> list[Result]:
    """The write job for codes a scanner read, in the order it read them: each counted, held or kept.

    ``station`` (session_id, rack_id) counts them there instead of the scanner's own station: a
    supervisor counting kept codes into a session."""
    scanner = get_scanner(conn, scanner_id)
    if scanner["node_id"] != node.node_id:
        # Only the box a scanner is plugged into holds its key (derived from that box's node key).
        raise Conflict(
            f"scanner {scanner_id} belongs to box {scanner['node_id']}: its codes are counted there",
            code="SCANNER_ON_OTHER_BOX",
        )
    if station is not None:
        verifier = conn.execute("SELECT verifier_id FROM sessions WHERE session_id = ?", (station[0],)).fetchone()
        where = _Station(station[0], station[1], verifier[0]) if verifier and verifier[0] else None
    else:
        where = _station(conn, scanner)
    results: list[Result] = []
    if where is None:
        for read in reads:
            results.append(_keep(conn, log, scanner_id, read, UNASSIGNED, "the scanner counts for no station"))
        return results
    parsed = [gs1.scanned(read.code) for read in reads]
    resolved = codes.resolve_codes(conn, sorted({p.code for p in parsed}))
    head = conn.execute("SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (scanner_id,)).fetchone()
    seq, prev = head["head_seq"], head["head_hash"]
    events: list[Event] = []
    pending: list[tuple[Read, Result, int]] = []  # each read taken, its result and its scan event's index
    for read, scan in zip(reads, parsed, strict=True):
        product_id = resolved[scan.code][0]
        result = Result(
            read.code,
            read.read_at,
            "counted",
            counted_as=scan.code,
            product_id=product_id,
            session_id=where.session_id,
            rack_id=where.rack_id,
            fields={k: v for k, v in scan.fields.items() if v},
            message=scan.error,
        )
        if len(scan.code) > codes.MAX_CODE:
            results.append(
                _keep(conn, log, scanner_id, read, CODE_TOO_LONG, f"a count is of codes of at most {codes.MAX_CODE}")
            )
            continue
        made = _events_for(read, where, product_id, scan.code, scan.fields)
        try:
            for event_type, payload in made:
                ingest.check_payload(event_type, payload)
        except ValueError as exc:
            results.append(_keep(conn, log, scanner_id, read, "VALIDATION", str(exc)))
            continue
        pending.append((read, result, len(events)))
        results.append(result)
        for event_type, payload in made:
            seq += 1
            event = Event(scanner_id, seq, new_id(), event_type, payload, log.clock.now(), prev, read.read_at)
            prev = event.hash
            events.append(event)
    if not events:
        return results
    key = scanner_key(node.key, scanner_id)
    signature = sign_chain_head(key, scanner_id, events[-1].seq, events[-1].hash)
    device = Device(scanner_id, scanner["name"], public_bytes(key), head["head_seq"])
    outcome = ingest.ingest(conn, log, device, events, signature)
    if outcome.errors:
        # The session refused them all (nothing of the batch was stored): each is kept, with why.
        refusal = next(e for e in outcome.errors if e["code"] != "NOT_PROCESSED")
        for read, result, _ in pending:
            kept = _keep(conn, log, scanner_id, read, refusal["code"], refusal["message"])
            result.outcome, result.reason, result.message, result.event_id = (
                "kept",
                kept.reason,
                kept.message,
                kept.event_id,
            )
            result.session_id = result.rack_id = None
        return results
    held = {h["event_id"]: h["reason"] for h in outcome.held}
    for _, result, index in pending:
        result.event_id = events[index].event_id
        reason = held.get(events[index].event_id)
        if reason is not None:
            result.outcome, result.reason = "held", reason
    return results


def _keep(conn: sqlite3.Connection, log: EventLog, scanner_id: str, read: Read, reason: str, message: str) -> Result:
    code = read.code[:MAX_KEPT_CODE]
    event = log.record(
        conn,
        "scanner.code_kept",
        {"writer_id": scanner_id, "code": code, "read_at": read.read_at, "reason": reason, "message": message},
    )
    return Result(code, read.read_at, "kept", reason=reason, message=message, event_id=event.event_id)


# -- kept codes -----------------------------------------------------------------------------------
def kept(conn: sqlite3.Connection, *, open_only: bool = True, limit: int = 500) -> list[dict[str, Any]]:
    where = "WHERE k.decision IS NULL" if open_only else ""
    rows = conn.execute(
        "SELECT k.*, s.name AS scanner_name FROM kept_scans k LEFT JOIN scanners s ON s.writer_id = k.scanner_id"
        f" {where} ORDER BY k.read_at, k.event_id LIMIT ?",
        (limit,),
    )
    return [dict(row) for row in rows]


def decide_kept(
    conn: sqlite3.Connection,
    log: EventLog,
    node: Node,
    actor: User,
    event_ids: list[str],
    decision: str,
    *,
    session_id: str | None = None,
    rack_id: str | None = None,
    reason: str = "",
) -> list[Result]:
    """Count kept codes into a session (through the record path, under its rules) or set them aside.

    All or nothing: if the session would not take every one of them, none is counted and the refusal
    says why, so a supervisor never has half a decision to find."""
    if decision not in DECISIONS:
        raise ValidationFailed(f"decision is one of {', '.join(DECISIONS)}", details={"field": "decision"})
    wanted = list(dict.fromkeys(event_ids))
    if not 1 <= len(wanted) <= MAX_DECIDED:
        raise ValidationFailed(f"name 1 to {MAX_DECIDED} kept codes", details={"field": "event_ids"})
    marks = ",".join("?" * len(wanted))
    rows = conn.execute(
        f"SELECT * FROM kept_scans WHERE event_id IN ({marks}) ORDER BY read_at, event_id", wanted
    ).fetchall()
    found = {row["event_id"] for row in rows}
    missing = [e for e in wanted if e not in found]
    if missing:
        raise NotFound(f"kept code {missing[0]} does not exist", code="KEPT_SCAN_NOT_FOUND")
    decided = [row["event_id"] for row in rows if row["decision"] is not None]
    if decided:
        raise Conflict(f"kept code {decided[0]} was already decided", code="ALREADY_DECIDED")
    results: list[Result] = []
    payload: dict[str, Any] = {
        "event_ids": [row["event_id"] for row in rows],
        "decision": decision,
        "by": actor.user_id,
    }
    if decision == "discarded":
        if not reason.strip():
            raise ValidationFailed("say why these codes are set aside", details={"field": "reason"})
        payload["reason"] = reason.strip()
    else:
        if session_id is None:
            raise ValidationFailed("name the session to count them in", details={"field": "session_id"})
        session = get_session(conn, session_id)
        rack = (rack_id or "").strip()
        payload.update(session_id=session["session_id"], rack_id=rack)
        conn.execute("SAVEPOINT count_kept")
        by_scanner: dict[str, list[Read]] = {}
        for row in rows:
            by_scanner.setdefault(row["scanner_id"], []).append(Read(row["code"], row["read_at"]))
        for scanner_id, reads in by_scanner.items():
            results += record_codes(conn, log, node, scanner_id, reads, station=(session_id, rack))
        refused = next((r for r in results if r.outcome == "kept"), None)
        if refused is not None:
            conn.execute("ROLLBACK TO count_kept")
            conn.execute("RELEASE count_kept")
            raise Conflict(
                f"session {session_id} would not take code {refused.code!r}: {refused.message}",
                code=refused.reason or "REFUSED",
            )
        conn.execute("RELEASE count_kept")
    log.record(conn, "scanner.kept_decided", payload)
    return results


# -- reading --------------------------------------------------------------------------------------
def scanner_dict(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["suffix"] = row["suffix"] or DEFAULT_SUFFIX.get(row["kind"], "enter")
    out["station"] = None
    if row["session_id"] is not None:
        rack = conn.execute("SELECT code FROM racks WHERE rack_id = ?", (row["rack_id"] or "",)).fetchone()
        session = conn.execute(
            "SELECT s.status, s.verifier_id, u.display_name FROM sessions s LEFT JOIN users u"
            " ON u.user_id = s.verifier_id WHERE s.session_id = ?",
            (row["session_id"],),
        ).fetchone()
        out["station"] = {
            "session_id": row["session_id"],
            "rack_id": row["rack_id"] or "",
            "rack": rack[0] if rack else None,
            "session_status": session["status"] if session else None,
            "verifier_id": session["verifier_id"] if session else None,
            "verifier_name": session["display_name"] if session else None,
            "assigned_by": row["assigned_by"],
            "assigned_at": row["assigned_at"],
        }
    out["kept_open"] = conn.execute(
        "SELECT count(*) FROM kept_scans WHERE scanner_id = ? AND decision IS NULL", (row["writer_id"],)
    ).fetchone()[0]
    return out


def list_scanners(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [scanner_dict(conn, row) for row in conn.execute("SELECT * FROM scanners ORDER BY enrolled_at, writer_id")]


# -- projections ----------------------------------------------------------------------------------
@projector("scanner.enrolled")
def _scanner_enrolled(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO scanners (writer_id, identity, node_id, kind, model, vendor_id, product_id, serial,"
        " name, layout, suffix, enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p["writer_id"],
            p["identity"],
            p["node_id"],
            p["kind"],
            p["model"],
            p["vendor_id"],
            p["product_id"],
            p["serial"],
            p["name"],
            p.get("layout", "us"),
            DEFAULT_SUFFIX.get(p["kind"]),
            event.occurred_at or wall_ms(),
        ),
    )


_CONFIGURABLE = ("name", "layout", "variant", "suffix", "baud")


@projector("scanner.configured")
def _scanner_configured(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    newer = conn.execute(
        "UPDATE scanners SET config_hlc = ? WHERE writer_id = ? AND config_hlc < ?",
        (event.hlc, p["writer_id"], event.hlc),
    ).rowcount
    if not newer:
        return
    for column in _CONFIGURABLE:
        if column in p:
            conn.execute(f"UPDATE scanners SET {column} = ? WHERE writer_id = ?", (p[column], p["writer_id"]))
    if "name" in p:
        conn.execute("UPDATE writers SET name = ? WHERE writer_id = ?", (p["name"], p["writer_id"]))


@projector("station.assigned")
def _station_assigned(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "UPDATE scanners SET session_id = ?, rack_id = ?, assigned_by = ?, assigned_at = ?, assign_hlc = ?"
        " WHERE writer_id = ? AND assign_hlc < ?",
        (p["session_id"], p["rack_id"], p["by"], event.occurred_at, event.hlc, p["writer_id"], event.hlc),
    )


@projector("station.unassigned")
def _station_unassigned(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "UPDATE scanners SET session_id = NULL, rack_id = NULL, assigned_by = NULL, assigned_at = NULL,"
        " assign_hlc = ? WHERE writer_id = ? AND assign_hlc < ?",
        (event.hlc, event.payload["writer_id"], event.hlc),
    )


@projector("scanner.code_kept")
def _code_kept(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO kept_scans (event_id, scanner_id, code, read_at, reason, message)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event.event_id, p["writer_id"], p["code"], p["read_at"], p["reason"], p["message"]),
    )


@projector("scanner.kept_decided")
def _kept_decided(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    ids = p["event_ids"]
    conn.execute(
        f"UPDATE kept_scans SET decision = ?, decided_by = ?, decided_at = ?, session_id = ?, rack_id = ?"
        f" WHERE event_id IN ({','.join('?' * len(ids))}) AND decision IS NULL",
        (p["decision"], p["by"], event.occurred_at, p.get("session_id"), p.get("rack_id"), *ids),
    )


def station_totals(conn: sqlite3.Connection, scanner_id: str) -> dict[str, Any]:
    """The running totals a station's screen shows: units in its rack, in its session, and by it.
    Never an expected quantity: the station is a verifier's screen."""
    scanner = get_scanner(conn, scanner_id)
    if scanner["session_id"] is None:
        return {"rack_units": 0, "session_units": 0, "scanner_units": 0, "rack_lines": 0}
    session_id, rack_id = scanner["session_id"], scanner["rack_id"] or ""
    rack = conn.execute(
        "SELECT coalesce(sum(p - n), 0), count(DISTINCT code) FROM scan_counts WHERE session_id = ? AND rack_id = ?",
        (session_id, rack_id),
    ).fetchone()
    session_units = conn.execute(
        "SELECT coalesce(sum(p - n), 0) FROM scan_counts WHERE session_id = ?", (session_id,)
    ).fetchone()[0]
    mine = conn.execute(
        "SELECT coalesce(sum(p - n), 0) FROM scan_counts WHERE session_id = ? AND writer_id = ?",
        (session_id, scanner_id),
    ).fetchone()[0]
    return {"rack_units": rack[0], "rack_lines": rack[1], "session_units": session_units, "scanner_units": mine}
