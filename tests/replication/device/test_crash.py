"""Crash safety: the real box (``stockverify serve``) is killed with SIGKILL again and again while a
floor of handhelds sends it batches, and brought back on the same data dir each time.

Each device is its own writer (an Ed25519 key, paired with a code) that makes chained, signed events
while it sends, and follows docs/sync-protocol.md exactly: it sends from where the box's last answer
said (``expected_seq``), resends whatever was not answered (a refused connection, a reset mid-request),
and records every ``ok``. An ``ok`` is a promise that the event is on disk, so the box must never later
ask again for a seq it acknowledged, and at the end the SQLite file, opened read-only after the last
stop, must hold every acknowledged event exactly once, nothing a device did not send, every chain
gap-free and verifying with its signed heads, pass ``PRAGMA integrity_check``, and hold scan counters
that ``stockverify rebuild`` leaves unchanged.

The run is random but seeded: set ``STOCKVERIFY_CRASH_SEED`` to replay a failure's batch sizes, event
mix and kill moments (the timing of two processes on a busy machine is never quite the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.store.eventlog import verify_writer_chain
from replication.device import transport
from replication.retry import Backoff
from replication.wire.codec import ZERO_HASH, Event, verify_chain, verify_chain_head
from replication.wire.hlc import HybridClock, wall_ms
from tests.conftest import ServerProcess
from tests.replication.conftest import MAIN, CountingBox, restart

DEVICES = 10
KILLS = 15
MAX_BATCH = 150  # the field sends 100-200; smaller batches here mean more commits to crash into
DRAIN_TIMEOUT_S = 30.0
# The scan counters: what a verifier's count is made of, folded from the log as events arrive.
COUNTERS = ("scan_counts", "scan_codes", "scan_claims", "scan_undos", "damage_counts")


@dataclass
class Handheld:
    """One device: its key, its chain as made so far, and every answer the box gave it."""

    name: str
    writer_id: str
    token: str
    key: Ed25519PrivateKey
    rng: random.Random
    clock: HybridClock = field(default_factory=HybridClock)
    events: list[Event] = field(default_factory=list)
    next_seq: int = 1  # where the box's last answer said to go on
    acked: set[int] = field(default_factory=set)  # every seq the box ever answered ``ok``
    held: int = 0  # the box has said it holds 1..held: the highest ``ok``, or ``expected_seq - 1`` when higher
    batches: int = 0
    failed: int = 0  # requests that got no answer (the box was killed or down)
    last_failure: str = ""
    problems: list[str] = field(default_factory=list)

    def make(self, session_id: str, rack_id: str, by: str, products: list[dict[str, str]]) -> Event:
        """The device's next event, chained to the one before (a scan, mostly)."""
        seq = len(self.events) + 1
        prev = self.events[-1].hash if self.events else ZERO_HASH
        roll = self.rng.random()
        product = self.rng.choice(products)
        event_type = "scan.recorded"
        if roll < 0.85:
            code = product["barcode"] if roll < 0.8 else f"UNKNOWN-{self.rng.randrange(5)}"
            payload: dict[str, Any] = {
                "session_id": session_id,
                "code": code,
                "qty": self.rng.choice((1, 1, 1, 2, 6, 12)),
                "rack_id": rack_id,
                "product_id": None,
                "token": None,
                "by": by,
            }
        else:
            event_type = "count.adjusted" if roll < 0.95 else "damage.adjusted"
            payload = {
                "session_id": session_id,
                "product_id": product["product_id"],
                "delta": self.rng.choice((-2, -1, 1, 3)),
                "target": self.rng.randrange(50),
                "by": by,
            }
        now = wall_ms()
        event_id = str(ULID.from_bytes(now.to_bytes(6, "big") + self.rng.randbytes(10)))
        event = Event(self.writer_id, seq, event_id, event_type, payload, self.clock.now(), prev, now)
        self.events.append(event)
        return event


