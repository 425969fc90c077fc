"""The lock authority fold: designations from several boxes, in any interleaving, come to one answer;
the token sequence follows the newest epoch; the in-memory answer the claim path reads follows the
fold and what peers' hellos say. Real boxes on disk, events through the one record path."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from ulid import ULID

from appliance.box import Box, open_box
from appliance.counting import authority, locks
from appliance.errors import NotFound, Unavailable
from appliance.store.eventlog import enroll_writer, rebuild
from replication.wire.codec import ZERO_HASH, Event
from tests.conftest import make_settings

# Three other boxes of the store, each writing designations: (node designated, epoch), in its own order.
STREAMS: dict[str, list[tuple[str, int]]] = {
    "box-x": [("box-x", 1)],
    "box-y": [("box-y", 1), ("box-x", 3)],  # a rival at epoch 1, then an admin's move at box-y
    "box-z": [("box-z", 2)],
}


def _events(writer: str, designations: list[tuple[str, int]], hlc0: int) -> list[Event]:
    out, prev = [], ZERO_HASH
    for n, (node_id, epoch) in enumerate(designations, start=1):
        payload = {"node_id": node_id, "epoch": epoch, "by": None}
        event = Event(writer, n, str(ULID()), authority.DESIGNATED, payload, hlc0 + n, prev)
        prev = event.hash
        out.append(event)
    return out


def _box(folder: Path, **overrides: object) -> Box:
    box = open_box(make_settings(folder, **overrides))

    def enrol(conn: sqlite3.Connection) -> None:
        for writer in STREAMS:
            enroll_writer(conn, writer, "box", box.node.store_id, writer, bytes(32))
        enroll_writer(conn, "handheld", "device", box.node.store_id, "handheld", bytes(32))

    box.db.write(enrol)
    return box


def _interleavings() -> list[list[tuple[str, int]]]:
    """Every order of the single events (writer, index) that keeps each writer's own order."""
    slots = [(w, i) for w, stream in STREAMS.items() for i in range(len(stream))]
    found = []
    for order in itertools.permutations(slots):
        if all([i for w2, i in order if w2 == w] == list(range(len(stream))) for w, stream in STREAMS.items()):
            found.append(list(order))
    return found


def test_designations_in_any_order_converge(tmp_path: Path) -> None:
    orders = _interleavings()
    assert len(orders) == 12  # 4 events, box-y's two in order
    answers = set()
    for n, order in enumerate(orders):
        box = _box(tmp_path / f"box{n}", lock_authority=False)
        try:
            events = {w: _events(w, s, 1000) for w, s in STREAMS.items()}
            for writer, index in order:
                box.db.write(lambda conn, box=box, e=events[writer][index]: box.log.append_run(conn, [e]))
            conn = box.db.read()
            epoch_row = conn.execute("SELECT epoch, counter FROM lock_authority").fetchone()
            answers.add((authority.designations(conn), tuple(epoch_row), box.authority.standing().role))
            # A rebuild refolds the same answer, and leaves the token sequence where it is.
            box.db.write(rebuild)
            assert authority.designations(box.db.read()) == authority.Designations(3, ("box-x",))
        finally:
            box.close()
    assert answers == {(authority.Designations(3, ("box-x",)), (3, 0), authority.FORWARDING)}


def test_two_boxes_at_the_newest_epoch_are_a_conflict_until_a_later_one(tmp_path: Path) -> None:
    box = _box(tmp_path / "box")  # designates itself at epoch 1 as the store's first box
    try:
        me = box.node.node_id
        assert box.authority.standing() == authority.Standing(authority.GRANTING, 1, me)
        x = _events("box-x", STREAMS["box-x"], 2000)
        box.db.write(lambda conn: box.log.append_run(conn, x))
        standing = box.authority.standing()
        assert (standing.role, standing.epoch, set(standing.rivals)) == (authority.CONFLICT, 1, {me, "box-x"})
        assert standing.reason() is not None and "box-x" in standing.reason()  # type: ignore[operator]
        with pytest.raises(Unavailable) as refused:
            box.authority.refuse_unless_granting()
        assert refused.value.code == "LOCK_AUTHORITY_CONFLICT" and "box-x" in refused.value.message

        moved = box.db.write(lambda conn: authority.move(conn, box.log, "u-admin", me))
        assert moved["epoch"] == 2
        assert box.authority.standing() == authority.Standing(authority.GRANTING, 2, me)
        assert tuple(box.db.read().execute("SELECT epoch, counter FROM lock_authority").fetchone()) == (2, 0)
    finally:
        box.close()


def test_tokens_after_a_move_are_larger_than_every_token_before(tmp_path: Path) -> None:
    box = _box(tmp_path / "box")
    try:
        before = [box.db.write(locks.next_token) for _ in range(1000)]
        assert before[-1] == 1 << 32 | 1000
        box.db.write(lambda conn: authority.move(conn, box.log, "u-admin", "box-x"))
        box.db.write(lambda conn: authority.move(conn, box.log, "u-admin", box.node.node_id))
        after = box.db.write(locks.next_token)
        assert after >> 32 == 3 and after > max(before)
        # A designation of an earlier epoch arriving late moves nothing back.
        late = _events("box-z", STREAMS["box-z"], 3000)
        box.db.write(lambda conn: box.log.append_run(conn, late))
        assert box.db.write(locks.next_token) == after + 1
        assert box.authority.standing().role == authority.GRANTING
    finally:
        box.close()


def test_only_a_box_designates(tmp_path: Path) -> None:
    box = _box(tmp_path / "box")
    try:
        forged = _events("handheld", [("handheld", 9)], 4000)
        box.db.write(lambda conn: box.log.append_run(conn, forged))
        assert authority.designations(box.db.read()) == authority.Designations(1, (box.node.node_id,))
        with pytest.raises(NotFound):
            box.db.write(lambda conn: authority.move(conn, box.log, "u-admin", "handheld"))
    finally:
        box.close()


def test_a_box_that_already_holds_a_designation_does_not_designate_itself(tmp_path: Path) -> None:
    folder = tmp_path / "box"
    box = _box(folder, lock_authority=False)
    try:
        x = _events("box-x", STREAMS["box-x"], 5000)
        box.db.write(lambda conn: box.log.append_run(conn, x))
        assert box.authority.standing() == authority.Standing(authority.FORWARDING, 1, "box-x")
    finally:
        box.close()
    # Started again with lock_authority = true: the store has an authority, so nothing is recorded.
    again = open_box(make_settings(folder, lock_authority=True))
    try:
        assert authority.history(again.db.read()) == [{"epoch": 1, "node_id": "box-x", "by": None, "hlc": 5001}]
        assert again.authority.standing().role == authority.FORWARDING
    finally:
        again.close()


def test_a_peer_that_says_it_grants_at_our_epoch_is_a_conflict(tmp_path: Path) -> None:
    box = _box(tmp_path / "box")
    try:
        box.authority.heard("box-y", True, 1)
        assert box.authority.standing().role == authority.CONFLICT
        box.authority.heard("box-y", False, 1)
        assert box.authority.standing().role == authority.GRANTING
        box.authority.heard("box-y", True, 0)  # granting at an epoch the store has moved past: not a rival
        assert box.authority.standing().role == authority.GRANTING
    finally:
        box.close()
