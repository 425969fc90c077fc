"""Items: what a session counted of each product, folded from scans, adjustments and edits.

Quantities are PN-counters with one entry per writer, kept per scanned code; a code resolves to a
product through ``scan_codes`` (``appliance.counting.codes``), so an unmatched code mapped later
re-resolves every count made with it. Attributes are LWW
registers, serials an add-wins OR-set (DESIGN §4). Every command here records one event through
``EventLog.record``; device batches fold the same event types through the same projectors.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from typing import Any

from appliance.auth.people import User
from appliance.counting.codes import MAX_CODE, PRODUCT_CODE_PREFIX, note_codes
from appliance.counting.locks import lease_token, session_lock
from appliance.counting.sessions import _require_actor, get_session
from appliance.errors import Conflict, NotFound, ValidationFailed
from appliance.store.db import insert_rows
from appliance.store.eventlog import EventLog, projection_tables, projector, run_projector
from replication.wire.codec import Event, unpack

projection_tables(
    "scan_counts",
    "scan_undos",
    "scan_claims",
    "damage_counts",
    "item_attrs",
    "serial_adds",
    "serial_removes",
)

# The largest quantity one event may carry: a scan's qty, a "set to N" target, an adjustment's |delta|.
# Counters and rollups are sums in SQLite's signed 64-bit integers; with every event's part at most
# 10^5, a sum reaches 2^63 only after 9.2 * 10^13 events in one session, petabytes of log that no box
# holds, so no read or fold of stored events can overflow however many arrive.
MAX_QTY = 100_000
# A price in minor units (paise, cents): up to 10 million in major units, more than any shelf item costs.
# A price is a register, never summed into a counter, so it needs no bound for sums as quantities do.
MAX_MRP_MINOR = 1_000_000_000
MAX_SERIAL = 64
MAX_TEXT = 64
ITEM_STATUSES = ("partial", "finalized", "re-verify")
CONDITIONS = ("good", "damaged", "expired", "opened", "repackaged", "other")
# batch and expiry_date come from GS1 codes (AI 10, AI 17) a scanner on the box reads (counting.stations).
ATTRIBUTES = (
    "mfg_date",
    "mrp_minor",
    "uom",
    "condition",
    "category",
    "subcategory",
    "status",
    "batch",
    "expiry_date",
)
DATE_ATTRIBUTES = ("mfg_date", "expiry_date")


def counting_session(conn: sqlite3.Connection, actor: User, session_id: str, supervising: bool = False) -> sqlite3.Row:
    """The session a change goes into. A supervisor resolving a conflict may also change a
    SUBMITTED session (that is when conflicts get reviewed); nobody changes APPROVED or VOID ones."""
    session = get_session(conn, session_id)
    run_status = conn.execute("SELECT status FROM runs WHERE run_id = ?", (session["run_id"],)).fetchone()
    if run_status is None or run_status[0] != "IN_PROGRESS":
        raise Conflict("counts change only while their run is in progress", code="RUN_NOT_IN_PROGRESS")
    if supervising:
        if session["status"] not in ("IN_PROGRESS", "SUBMITTED"):
            raise Conflict(f"a {session['status']} session can no longer change", code="SESSION_CLOSED")
        return session
    _require_actor(actor, session)
    if session["status"] != "IN_PROGRESS":
        raise Conflict(
            f"the session is {session['status']}; scans go into an IN_PROGRESS session",
            code="SESSION_NOT_IN_PROGRESS",
        )
    lock = session_lock(conn, session_id)
    if lock is not None and lock["user_id"] != actor.user_id:
        raise Conflict(
            "another person's device holds this session's lock",
            code="SESSION_LOCKED",
            details={"device_id": lock["device_id"]},
        )
    return session


def _check_qty(qty: int, field: str = "qty", *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(qty, bool) or not isinstance(qty, int) or not low <= qty <= MAX_QTY:
        raise ValidationFailed(f"{field} must be a whole number from {low} to {MAX_QTY}", details={"field": field})
    return qty


def require_product(conn: sqlite3.Connection, product_id: str) -> None:
    if conn.execute("SELECT 1 FROM products WHERE product_id = ?", (product_id,)).fetchone() is None:
        raise NotFound(f"product {product_id} does not exist", code="PRODUCT_NOT_FOUND")


def _session_rack(conn: sqlite3.Connection, session: sqlite3.Row, rack_code: str | None) -> str:
    racks = conn.execute(
        "SELECT r.rack_id, r.code FROM session_racks s JOIN racks r ON r.rack_id = s.rack_id WHERE s.session_id = ?",
        (session["session_id"],),
    ).fetchall()
    if rack_code is None:
        return racks[0]["rack_id"] if len(racks) == 1 else ""
    code = rack_code.strip().upper()
    for rack in racks:
        if rack["code"] == code:
            return str(rack["rack_id"])
    row = conn.execute("SELECT rack_id FROM racks WHERE code = ?", (code,)).fetchone()
    if row is None:
        raise NotFound(f"rack {code} does not exist", code="RACK_NOT_FOUND")
    if racks:
        raise Conflict(f"rack {code} is not part of this session", code="RACK_NOT_IN_SESSION")
    return str(row["rack_id"])


# -- quantities -----------------------------------------------------------------------------------
def record_scan(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    *,
    code: str,
    qty: int = 1,
    rack_code: str | None = None,
    product_id: str | None = None,
) -> Event:
    """One scan (or a typed code with a quantity). ``product_id`` says which item the verifier was
    verifying, so that a barcode of another product is flagged rather than silently counted."""
    session = counting_session(conn, actor, session_id)
    scanned = code.strip()
    if not scanned or len(scanned) > MAX_CODE:
        raise ValidationFailed(f"code must be 1-{MAX_CODE} characters", details={"field": "code"})
    if product_id is not None:
        require_product(conn, product_id)
    rack_id = _session_rack(conn, session, rack_code)
    payload = {
        "session_id": session_id,
        "code": scanned,
        "qty": _check_qty(qty),
        "rack_id": rack_id,
        "product_id": product_id,
        # The fencing token of the verifier's lease on the rack, if they hold one.
        "token": lease_token(conn, session["run_id"], rack_id, actor.user_id) if rack_id else None,
        "by": actor.user_id,
    }
    return log.record(conn, "scan.recorded", payload)


def undo_scan(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    event_id: str,
    *,
    supervising: bool = False,
) -> None:
    """Undo records a negating event; the scan itself stays in the log."""
    counting_session(conn, actor, session_id, supervising)
    row = conn.execute("SELECT writer_id, type, payload FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None or row["type"] != "scan.recorded":
        raise NotFound(f"scan {event_id} does not exist", code="SCAN_NOT_FOUND")
    scan = Event(row["writer_id"], 0, event_id, row["type"], _unpack(row["payload"]), 0, b"")
    if scan.payload["session_id"] != session_id:
        raise NotFound(f"scan {event_id} is not part of this session", code="SCAN_NOT_FOUND")
    if conn.execute("SELECT 1 FROM scan_undos WHERE undoes = ?", (event_id,)).fetchone():
        raise Conflict("that scan was already undone", code="SCAN_ALREADY_UNDONE")
    log.record(
        conn,
        "scan.undone",
        {
            "session_id": session_id,
            "undoes": event_id,
            "of_writer": scan.writer_id,
            "code": scan.payload["code"],
            "rack_id": scan.payload["rack_id"],
            "qty": scan.payload["qty"],
            "by": actor.user_id,
        },
    )


def _unpack(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = unpack(data)
    return value


def set_quantity(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    qty: int,
    *,
    supervising: bool = False,
) -> None:
    """ "Set to N": records the adjustment from what the box holds now to N."""
    counting_session(conn, actor, session_id, supervising)
    require_product(conn, product_id)
    target = _check_qty(qty, allow_zero=True)
    # The delta may exceed MAX_QTY (a count devices took high), but it brings the sum back to a bounded
    # target, so the box's own adjustments grow the counters no faster than the events they correct.
    delta = target - item_quantity(conn, session_id, product_id)
    if delta:
        log.record(
            conn,
            "count.adjusted",
            {
                "session_id": session_id,
                "product_id": product_id,
                "delta": delta,
                "target": target,
                "by": actor.user_id,
            },
        )


def set_damage(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    qty: int,
    *,
    supervising: bool = False,
) -> None:
    counting_session(conn, actor, session_id, supervising)
    require_product(conn, product_id)
    target = _check_qty(qty, "damage_qty", allow_zero=True)
    delta = target - damage_quantity(conn, session_id, product_id)
    if delta:
        log.record(
            conn,
            "damage.adjusted",
            {
                "session_id": session_id,
                "product_id": product_id,
                "delta": delta,
                "target": target,
                "by": actor.user_id,
            },
        )


# -- attributes and serials ------------------------------------------------------------------------
def check_adjustment(delta: int, target: int, *, nonzero: bool) -> None:
    """An adjustment a writer sends: ``target`` 0..MAX_QTY and ``|delta|`` at most MAX_QTY.

    A count shown above MAX_QTY is set down by several adjustments; bounding each one is what keeps
    every counter and every sum of them inside 64 bits (see ``MAX_QTY``).
    """
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= MAX_QTY:
        raise ValidationFailed(f"target must be a whole number from 0 to {MAX_QTY}", details={"field": "target"})
    if isinstance(delta, bool) or not isinstance(delta, int) or not -MAX_QTY <= delta <= MAX_QTY:
        raise ValidationFailed(f"delta must be a whole number from -{MAX_QTY} to {MAX_QTY}", details={"field": "delta"})
    if nonzero and delta == 0:
        raise ValidationFailed("delta must not be 0", details={"field": "delta"})


def check_serial(serial: str) -> str:
    text = serial.strip() if isinstance(serial, str) else ""
    if not text or len(serial) > MAX_SERIAL:
        raise ValidationFailed(f"a serial number is 1-{MAX_SERIAL} characters", details={"field": "serial"})
    return text


def check_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes in the form they are kept. A value's type is checked before its content: a
    list or a map is no attribute value, and a device's event is stored as it was sent."""
    clean: dict[str, Any] = {}
    for name, value in attrs.items():
        if name not in ATTRIBUTES:
            raise ValidationFailed(f"unknown attribute {name!r}", details={"field": name})
        if value is None:
            clean[name] = None
        elif name in DATE_ATTRIBUTES:
            clean[name] = _check_date(value, name)
        elif name == "mrp_minor":
            clean[name] = _check_mrp(value)
        elif name == "status":
            clean[name] = value if isinstance(value, str) and value in ITEM_STATUSES else _bad(name, ITEM_STATUSES)
        elif name == "condition":
            clean[name] = value if isinstance(value, str) and value in CONDITIONS else _bad(name, CONDITIONS)
        else:
            text = value.strip() if isinstance(value, str) else ""
            clean[name] = text if len(text) > 0 and len(value) <= MAX_TEXT else _bad(name)
    return clean


