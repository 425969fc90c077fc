"""The box's own chain: gap-free seqs from 1, every prev_hash right, the head signed."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.box import Box
from appliance.catalog import layout
from appliance.errors import Conflict
from appliance.store.eventlog import ChainError, rebuild, row_to_event, verify_writer_chain, version_vector
from replication.wire.codec import ZERO_HASH, Event, verify_chain_head


def _add_layout(box: Box) -> None:
    def job(conn: sqlite3.Connection) -> None:
        layout.add_floor(conn, box.log, "G", "Ground")
        for n in range(1, 21):
            layout.add_rack(conn, box.log, "G", f"G-{n:02d}")

    box.db.write(job)
    box.db.write(lambda conn: layout.add_floor(conn, box.log, "F1", "First"))


def test_walk_the_box_chain(box: Box) -> None:
    _add_layout(box)
    conn = box.db.read()
    rows = conn.execute("SELECT * FROM events WHERE writer_id = ? ORDER BY seq", (box.node.node_id,)).fetchall()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    previous = ZERO_HASH
    hlcs = []
    for row in rows:
        event = row_to_event(row)
        assert event.prev_hash == previous
        assert event.hash == row["hash"]
        previous = event.hash
        hlcs.append(event.hlc)
    assert hlcs == sorted(hlcs) and len(set(hlcs)) == len(hlcs)
    head = conn.execute(
        "SELECT * FROM chain_heads WHERE writer_id = ? ORDER BY seq DESC LIMIT 1", (box.node.node_id,)
    ).fetchone()
    assert head["seq"] == rows[-1]["seq"] and head["hash"] == previous
    assert verify_chain_head(box.node.public_key, box.node.node_id, head["seq"], head["hash"], head["signature"])
    assert version_vector(conn) == {box.node.node_id: len(rows)}
    assert verify_writer_chain(conn, box.node.node_id).ok


def test_altered_event_is_found(box: Box) -> None:
    _add_layout(box)
    raw = sqlite3.connect(box.settings.db_path)
    raw.execute("UPDATE events SET type = 'floor.removed' WHERE writer_id = ? AND seq = 3", (box.node.node_id,))
    raw.commit()
    raw.close()
    report = verify_writer_chain(box.db.read(), box.node.node_id)
    assert not report.ok
    assert any("seq 3" in problem for problem in report.problems)


def test_append_refuses_gap_replay_and_broken_chain(box: Box) -> None:
    conn = box.db.read()
    head = conn.execute("SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (box.node.node_id,)).fetchone()

    def attempt(seq: int, prev: bytes) -> None:
        event = Event(box.node.node_id, seq, f"01TEST{seq:020d}", "note", {}, box.log.clock.now(), prev)
        box.db.write(lambda c: box.log.append_run(c, [event]))

    with pytest.raises(ChainError) as gap:
        attempt(head["head_seq"] + 2, head["head_hash"])
    assert gap.value.code == "SEQUENCE_GAP" and gap.value.details == {"expected_seq": head["head_seq"] + 1}
    with pytest.raises(ChainError) as replay:
        attempt(head["head_seq"], head["head_hash"])
    assert replay.value.code == "DUPLICATE_OR_REPLAY"
    with pytest.raises(Conflict) as broken:
        attempt(head["head_seq"] + 1, b"\x01" * 32)
    assert broken.value.code == "CHAIN_BROKEN"
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == head["head_seq"]


def test_rebuild_refolds_the_same_projections(box: Box) -> None:
    _add_layout(box)

    def snapshot() -> tuple[list[tuple[object, ...]], ...]:
        conn = box.db.read()
        return tuple(
            [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in ("stores", "floors", "racks")
        )

    before = snapshot()
    box.db.write(lambda conn: conn.execute("DELETE FROM racks"))
    assert snapshot() != before
    count = box.db.write(rebuild)
    assert count == box.db.read().execute("SELECT count(*) FROM events").fetchone()[0]
    assert snapshot() == before
