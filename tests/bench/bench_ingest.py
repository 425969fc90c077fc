"""How fast the box takes handheld batches: saturating ingest, latency at a store's pace, a queue drain.

A demo box runs as its own process. Twenty handhelds are paired with it, each with a verifier and a
session of its own. Their events are real: chained, hashed and head-signed exactly as a device makes
them (``replication.device.transport.batch_body``), encoded as msgpack before the clock starts, so that the
figures are the box's and not the load generator's. Four figures:

* ``ingest_events_per_s`` — all 20 devices send batches of 500 back to back, each device in order
  (closed loop, one request in flight per device): what the box sustains when it is saturated.
* ``batch_p99_ms`` — the store's pace: 200 scans/s offered (20 devices, 10 scans/s each, sent as
  they are scanned, one per batch), the 99th percentile of a batch's round trip.
* ``drain_2000_s`` — one handheld with 2,000 scans queued while the box was away, drained by the
  real sender (batches of 150, two in flight) until nothing is pending.
* ``raw_sqlite_rows_per_s`` — the baseline, measured in the same run: the same event rows inserted
  into a bare SQLite table with the same durability (WAL, ``synchronous=FULL``, one transaction per
  500 rows). ``ratio_vs_raw_sqlite`` is the first figure over this one.

    .venv/bin/python -m tests.bench.bench_ingest [--events-per-device 3000] [--paced-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.store.db import connect
from replication.device import transport
from replication.device.outbox import Identity, Outbox
from replication.device.sender import Sender
from replication.wire.codec import ZERO_HASH, Event
from replication.wire.hlc import wall_ms
from tests.conftest import DEMO_PASSWORDS, ServerProcess

DEVICES = 20
BATCH = 500
MSGPACK = "application/msgpack"


@dataclass
class Device:
    writer_id: str
    token: str
    key: Ed25519PrivateKey
    session_id: str
    rack_id: str
    user_id: str
    seq: int = 0
    head: bytes = ZERO_HASH
    hlc: int = 0  # the last event's: each new one is above it (docs/sync-protocol.md §1)

    def events(self, codes: list[str], count: int) -> list[Event]:
        """The next ``count`` scans of this device's chain."""
        made = []
        for _ in range(count):
            now = wall_ms()
            self.hlc = max(now << 16, self.hlc + 1)
            event = Event(
                writer_id=self.writer_id,
                seq=self.seq + 1,
                event_id=str(ULID()),
                type="scan.recorded",
                payload={
                    "session_id": self.session_id,
                    "code": random.choice(codes),
                    "qty": 1,
                    "rack_id": self.rack_id,
                    "product_id": None,
                    "token": None,
                    "by": self.user_id,
                },
                hlc=self.hlc,
                prev_hash=self.head,
                occurred_at=now,
            )
            self.seq, self.head = event.seq, event.hash
            made.append(event)
        return made

    def body(self, events: list[Event]) -> bytes:
        return msgpack.packb(transport.batch_body(self.writer_id, events, self.key), use_bin_type=True)  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _codes(server: ServerProcess) -> list[str]:
    with (server.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
        return [row["barcodes"].split("|")[0] for row in csv.DictReader(handle) if row["barcodes"]][:500]


def _setup(server: ServerProcess, keys: list[Ed25519PrivateKey]) -> list[Device]:
    """A paired device per key, each with a verifier and a started session on a rack of its own."""
    admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
    boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
    racks = boss.get("/api/racks").json()
    run_id = boss.post("/api/runs", json={"name": "ingest bench", "kind": "hard"}).json()["run_id"]
    people = []
    for n in range(len(keys)):
        name = f"ingest{n:02d}"
        made = admin.post("/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass"})
        assert made.status_code == 201, made.text
        session = boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": name, "racks": [racks[n]["code"]]})
        assert session.status_code == 201, session.text
        people.append((name, made.json()["user_id"], session.json()["session_id"], racks[n]["rack_id"]))
    assert boss.post(f"/api/runs/{run_id}/start").status_code == 200
    devices = []
    for (name, user_id, session_id, rack_id), key in zip(people, keys, strict=True):
        verifier = server.client(server.login(name, f"{name}-pass"))
        assert verifier.post(f"/api/sessions/{session_id}/start").status_code == 200
        code = boss.post("/api/devices/pairing-codes").json()["code"]
        paired = verifier.post(
            "/api/devices/pair",
            json={"code": code, "name": f"bench {name}", "public_key": key.public_key().public_bytes_raw().hex()},
        )
        assert paired.status_code in (200, 201), paired.text
        answer = paired.json()
        devices.append(Device(answer["writer_id"], answer["device_token"], key, session_id, rack_id, user_id))
    return devices


async def _post(http: aiohttp.ClientSession, url: str, device: Device, body: bytes) -> dict[str, Any]:
    headers = {"Authorization": f"Device {device.token}", "Content-Type": MSGPACK, "Accept": MSGPACK}
    async with http.post(url + "/api/sync/batch", data=body, headers=headers) as answer:
        raw = await answer.read()
        assert answer.status == 200, raw[:300]
        decoded: dict[str, Any] = msgpack.unpackb(raw, raw=False)
        assert not decoded["errors"], decoded["errors"][:3]
        return decoded


