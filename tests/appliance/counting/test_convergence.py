"""Properties of the counting folds: projections equal a fresh rebuild from the log, and they do not
depend on the order in which different writers' events arrive (each writer's own order kept)."""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.catalog import layout, product_import
from appliance.counting import conflicts, runs, sessions
from appliance.store.eventlog import enroll_writer, new_id, rebuild
from replication.wire.codec import ZERO_HASH, Event
from tests.conftest import make_settings

WRITERS = ("dev-a", "dev-b", "dev-c")
CODES = ("4006381333931", "SKU-B", "SKU-C", "UNKNOWN-1", "UNKNOWN-2")
SERIALS = ("S1", "S2", "S3")
STATUSES = ("IN_PROGRESS", "SUBMITTED", "APPROVED", "VOID")
PROJECTIONS = (
    "runs",
    "run_products",
    "run_racks",
    "run_expected",
    "sessions",
    "session_racks",
    "session_products",
    "scan_counts",
    "scan_codes",
    "code_mappings",
    "scan_undos",
    "scan_claims",
    "damage_counts",
    "item_attrs",
    "serial_adds",
    "serial_removes",
    "photos",
    "conflict_resolutions",
    "session_writers",
    "held_events",
    "held_decisions",
    "products",
    "product_codes",
)
# What every total is read from: the counters less what is held (and quarantined).
COUNTED = ("counted_scans", "counted_damage", "counted_serial_adds")

CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\nSKU-A,4006381333931,Alpha,Food,EA,10.00,5\n"
    b"SKU-B,,Beta,Food,EA,2.50,3\nSKU-C,,Gamma,Home,EA,1.00,0\n"
)


def _setup(data_dir: Path) -> tuple[Box, dict[str, Any]]:
    """A store with three products, one run and two sessions, all written by the box itself."""

    box = open_box(make_settings(data_dir))
    admin = User("u-admin", "admin", "Admin", "admin")
    plan = product_import.parse_file(CATALOG, "catalog.csv")

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        people.add_user(conn, box.log, "v1", "V1", "verifier", "x")
        people.add_user(conn, box.log, "v2", "V2", "verifier", "x")
        layout.add_floor(conn, box.log, "G", "Ground")
        layout.add_rack(conn, box.log, "G", "G-01")
        product_import.commit(conn, box.log, plan)
        run_id = runs.create_run(conn, box.log, admin, name="Prop", kind="directed")
        runs.add_scope(conn, box.log, admin, run_id, skus=["SKU-A", "SKU-B"], rack_codes=["G-01"])
        users = {r["username"]: r["user_id"] for r in conn.execute("SELECT user_id, username FROM users")}
        s1 = sessions.create_session(conn, box.log, admin, run_id, verifier_id=users["v1"], rack_codes=["G-01"])
        s2 = sessions.create_session(conn, box.log, admin, run_id, verifier_id=users["v2"], rack_codes=["G-01"])
        runs.start_run(conn, box.log, admin, run_id)
        for writer in WRITERS:
            enroll_writer(conn, writer, "device", box.node.store_id, writer, bytes(32))
        pids = [r[0] for r in conn.execute("SELECT product_id FROM products ORDER BY sku")]
        return {"run_id": run_id, "sessions": [s1, s2], "products": pids}

    return box, box.db.write(job)


