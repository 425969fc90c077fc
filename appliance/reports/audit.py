"""The audit report: every writer's chain verified, and who decided what.

An auditor asks two things: is the log whole (no event changed, removed or inserted since it was
signed), and who approved, voided, resolved, decided, mapped or changed what, and when. The first is
``eventlog.verify_writer_chain`` for each writer (the box, every handheld, every scanner); the second
is the log itself, read for the event types that are decisions or administration. Both are read from
the log, never from projections, so the report says what the signed record says.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from typing import Any

from appliance.reports.table import Column, Table
from appliance.store.eventlog import verify_writer_chain
from replication.wire.codec import unpack

# Event type: what it is, for a person reading the report.
DECISIONS: dict[str, str] = {
    "session.status_changed": "session status",
    "run.status_changed": "run status",
    "conflict.resolved": "conflict resolved",
    "held.decided": "held events decided",
    "quarantine.decided": "quarantine decided",
    "variance.decided": "variance decided",
    "scanner.kept_decided": "kept scanner codes decided",
    "code.mapped": "code mapped to a product",
}
ADMINISTRATION: dict[str, str] = {
    "user.added": "person added",
    "user.active_set": "person activated or deactivated",
    "writer.revoked": "device revoked",
    "writer.renamed": "device renamed",
    "tolerance.set": "tolerance set",
    "lock_authority.designated": "lock authority designated",
    "products.imported": "product master imported",
    "floor.added": "floor added",
    "rack.added": "rack added",
    "run.created": "run created",
    "run.edited": "run edited",
    "run.scope_added": "run scope added",
    "run.expected_imported": "expected quantities imported",
    "session.created": "session created",
    "session.assigned": "session assigned",
    "station.assigned": "scanner station assigned",
    "station.unassigned": "scanner station unassigned",
    "scanner.configured": "scanner settings changed",
    "report.snapshot_taken": "report snapshot taken",
    "report.query_saved": "report query saved",
    "report.query_deleted": "report query deleted",
    "import.mapping_saved": "import mapping saved",
}
KINDS = {**DECISIONS, **ADMINISTRATION}
# What of a payload says what was decided, in the order a reader wants it.
_DETAIL_KEYS = ("status", "decision", "action", "active", "name", "code", "reason", "epoch", "role", "username")
_SUBJECT_KEYS = ("session_id", "run_id", "conflict_id", "writer_id", "user_id", "product_id", "rack_id", "snapshot_id")
MAX_ENTRIES = 100_000


def chains(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every writer's chain walked and its signed head checked against its key."""
    out = []
    for writer in conn.execute("SELECT writer_id, kind, name, status FROM writers ORDER BY kind, name, writer_id"):
        report = verify_writer_chain(conn, writer["writer_id"])
        out.append(
            {
                "writer_id": writer["writer_id"],
                "kind": writer["kind"],
                "name": writer["name"],
                "status": writer["status"],
                "events": report.events,
                "head_seq": report.head_seq,
                "signed_seq": report.signed_seq,
                "ok": report.ok,
                "problems": report.problems,
            }
        )
    return out


def _run_sessions(conn: sqlite3.Connection, run_id: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT session_id FROM sessions WHERE run_id = ?", (run_id,))}


def entries(
    conn: sqlite3.Connection,
    *,
    run_id: str | None = None,
    kinds: str = "all",
    limit: int = MAX_ENTRIES,
) -> Iterator[dict[str, Any]]:
    """Decisions (``kinds="decisions"``), administration (``"administration"``) or both, oldest first;
    with ``run_id``, those about the run or one of its sessions."""
    wanted = DECISIONS if kinds == "decisions" else ADMINISTRATION if kinds == "administration" else KINDS
    marks = ",".join("?" * len(wanted))
    names = {r[0]: r[1] for r in conn.execute("SELECT user_id, display_name FROM users")}
    writers = {r[0]: r[1] for r in conn.execute("SELECT writer_id, name FROM writers")}
    run_sessions = _run_sessions(conn, run_id) if run_id else set()
    given = 0
    for row in conn.execute(
        f"SELECT writer_id, seq, event_id, type, payload, hlc, occurred_at FROM events WHERE type IN ({marks})"
        " ORDER BY hlc, writer_id, seq",
        list(wanted),
    ):
        p = unpack(row["payload"])
        if run_id and p.get("run_id") != run_id and p.get("session_id") not in run_sessions:
            continue
        by = p.get("by")
        yield {
            "at": row["occurred_at"],
            "type": row["type"],
            "what": wanted[row["type"]],
            "by": by,
            "by_name": names.get(by, by) if by else None,
            "subject": next((f"{k}={p[k]}" for k in _SUBJECT_KEYS if p.get(k)), ""),
            "detail": "; ".join(f"{k}: {p[k]}" for k in _DETAIL_KEYS if p.get(k) not in (None, "")),
            "recorded_by": writers.get(row["writer_id"], row["writer_id"]),
            "event": f"{row['writer_id']}/{row['seq']}",
        }
        given += 1
        if given >= limit:
            return


def report(conn: sqlite3.Connection, *, run_id: str | None = None, limit: int = 1000) -> dict[str, Any]:
    found = chains(conn)
    return {
        "chains": found,
        "chains_ok": all(c["ok"] for c in found),
        "decisions": list(entries(conn, run_id=run_id, kinds="decisions", limit=limit)),
        "administration": list(entries(conn, run_id=run_id, kinds="administration", limit=limit)),
    }


COLUMNS = [
    Column("at", "When (UTC)", "datetime"),
    Column("what", "What"),
    Column("by_name", "By"),
    Column("subject", "About"),
    Column("detail", "Detail"),
    Column("recorded_by", "Recorded by"),
    Column("event", "Event"),
]


def as_table(conn: sqlite3.Connection, *, run_id: str | None = None) -> Table:
    """Every decision and administrative action, with the chains' verdict on the summary page."""
    found = chains(conn)
    bad = [c for c in found if not c["ok"]]
    summary = [
        ("Scope", f"run {run_id}" if run_id else "the whole store"),
        ("Writers", str(len(found))),
        ("Events", str(sum(c["events"] for c in found))),
        ("Chains", "all whole and signed" if not bad else f"{len(bad)} with problems: " + "; ".join(
            f"{c['name']}: {c['problems'][0]}" for c in bad[:5]
        )),
    ]  # fmt: skip

    def rows() -> Iterator[dict[str, Any]]:
        for entry in entries(conn, run_id=run_id):
            yield {**entry, "at": _utc(entry["at"])}

    return Table("Audit report", COLUMNS, rows, summary=summary)


def _utc(ms: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).replace(tzinfo=None) if ms else None
