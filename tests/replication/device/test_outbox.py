"""The device outbox on real SQLite files: the chain it builds, what it refuses, and what survives a crash."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from replication.device.outbox import Identity, Mark, NotPaired, Outbox
from replication.device.payloads import PayloadError
from replication.wire.codec import ZERO_HASH, verify_chain
from replication.wire.hlc import LOGICAL_BITS

MAIN = Path(__file__).resolve().parents[3]
WRITER = "01HZX3J6C8W7Q5V4T2S1R0P9N8"


def identity(writer_id: str = WRITER) -> Identity:
    return Identity(writer_id, "token", "http://127.0.0.1:1", "store", "node", "HH", 1)


def scan(code: str = "4006381333931", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "session_id": "S1",
        "code": code,
        "qty": 1,
        "rack_id": "",
        "product_id": None,
        "token": None,
        "by": "U1",
    }
    return {**payload, **fields}


@pytest.fixture
def outbox(tmp_path: Path) -> Any:
    box = Outbox(tmp_path / "dev" / "outbox.db")
    box.save_identity(identity())
    yield box
    box.close()


def test_append_builds_a_chain_the_codec_accepts(outbox: Outbox) -> None:
    records = [outbox.append("scan.recorded", scan(str(n))) for n in range(5)]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == ZERO_HASH
    assert all(r.status == "pending" for r in records)
    assert len({r.event_id for r in records}) == 5 and all(len(r.event_id) == 26 for r in records)
    events = [r.event(WRITER) for r in outbox.records()]
    assert verify_chain(events) is None
    assert [e.hash for e in events] == [r.hash for r in records]
    assert [r.hlc for r in records] == sorted({r.hlc for r in records})
    head = outbox.head()
    assert (head.seq, head.hash, head.hlc) == (5, records[-1].hash, records[-1].hlc)


def test_nothing_is_chained_before_pairing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as fresh, pytest.raises(NotPaired):
        fresh.append("scan.recorded", scan())


def test_pairing_is_kept_once(outbox: Outbox) -> None:
    assert outbox.require_identity() == identity()
    with pytest.raises(ValueError, match="already paired"):
        outbox.save_identity(identity("OTHER"))


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    folder = tmp_path / "dev"
    with Outbox(folder / "outbox.db") as first:
        seed = first.key().public_key().public_bytes_raw()
    with Outbox(folder / "outbox.db") as again:
        assert again.key().public_key().public_bytes_raw() == seed
    assert stat.S_IMODE((folder / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "device.key").stat().st_size == 32


VALID = [
    ("scan.recorded", scan(rack_id="R1", product_id="P1", token=7)),
    (
        "scan.undone",
        {"session_id": "S", "by": "U", "undoes": "E", "of_writer": WRITER, "code": "C", "rack_id": "", "qty": 2},
    ),
    ("count.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": -3, "target": 4}),
    ("damage.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": 0, "target": 0}),
    (
        "item.attributes_set",
        {
            "session_id": "S",
            "by": "U",
            "product_id": "P",
            "attrs": {"mfg_date": "2026-03-01", "mrp_minor": 15000, "condition": "good", "status": None},
        },
    ),
    ("serial.added", {"session_id": "S", "by": "U", "product_id": "P", "serial": "SN-1"}),
    ("serial.removed", {"session_id": "S", "by": "U", "product_id": "P", "serial": "SN-1", "tags": ["E1"]}),
]


@pytest.mark.parametrize(("event_type", "payload"), VALID, ids=[v[0] for v in VALID])
def test_every_device_event_type_is_accepted(outbox: Outbox, event_type: str, payload: dict[str, Any]) -> None:
    assert outbox.append(event_type, payload).payload == payload


INVALID = [
    ("photo.attached", scan(), "may not send"),
    ("scan.recorded", {k: v for k, v in scan().items() if k != "by"}, "missing by"),
    ("scan.recorded", scan(extra=1), "unknown field extra"),
    ("scan.recorded", scan(code=""), "code must be 1-64"),
    ("scan.recorded", scan(code="x" * 65), "code must be 1-64"),
    ("scan.recorded", scan(qty=0), "qty must be from 1"),
    ("scan.recorded", scan(qty=100_001), "qty must be from 1"),
    ("scan.recorded", scan(qty=True), "qty must be a whole number"),
    ("scan.recorded", scan(qty=1.0), "floats are not allowed"),
    ("scan.recorded", scan(token="7"), "token must be a whole number"),
    ("scan.recorded", scan(session_id=None), "session_id must be a string"),
    ("count.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": 0, "target": 1}, "delta must not"),
    ("damage.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": 1, "target": -1}, "target must"),
    (
        "item.attributes_set",
        {"session_id": "S", "by": "U", "product_id": "P", "attrs": {"mfg_date": "01/03/2026"}},
        "YYYY-MM-DD",
    ),
    (
        "item.attributes_set",
        {"session_id": "S", "by": "U", "product_id": "P", "attrs": {"colour": "red"}},
        "not an attribute",
    ),
    (
        "item.attributes_set",
        {"session_id": "S", "by": "U", "product_id": "P", "attrs": {"condition": "meh"}},
        "one of good",
    ),
    ("serial.added", {"session_id": "S", "by": "U", "product_id": "P", "serial": " "}, "serial must be 1-64"),
    ("serial.removed", {"session_id": "S", "by": "U", "product_id": "P", "serial": "S", "tags": "E1"}, "list"),
    # The page's bounds (§5), which the box refuses with VALIDATION.
    ("scan.recorded", scan(token=2**63), "token must be from 0"),
    ("scan.recorded", scan(token=-1), "token must be from 0"),
    ("scan.recorded", scan(session_id="S" * 65), "session_id must be at most 64"),
    ("scan.recorded", scan(rack_id="R" * 65), "rack_id must be at most 64"),
    ("count.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": 2**63 - 1, "target": 1}, "delta"),
    ("damage.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": -100_001, "target": 0}, "delta"),
    ("damage.adjusted", {"session_id": "S", "by": "U", "product_id": "P", "delta": 1, "target": 100_001}, "target"),
    (
        "item.attributes_set",
        {"session_id": "S", "by": "U", "product_id": "P", "attrs": {"mrp_minor": 2**63}},
        "mrp_minor must be from 0",
    ),
    ("serial.removed", {"session_id": "S", "by": "U", "product_id": "P", "serial": "S", "tags": ["E" * 65]}, "ids"),
]


@pytest.mark.parametrize(("event_type", "payload", "message"), INVALID, ids=[m for *_, m in INVALID])
def test_bad_payloads_never_enter_the_chain(
    outbox: Outbox, event_type: str, payload: dict[str, Any], message: str
) -> None:
    outbox.append("scan.recorded", scan())
    with pytest.raises(PayloadError, match=message):
        outbox.append(event_type, payload)
    assert isinstance(PayloadError(""), ValueError)
    assert outbox.head().seq == 1 and outbox.status_counts()["pending"] == 1
    assert outbox.append("scan.recorded", scan()).seq == 2  # no seq was used up


def test_hlc_never_runs_backwards_and_moves_past_the_box(tmp_path: Path) -> None:
    now = [1_767_225_600_000]
    with Outbox(tmp_path / "outbox.db", wall=lambda: now[0]) as box:
        box.save_identity(identity())
        first = box.append("scan.recorded", scan()).hlc
        assert first == now[0] << LOGICAL_BITS
        now[0] -= 60_000  # the device's clock is set back a minute
        second = box.append("scan.recorded", scan())
        assert second.hlc == first + 1 and second.occurred_at == now[0]
        server = (now[0] + 120_000) << LOGICAL_BITS
        box.observe_server_hlc(server)
        box.observe_server_hlc(5)  # an older answer never moves it back
        assert box.head().hlc == server
        assert box.append("scan.recorded", scan()).hlc == server + 1


def test_statuses_and_answers_are_kept(outbox: Outbox) -> None:
    for n in range(6):
        outbox.append("scan.recorded", scan(str(n)))
    outbox.mark([1, 2], "synced")
    conflict = {"seq": 3, "event_id": "E", "conflict_id": "C1", "kind": "barcode_mismatch"}
    outbox.settle(
        [Mark(3, "conflict", conflict=conflict), Mark(4, "failed", code="VALIDATION", message="qty")],
        server_hlc=99,
        meta={"last_error": "VALIDATION: qty"},
    )
    assert outbox.status_counts() == {"pending": 2, "synced": 2, "conflict": 1, "failed": 1}
    assert [r.seq for r in outbox.pending(10)] == [5, 6]
    assert [r.seq for r in outbox.pending(1, after_seq=5)] == [6]
    held = outbox.record(3)
    assert held is not None and held.conflict == conflict and held.status == "conflict"
    refused = outbox.records("failed")
    assert [(r.seq, r.code, r.message) for r in refused] == [(4, "VALIDATION", "qty")]
    assert outbox.get_meta("last_error") == "VALIDATION: qty"
    assert outbox.record(99) is None
    with pytest.raises(ValueError, match="status must be"):
        outbox.mark([5], "lost")

    assert outbox.requeue(2) == 2  # the box lost 2 and 3: they are pending again
    assert [r.seq for r in outbox.pending(10)] == [2, 3, 5, 6]
    assert outbox.retry_failed() == 1
    assert outbox.status_counts() == {"pending": 5, "synced": 1, "conflict": 0, "failed": 0}


def test_a_reopened_outbox_continues_the_same_chain(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.save_identity(identity())
        last = box.append("scan.recorded", scan())
    with Outbox(path) as box:
        following = box.append("scan.recorded", scan())
        assert (following.seq, following.prev_hash) == (2, last.hash)
        assert following.hlc > last.hlc


APPENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from replication.device.outbox import Outbox

    box = Outbox(Path(sys.argv[1]))
    payload = {"session_id": "S", "code": "C", "qty": 1, "rack_id": "", "product_id": None, "token": None, "by": "U"}
    for _ in range(int(sys.argv[2])):
        record = box.append("scan.recorded", payload)
        print(record.seq, flush=True)  # "shown" only after append returned
    """
)