def _events(draw: st.DrawFn, ctx: dict[str, Any]) -> list[Event]:
    """Random device events: scans, undos, adjustments, attributes, serials, mappings, statuses."""
    heads = dict.fromkeys(WRITERS, (0, ZERO_HASH))
    clock = dict.fromkeys(WRITERS, 1000 << 16)
    scans: list[Event] = []
    serial_tags: list[tuple[str, str, str, str]] = []  # (tag, session, product, serial)
    out: list[Event] = []
    for _ in range(draw(st.integers(1, 40))):
        writer = draw(st.sampled_from(WRITERS))
        session = draw(st.sampled_from(ctx["sessions"]))
        product = draw(st.sampled_from(ctx["products"]))
        kind = draw(
            st.sampled_from(
                [
                    "scan",
                    "scan",
                    "scan",
                    "undo",
                    "adjust",
                    "damage",
                    "attrs",
                    "serial_add",
                    "serial_remove",
                    "map",
                    "status",
                    "status",
                    "decide",
                    "resolve",
                ]
            )
        )
        payload: dict[str, Any]
        if kind == "scan":
            etype, payload = (
                "scan.recorded",
                {
                    "session_id": session,
                    "code": draw(st.sampled_from(CODES)),
                    "qty": draw(st.integers(1, 5)),
                    "rack_id": "",
                    "product_id": draw(st.sampled_from([None, product])),
                    "token": None,
                    "by": writer,
                },
            )
        elif kind == "undo" and scans:
            target = draw(st.sampled_from(scans))
            etype, payload = (
                "scan.undone",
                {
                    "session_id": target.payload["session_id"],
                    "undoes": target.event_id,
                    "of_writer": target.writer_id,
                    "code": target.payload["code"],
                    "rack_id": "",
                    "qty": target.payload["qty"],
                    "by": writer,
                },
            )
        elif kind == "adjust":
            delta = draw(st.integers(-3, 3))
            etype, payload = (
                "count.adjusted",
                {"session_id": session, "product_id": product, "delta": delta, "target": 0, "by": writer},
            )
        elif kind == "damage":
            etype, payload = (
                "damage.adjusted",
                {
                    "session_id": session,
                    "product_id": product,
                    "delta": draw(st.integers(-2, 4)),
                    "target": 0,
                    "by": writer,
                },
            )
        elif kind == "attrs":
            etype, payload = (
                "item.attributes_set",
                {
                    "session_id": session,
                    "product_id": product,
                    "by": writer,
                    "attrs": {
                        draw(st.sampled_from(["mfg_date", "condition", "status"])): draw(
                            st.sampled_from(["2020-01-01", "2999-01-01", "good", "damaged", "finalized", None])
                        )
                    },
                },
            )
        elif kind == "serial_add":
            serial = draw(st.sampled_from(SERIALS))
            etype, payload = (
                "serial.added",
                {"session_id": session, "product_id": product, "serial": serial, "by": writer},
            )
        elif kind == "serial_remove" and serial_tags:
            tag, s_id, p_id, serial = draw(st.sampled_from(serial_tags))
            etype, payload = (
                "serial.removed",
                {"session_id": s_id, "product_id": p_id, "serial": serial, "tags": [tag], "by": writer},
            )
        elif kind == "map":
            etype, payload = (
                "code.mapped",
                {"code": draw(st.sampled_from(["UNKNOWN-1", "UNKNOWN-2"])), "product_id": product, "by": writer},
            )
        elif kind == "status":
            status = draw(st.sampled_from(STATUSES))
            payload = {
                "session_id": session,
                "status": status,
                "round": draw(st.integers(0, 2)),
                "reason": "",
                "by": writer,
            }
            if status in ("APPROVED", "VOID"):  # what the closing box held: later events are held
                payload["vector"] = {w: draw(st.integers(0, 12)) for w in draw(st.sets(st.sampled_from(WRITERS)))}
            etype = "session.status_changed"
        elif kind == "decide" and out:
            etype, payload = (
                "held.decided",
                {
                    "event_ids": [e.event_id for e in draw(st.lists(st.sampled_from(out), min_size=1, max_size=3))],
                    "decision": draw(st.sampled_from(["accepted", "rejected"])),
                    "reason": "r",
                    "by": writer,
                },
            )
        else:
            etype, payload = (
                "conflict.resolved",
                {
                    "conflict_id": f"damage_exceeds:{session}:{product}",
                    "kind": "damage_exceeds",
                    "action": draw(st.sampled_from(["accept", "reject"])),
                    "reason": "r",
                    "by": writer,
                },
            )
        seq, prev = heads[writer]
        # HLCs rise per writer and may tie across writers: ties must break by writer id.
        clock[writer] += draw(st.integers(1, 3))
        event = Event(writer, seq + 1, new_id(), etype, payload, clock[writer], prev)
        heads[writer] = (seq + 1, event.hash)
        out.append(event)
        if etype == "scan.recorded":
            scans.append(event)
        if etype == "serial.added":
            serial_tags.append((event.event_id, session, product, payload["serial"]))
    return out


def _snapshot(box: Box) -> dict[str, Any]:
    conn = box.db.read()
    tables = {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in PROJECTIONS}
    found = sorted((c["conflict_id"], c["status"]) for c in conflicts.conflicts(conn, status="all"))
    counted = {v: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {v}")) for v in COUNTED}
    return {**tables, **counted, "conflicts": found}


def _differences(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    return {key: {"got": got[key], "want": want[key]} for key in want if got[key] != want[key]}


def _apply(box: Box, events: list[Event]) -> None:
    def job(conn: sqlite3.Connection) -> None:
        for event in events:
            box.log.append_run(conn, [event])

    box.db.write(job)


def _interleave(events: list[Event], seed: int) -> list[Event]:
    """Another arrival order that keeps each writer's own events in seq order."""
    queues = {w: [e for e in events if e.writer_id == w] for w in WRITERS}
    rng = random.Random(seed)
    out: list[Event] = []
    while any(queues.values()):
        writer = rng.choice([w for w, q in queues.items() if q])
        out.append(queues[writer].pop(0))
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("template")
    box, ctx = _setup(folder / "box")
    box.close()
    return folder / "box", ctx


def _replica(template: Path, target: Path) -> Box:
    shutil.copytree(template, target)
    return open_box(make_settings(target))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_projections_equal_rebuild_and_ignore_arrival_order(
    data: st.DataObject, seed: int, template: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder, ctx = template
    events = _events(data.draw, ctx)
    work = tmp_path_factory.mktemp("replicas")

    first = _replica(folder, work / "first")
    second = _replica(folder, work / "second")
    try:
        _apply(first, events)
        live = _snapshot(first)
        first.db.write(rebuild)
        diff = _differences(_snapshot(first), live)
        assert not diff, f"projections differ from a rebuild of the log: {diff}"

        _apply(second, _interleave(events, seed))
        diff = _differences(_snapshot(second), live)
        assert not diff, f"another arrival order gave other projections: {diff}"
    finally:
        first.close()
        second.close()
