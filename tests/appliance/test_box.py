"""First and later starts of a box on a real data dir."""

from __future__ import annotations

import pytest

from appliance.box import open_box
from appliance.errors import Unavailable
from appliance.settings import Settings
from appliance.store.eventlog import verify_writer_chain
from appliance.store.identity import KEY_FILE, public_bytes
from appliance.store.migrations import LATEST, current_version


def test_first_start_creates_store_key_and_schema(settings: Settings) -> None:
    box = open_box(settings)
    try:
        conn = box.db.read()
        assert box.created
        assert (settings.keys_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert current_version(conn) == LATEST
        node = conn.execute("SELECT * FROM node").fetchone()
        assert node["store_id"] == settings.store_id
        writer = conn.execute("SELECT * FROM writers WHERE writer_id = ?", (node["node_id"],)).fetchone()
        assert writer["kind"] == "box"
        assert writer["public_key"] == public_bytes(box.node.key)
        types = [row[0] for row in conn.execute("SELECT type FROM events ORDER BY seq")]
        assert types == ["writer.enrolled", "store.created", "lock_authority.designated"]  # the store's first box
        assert conn.execute("SELECT name FROM stores").fetchone()[0] == settings.store_name
    finally:
        box.close()


def test_second_start_reuses_store_and_key(settings: Settings) -> None:
    first = open_box(settings)
    node_id, key_bytes = first.node.node_id, (settings.keys_dir / KEY_FILE).read_bytes()
    first.close()

    second = open_box(settings)
    try:
        assert not second.created
        assert second.node.node_id == node_id
        assert (settings.keys_dir / KEY_FILE).read_bytes() == key_bytes
        conn = second.db.read()
        assert conn.execute("SELECT count(*) FROM node").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3  # no second designation
        assert verify_writer_chain(conn, node_id).ok
    finally:
        second.close()


def test_missing_key_for_existing_store_is_refused(settings: Settings) -> None:
    open_box(settings).close()
    (settings.keys_dir / KEY_FILE).unlink()
    with pytest.raises(Unavailable, match="restore the key"):
        open_box(settings)