def _check_mrp(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MRP_MINOR:
        raise ValidationFailed(
            f"mrp_minor must be a whole number of minor units from 0 to {MAX_MRP_MINOR}", details={"field": "mrp_minor"}
        )
    return value


def _check_date(value: Any, name: str) -> str:
    """``YYYY-MM-DD`` exactly: the stored text is compared with dates as text (conflict checks)."""
    if isinstance(value, str) and len(value) == 10 and value[4] == value[7] == "-":
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValidationFailed(f"{name} must be a date like 2026-03-01", details={"field": name})


def _bad(name: str, choices: tuple[str, ...] = ()) -> Any:
    hint = f"one of {', '.join(choices)}" if choices else "a valid value"
    raise ValidationFailed(f"{name} must be {hint}", details={"field": name})


def set_attributes(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    attrs: dict[str, Any],
    *,
    supervising: bool = False,
) -> None:
    counting_session(conn, actor, session_id, supervising)
    require_product(conn, product_id)
    clean = check_attributes(attrs)
    if clean:
        log.record(
            conn,
            "item.attributes_set",
            {"session_id": session_id, "product_id": product_id, "attrs": clean, "by": actor.user_id},
        )


def add_serial(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    serial: str,
    *,
    supervising: bool = False,
) -> None:
    counting_session(conn, actor, session_id, supervising)
    require_product(conn, product_id)
    text = check_serial(serial)
    if text in item_serials(conn, session_id, product_id):
        raise Conflict("that serial is already on this item", code="SERIAL_ALREADY_ON_ITEM")
    log.record(
        conn,
        "serial.added",
        {"session_id": session_id, "product_id": product_id, "serial": text, "by": actor.user_id},
    )


def remove_serial(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    serial: str,
    *,
    supervising: bool = False,
) -> None:
    counting_session(conn, actor, session_id, supervising)
    tags = [
        row[0]
        for row in conn.execute(
            "SELECT a.tag FROM counted_serial_adds a LEFT JOIN serial_removes r ON r.tag = a.tag"
            " WHERE a.session_id = ? AND a.product_id = ? AND a.serial = ? AND r.tag IS NULL",
            (session_id, product_id, serial.strip()),
        )
    ]
    if not tags:
        raise NotFound("that serial is not on this item", code="SERIAL_NOT_FOUND")
    log.record(
        conn,
        "serial.removed",
        {
            "session_id": session_id,
            "product_id": product_id,
            "serial": serial.strip(),
            "tags": tags,
            "by": actor.user_id,
        },
    )


# -- projections ----------------------------------------------------------------------------------
_ADD_COUNT_INTO = "INSERT INTO scan_counts (session_id, rack_id, code, writer_id, p, n, u, last_hlc)"
_ADD_COUNT_ON_CONFLICT = (
    " ON CONFLICT DO UPDATE SET p = p + excluded.p, n = n + excluded.n, u = u + excluded.u,"
    " last_hlc = max(last_hlc, excluded.last_hlc)"
)


def _count(
    conn: sqlite3.Connection,
    session_id: str,
    rack_id: str,
    code: str,
    writer: str,
    dp: int,
    dn: int,
    hlc: int,
    du: int = 0,
) -> None:
    """Add to a writer's counter entry; ``du`` is the part of ``dn`` that an undo contributes."""
    insert_rows(conn, _ADD_COUNT_INTO, [(session_id, rack_id, code, writer, dp, dn, du, hlc)], _ADD_COUNT_ON_CONFLICT)
    note_codes(conn, {code})


@run_projector("scan.recorded")
def _scans_recorded(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """A run of scans adds to each counter entry once: a batch of 500 scans of 40 codes is 40
    upserts. Counter addition commutes, so the sums equal folding the scans one by one."""
    entries: dict[tuple[str, str, str, str], list[int]] = {}
    claims = []
    for event in events:
        p = event.payload
        key = (p["session_id"], p["rack_id"] or "", p["code"], event.writer_id)
        entry = entries.get(key)
        if entry is None:
            entries[key] = [p["qty"], event.hlc]
        else:
            entry[0] += p["qty"]
            if event.hlc > entry[1]:
                entry[1] = event.hlc
        if p.get("product_id"):
            claims.append((event.event_id, p["session_id"], p["code"], p["product_id"], p["qty"]))
    rows = [(*key, qty, 0, 0, hlc) for key, (qty, hlc) in entries.items()]
    insert_rows(conn, _ADD_COUNT_INTO, rows, _ADD_COUNT_ON_CONFLICT)
    note_codes(conn, {key[2] for key in entries})
    if claims:
        insert_rows(conn, "INSERT OR IGNORE INTO scan_claims (event_id, session_id, code, product_id, qty)", claims)


@projector("scan.undone")
def _scan_undone(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    # The negation lands on the undone scan's own counter entry, and only once however many
    # replicas or writers undo it, so the fold does not depend on who undid it first.
    undone = conn.execute("INSERT OR IGNORE INTO scan_undos (undoes) VALUES (?)", (p["undoes"],))
    if undone.rowcount:
        # last_hlc stays the last *scan's* time (0 never raises it), whichever undo won the race.
        _count(conn, p["session_id"], p["rack_id"] or "", p["code"], p["of_writer"], 0, p["qty"], 0, du=p["qty"])


@projector("count.adjusted")
def _count_adjusted(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    delta = p["delta"]
    code = PRODUCT_CODE_PREFIX + p["product_id"]
    _count(conn, p["session_id"], "", code, event.writer_id, max(delta, 0), max(-delta, 0), event.hlc)


@projector("damage.adjusted")
def _damage_adjusted(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    delta = p["delta"]
    conn.execute(
        "INSERT INTO damage_counts (session_id, product_id, writer_id, p, n) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET p = p + excluded.p, n = n + excluded.n",
        (p["session_id"], p["product_id"], event.writer_id, max(delta, 0), max(-delta, 0)),
    )


@projector("item.attributes_set")
def _attributes_set(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.executemany(
        "INSERT INTO item_attrs (session_id, product_id, name, value, hlc, writer_id) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET value = excluded.value, hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (item_attrs.hlc, item_attrs.writer_id)",
        [
            (p["session_id"], p["product_id"], name, value, event.hlc, event.writer_id)
            for name, value in p["attrs"].items()
        ],
    )


@projector("serial.added")
def _serial_added(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO serial_adds (tag, session_id, product_id, serial) VALUES (?, ?, ?, ?)",
        (event.event_id, p["session_id"], p["product_id"], p["serial"]),
    )


@projector("serial.removed")
def _serial_removed(conn: sqlite3.Connection, event: Event) -> None:
    conn.executemany("INSERT OR IGNORE INTO serial_removes (tag) VALUES (?)", [(t,) for t in event.payload["tags"]])


# -- queries --------------------------------------------------------------------------------------
# Sums are ``CAST(total(...) AS INTEGER)``, not ``sum(...)``: SQLite's sum() fails the whole read on an
# overflow, so one event stored before the bounds existed (or replicated from a box without them) would
# break every view of its run for good. total() cannot fail; it is exact up to 2^53, far beyond any sum
# of bounded events, and the cast keeps the answer an integer (saturating past 64 bits).
def item_quantity(conn: sqlite3.Connection, session_id: str, product_id: str) -> int:
    row = conn.execute(
        "SELECT CAST(total(c.p - c.n) AS INTEGER) FROM counted_scans c JOIN scan_codes s ON s.code = c.code"
        " WHERE c.session_id = ? AND s.product_id = ?",
        (session_id, product_id),
    ).fetchone()
    return int(row[0])


def damage_quantity(conn: sqlite3.Connection, session_id: str, product_id: str) -> int:
    row = conn.execute(
        "SELECT CAST(total(p - n) AS INTEGER) FROM counted_damage WHERE session_id = ? AND product_id = ?",
        (session_id, product_id),
    ).fetchone()
    return int(row[0])


def item_serials(conn: sqlite3.Connection, session_id: str, product_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT a.serial FROM counted_serial_adds a LEFT JOIN serial_removes r ON r.tag = a.tag"
        " WHERE a.session_id = ? AND a.product_id = ? AND r.tag IS NULL ORDER BY a.serial",
        (session_id, product_id),
    )
    return [row[0] for row in rows]


def session_items(conn: sqlite3.Connection, session_id: str) -> dict[str, Any]:
    """Everything a session holds: one entry per product touched, and the codes nobody recognises."""
    items: dict[str, dict[str, Any]] = {}

    def item(product_id: str) -> dict[str, Any]:
        if product_id not in items:
            items[product_id] = {
                "product_id": product_id,
                "qty": 0,
                "damage_qty": 0,
                "serials": [],
                "photos": [],
                "attributes": {},
            }
        return items[product_id]

    unmatched = []
    for row in conn.execute(
        "SELECT s.product_id, c.code, CAST(total(c.p - c.n) AS INTEGER) AS qty, max(c.last_hlc) AS last_hlc"
        " FROM counted_scans c JOIN scan_codes s ON s.code = c.code WHERE c.session_id = ?"
        " GROUP BY s.product_id, c.code",
        (session_id,),
    ):
        if row["product_id"] is None:
            unmatched.append({"code": row["code"], "qty": row["qty"]})
        else:
            entry = item(row["product_id"])
            entry["qty"] += row["qty"]
            entry["last_scan_hlc"] = max(entry.get("last_scan_hlc", 0), row["last_hlc"])
    for row in conn.execute(
        "SELECT product_id, CAST(total(p - n) AS INTEGER) FROM counted_damage WHERE session_id = ? GROUP BY product_id",
        (session_id,),
    ):
        item(row[0])["damage_qty"] = row[1]
    for row in conn.execute(
        "SELECT product_id, name, value FROM item_attrs WHERE session_id = ? ORDER BY name", (session_id,)
    ):
        item(row[0])["attributes"][row[1]] = row[2]
    for row in conn.execute(
        "SELECT DISTINCT a.product_id, a.serial FROM counted_serial_adds a LEFT JOIN serial_removes r ON r.tag = a.tag"
        " WHERE a.session_id = ? AND r.tag IS NULL ORDER BY a.serial",
        (session_id,),
    ):
        item(row[0])["serials"].append(row[1])
    # A photo a held event attached is left out until a supervisor accepts it (held.effect).
    for row in conn.execute(
        "SELECT product_id, sha256, content_type FROM photos p WHERE session_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM held_open h WHERE h.session_id = p.session_id AND h.kind = 'none'"
        " AND h.product_id = p.product_id AND h.code = p.sha256) ORDER BY sha256",
        (session_id,),
    ):
        item(row[0])["photos"].append({"sha256": row[1], "content_type": row[2]})
    if items:
        marks = ",".join("?" for _ in items)
        for row in conn.execute(
            f"SELECT product_id, sku, name, uom FROM products WHERE product_id IN ({marks})", list(items)
        ):
            items[row["product_id"]].update(sku=row["sku"], name=row["name"], product_uom=row["uom"])
    for entry in items.values():
        entry["status"] = entry["attributes"].get("status", "partial")
    ordered = sorted(items.values(), key=lambda e: (e.get("sku") or "", e["product_id"]))
    return {"items": ordered, "unmatched": sorted(unmatched, key=lambda u: u["code"])}