def _appender(path: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(path), str(count)], stdout=subprocess.PIPE, text=True, cwd=MAIN
    )


def test_kill_9_loses_no_shown_scan_and_skips_no_seq(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.save_identity(identity())
    child = _appender(path, 100_000)
    assert child.stdout is not None
    shown = 0
    while shown < 300:
        shown = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with Outbox(path) as box:
        records = box.records()
        assert len(records) >= shown
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        assert verify_chain([r.event(WRITER) for r in records]) is None
        assert box.head().seq == len(records)
        assert box.append("scan.recorded", scan()).seq == len(records) + 1


def test_two_processes_appending_share_one_gap_free_chain(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.save_identity(identity())
    children = [_appender(path, 200) for _ in range(2)]
    for child in children:
        assert child.wait(timeout=60) == 0
    with Outbox(path) as box:
        records = box.records()
    assert [r.seq for r in records] == list(range(1, 401))
    assert verify_chain([r.event(WRITER) for r in records]) is None


def test_an_outbox_paired_before_https_keeps_its_identity_and_learns_no_ca(tmp_path: Path) -> None:
    """A device paired with a plain-HTTP box, upgraded: its outbox gains the CA column, empty."""
    import sqlite3

    from replication.device import outbox as module

    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    for statement in module._SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO identity VALUES (1, ?, 'token', 'http://127.0.0.1:1', 'store', 'node', 'HH', 1)", (WRITER,)
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Outbox(path) as box:
        assert box.identity() == identity()
        assert box.identity().box_ca is None  # type: ignore[union-attr]
        assert box.append("scan.recorded", scan()).seq == 1
    with Outbox(tmp_path / "new" / "outbox.db") as box:
        box.save_identity(Identity(WRITER, "t", "https://127.0.0.1:1", "store", "node", "HH", 1, box_ca="PEM"))
        assert box.require_identity().box_ca == "PEM"
