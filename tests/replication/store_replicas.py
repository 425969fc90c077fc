"""Replicas of one small store on disk, and the device streams that feed them.

The merge properties need several stores that start identical (one session, three products, three
enrolled devices) and then differ only in which device events reached each. A store's second box
starts out the same way, from the first one's data, so each replica is a copy of one prepared data
dir: milliseconds per example instead of a fresh setup.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.catalog import layout, product_import
from appliance.counting import runs, sessions
from appliance.replica import store as replicas
from appliance.store.eventlog import enroll_writer, new_id, version_vector
from replication.wire.codec import ZERO_HASH, Event
from replication.wire.hlc import encode
from replication.wire.protocol import API_VERSION, event_row, pack_page, unpack_page
from tests.conftest import make_settings

WRITERS = ("dev-a", "dev-b", "dev-c")
SKUS = ("SKU-A", "SKU-B", "SKU-C")
CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\nSKU-A,4006381333931,Alpha,Food,EA,10.00,5\n"
    b"SKU-B,,Beta,Food,EA,2.50,3\nSKU-C,,Gamma,Home,EA,1.00,0\n"
)
# What each scanned code stands for in CATALOG (None: no product). Written out here rather than asked
# of a store, so that a reference computed from it learns nothing from the code under test.
CODE_SKUS: dict[str, str | None] = {"4006381333931": "SKU-A", "SKU-B": "SKU-B", "UNKNOWN-1": None}


@dataclass(frozen=True)
class Template:
    path: Path
    store_id: str
    session_id: str
    rack_id: str
    product_ids: dict[str, str]  # sku -> product_id

    @property
    def skus(self) -> dict[str, str]:
        return {product_id: sku for sku, product_id in self.product_ids.items()}


def build_template(path: Path) -> Template:
    """A store with a started run, one session for one verifier, and the devices enrolled."""
    box = open_box(make_settings(path))
    admin = User("u-admin", "admin", "Admin", "admin")
    plan = product_import.parse_file(CATALOG, "catalog.csv")

    def job(conn: sqlite3.Connection) -> Template:
        people.add_user(conn, box.log, "v1", "V1", "verifier", "x")
        layout.add_floor(conn, box.log, "G", "Ground")
        rack = layout.add_rack(conn, box.log, "G", "G-01")
        product_import.commit(conn, box.log, plan)
        run_id = runs.create_run(conn, box.log, admin, name="Merge", kind="hard")
        verifier = conn.execute("SELECT user_id FROM users WHERE username = 'v1'").fetchone()[0]
        session_id = sessions.create_session(conn, box.log, admin, run_id, verifier_id=verifier, rack_codes=["G-01"])
        runs.start_run(conn, box.log, admin, run_id)
        for writer in WRITERS:
            enroll_writer(conn, writer, "device", box.node.store_id, writer, bytes(32))
        product_ids = {row[0]: row[1] for row in conn.execute("SELECT sku, product_id FROM products")}
        return Template(path, box.node.store_id, session_id, rack["rack_id"], product_ids)

    try:
        return box.db.write(job)
    finally:
        box.close()


def open_replica(template: Template, target: Path) -> Box:
    shutil.copytree(template.path, target)
    return open_box(make_settings(target))


@dataclass
class DeviceStreams:
    """Each device's events, numbered and chained as the device itself does it (DESIGN §3)."""

    events: dict[str, list[Event]] = field(default_factory=lambda: {w: [] for w in WRITERS})
    clocks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WRITERS, 0))
    wall_ms: int = 1_000

    def append(self, writer: str, event_type: str, payload: dict[str, Any], advance: int, seen: int = 0) -> Event:
        """The writer's next event, ``advance`` ms of wall time after the previous event of any device.

        Its HLC is the wall time unless the writer's clock, or an event it acted on (``seen``), is
        already past it; so devices writing in the same millisecond tie, and the LWW order must break
        the tie by writer.
        """
        self.wall_ms += advance
        self.clocks[writer] = max(self.clocks[writer] + 1, encode(self.wall_ms, 0), seen + 1)
        stream = self.events[writer]
        prev = stream[-1].hash if stream else ZERO_HASH
        event = Event(writer, len(stream) + 1, new_id(), event_type, payload, self.clocks[writer], prev)
        stream.append(event)
        return event

    def held(self, vector: dict[str, int]) -> list[Event]:
        """The events a replica with ``vector`` holds."""
        return [e for writer, stream in self.events.items() for e in stream[: vector.get(writer, 0)]]


def _apply(box: Box, store_id: str, page: dict[str, Any]) -> int:
    wire = unpack_page(pack_page(page))  # through the wire codec, as a peer's page arrives
    applied: int = box.db.write(lambda conn: replicas.apply_page(conn, box.log, store_id, wire, None))
    return applied


def deliver(box: Box, store_id: str, events: Sequence[Event]) -> int:
    """Hand a replica some events of one writer as a page; returns how many were new to it. A page
    that would leave a gap in the writer's stream raises ``ChainError`` and changes nothing."""
    page = {"v": API_VERSION, "store": store_id, "vector": {}, "writers": [], "events": [event_row(e) for e in events]}
    return _apply(box, store_id, {**page, "heads": []})


def pull(dst: Box, src: Box, store_id: str, limit: int, pages: int | None = None) -> list[Event]:
    """``dst`` asks ``src`` for what it lacks, ``limit`` events a page, until nothing is left or
    ``pages`` pages came; returns the events that came, in page order."""
    came: list[Event] = []
    taken = 0
    while pages is None or taken < pages:
        page = replicas.delta(src.db.read(), store_id, version_vector(dst.db.read()), limit)
        _apply(dst, store_id, page)
        came.extend(event for run in replicas.incoming(store_id, page).runs for event in run)
        taken += 1
        if not page["more"]:
            break
    return came
