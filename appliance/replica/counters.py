"""Counter-state replication: for a thin uplink, HQ gets the CRDT rows, not the events.

Ten scans of one SKU are ten events but one counter row, so a store on a slow 4G link ships only
the rows that events above HQ's last ack touched, each in its current state, and HQ merges them by
the rules of DESIGN §4:

* scan and damage counters: one entry per writer whose ``p`` and own ``n`` grow with that writer's
  own stream, so merging is ``max`` per entry (shipping a row twice, or an older copy, changes
  nothing);
* negations one writer puts on another's entry (an undo, scans voided under a lapsed lease) are not
  such a prefix, so they travel as a set, each applied once, exactly as their events' folds do;
* attributes: last writer wins by (HLC, writer); serials: the add and remove tag sets, unioned;
* session status and assignment: the later state by the lifecycle's rank, then (HLC, writer);
* events held for a supervisor (``appliance.counting.held``): the held rows of every session a page
  touches, unioned, and the decisions on them, last writer wins. HQ folds no events in this mode, so it
  takes the store's verdict; a closing that a concurrent send-back later overturns keeps HQ's holds,
  the safe side (HQ under-counts until a supervisor accepts them).

HQ records which store vector its rows cover; a box computes the next delta from it, and any box of
the store may send it, since every row a box ships dominates what its events contributed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.counting.codes import PRODUCT_CODE_PREFIX, note_codes, re_resolve
from appliance.counting.held import SESSION_EVENT_TYPES
from appliance.errors import BadRequest, Forbidden
from appliance.store.eventlog import version_vector
from replication.peers.store import COUNTERS
from replication.wire import vectors
from replication.wire.codec import unpack
from replication.wire.protocol import API_VERSION

HELD_TYPES = frozenset(SESSION_EVENT_TYPES)
HELD_COLUMNS = (
    "event_id",
    "origin",
    "session_id",
    "writer_id",
    "seq",
    "type",
    "reason",
    "kind",
    "rack_id",
    "code",
    "entry_writer",
    "product_id",
    "dp",
    "dn",
    "hlc",
)
SESSION_COLUMNS = (
    "session_id",
    "run_id",
    "kind",
    "created_by",
    "created_hlc",
    "verifier_id",
    "device_id",
    "assign_hlc",
    "assign_writer",
    "status",
    "status_round",
    "status_rank",
    "status_reason",
    "status_by",
    "status_hlc",
    "status_writer",
)


def export(conn: sqlite3.Connection, store_id: str, acked: dict[str, int]) -> dict[str, Any]:
    """The rows touched by events above ``acked``, in their current state."""
    ours = version_vector(conn)
    counts: set[tuple[str, str, str, str]] = set()
    damage: set[tuple[str, str, str]] = set()
    attrs: set[tuple[str, str, str]] = set()
    adds: set[str] = set()
    removes: set[str] = set()
    sessions: set[str] = set()
    negations: list[list[Any]] = []
    mapped: set[str] = set()
    held_sessions: set[str] = set()  # sessions whose held events (and decisions on them) may have changed
    decided: set[str] = set()
    for writer, head in ours.items():
        have = acked.get(writer, 0)
        if head <= have:
            continue
        for event_id, kind, payload in conn.execute(
            "SELECT event_id, type, payload FROM events WHERE writer_id = ? AND seq > ? ORDER BY seq", (writer, have)
        ):
            p = unpack(payload)
            if kind == "scan.recorded":
                counts.add((p["session_id"], p["rack_id"] or "", p["code"], writer))
            elif kind == "count.adjusted":
                counts.add((p["session_id"], "", PRODUCT_CODE_PREFIX + p["product_id"], writer))
            elif kind == "scan.undone":
                negations.append(
                    ["undo", p["undoes"], p["session_id"], p["rack_id"] or "", p["of_writer"], [[p["code"], p["qty"]]]]
                )
            elif kind == "lease_scans.voided":
                negations.append(["void", p["conflict_id"], p["session_id"], p["rack_id"], p["writer_id"], p["codes"]])
            elif kind == "damage.adjusted":
                damage.add((p["session_id"], p["product_id"], writer))
            elif kind == "item.attributes_set":
                attrs.update((p["session_id"], p["product_id"], name) for name in p["attrs"])
            elif kind == "serial.added":
                adds.add(event_id)
            elif kind == "serial.removed":
                removes.update(p["tags"])
            elif kind == "code.mapped":
                mapped.add(p["code"])
            elif kind == "events.held":
                held_sessions.update(h["session_id"] for h in p["events"])
            elif kind == "held.decided":
                decided.update(p["event_ids"])
            if kind.startswith("session.") and "session_id" in p:
                sessions.add(p["session_id"])
            if kind in HELD_TYPES:
                held_sessions.add(p["session_id"])
    held_sessions |= _sessions_of(conn, decided)
    return {
        "v": API_VERSION,
        "mode": COUNTERS,
        "store": store_id,
        "vector": ours,
        "scan_counts": _rows(
            conn,
            "SELECT session_id, rack_id, code, writer_id, p, n - u, last_hlc FROM scan_counts"
            " WHERE session_id = ? AND rack_id = ? AND code = ? AND writer_id = ?",
            counts,
        ),
        "damage_counts": _rows(
            conn,
            "SELECT session_id, product_id, writer_id, p, n FROM damage_counts"
            " WHERE session_id = ? AND product_id = ? AND writer_id = ?",
            damage,
        ),
        "item_attrs": _rows(
            conn,
            "SELECT session_id, product_id, name, value, hlc, writer_id FROM item_attrs"
            " WHERE session_id = ? AND product_id = ? AND name = ?",
            attrs,
        ),
        "serial_adds": _rows(
            conn, "SELECT tag, session_id, product_id, serial FROM serial_adds WHERE tag = ?", {(t,) for t in adds}
        ),
        "serial_removes": sorted(removes),
        "negations": negations,
        "sessions": _rows(
            conn, f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE session_id = ?", {(s,) for s in sessions}
        ),
        "code_mappings": _rows(
            conn, "SELECT code, product_id, hlc, writer_id FROM code_mappings WHERE code = ?", {(c,) for c in mapped}
        ),
        "held_events": _many(
            conn, f"SELECT {', '.join(HELD_COLUMNS)} FROM held_events WHERE session_id = ?", held_sessions
        ),
        "held_decisions": _many(
            conn,
            "SELECT d.event_id, d.decision, d.reason, d.by_user, d.at_ms, d.hlc, d.writer_id FROM held_decisions d"
            " WHERE d.event_id IN (SELECT event_id FROM held_events WHERE session_id = ?)",
            held_sessions,
        ),
    }


def _sessions_of(conn: sqlite3.Connection, event_ids: set[str]) -> set[str]:
    return {
        row[0]
        for event_id in event_ids
        for row in conn.execute("SELECT DISTINCT session_id FROM held_events WHERE event_id = ?", (event_id,))
    }


def _many(conn: sqlite3.Connection, sql: str, keys: set[str]) -> list[list[Any]]:
    return [list(row) for key in sorted(keys) for row in conn.execute(sql, (key,))]


def _rows(conn: sqlite3.Connection, sql: str, keys: set[Any]) -> list[list[Any]]:
    out = []
    for key in sorted(keys):
        row = conn.execute(sql, key).fetchone()
        if row is not None:
            out.append(list(row))
    return out


def covered(conn: sqlite3.Connection) -> dict[str, int]:
    """The store vector whose effects HQ's rows hold."""
    row = conn.execute("SELECT value FROM replica_meta WHERE name = 'counter_vector'").fetchone()
    return vectors.unpack(row[0] if row else None)


