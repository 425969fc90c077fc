"""The issue's Done-when, with real processes: a box (``stockverify serve --demo``) and devices driven
through ``stockverify device`` in processes of their own, killed with SIGKILL where the issue says so.

(a) 2,000 scans recorded while the box is down are stored exactly once after it starts;
(b) a batch sent again changes nothing; (c) a sender killed mid-send resumes with no loss and no
duplicate; (d) tampering, forgery, replay, gaps and revocation each get their code and store nothing;
(e) is ``test_protocol_vectors.py``.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from replication.device import transport
from replication.device.cli import device
from replication.device.outbox import Identity, Outbox
from replication.wire.codec import Event, pack
from tests.conftest import ServerProcess
from tests.replication.conftest import (
    CountingBox,
    device_cli,
    device_cli_popen,
    pair_device,
    paired_outbox,
    restart,
    scan_payload,
)

FAST_RETRY = ("--backoff-base", "0.05", "--backoff-max", "0.5")


class Store:
    """The module's box, which test (a) takes down and brings back on the same port."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.box = CountingBox(server)

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server = restart(self.server)
        self.server.wait_ready()
        self.box.server = self.server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    server = ServerProcess(tmp_path_factory.mktemp("device-sync") / "box", "--demo")
    server.wait_ready()
    held = Store(server)
    try:
        yield held
    finally:
        held.server.stop()


def _post(box: CountingBox, token: str, body: bytes) -> tuple[int, Any]:
    answer = httpx.post(
        box.url + "/api/sync/batch",
        content=body,
        headers={"Authorization": f"Device {token}", "Content-Type": "application/msgpack"},
        timeout=30,
    )
    if answer.headers.get("content-type", "").startswith("application/msgpack"):
        return answer.status_code, msgpack.unpackb(answer.content, raw=False)
    return answer.status_code, answer.json()


def _sync(data_dir: Path, *extra: str) -> dict[str, Any]:
    done = device_cli("sync", "--data-dir", str(data_dir), "--once", "--timeout", "30", "--json", *FAST_RETRY, *extra)
    assert done.returncode == 0, (done.stdout, done.stderr)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def _local(data_dir: Path) -> tuple[Identity, list[bytes], dict[str, int]]:
    with Outbox(data_dir / "outbox.db") as outbox:
        return outbox.require_identity(), [r.hash for r in outbox.records()], outbox.status_counts()


# -- (a) ------------------------------------------------------------------------------------------
def test_a_2000_scans_made_while_the_box_is_down_are_stored_exactly_once(store: Store, tmp_path: Path) -> None:
    box = store.box
    device_dir = tmp_path / "handheld-a"
    writer = pair_device(box, device_dir, "Handheld A")
    session = box.counting_session()
    rack = box.rack_id(session)
    [product] = box.products(1)

    store.down()
    scanned = device_cli(
        "simulate",
        *("--data-dir", str(device_dir), "--session", session, "--rack", rack),
        *("--codes", product["barcode"]),
        *("--rate", "0", "--count", "2000", "--by", box.verifier_id),
    )
    assert scanned.returncode == 0, scanned.stderr
    status = json.loads(device_cli("status", "--data-dir", str(device_dir), "--json").stdout)
    assert status["counts"] == {"pending": 2000, "synced": 0, "conflict": 0, "failed": 0}
    assert status["head"]["seq"] == 2000 and status["writer_id"] == writer

    store.up()
    figures = _sync(device_dir)
    print(f"\ndrained 2,000 scans in {figures['elapsed_s']} s: {figures['events_per_s']} scans/s")

    assert figures["counts"] == {"pending": 0, "synced": 2000, "conflict": 0, "failed": 0}
    stored = box.stored(writer)
    assert [seq for seq, *_ in stored] == list(range(1, 2001))  # every seq, each once
    _, hashes, _ = _local(device_dir)
    assert [digest for *_, digest in stored] == hashes  # and they are the device's events
    assert box.session_qty(session) == 2000
    box.finish(session)


