"""Opening a box: the data dir, the schema, the node key and identity, the event log.

``open_box`` is what ``serve`` and every CLI command call, so a first start on an empty data dir and
the hundredth start on a full one go through the same steps: migrate, load or make the key, load or
create the node (appending the box's first events), and hand back one ``Box`` holding it all.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Importing the domain modules registers their projectors with the event log.
from appliance import (
    counting,  # noqa: F401
    reports,  # noqa: F401
)
from appliance.auth import devices, people  # noqa: F401
from appliance.catalog import layout, products  # noqa: F401
from appliance.counting.authority import LockAuthority, designate_self
from appliance.errors import Unavailable
from appliance.settings import Settings
from appliance.store.db import Database, connect
from appliance.store.eventlog import EventLog, enroll_writer, new_id
from appliance.store.identity import Node, insert_node, load_or_create_key, public_bytes, read_node
from appliance.store.live import EventBus, LogTap
from appliance.store.migrations import migrate
from replication.wire.hlc import HybridClock

log = logging.getLogger(__name__)


@dataclass
class Box:
    settings: Settings
    db: Database
    node: Node
    log: EventLog
    bus: EventBus
    created: bool  # True when this start made the store
    authority: LockAuthority = field(default_factory=lambda: LockAuthority(""))  # who grants the store's locks

    def close(self) -> None:
        self.db.close()


def _last_hlc(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(hlc) FROM events").fetchone()
    return int(row[0] or 0)


def open_box(settings: Settings, *, replica_key: Ed25519PrivateKey | None = None, node_id: str | None = None) -> Box:
    """Open (or create) the store in ``settings.data_dir``.

    HQ keeps a replica of each store it receives; it opens one with ``replica_key`` and ``node_id``,
    HQ's own, so that HQ is the same writer in every store it serves, and such a replica does not
    announce a store of its own (the store's boxes did).
    """
    data_dir: Path = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.db_path)
    try:
        migrate(conn)
        if replica_key is None:
            key, key_made = load_or_create_key(settings.keys_dir)
        else:
            key, key_made = replica_key, False
        row = read_node(conn)
        last_hlc = _last_hlc(conn)
    finally:
        conn.close()

    created = row is None
    if row is not None:
        if key_made:
            raise Unavailable(
                f"{settings.keys_dir / 'node.key'} was missing for an existing store; a new key was "
                "written but cannot sign this store's chain: restore the key from the backup"
            )
        node = Node(node_id=row["node_id"], store_id=row["store_id"], role=row["role"], key=key)
        if node.store_id != settings.store_id:
            log.warning(
                "data dir belongs to another store id than the settings; the data dir wins",
                extra={"data_store_id": node.store_id, "setting_store_id": settings.store_id},
            )
    else:
        node = Node(node_id=node_id or new_id(), store_id=settings.store_id, role=settings.role, key=key)

    db = Database(settings.db_path)
    event_log = EventLog(node.node_id, key, HybridClock(last_hlc))
    db.add_job_hook(event_log.sign_head)
    bus = EventBus()
    tap = LogTap(bus)
    event_log.listeners.append(tap.appended)
    db.add_job_hook(tap.job_done)
    db.add_failure_hooks(tap.job_failed, tap.rolled_back)
    db.add_commit_hook(tap.committed)
    authority = LockAuthority(node.node_id, settings.lock_authority_url)
    event_log.listeners.append(authority.appended)
    db.add_job_hook(authority.job_done)
    db.add_failure_hooks(authority.rolled_back, authority.rolled_back)
    box = Box(settings=settings, db=db, node=node, log=event_log, bus=bus, created=created, authority=authority)

    if created:

        def create_store(conn: sqlite3.Connection) -> None:
            insert_node(conn, node.node_id, node.store_id, node.role)
            enroll_writer(conn, node.node_id, "box", node.store_id, f"box {node.node_id}", node.public_key)
            event_log.record(
                conn,
                "writer.enrolled",
                {
                    "writer_id": node.node_id,
                    "kind": "box",
                    "store_id": node.store_id,
                    "name": f"box {node.node_id}",
                    "public_key": public_bytes(key),
                },
            )
            if replica_key is None:
                event_log.record(conn, "store.created", {"store_id": node.store_id, "name": settings.store_name})

        db.write(create_store)
        log.info("store created", extra={"store_id": node.store_id, "node_id": node.node_id})
    # lock_authority: designate this box if the store has no authority yet as far as it knows. At the
    # store's first box that is as the store is made; a box that already holds the store's designation
    # (it joined by replication) records nothing.
    wants = replica_key is None and node.role == "box" and settings.lock_authority
    if wants and db.write(lambda conn: designate_self(conn, event_log, node.node_id)):
        log.info("this box is the store's lock authority", extra={"node_id": node.node_id, "epoch": 1})
    authority.load(db.read())
    return box