class Floor:
    """The devices, the box they send to, and the killer that takes the box down under them."""

    def __init__(self, seed: int, server: ServerProcess, devices: list[Handheld], context: dict[str, Any]) -> None:
        self.rng = random.Random(seed)
        self.server = server
        self.devices = devices
        self.context = context  # session_id, by, products: what the events are about
        self.producing = True  # False: make no new events, only get the made ones acknowledged
        self.started = 0  # batch requests started, over the whole run
        self.in_flight = 0
        self.unanswered = 0  # events found on disk after a kill whose ``ok`` had not reached the device
        self.kills: list[dict[str, Any]] = []

    # -- a device --------------------------------------------------------------------------------
    async def run_device(self, device: Handheld) -> None:
        backoff = Backoff(0.02, 0.25, device.rng)
        async with transport.open_session(aiohttp.ClientTimeout(total=15), connections=2) as http:
            while self.producing or device.held < len(device.events):
                if device.problems:
                    return  # the box broke its promise: stop, the test reports it
                size = self._batch_size(device)
                start = device.next_seq
                while self.producing and len(device.events) < start - 1 + size:
                    device.make(**self.context)
                batch = device.events[start - 1 : start - 1 + size]
                if not batch:  # nothing made yet that is not acknowledged
                    await asyncio.sleep(0.01)
                    continue
                self.started += 1
                self.in_flight += 1
                device.batches += 1
                answer = None
                try:
                    answer = await transport.send_batch(
                        http, self.server.url, device.token, device.writer_id, batch, device.key
                    )
                except transport.Retryable as exc:
                    device.failed += 1
                    device.last_failure = str(exc)
                except transport.NeedsPerson as exc:
                    device.problems.append(f"batch {batch[0].seq}..{batch[-1].seq} refused as such: {exc}")
                    return
                finally:
                    self.in_flight -= 1
                if answer is None:
                    await asyncio.sleep(backoff.next_delay())
                    continue  # resend what was not acknowledged: next_seq has not moved
                backoff.reset()
                self._answered(device, batch, answer)
                await asyncio.sleep(device.rng.uniform(0, 0.02))  # a verifier scanning on

    def _batch_size(self, device: Handheld) -> int:
        roll = device.rng.random()
        if roll < 0.3:
            return device.rng.randint(1, 5)
        if roll < 0.8:
            return device.rng.randint(6, 60)
        return device.rng.randint(61, MAX_BATCH)

    def _answered(self, device: Handheld, batch: list[Event], answer: dict[str, Any]) -> None:
        sent = [e.seq for e in batch]
        ok: list[int] = answer["ok"]
        errors: list[dict[str, Any]] = answer["errors"]
        expected: int = answer["expected_seq"]
        where = f"{device.name} ({device.writer_id}) sent {sent[0]}..{sent[-1]}"
        if len(set(ok)) != len(ok):
            twice = sorted({seq for seq in ok if ok.count(seq) > 1})
            device.problems.append(f"{where}: ok names seqs more than once: {twice[:10]}")
        if not set(ok) <= set(sent):
            device.problems.append(f"{where}: ok names seqs that were not sent: {sorted(set(ok) - set(sent))}")
        if expected - 1 < device.held:
            lost = list(range(expected, device.held + 1))
            device.problems.append(
                f"{where}: the box asks for seq {expected} again; it had acknowledged up to {device.held},"
                f" so acknowledged seqs {lost[0]}..{lost[-1]} ({len(lost)}) were lost"
            )
        if expected - 1 > len(device.events):
            device.problems.append(f"{where}: the box expects seq {expected}, beyond anything the device made")
        codes = {error["code"] for error in errors}
        if codes:  # with one batch in flight, any refusal means the box forgot or mangled something
            device.problems.append(f"{where}: refused {sorted(codes)} with expected_seq {expected}: {errors[:3]}")
        for seq in ok:
            device.acked.add(seq)
        # ``expected_seq`` is read in the same committed job: after a lost answer it may run past the
        # batch (the box holds more than was resent), and the device goes on from there.
        device.held = max(device.held, *ok, expected - 1)
        device.next_seq = expected
        device.clock.observe(answer["server_hlc"])

    # -- the killer ------------------------------------------------------------------------------
    async def run_killer(self) -> None:
        for number in range(1, KILLS + 1):
            # A moment drawn from the load: after some more batches have gone out since the box came
            # up (sometimes the very first ones, while devices are still coming back), then anywhere
            # from at once to a few tens of ms: mid-request, in the write job, at COMMIT, in the answer.
            target = self.started + self.rng.choice((1, 2, 5, 10, 20, 40, 80))
            while self.started < target:
                if all(d.problems for d in self.devices):
                    return  # every device stopped: the box broke a promise, which the test reports
                await asyncio.sleep(0.001)
            await asyncio.sleep(self.rng.choice((0, 0, 0.001, 0.003, 0.01, 0.03)))
            acked = sum(d.held for d in self.devices)
            self.kills.append({"kill": number, "in_flight": self.in_flight, "acked": acked})
            os.kill(self.server.process.pid, signal.SIGKILL)
            await asyncio.to_thread(self.server.process.wait)
            self.server.stop()
            promised = {d.writer_id: d.held for d in self.devices}
            heads = await asyncio.to_thread(_heads, self.server.data_dir / "store.db")
            for device in self.devices:
                head, acked = heads.get(device.writer_id, 0), promised[device.writer_id]
                if head < acked and not device.problems:  # said once: the device stops there
                    device.problems.append(
                        f"{device.name} ({device.writer_id}): after kill {number} the file holds up to seq {head},"
                        f" but seqs up to {acked} had been acknowledged"
                    )
                self.unanswered += max(head - acked, 0)
            # Each start writes the same log file afresh: keep the killed box's log beside it.
            self.server.log_path.rename(self.server.log_path.with_name(f"{self.server.log_path.stem}-{number}.log"))
            await asyncio.sleep(self.rng.uniform(0, 0.2))  # down for a moment: connections refused
            self.server = await asyncio.to_thread(self._restart)

    def _restart(self) -> ServerProcess:
        server = restart(self.server)
        server.wait_ready()
        return server

    async def run(self) -> None:
        devices = [asyncio.create_task(self.run_device(d)) for d in self.devices]
        try:
            await self.run_killer()
            await asyncio.sleep(0.5)  # load on the last box for a moment
            self.producing = False
            done, _ = await asyncio.wait(devices, timeout=DRAIN_TIMEOUT_S)
            for device in self.devices:
                if device.held < len(device.events) and not device.problems:
                    device.problems.append(
                        f"{device.name} ({device.writer_id}): {DRAIN_TIMEOUT_S:.0f} s after the last kill the box"
                        f" holds {device.held} of its {len(device.events)} events; last failure: {device.last_failure}"
                    )
            for task in done:
                task.result()
        finally:
            for task in devices:
                task.cancel()
            await asyncio.gather(*devices, return_exceptions=True)


