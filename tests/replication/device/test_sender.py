"""The background sender against a real box process: order, concurrency, conflicts, gaps, backoff, stops."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from replication.device import transport
from replication.device.outbox import Outbox
from replication.device.sender import Progress, Sender, SenderSettings
from replication.retry import Backoff
from replication.wire.hlc import wall_ms
from tests.conftest import ServerProcess
from tests.replication.conftest import CountingBox, paired_outbox, restart, scan_payload

FAST = SenderSettings(batch_size=7, backoff_base_s=0.05, backoff_max_s=0.2, poll_s=0.05)


def run_sender(outbox: Outbox, settings: SenderSettings, body: Callable[[Sender], Awaitable[Any]]) -> Progress:
    """Start a sender, run ``body`` beside it, stop it, and check that it left no task behind."""

    async def main() -> Progress:
        async with transport.open_session() as http:
            sender = Sender(outbox, http, settings, rng=random.Random(7))
            sender.start()
            try:
                await body(sender)
            finally:
                await sender.stop()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            return sender.progress()

    return asyncio.run(main())


async def drained(sender: Sender) -> None:
    assert await sender.wait_idle(timeout=30)


class Spy:
    """Counts the batch requests in flight at once, and which seqs each one carried."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.in_flight = self.most = 0
        self.batches: list[list[int]] = []
        self.outcomes: list[tuple[int, str]] = []  # (batch size, "answered" or the error's class)
        real = transport.send_batch

        async def send_batch(*args: Any) -> dict[str, Any]:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.batches.append([e.seq for e in args[4]])
            outcome = "answered"
            try:
                return await real(*args)
            except transport.SyncError as exc:
                outcome = type(exc).__name__
                raise
            finally:
                self.in_flight -= 1
                self.outcomes.append((len(args[4]), outcome))

        monkeypatch.setattr(transport, "send_batch", send_batch)


def test_backoff_doubles_to_its_ceiling_with_jitter_and_starts_over() -> None:
    backoff = Backoff(2.0, 300.0, random.Random(1))
    waits = [backoff.next_delay() for _ in range(12)]
    for attempt, wait in enumerate(waits):
        nominal = min(300.0, 2.0 * 2**attempt)
        assert 0.5 * nominal <= wait <= 1.5 * nominal
    assert len({round(w / min(300.0, 2.0 * 2**n), 6) for n, w in enumerate(waits)}) > 1  # jittered
    backoff.reset()
    assert 1.0 <= backoff.next_delay() <= 3.0
    with pytest.raises(ValueError, match="max_in_flight"):
        SenderSettings(max_in_flight=3)
    with pytest.raises(ValueError, match="batch_size"):
        SenderSettings(batch_size=501)