def merge(conn: sqlite3.Connection, store_id: str, page: dict[str, Any]) -> dict[str, int]:
    """Merge a counter page in the caller's transaction; returns the store vector now covered."""
    if page.get("store") != store_id:
        raise Forbidden(f"page of store {page.get('store')!r} offered to {store_id!r}", code="WRONG_STORE")
    try:
        _merge(conn, page)
        vector = vectors.join(covered(conn), vectors.parse(page.get("vector")))
    except (TypeError, ValueError, KeyError) as exc:
        raise BadRequest(f"malformed counter page: {exc}", code="BAD_PAGE") from None
    conn.execute(
        "INSERT OR REPLACE INTO replica_meta (name, value) VALUES ('counter_vector', ?)",
        (vectors.pack(vector),),
    )
    return vector


def _merge(conn: sqlite3.Connection, page: dict[str, Any]) -> None:
    conn.executemany(
        "INSERT INTO scan_counts (session_id, rack_id, code, writer_id, p, n, last_hlc) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET p = max(p, excluded.p), n = max(n - u, excluded.n) + u,"
        " last_hlc = max(last_hlc, excluded.last_hlc)",
        page["scan_counts"],
    )
    seen = {row[2] for row in page["scan_counts"]}
    for kind, once, session_id, rack_id, writer_id, codes in page["negations"]:
        table, column = ("scan_undos", "undoes") if kind == "undo" else ("lease_voids", "conflict_id")
        if conn.execute(f"INSERT OR IGNORE INTO {table} ({column}) VALUES (?)", (once,)).rowcount:
            for code, qty in codes:
                seen.add(code)
                conn.execute(
                    "INSERT INTO scan_counts (session_id, rack_id, code, writer_id, p, n, u, last_hlc)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?, 0) ON CONFLICT DO UPDATE SET n = n + excluded.n, u = u + excluded.u",
                    (session_id, rack_id, code, writer_id, qty, qty),
                )
    # A code a supervisor mapped at the store: last writer wins, as the event's fold does, and the code
    # is resolved again so that its counts move to the mapped product here too.
    mappings = page.get("code_mappings") or []
    conn.executemany(
        "INSERT INTO code_mappings (code, product_id, hlc, writer_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET product_id = excluded.product_id, hlc = excluded.hlc,"
        " writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (code_mappings.hlc, code_mappings.writer_id)",
        mappings,
    )
    # Totals per product join counters to scan_codes: a code left unresolved would be counted for no product.
    note_codes(conn, seen)
    re_resolve(conn, sorted({str(row[0]) for row in mappings}))
    conn.executemany(
        "INSERT INTO damage_counts (session_id, product_id, writer_id, p, n) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET p = max(p, excluded.p), n = max(n, excluded.n)",
        page["damage_counts"],
    )
    conn.executemany(
        "INSERT INTO item_attrs (session_id, product_id, name, value, hlc, writer_id) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET value = excluded.value, hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (item_attrs.hlc, item_attrs.writer_id)",
        page["item_attrs"],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO serial_adds (tag, session_id, product_id, serial) VALUES (?, ?, ?, ?)",
        page["serial_adds"],
    )
    conn.executemany("INSERT OR IGNORE INTO serial_removes (tag) VALUES (?)", [(t,) for t in page["serial_removes"]])
    assign = "(excluded.assign_hlc, excluded.assign_writer) > (sessions.assign_hlc, sessions.assign_writer)"
    status = (
        "(excluded.status_round, excluded.status_rank, excluded.status_hlc, excluded.status_writer)"
        " > (sessions.status_round, sessions.status_rank, sessions.status_hlc, sessions.status_writer)"
    )
    created = ("run_id", "kind", "created_by", "created_hlc")
    assigned = ("verifier_id", "device_id", "assign_hlc", "assign_writer")
    statused = SESSION_COLUMNS[9:]
    sets = [f"{c} = coalesce(sessions.{c}, excluded.{c})" for c in created]
    sets += [f"{c} = CASE WHEN {assign} THEN excluded.{c} ELSE sessions.{c} END" for c in assigned]
    sets += [f"{c} = CASE WHEN {status} THEN excluded.{c} ELSE sessions.{c} END" for c in statused]
    conn.executemany(
        f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' for _ in SESSION_COLUMNS)})"
        f" ON CONFLICT DO UPDATE SET {', '.join(sets)}",
        page["sessions"],
    )
    # Held events: a set, unioned (a page from any box of the store only adds to it); decisions on them
    # last writer wins, as the event's fold does. Pages from boxes without held events carry neither.
    conn.executemany(
        f"INSERT OR IGNORE INTO held_events ({', '.join(HELD_COLUMNS)})"
        f" VALUES ({', '.join('?' for _ in HELD_COLUMNS)})",
        page.get("held_events") or [],
    )
    conn.executemany(
        "INSERT INTO held_decisions (event_id, decision, reason, by_user, at_ms, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET decision = excluded.decision,"
        " reason = excluded.reason, by_user = excluded.by_user, at_ms = excluded.at_ms, hlc = excluded.hlc,"
        " writer_id = excluded.writer_id WHERE (excluded.hlc, excluded.writer_id) > (held_decisions.hlc,"
        " held_decisions.writer_id)",
        page.get("held_decisions") or [],
    )
