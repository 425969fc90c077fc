"""HQ's hub: one replica per store, each in its own SQLite file, so stores never mix.

A store's replica lives in ``<data_dir>/stores/<store_id>/store.db`` and is an ordinary store
database: the same schema, the same record path, the same projections. HQ is one writer in each of
them (its node id and key), so what HQ writes for a store — a product master, a planned run — flows
down to that store's boxes like any other event. Which replica a request may touch is decided by
the store its signing node enrolled with, never by anything in the request body.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from appliance.box import Box, open_box
from appliance.settings import Settings

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, box: Box) -> None:
        self.box = box  # HQ's own database: its node, its people, the enrolled store boxes
        self.root: Path = box.settings.data_dir / "stores"
        self._replicas: dict[str, Box] = {}
        self._lock = threading.Lock()

    def replica(self, store_id: str) -> Box:
        """The store's replica, opened (and made, the first time a store reaches HQ) on demand."""
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

    def store_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "store.db").is_file())

    def close(self) -> None:
        with self._lock:
            for replica in self._replicas.values():
                replica.close()
            self._replicas.clear()
