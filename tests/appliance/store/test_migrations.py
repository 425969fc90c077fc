"""Schema migrations: idempotent, and a box made by migration 1 upgrades in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from appliance.box import open_box
from appliance.store.db import connect
from appliance.store.eventlog import verify_writer_chain
from appliance.store.migrations import LATEST, MIGRATIONS, current_version, migrate
from tests.conftest import ServerProcess, make_settings

FIXTURE = Path(__file__).parents[2] / "fixtures" / "m001_store"
FIXTURE_NODE = "01JFIXTURENODE000000000001"


def test_migrations_are_numbered_and_idempotent(tmp_path: Path) -> None:
    assert [n for n, _ in MIGRATIONS] == list(range(1, LATEST + 1))
    conn = connect(tmp_path / "store.db")
    assert migrate(conn) == list(range(1, LATEST + 1))
    assert migrate(conn) == []
    assert current_version(conn) == LATEST
    conn.close()


def test_store_from_first_migration_upgrades_in_place(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    shutil.copytree(FIXTURE, data_dir)
    conn = connect(data_dir / "store.db")
    assert current_version(conn) == 1
    conn.close()

    box = open_box(make_settings(data_dir, store_id="fixture-store"))
    try:
        conn = box.db.read()
        assert not box.created
        assert box.node.node_id == FIXTURE_NODE
        assert current_version(conn) == LATEST
        assert verify_writer_chain(conn, FIXTURE_NODE).ok
        assert conn.execute("SELECT code FROM racks").fetchall()[0][0] == "G-01"
    finally:
        box.close()


def test_upgraded_store_serves_and_logs_in(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    shutil.copytree(FIXTURE, data_dir)
    server = ServerProcess(data_dir)
    try:
        server.wait_ready()
        health = httpx.get(server.url + "/api/health").json()
        assert health["node_id"] == FIXTURE_NODE
        assert health["store_id"] == "fixture-store"
        token = server.login("keeper", "keeper-pass")  # uses the table migration 2 added
        assert server.client(token).get("/api/racks").json()[0]["code"] == "G-01"
    finally:
        server.stop()