# -- (b) ------------------------------------------------------------------------------------------
def test_b_a_batch_sent_again_changes_nothing(store: Store, tmp_path: Path) -> None:
    box = store.box
    outbox = paired_outbox(box, tmp_path / "handheld-b", "Handheld B")
    identity = outbox.require_identity()
    session = box.counting_session()
    for _ in range(300):
        outbox.append("scan.recorded", scan_payload(box, session))
    batch = pack(
        transport.batch_body(
            identity.writer_id, [r.event(identity.writer_id) for r in outbox.records()[:150]], outbox.key()
        )
    )
    status, first = _post(box, identity.device_token, batch)
    assert status == 200 and first["ok"] == list(range(1, 151)) and first["expected_seq"] == 151
    outbox.mark(range(1, 151), "synced")
    assert _sync(tmp_path / "handheld-b")["counts"]["synced"] == 300
    before = box.stored(identity.writer_id)

    for _ in range(2):  # the very bytes of the first batch, twice, after the chain moved on
        status, again = _post(box, identity.device_token, batch)
        assert status == 200, again
        assert again["ok"] == list(range(1, 151)) and again["errors"] == [] and again["conflicts"] == []
        assert again["expected_seq"] == 301

    assert box.stored(identity.writer_id) == before
    assert box.session_qty(session) == 300
    box.finish(session)


# -- (c) ------------------------------------------------------------------------------------------
def test_c_a_sender_killed_mid_send_resumes_with_no_loss_and_no_duplicate(store: Store, tmp_path: Path) -> None:
    box = store.box
    device_dir = tmp_path / "handheld-c"
    writer = pair_device(box, device_dir, "Handheld C")
    session = box.counting_session()
    total = 3000
    made = device_cli(
        "simulate",
        *("--data-dir", str(device_dir), "--session", session, "--rack", box.rack_id(session)),
        *("--codes", "4006381333931"),
        *("--rate", "0", "--count", str(total), "--by", box.verifier_id),
    )
    assert made.returncode == 0, made.stderr

    sender = device_cli_popen("sync", "--data-dir", str(device_dir), "--once", "--batch-size", "20", *FAST_RETRY)
    deadline = time.monotonic() + 20
    while not box.stored(writer):  # the first batch landed
        assert sender.poll() is None and time.monotonic() < deadline, sender.communicate()
        time.sleep(0.005)
    os.kill(sender.pid, signal.SIGKILL)
    sender.communicate()
    at_kill = len(box.stored(writer))
    assert 0 < at_kill < total, "the sender was not killed mid-send"
    _, _, counts = _local(device_dir)
    assert counts["synced"] <= at_kill and counts["pending"] >= total - at_kill

    figures = _sync(device_dir, "--batch-size", "150")

    assert figures["counts"] == {"pending": 0, "synced": total, "conflict": 0, "failed": 0}
    stored = box.stored(writer)
    assert [seq for seq, *_ in stored] == list(range(1, total + 1))
    assert [digest for *_, digest in stored] == _local(device_dir)[1]
    assert box.session_qty(session) == total
    box.finish(session)


# -- (d) ------------------------------------------------------------------------------------------
def _codes(answer: dict[str, Any]) -> set[str]:
    return {error["code"] for error in answer["errors"]}


def _signed(identity: Identity, events: list[Event], key: Ed25519PrivateKey) -> bytes:
    return pack(transport.batch_body(identity.writer_id, events, key))


def _altered(event: Event, **payload: Any) -> Event:
    return Event(
        event.writer_id,
        event.seq,
        event.event_id,
        event.type,
        {**event.payload, **payload},
        event.hlc,
        event.prev_hash,
        event.occurred_at,
    )