# -- setting up ------------------------------------------------------------------------------------
async def _pair(box: CountingBox, rng: random.Random, count: int) -> list[Handheld]:
    made = []
    async with transport.open_session() as http:
        for n in range(1, count + 1):
            key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
            name = f"Crash handheld {n}"
            answer = await transport.pair(http, box.url, box.pairing_code(), name, key.public_key().public_bytes_raw())
            device_rng = random.Random(rng.randrange(2**63))
            made.append(Handheld(name, answer["writer_id"], answer["device_token"], key, device_rng))
    return made


# -- reading the file ------------------------------------------------------------------------------
def _read_only(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _heads(db: Path) -> dict[str, int]:
    """Each writer's head as the file holds it, read while the box is down (after a kill)."""
    with contextlib.closing(_read_only(db)) as conn:
        return {row[0]: row[1] for row in conn.execute("SELECT writer_id, head_seq FROM writers")}


def _counters(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(_read_only(db)) as conn:
        return {table: sorted(tuple(row) for row in conn.execute(f"SELECT * FROM {table}")) for table in COUNTERS}


def _check_store(db: Path, devices: list[Handheld], box_writers: set[str]) -> list[str]:
    """Everything the file must show after the crashes; a list of what is wrong (empty: nothing)."""
    problems: list[str] = []
    with contextlib.closing(_read_only(db)) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"PRAGMA integrity_check: {integrity[:5]}")
        for writer_id, seq, count in conn.execute(
            "SELECT writer_id, seq, count(*) FROM events GROUP BY writer_id, seq HAVING count(*) > 1"
        ):
            problems.append(f"({writer_id}, {seq}) is stored {count} times")
        for event_id, count in conn.execute(
            "SELECT event_id, count(*) FROM events GROUP BY event_id HAVING count(*) > 1"
        ):
            problems.append(f"event {event_id} is stored {count} times")
        known = box_writers | {d.writer_id for d in devices}
        for (writer_id,) in conn.execute("SELECT DISTINCT writer_id FROM events"):
            if writer_id not in known:
                problems.append(f"events of writer {writer_id}, which no device of this test is")

        for device in devices:
            who = f"{device.name} ({device.writer_id})"
            rows = conn.execute(
                "SELECT seq, event_id, hash FROM events WHERE writer_id = ? ORDER BY seq", (device.writer_id,)
            ).fetchall()
            seqs = [row["seq"] for row in rows]
            if seqs != list(range(1, len(seqs) + 1)):
                missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
                problems.append(f"{who}: stream is not gap-free 1..head; missing {missing[:10]}")
            by_seq = {row["seq"]: row for row in rows}
            for seq, row in by_seq.items():
                sent = device.events[seq - 1] if seq <= len(device.events) else None
                if sent is None or (row["event_id"], bytes(row["hash"])) != (sent.event_id, sent.hash):
                    problems.append(f"{who}: seq {seq} is stored but the device never sent that event")
            lost = sorted(seq for seq in device.acked if seq not in by_seq)
            if lost:
                problems.append(f"{who}: acknowledged but not stored: {len(lost)} events, seqs {lost[:10]}")
            for seq in sorted(device.acked):
                event_id = device.events[seq - 1].event_id
                count = conn.execute("SELECT count(*) FROM events WHERE event_id = ?", (event_id,)).fetchone()[0]
                at = conn.execute(
                    "SELECT count(*) FROM events WHERE writer_id = ? AND seq = ?", (device.writer_id, seq)
                ).fetchone()[0]
                if (count, at) != (1, 1):
                    problems.append(f"{who}: acknowledged seq {seq} stored {at} times, its event_id {count} times")
            if len(rows) != len(device.events) or device.held != len(device.events):
                problems.append(
                    f"{who}: made {len(device.events)} events, box holds {len(rows)}, said it holds {device.held}"
                )

            report = verify_writer_chain(conn, device.writer_id)
            if not report.ok:
                problems.append(f"{who}: chain does not verify: {report.problems[:5]}")
            stored = [device.events[seq - 1] for seq in seqs if seq <= len(device.events)]
            if verify_chain(stored) is not None:
                problems.append(f"{who}: the codec's verify_chain breaks at index {verify_chain(stored)}")
            public_key = conn.execute(
                "SELECT public_key FROM writers WHERE writer_id = ?", (device.writer_id,)
            ).fetchone()[0]
            heads = conn.execute(
                "SELECT seq, hash, signature FROM chain_heads WHERE writer_id = ?", (device.writer_id,)
            ).fetchall()
            if rows and not heads:
                problems.append(f"{who}: no signed chain head")
            for head in heads:
                row = by_seq.get(head["seq"])
                if row is None or bytes(row["hash"]) != bytes(head["hash"]):
                    problems.append(f"{who}: signed head {head['seq']} names no stored event")
                elif not verify_chain_head(
                    public_key, device.writer_id, head["seq"], bytes(head["hash"]), bytes(head["signature"])
                ):
                    problems.append(f"{who}: signed head {head['seq']} does not verify with the device key")

            # The projection agrees with what the device sent: each scan counted once.
            scanned = sum(e.payload["qty"] for e in device.events if e.type == "scan.recorded")
            counted = conn.execute(
                "SELECT coalesce(sum(p), 0) FROM scan_counts WHERE writer_id = ? AND code NOT LIKE '@%'",
                (device.writer_id,),
            ).fetchone()[0]
            if counted != scanned:
                problems.append(f"{who}: scan counters hold {counted}, the device scanned {scanned}")

        for writer_id in sorted(box_writers):
            report = verify_writer_chain(conn, writer_id)
            if not report.ok:
                problems.append(f"box writer {writer_id}: chain does not verify: {report.problems[:5]}")
    return problems


@pytest.mark.slow
def test_acknowledged_events_survive_the_box_being_killed_under_load(tmp_path: Path) -> None:
    seed = int(os.environ.get("STOCKVERIFY_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash test seed {seed} (STOCKVERIFY_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    began = time.monotonic()

    server = ServerProcess(tmp_path / "box", "--demo")
    floor: Floor | None = None
    try:
        server.wait_ready()
        box = CountingBox(server)
        session_id = box.counting_session()
        rack_id = box.rack_id(session_id)
        products = box.products(4)
        devices = asyncio.run(_pair(box, rng, DEVICES))
        with contextlib.closing(_read_only(server.data_dir / "store.db")) as conn:
            box_writers = {row[0] for row in conn.execute("SELECT writer_id FROM writers WHERE kind != 'device'")}
        for client in (box.boss, box.verifier, box.auditor):
            client.close()  # still logged in: the rebuild at the end keeps their tokens

        floor = Floor(
            seed,
            server,
            devices,
            {"session_id": session_id, "rack_id": rack_id, "by": box.verifier_id, "products": products},
        )
        try:
            asyncio.run(floor.run())
        except Exception as exc:
            raise AssertionError(f"the crash run stopped (seed {seed}, logs in {tmp_path}): {exc!r}") from exc
    finally:
        if floor is not None:
            server = floor.server
        if server.process.poll() is None:
            server.stop()

    where = f"seed {seed}; server logs {server.log_path.parent}"
    promises = [p for d in floor.devices for p in d.problems]
    assert not promises, f"the box broke its answers ({where}):\n" + "\n".join(promises)
    assert len(floor.kills) >= 10, where
    mid_batch = sum(1 for kill in floor.kills if kill["in_flight"])
    assert mid_batch >= 1, f"no kill landed while a batch was in flight ({where}): {floor.kills}"
    assert sum(d.failed for d in devices) >= len(floor.kills), f"the kills cut no requests ({where})"
    assert floor.unanswered, f"no kill fell between a batch's COMMIT and its answer ({where})"

    db = server.data_dir / "store.db"
    problems = _check_store(db, devices, box_writers)
    assert not problems, f"the store after {len(floor.kills)} kills is wrong ({where}):\n" + "\n".join(problems)

    counters = _counters(db)
    rebuilt = subprocess.run(
        [sys.executable, "-m", "appliance", "rebuild", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=MAIN,
        check=False,
    )
    assert rebuilt.returncode == 0, (where, rebuilt.stdout, rebuilt.stderr)
    after = _counters(db)
    differ = {
        table: {
            "live only": sorted(set(counters[table]) - set(after[table]))[:3],
            "rebuilt only": sorted(set(after[table]) - set(counters[table]))[:3],
        }
        for table in COUNTERS
        if counters[table] != after[table]
    }
    assert not differ, f"stockverify rebuild changed the scan counters ({where}): {differ}"

    acked = sum(len(d.acked) for d in devices)
    print(
        f"crash test seed {seed}: {len(floor.kills)} kills ({mid_batch} with batches in flight),"
        f" {len(devices)} devices, {acked} events acknowledged ok and stored once"
        f" (of {sum(len(d.events) for d in devices)} made and stored),"
        f" {sum(d.batches for d in devices)} batches ({sum(d.failed for d in devices)} cut off),"
        f" {floor.unanswered} events committed whose answer the kill lost,"
        f" {time.monotonic() - began:.1f} s"
    )