async def _saturate(url: str, devices: list[Device], bodies: dict[str, list[bytes]], events: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(device: Device) -> None:
            for body in bodies[device.writer_id]:
                await _post(http, url, device, body)

        start = time.perf_counter()
        await asyncio.gather(*(one(d) for d in devices))
        return events / (time.perf_counter() - start)


async def _paced(url: str, devices: list[Device], codes: list[str], seconds: float, rate: float) -> list[float]:
    """Each device sends one scan per batch at ``rate / len(devices)`` scans/s, at jittered instants."""
    latencies: list[float] = []
    interval = len(devices) / rate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(device: Device) -> None:
            await asyncio.sleep(random.uniform(0, interval))
            deadline = time.perf_counter() + seconds
            tick = time.perf_counter()
            while tick < deadline:
                body = device.body(device.events(codes, 1))
                start = time.perf_counter()
                await _post(http, url, device, body)
                latencies.append((time.perf_counter() - start) * 1000)
                tick += interval
                await asyncio.sleep(max(0.0, tick - time.perf_counter()))

        await asyncio.gather(*(one(d) for d in devices))
    return latencies


async def _drain(url: str, device: Device, codes: list[str], outbox: Outbox) -> float:
    """2,000 scans queued in a real outbox, then the real sender until none is pending."""
    outbox.save_identity(Identity(device.writer_id, device.token, url, "", "", "drain", 0))
    for _ in range(2000):
        outbox.append(
            "scan.recorded",
            {
                "session_id": device.session_id,
                "code": random.choice(codes),
                "qty": 1,
                "rack_id": device.rack_id,
                "product_id": None,
                "token": None,
                "by": device.user_id,
            },
        )
    async with transport.open_session() as http:
        sender = Sender(outbox, http)
        start = time.perf_counter()
        sender.start()
        assert await sender.wait_idle(timeout=120)
        elapsed = time.perf_counter() - start
        await sender.stop()
    counts = outbox.status_counts()
    failed = outbox.records("failed")[:1]
    outbox.close()
    assert not failed, (failed[0].code, failed[0].message)
    assert counts["synced"] == 2000 and counts["pending"] == 0, counts
    return elapsed


def _raw_sqlite(folder: Path, events: list[Event]) -> float:
    """The same rows into a bare table, same durability, one transaction per batch of 500."""
    conn = connect(folder / "raw.db")
    conn.execute(
        "CREATE TABLE events (pos INTEGER PRIMARY KEY, writer_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " event_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, payload BLOB NOT NULL, hlc INTEGER NOT NULL,"
        " occurred_at INTEGER, prev_hash BLOB NOT NULL, hash BLOB NOT NULL, received_at INTEGER NOT NULL,"
        " UNIQUE (writer_id, seq))"
    )
    rows = [
        (e.writer_id, e.seq, e.event_id, e.type, e.payload_bytes, e.hlc, e.occurred_at, e.prev_hash, e.hash, 0)
        for e in events
    ]
    start = time.perf_counter()
    for at in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (writer_id, seq, event_id, type, payload, hlc, occurred_at, prev_hash, hash,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows[at : at + BATCH],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events-per-device", type=int, default=3000)
    parser.add_argument("--paced-s", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="scans/s offered in the paced phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {"STOCKVERIFY_LOG_LEVEL": "warning", "STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "1000"}
        server = ServerProcess(folder / "box", "--demo", env=env)
        try:
            server.wait_ready()
            outbox = Outbox(folder / "drainer" / "outbox.db")
            keys = [Ed25519PrivateKey.generate() for _ in range(DEVICES)]
            devices = _setup(server, [*keys, outbox.key()])
            drainer, devices = devices[-1], devices[:DEVICES]
            codes = _codes(server)

            every: list[Event] = []
            bodies: dict[str, list[bytes]] = {}
            for device in devices:
                events = device.events(codes, args.events_per_device)
                every.extend(events)
                bodies[device.writer_id] = [device.body(events[i : i + BATCH]) for i in range(0, len(events), BATCH)]

            ingest = asyncio.run(_saturate(server.url, devices, bodies, len(every)))
            latencies = asyncio.run(_paced(server.url, devices, codes, args.paced_s, args.rate))
            drain_s = asyncio.run(_drain(server.url, drainer, codes, outbox))
        finally:
            server.stop()
        raw = _raw_sqlite(folder, every)

    print(f"devices: {DEVICES}")
    print(f"events: {len(every)}")
    print(f"ingest_events_per_s: {ingest:.0f}")
    print(f"batch_p50_ms: {statistics.median(latencies):.2f}  (at {args.rate:.0f} scans/s offered)")
    print(f"batch_p99_ms: {percentile(latencies, 0.99):.2f}")
    print(f"paced_batches: {len(latencies)}")
    print(f"drain_2000_s: {drain_s:.2f}")
    print(f"raw_sqlite_rows_per_s: {raw:.0f}")
    print(f"ratio_vs_raw_sqlite: {ingest / raw:.2f}")


if __name__ == "__main__":
    main()
