"""HQ's hub: one replica per store, each in its own SQLite file, so stores never mix.

A store's replica lives in ``<data_dir>/stores/<store_id>/store.db`` and is an ordinary store
database: the same schema, the same record path, the same projections. HQ is one writer in each of
them (its node id and key), so what HQ writes for a store — a product master, a planned run — flows
down to that store's boxes like any other event. Which replica a request may touch is decided by
the store its signing node enrolled with, never by anything in the request body.

A store id becomes a folder name, so it is checked here, where every caller passes: the same
characters a store's ``store_id`` setting allows, and never a name of dots (``..`` would be HQ's
own database).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.box import Box, open_box
from appliance.errors import BadRequest, NotFound
from appliance.settings import Settings
from appliance.store.eventlog import version_vector
from replication.wire import vectors

log = logging.getLogger(__name__)

MAX_STORE_ID = 64


def valid_store_id(store_id: str) -> bool:
    return (
        0 < len(store_id) <= MAX_STORE_ID
        and all(c.isalnum() or c in "-_." for c in store_id)
        and set(store_id) != {"."}
    )


def check_store_id(store_id: str) -> str:
    if not valid_store_id(store_id):
        raise BadRequest(
            f"{store_id[:80]!r} is not a store id: 1-{MAX_STORE_ID} letters, digits, '-', '_' or '.'",
            code="BAD_STORE_ID",
            details={"store_id": store_id[:80]},
        )
    return store_id


class Hub:
    def __init__(self, box: Box) -> None:
        self.box = box  # HQ's own database: its node, its people, the enrolled store boxes
        self.root: Path = box.settings.data_dir / "stores"
        self._replicas: dict[str, Box] = {}
        self._lock = threading.Lock()

    def replica(self, store_id: str) -> Box:
        """The store's replica, opened (and made, the first time a store reaches HQ) on demand."""
        check_store_id(store_id)
        with self._lock:
            found = self._replicas.get(store_id)
            if found is None:
                settings: Settings = replace(
                    self.box.settings, data_dir=self.root / store_id, store_id=store_id, role="hq", demo=False
                )
                found = open_box(settings, replica_key=self.box.node.key, node_id=self.box.node.node_id)
                if found.created:
                    log.info("store replica created", extra={"store_id": store_id, "path": str(settings.db_path)})
                self._replicas[store_id] = found
            return found

    def holds(self, store_id: str) -> bool:
        check_store_id(store_id)
        return store_id in self._replicas or (self.root / store_id / "store.db").is_file()

    def held(self, store_id: str, *, create: bool = False) -> Box:
        """The replica HQ staff write into; made only when asked (``create``).

        A store normally appears at HQ when its first box says hello. HQ staff may plan for a store
        before that (a field tech provisions the box later), but only by saying so, so that a
        mistyped store id is an error instead of a replica no box will ever pull.
        """
        if not create and not self.holds(store_id):
            raise NotFound(
                f"HQ holds no store {store_id}: no box of it has reached HQ yet. Check the id, or ask"
                " to create the store's replica here (create=true, --create-store)",
                code="STORE_UNKNOWN",
                details={"store_id": store_id},
            )
        return self.replica(store_id)

    def store_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if valid_store_id(p.name) and (p / "store.db").is_file())

    def figures(self, store_id: str) -> dict[str, Any]:
        """What HQ staff ask about a store before writing for it: what HQ holds of it, when a box of it
        last got through, and whether its boxes have pulled everything HQ wrote for it."""
        conn = self.replica(store_id).db.read()
        hq = self.box.node.node_id
        vector = version_vector(conn)
        runs = dict(conn.execute("SELECT status, count(*) FROM runs WHERE kind IS NOT NULL GROUP BY status"))
        peers = conn.execute("SELECT last_ok_at, their_vector FROM peers").fetchall()
        delivered = [vectors.unpack(row["their_vector"]).get(hq, 0) for row in peers]
        return {
            "store_id": store_id,
            "events": sum(vector.values()),
            "boxes": conn.execute(
                "SELECT count(*) FROM writers WHERE kind = 'box' AND writer_id != ?", (hq,)
            ).fetchone()[0],
            "products": conn.execute("SELECT count(*) FROM products").fetchone()[0],
            "runs": runs,
            "last_contact_at": max((row["last_ok_at"] for row in peers if row["last_ok_at"]), default=None),
            # HQ's own events in this store, and how many of them the furthest-behind box has pulled.
            "hq_events": vector.get(hq, 0),
            "hq_events_delivered": min(delivered) if delivered else None,
        }

    def close(self) -> None:
        with self._lock:
            for replica in self._replicas.values():
                replica.close()
            self._replicas.clear()