def test_d_tampering_forgery_replay_gaps_and_revocation_each_get_their_code(store: Store, tmp_path: Path) -> None:
    box = store.box
    outbox = paired_outbox(box, tmp_path / "handheld-d", "Handheld D")
    identity, key = outbox.require_identity(), outbox.key()
    session = box.counting_session()
    for _ in range(13):
        outbox.append("scan.recorded", scan_payload(box, session))
    events = [r.event(identity.writer_id) for r in outbox.records()]
    status, answer = _post(box, identity.device_token, _signed(identity, events[:10], key))
    assert status == 200 and answer["ok"] == list(range(1, 11))
    stored = box.stored(identity.writer_id)
    fresh = events[10:]  # seqs 11..13, genuine and not yet sent

    def refused(body: bytes, code: str) -> dict[str, Any]:
        status, answer = _post(box, identity.device_token, body)
        assert status == 200 and answer["ok"] == [] and code in _codes(answer), answer
        assert _codes(answer) <= {code, "NOT_PROCESSED"}
        assert box.stored(identity.writer_id) == stored  # nothing of it was stored
        return answer

    # a tampered event: its successor's prev_hash no longer follows, nor does a signed head
    refused(_signed(identity, [fresh[0], _altered(fresh[1], qty=500), fresh[2]], key), "CHAIN_BROKEN")
    tampered_head = copy.deepcopy(transport.batch_body(identity.writer_id, fresh, key))
    tampered_head["events"][-1]["payload"]["qty"] = 500
    refused(pack(tampered_head), "CHAIN_BROKEN")
    # a forged signature: right events, somebody else's key
    refused(_signed(identity, fresh, Ed25519PrivateKey.generate()), "BAD_SIGNATURE")
    # a seq the box holds, sent again with other content (signed by the device itself)
    replay = refused(_signed(identity, [_altered(events[4], qty=9)], key), "DUPLICATE_OR_REPLAY")
    assert replay["errors"][0]["seq"] == 5
    # a gap: 12 and 13 without 11
    gap = refused(_signed(identity, fresh[1:], key), "SEQUENCE_GAP")
    assert gap["expected_seq"] == 11
    assert box.session_qty(session) == 10

    box.revoke(identity.writer_id)
    status, answer = _post(box, identity.device_token, _signed(identity, fresh, key))
    assert (status, answer["code"]) == (403, "REVOKED")
    assert box.stored(identity.writer_id) == stored
    box.finish(session)


# -- the CLI without a box -------------------------------------------------------------------------
def test_cli_scan_and_status_work_offline_and_refuse_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    data_dir = tmp_path / "handheld"
    not_paired = runner.invoke(device, ["scan", "--data-dir", str(data_dir), "--session", "S", "C"])
    assert not_paired.exit_code == 1 and "device pair" in not_paired.output
    with Outbox(data_dir / "outbox.db") as outbox:
        outbox.save_identity(Identity("W1", "t", "http://127.0.0.1:9", "store", "node", "HH", 0))
    base = ["scan", "--data-dir", str(data_dir), "--session", "S"]
    anonymous = runner.invoke(device, [*base, "C"])
    assert anonymous.exit_code == 1 and "--by" in anonymous.output
    first = runner.invoke(device, [*base, "--by", "U1", "--qty", "3", "C"])
    assert first.exit_code == 0 and first.output.startswith("seq 1 pending")
    remembered = runner.invoke(device, [*base, "C2"])  # the person stays logged in
    assert remembered.exit_code == 0 and remembered.output.startswith("seq 2 pending")
    too_many = runner.invoke(device, [*base, "--qty", "0", "C"])
    assert too_many.exit_code == 1 and "qty must be from 1" in too_many.output
    report = json.loads(runner.invoke(device, ["status", "--data-dir", str(data_dir), "--json"]).output)
    assert report["counts"]["pending"] == 2 and report["head"]["seq"] == 2 and report["writer_id"] == "W1"
    with Outbox(data_dir / "outbox.db") as outbox:
        record = outbox.record(2)
        assert record is not None and record.payload["by"] == "U1" and record.payload["qty"] == 1