def test_drains_in_order_two_at_a_time_and_a_conflict_does_not_block(
    counting_box: CountingBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = paired_outbox(counting_box, tmp_path, "Sender order")
    writer = outbox.require_identity().writer_id
    session = counting_box.counting_session()
    verifying, other = counting_box.products(2)
    for n in range(1, 61):
        if n == 10:  # verifying one product, scanned another's barcode: stored, flagged
            outbox.append(
                "scan.recorded",
                scan_payload(counting_box, session, other["barcode"], product_id=verifying["product_id"]),
            )
        else:
            outbox.append("scan.recorded", scan_payload(counting_box, session, verifying["barcode"]))
    spy = Spy(monkeypatch)

    progress = run_sender(outbox, FAST, drained)

    assert progress.counts == {"pending": 0, "synced": 59, "conflict": 1, "failed": 0}
    flagged = outbox.record(10)
    assert flagged is not None and flagged.conflict is not None and flagged.conflict["kind"] == "barcode_mismatch"
    stored = counting_box.stored(writer)
    assert [seq for seq, *_ in stored] == list(range(1, 61))
    assert [digest for *_, digest in stored] == [r.hash for r in outbox.records()]
    assert spy.most == 2 and all(len(batch) <= 7 for batch in spy.batches)
    assert sorted({seq for batch in spy.batches for seq in batch}) == list(range(1, 61))
    assert progress.stopped is None and outbox.head().hlc >= max(r.hlc for r in outbox.records())
    counting_box.finish(session)


def test_a_box_that_lost_events_is_sent_them_again(counting_box: CountingBox, tmp_path: Path) -> None:
    """The box answers SEQUENCE_GAP with expected_seq 1 (say it was restored from a backup); the sender
    makes the records it held as synced pending again and resends from there."""
    outbox = paired_outbox(counting_box, tmp_path, "Sender gap")
    session = counting_box.counting_session()
    for _ in range(20):
        outbox.append("scan.recorded", scan_payload(counting_box, session))
    outbox.mark(range(1, 11), "synced")  # never sent: the box does not have them

    progress = run_sender(outbox, FAST, drained)

    assert progress.counts["synced"] == 20
    assert [seq for seq, *_ in counting_box.stored(outbox.require_identity().writer_id)] == list(range(1, 21))
    assert counting_box.session_qty(session) == 20
    counting_box.finish(session)


def test_a_revoked_device_stops_and_shows_its_records_failed(
    counting_box: CountingBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = paired_outbox(counting_box, tmp_path, "Sender revoked")
    writer = outbox.require_identity().writer_id
    session = counting_box.counting_session()
    for _ in range(5):
        outbox.append("scan.recorded", scan_payload(counting_box, session))
    assert run_sender(outbox, FAST, drained).counts["synced"] == 5
    counting_box.revoke(writer)
    for _ in range(5):
        outbox.append("scan.recorded", scan_payload(counting_box, session))

    progress = run_sender(outbox, FAST, drained)

    assert progress.stopped is not None and "REVOKED" in progress.stopped
    assert {(r.seq, r.code) for r in outbox.records("failed")} == {(seq, "REVOKED") for seq in range(6, 11)}
    assert [seq for seq, *_ in counting_box.stored(writer)] == [1, 2, 3, 4, 5]
    assert outbox.get_meta("last_error") is not None and "REVOKED" in (outbox.get_meta("last_error") or "")

    spy = Spy(monkeypatch)  # a new sender sees the failed records and waits for a person
    again = run_sender(outbox, FAST, drained)
    assert again.stopped is not None and "failed record" in again.stopped and spy.batches == []
    counting_box.finish(session)


def test_waits_for_a_box_that_is_down_and_splits_a_batch_it_finds_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess(tmp_path / "box", "--demo")
    server.wait_ready()
    try:
        box = CountingBox(server)
        outbox = paired_outbox(box, tmp_path / "device", "Sender backoff")
        session = box.counting_session()
        box.rack_id(session)  # known before the box goes down, as a device knows it
    finally:
        server.stop()
    for _ in range(300):
        outbox.append("scan.recorded", scan_payload(box, session))
    spy = Spy(monkeypatch)
    seen: list[Progress] = []

    async def outage_then_a_small_box(sender: Sender) -> None:
        deadline = time.monotonic() + 10
        while len(spy.batches) < 3:  # three tries, each waiting longer
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        seen.append(sender.progress())
        # The box comes back, refusing bodies over 16 KiB: 150 scans (about 35 KiB) are too large.
        back = await asyncio.to_thread(restart, server, env={"STOCKVERIFY_MAX_REQUEST_BYTES": "16384"})
        try:
            await asyncio.to_thread(back.wait_ready)
            sender.retry_now()
            await drained(sender)
            counts = await asyncio.to_thread(box.stored, outbox.require_identity().writer_id)
            assert [seq for seq, *_ in counts] == list(range(1, 301))
        finally:
            await asyncio.to_thread(back.stop)

    progress = run_sender(
        outbox, SenderSettings(batch_size=150, backoff_base_s=0.05, backoff_max_s=0.2), outage_then_a_small_box
    )

    down = seen[0]
    assert down.last_error is not None and down.last_error.startswith("NETWORK")
    assert down.counts["pending"] == 300 and down.stopped is None
    assert progress.counts == {"pending": 0, "synced": 300, "conflict": 0, "failed": 0}
    assert progress.last_error is not None  # the outage is remembered, the queue is empty
    outcomes = set(spy.outcomes)
    assert {(150, "Retryable"), (150, "PayloadTooLarge")} <= outcomes  # down, then too large
    assert max(size for size, outcome in outcomes if outcome == "answered") < 150  # split after the 413


def test_a_cloned_device_is_refused_and_the_sender_stops_for_a_person(
    counting_box: CountingBox, tmp_path: Path
) -> None:
    """A handheld restored from a copy of another's data folder writes other events under the same
    seqs: the box answers DUPLICATE_OR_REPLAY, the record is failed, the rest wait, sending stops."""
    original = paired_outbox(counting_box, tmp_path / "original", "Sender original")
    original.close()
    shutil.copytree(tmp_path / "original", tmp_path / "clone")
    original, clone = Outbox(tmp_path / "original" / "outbox.db"), Outbox(tmp_path / "clone" / "outbox.db")
    writer = original.require_identity().writer_id
    session = counting_box.counting_session()
    for n in range(3):
        original.append("scan.recorded", scan_payload(counting_box, session, f"ORIGINAL-{n}"))
        clone.append("scan.recorded", scan_payload(counting_box, session, f"CLONE-{n}"))
    assert run_sender(original, FAST, drained).counts["synced"] == 3

    progress = run_sender(clone, FAST, drained)

    assert progress.stopped is not None and "DUPLICATE_OR_REPLAY" in progress.stopped
    assert progress.counts == {"pending": 2, "synced": 0, "conflict": 0, "failed": 1}
    failed = clone.record(1)
    assert failed is not None and (failed.status, failed.code) == ("failed", "DUPLICATE_OR_REPLAY")
    assert [digest for *_, digest in counting_box.stored(writer)] == [r.hash for r in original.records()]
    counting_box.finish(session)


def test_a_clock_far_ahead_is_waited_out_not_failed(
    counting_box: CountingBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paired_outbox(counting_box, tmp_path, "Sender clock").close()
    ahead = Outbox(tmp_path / "outbox.db", wall=lambda: wall_ms() + 10 * 60_000)  # ten minutes fast
    session = counting_box.counting_session()
    for _ in range(3):
        ahead.append("scan.recorded", scan_payload(counting_box, session))
    spy = Spy(monkeypatch)
    seen: list[Progress] = []

    async def three_tries(sender: Sender) -> None:
        while len(spy.outcomes) < 3:
            await asyncio.sleep(0.01)
        seen.append(sender.progress())

    run_sender(ahead, FAST, three_tries)

    waiting = seen[0]
    assert waiting.stopped is None and waiting.last_error is not None and waiting.last_error.startswith("CLOCK_AHEAD")
    assert waiting.counts == {"pending": 3, "synced": 0, "conflict": 0, "failed": 0}
    assert counting_box.stored(ahead.require_identity().writer_id) == []
    counting_box.finish(session)
