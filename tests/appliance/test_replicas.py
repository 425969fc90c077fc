"""The delta: exactly the events another replica lacks, in this replica's arrival order, paged."""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance import replicas
from appliance.box import Box
from appliance.eventlog import enroll_writer, new_id, version_vector
from replication.codec import ZERO_HASH, Event

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
