"""Pages a store box pushes to HQ two at a time, against a real HQ process: they land in order and once,
whichever HQ finishes decoding first."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from appliance.box import open_box
from appliance.replica import store as replicas
from appliance.store.eventlog import verify_writer_chain
from replication.peers.client import Me, PeerClient
from replication.wire.protocol import pack_page
from tests.bench.bench_replication import STORE, write_backlog
from tests.conftest import ServerProcess, make_settings

HQ_SECRET = "hq-secret-for-the-push-test-001"


def _two_pages(data_dir: Path, count: int) -> tuple[Me, list[dict[str, Any]], str]:
    """A store box whose handheld recorded ``count`` scans (written as the replication bench writes
    its backlog), its node, and two pages of its log as it would push them to HQ."""
    write_backlog(data_dir, count)
    box = open_box(make_settings(data_dir, store_id=STORE))
    try:
        conn = box.db.read()
        writer = conn.execute("SELECT writer_id FROM writers WHERE kind = 'device'").fetchone()[0]
        first = replicas.delta(conn, STORE, {}, count // 2)
        sent = {row[0]: row[1] for row in first["events"]}  # what HQ holds once the first page is in
        second = replicas.delta(conn, STORE, sent, count)
        return Me(box.node.node_id, STORE, box.node.key, box.node.public_key), [first, second], writer
    finally:
        box.close()


def test_the_second_page_decoded_first_waits_for_the_first(tmp_path: Path) -> None:
    me, (first, second), writer = _two_pages(tmp_path / "box", 4000)
    assert writer not in [w[0] for w in second["writers"]]  # only the first page enrols the handheld
    hq = ServerProcess(tmp_path / "hq", "--role", "hq", env={"STOCKVERIFY_HQ_SECRET": HQ_SECRET})
    try:
        hq.wait_ready()

        async def push_out_of_order() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as http:
                client = PeerClient(http, hq.url, me)
                await client.hello("box", HQ_SECRET)
                late = asyncio.ensure_future(client.push(pack_page(second)))
                await asyncio.sleep(0.3)  # HQ has decoded the second page and found its writer unknown
                return [await client.push(pack_page(first)), await late]

        answers = asyncio.run(push_out_of_order())
    finally:
        hq.stop()
    assert [a["applied"] for a in answers] == [len(first["events"]), len(second["events"])]
    assert answers[1]["vector"][writer] == 4000
    with sqlite3.connect(tmp_path / "hq" / "stores" / STORE / "store.db") as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("SELECT count(*) FROM events WHERE writer_id = ?", (writer,)).fetchone()[0] == 4000
        report = verify_writer_chain(conn, writer)
    assert report.ok and report.signed_seq == 4000, report.problems
