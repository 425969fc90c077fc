"""The delta: exactly the events another replica lacks, in this replica's arrival order, paged."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.box import Box, open_box
from appliance.errors import BadRequest, Conflict
from appliance.replica import store as replicas
from appliance.store.eventlog import enroll_writer, new_id, version_vector
from replication.wire.codec import ZERO_HASH, Event
from tests.conftest import make_settings

WRITERS = ("dev-a", "dev-b", "dev-c")
# Runs of (writer, count) in the order they arrive: the writers' streams interleave in the log.
ARRIVALS = [("dev-a", 3), ("dev-b", 2), ("dev-a", 1), ("dev-c", 3), ("dev-b", 2), ("dev-a", 2), ("dev-c", 1)]


def _log_with_interleaved_writers(box: Box) -> list[tuple[str, int]]:
    """Append ARRIVALS; returns every (writer, seq) in arrival order (the box's own events left out)."""
    store = box.node.store_id
    heads = dict.fromkeys(WRITERS, (0, ZERO_HASH))
    order: list[tuple[str, int]] = []

    def job(conn: sqlite3.Connection) -> None:
        for writer in WRITERS:
            enroll_writer(conn, writer, "device", store, writer, bytes(32))
        for writer, count in ARRIVALS:
            seq, prev = heads[writer]
            run = []
            for _ in range(count):
                seq += 1
                payload = {"session_id": "S-1", "rack_id": "R-1", "code": f"C-{writer}-{seq}", "qty": 1}
                event = Event(writer, seq, new_id(), "scan.recorded", payload, box.log.clock.now(), prev, 0)
                prev = event.hash
                run.append(event)
                order.append((writer, seq))
            box.log.append_run(conn, run)
            heads[writer] = (seq, prev)

    box.db.write(job)
    return order


def _page(box: Box, theirs: dict[str, int], limit: int) -> dict[str, Any]:
    return replicas.delta(box.db.read(), box.node.store_id, theirs, limit)


def test_the_delta_is_what_they_lack_in_arrival_order(box: Box) -> None:
    order = _log_with_interleaved_writers(box)
    own = {box.node.node_id: version_vector(box.db.read())[box.node.node_id]}
    theirs = {**own, "dev-a": 4, "dev-c": 2}  # they hold a prefix of two streams and none of dev-b
    lacking = [(w, s) for w, s in order if s > theirs.get(w, 0)]

    came: list[tuple[str, int]] = []
    pages = 0
    while True:
        page = _page(box, theirs, 3)
        rows = [(row[0], row[1]) for row in page["events"]]
        assert len(rows) <= 3
        came.extend(rows)
        pages += 1
        # ``more`` says whether anything is left after this page, and the next page starts there
        assert page["more"] == (len(came) < len(lacking))
        for writer, seq in rows:
            theirs[writer] = seq
        if not page["more"]:
            break
    assert came == lacking  # each lacking event once, none they hold, in the order this box got them
    assert pages == 3
    assert _page(box, theirs, 3)["events"] == []


def test_a_page_carries_new_writers_and_the_heads_it_reaches(box: Box) -> None:
    _log_with_interleaved_writers(box)
    own = version_vector(box.db.read())[box.node.node_id]
    page = _page(box, {box.node.node_id: own, "dev-a": 6}, 100)
    assert {row[0] for row in page["events"]} == {"dev-b", "dev-c"}
    assert sorted(w[0] for w in page["writers"]) == ["dev-b", "dev-c"]  # dev-a they know already
    assert page["vector"] == version_vector(box.db.read())
    assert not page["more"]
    # rows are wire rows: writer, seq, event_id, type, payload, hlc, occurred_at, prev_hash
    assert all(len(row) == 8 for row in page["events"])


def test_a_replica_ahead_of_this_one_is_sent_nothing(box: Box) -> None:
    _log_with_interleaved_writers(box)
    ahead = {writer: seq + 5 for writer, seq in version_vector(box.db.read()).items()}
    page = _page(box, ahead, 10)
    assert page["events"] == [] and page["writers"] == [] and page["heads"] == [] and not page["more"]


def test_prev_hash_travels_only_where_a_run_starts(box: Box) -> None:
    _log_with_interleaved_writers(box)
    page = _page(box, {}, 100)
    before: tuple[str, int] = ("", 0)
    for row in page["events"]:
        follows = row[0] == before[0] and row[1] == before[1] + 1
        assert (row[7] is None) == follows
        before = (row[0], row[1])
    # the receiver gets every event back whole: the same hashes the writers chained
    stored = {(r["writer_id"], r["seq"]): bytes(r["hash"]) for r in box.db.read().execute("SELECT * FROM events")}
    decoded = [event for run in replicas.incoming(box.node.store_id, page).runs for event in run]
    assert len(decoded) == len(page["events"])
    assert all(event.hash == stored[(event.writer_id, event.seq)] for event in decoded)


def test_a_row_without_prev_hash_must_follow_its_predecessor(box: Box) -> None:
    _log_with_interleaved_writers(box)
    page = _page(box, {}, 100)
    first_of_a_run = next(i for i, row in enumerate(page["events"]) if i and row[7] is not None)
    rows = list(page["events"])
    rows[first_of_a_run] = (*rows[first_of_a_run][:7], None)
    with pytest.raises(BadRequest) as refused:
        replicas.incoming(box.node.store_id, {**page, "events": rows})
    assert refused.value.code == "BAD_PAGE"


def test_a_run_partly_held_is_applied_from_where_the_receiver_stands(box: Box, tmp_path: Path) -> None:
    """The receiver holds the start of a run whose later rows carry no prev_hash: those rows still
    chain onto what it holds, and nothing is applied twice."""
    _log_with_interleaved_writers(box)
    own = {box.node.node_id: version_vector(box.db.read())[box.node.node_id]}
    other = open_box(make_settings(tmp_path / "other", store_id=box.node.store_id))
    try:
        first = _page(box, own, 4)  # the devices' events only (the pages enrol the devices)
        assert [(r[0], r[1]) for r in first["events"]] == [("dev-a", 1), ("dev-a", 2), ("dev-a", 3), ("dev-b", 1)]
        applied = other.db.write(lambda conn: replicas.apply_page(conn, other.log, box.node.store_id, first, None))
        assert applied == 4
        # the next page starts again from the beginning: dev-a's first run is held whole, dev-b's in part
        again = _page(box, own, 100)
        assert again["events"][4][:2] == ("dev-b", 2) and again["events"][4][7] is None
        applied = other.db.write(lambda conn: replicas.apply_page(conn, other.log, box.node.store_id, again, None))
        assert applied == len(again["events"]) - 4
        ours, theirs = box.db.read(), other.db.read()
        query = "SELECT writer_id, seq, hash FROM events WHERE writer_id LIKE 'dev-%' ORDER BY writer_id, seq"
        assert [tuple(r) for r in theirs.execute(query)] == [tuple(r) for r in ours.execute(query)]
    finally:
        other.close()


def test_a_node_enrolled_as_it_says_needs_no_write(box: Box) -> None:
    """A box that restarts says hello again; only a hello that changes something is written."""
    key = bytes(range(32))
    store = box.node.store_id
    assert not replicas.enrolled(box.db.read(), "node-b", store, "box", key, "http://b:8080")
    box.db.write(lambda conn: replicas.enrol_peer(conn, "node-b", store, "box", key, "http://b:8080"))
    conn = box.db.read()
    assert replicas.enrolled(conn, "node-b", store, "box", key, "http://b:8080")
    assert replicas.enrolled(conn, "node-b", store, "box", key)  # no url said: the one known stands
    assert not replicas.enrolled(conn, "node-b", store, "box", key, "http://b:9090")  # moved
    assert not replicas.enrolled(conn, "node-b", store, "hq", key, "http://b:8080")
    assert not replicas.enrolled(conn, "node-b", store, "box", bytes(32), "http://b:8080")  # refused by the write


def test_a_page_reusing_an_event_id_the_receiver_holds_is_refused_whole(box: Box, tmp_path: Path) -> None:
    """Two writers' events may never share an id; the page is refused with a code, none of it applied."""
    _log_with_interleaved_writers(box)
    own = {box.node.node_id: version_vector(box.db.read())[box.node.node_id]}
    page = _page(box, own, 100)
    other = open_box(make_settings(tmp_path / "other", store_id=box.node.store_id))
    try:
        taken = page["events"][5][2]  # an id from the middle of the page, already held by "dev-x" there
        payload = {"session_id": "S-9", "rack_id": "R-9", "code": "C-x", "qty": 1}
        clash = Event("dev-x", 1, taken, "scan.recorded", payload, other.log.clock.now(), ZERO_HASH, 0)

        def hold(conn: sqlite3.Connection) -> None:
            enroll_writer(conn, "dev-x", "device", box.node.store_id, "dev-x", bytes(32))
            other.log.append_run(conn, [clash])

        other.db.write(hold)
        before = other.db.read().execute("SELECT count(*) FROM events").fetchone()[0]
        with pytest.raises(Conflict) as refused:
            other.db.write(lambda conn: replicas.apply_page(conn, other.log, box.node.store_id, page, None))
        assert refused.value.code == "EVENT_ID_REUSED"
        assert other.db.read().execute("SELECT count(*) FROM events").fetchone()[0] == before
    finally:
        other.close()


@pytest.mark.parametrize("where", ["writer_key", "head_hash", "head_signature"])
def test_a_page_with_a_number_where_bytes_belong_is_refused_as_malformed(box: Box, where: str) -> None:
    """``bytes(n)`` of a number is n zero bytes: a page must not make this replica allocate them."""
    _log_with_interleaved_writers(box)
    page = _page(box, {}, 100)
    if where == "writer_key":
        page["writers"] = [[*page["writers"][0][:4], 10**12], *page["writers"][1:]]
    else:
        index = 2 if where == "head_hash" else 3
        page["heads"] = [[*page["heads"][0][:index], 10**12, *page["heads"][0][index + 1 :]], *page["heads"][1:]]
    with pytest.raises(BadRequest) as refused:
        replicas.incoming(box.node.store_id, page)
    assert refused.value.code == "BAD_PAGE"
