"""How fast replicas converge and how much a thin uplink carries.

Backlogs are written straight into each box's database before its process starts, through the one
record path (``EventLog.append_run``: chained, hashed, folded, with a signed head), so the clock
measures replication and not the load generator. Figures:

* ``converge_after_heal_s`` — three boxes of one store that each took 10,000 events from a handheld of
  their own while cut off from one another; every link comes back at once; seconds until all three
  hold the same version vector (each box pulls 20,000 events from its peers).
* ``hq_events_per_s`` — a box with a 1,000,000-event backlog whose uplink comes back: events per
  second until HQ's replica of the store holds all of them (pages of 2,000, zlib msgpack, every
  event re-chained and folded at HQ). ``raw_sqlite_rows_per_s`` is the baseline measured in the same
  run: the same rows inserted into a bare table with the same durability, no network, no checks.
* ``full_log_bytes_per_event`` — wire bytes per event of that shipment (compressed pages).
* ``counter_mode_bytes_ratio`` — for a count of about ten scans per SKU, the bytes of the counter-state
  delta over the bytes of the full-log delta for the same events.

    .venv/bin/python -m tests.bench.bench_replication [--backlog 1000000] [--divergent 10000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import tests.conftest
from appliance.box import open_box
from appliance.replica import counters
from appliance.replica import store as replicas
from appliance.store.db import connect
from appliance.store.eventlog import enroll_writer, new_id
from replication.wire.codec import ZERO_HASH, Event, sign_chain_head
from replication.wire.protocol import pack_page
from tests.conftest import ServerProcess, free_port, make_settings
from tests.replication.faults import LinkProxy

STORE = "bench-store"
STORE_SECRET = "bench-store-secret-000001"
HQ_SECRET = "bench-hq-secret-0000000001"
CHUNK = 5000


def write_backlog(data_dir: Path, events: int, scans_per_sku: int = 10, sessions: int = 10) -> None:
    """A box of the store whose handheld recorded ``events`` scans (``scans_per_sku`` per code)."""
    box = open_box(make_settings(data_dir, store_id=STORE))
    key = Ed25519PrivateKey.generate()
    writer = new_id()
    box.db.write(
        lambda conn: enroll_writer(conn, writer, "device", STORE, "bench handheld", key.public_key().public_bytes_raw())
    )
    prev, hlc = ZERO_HASH, box.log.clock.now()
    for start in range(0, events, CHUNK):
        chunk = []
        for seq in range(start + 1, min(events, start + CHUNK) + 1):
            sku = (seq - 1) // scans_per_sku
            payload = {
                "session_id": f"S-{sku % sessions}",
                "code": f"{2000000000000 + sku}",
                "qty": 1,
                "rack_id": f"R-{sku % 300}",
                "product_id": None,
                "token": None,
                "by": "bench-verifier",
            }
            event = Event(writer, seq, new_id(), "scan.recorded", payload, hlc + seq, prev, hlc // 65536)
            prev = event.hash
            chunk.append(event)
        box.db.write(lambda conn, chunk=chunk: box.log.append_run(conn, chunk))
    signature = sign_chain_head(key, writer, events, prev)
    box.db.write(
        lambda conn: conn.execute(
            "INSERT INTO chain_heads (writer_id, seq, hash, signature, signed_at) VALUES (?, ?, ?, ?, 0)",
            (writer, events, prev, signature),
        )
    )
    box.close()


def vector(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT writer_id, head_seq FROM writers WHERE head_seq > 0").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


class Vectors:
    """What each replica holds, read through one open connection per file: the clock polls every
    10 ms, and opening three files a hundred times a second took a fifth of a core from the boxes."""

    def __init__(self, dbs: list[Path]) -> None:
        self._conns = [sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False) for db in dbs]

    def read(self) -> list[dict[str, int]]:
        return [
            dict(conn.execute("SELECT writer_id, head_seq FROM writers WHERE head_seq > 0").fetchall())
            for conn in self._conns
        ]

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


def start(data_dir: Path, port: int, env: dict[str, str], *args: str) -> ServerProcess:
    real = tests.conftest.free_port
    tests.conftest.free_port = lambda: port
    try:
        return ServerProcess(data_dir, *args, env={"STOCKVERIFY_LOG_LEVEL": "warning", **env})
    finally:
        tests.conftest.free_port = real


def converge_after_heal(root: Path, divergent: int) -> float:
    names = ("a", "b", "c")
    for name in names:
        write_backlog(root / name, divergent)
    ports = {name: free_port() for name in names}
    links = {(x, y): LinkProxy(ports[y]) for x in names for y in names if x != y}
    for proxy in links.values():
        proxy.cut()
    boxes = []
    try:
        for name in names:
            peers = ",".join(links[(name, y)].url for y in names if y != name)
            env = {"STOCKVERIFY_STORE_SECRET": STORE_SECRET, "STOCKVERIFY_PEERS": peers, "STOCKVERIFY_MDNS": "false"}
            boxes.append(start(root / name, ports[name], env))
        for box in boxes:
            box.wait_ready()
        time.sleep(1.0)  # every box has tried its dead links and is in its retry rhythm
        began = time.perf_counter()
        for proxy in links.values():
            proxy.heal()
        held = Vectors([root / name / "store.db" for name in names])
        try:
            while True:
                vectors = held.read()
                if all(v == vectors[0] for v in vectors) and sum(vectors[0].values()) >= 3 * divergent:
                    return time.perf_counter() - began
                if time.perf_counter() - began > 300:
                    raise TimeoutError("boxes did not converge in 300 s")
                time.sleep(0.01)
        finally:
            held.close()
    finally:
        for box in boxes:
            box.stop()
        for proxy in links.values():
            proxy.close()


def hq_shipment(root: Path, backlog: int) -> tuple[float, float]:
    write_backlog(root / "box", backlog)
    hq = ServerProcess(
        root / "hq", "--role", "hq", env={"STOCKVERIFY_HQ_SECRET": HQ_SECRET, "STOCKVERIFY_LOG_LEVEL": "warning"}
    )
    uplink = LinkProxy(hq.port)
    uplink.cut()
    env = {"STOCKVERIFY_HQ_SECRET": HQ_SECRET, "STOCKVERIFY_HQ_URL": uplink.url, "STOCKVERIFY_MDNS": "false"}
    box = start(root / "box", free_port(), env)
    try:
        hq.wait_ready()
        box.wait_ready()
        want = vector(root / "box" / "store.db")
        time.sleep(0.5)
        began = time.perf_counter()
        uplink.heal()
        replica = root / "hq" / "stores" / STORE / "store.db"
        while not all(vector(replica).get(w, 0) >= seq for w, seq in want.items()):
            if time.perf_counter() - began > 900:
                raise TimeoutError("HQ did not catch up in 900 s")
            time.sleep(0.05)
        took = time.perf_counter() - began
    finally:
        box.stop()
        hq.stop()
        uplink.close()
    with sqlite3.connect(root / "box" / "store.db") as conn:
        events_out, bytes_out = conn.execute("SELECT events_out, bytes_out FROM peers WHERE role = 'hq'").fetchone()
    return sum(want.values()) / took, bytes_out / max(events_out, 1)


def raw_sqlite_rows_per_s(root: Path, rows: int) -> float:
    conn = connect(root / "raw.db")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE events (pos INTEGER PRIMARY KEY, writer_id TEXT, seq INTEGER, event_id TEXT UNIQUE, type TEXT,"
        " payload BLOB, hlc INTEGER, occurred_at INTEGER, prev_hash BLOB, hash BLOB, received_at INTEGER,"
        " UNIQUE (writer_id, seq))"
    )
    payload = msgpack.packb({"session_id": "S-1", "code": "2000000000001", "qty": 1, "rack_id": "R-1"})
    began = time.perf_counter()
    for start_at in range(0, rows, 2000):  # one transaction per page, as HQ commits one per page
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events VALUES (NULL, 'w', ?, ?, 'scan.recorded', ?, ?, 0, ?, ?, 0)",
            [(seq, new_id(), payload, seq, b"\0" * 32, b"\1" * 32) for seq in range(start_at, start_at + 2000)],
        )
        conn.execute("COMMIT")
    conn.close()
    return rows / (time.perf_counter() - began)


def counter_ratio(root: Path, events: int) -> float:
    write_backlog(root / "ratio", events, scans_per_sku=10)
    box = open_box(make_settings(root / "ratio", store_id=STORE))
    try:
        conn = box.db.read()
        full, theirs = 0, {}
        while True:
            page = replicas.delta(conn, STORE, theirs, 2000)
            if not page["events"]:
                break
            full += len(pack_page(page))
            for row in page["events"]:
                theirs[row[0]] = row[1]
        counter = len(pack_page(counters.export(conn, STORE, {})))
    finally:
        box.close()
    return counter / full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--divergent", type=int, default=10_000)
    parser.add_argument("--ratio-events", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp:
        root = Path(tmp)
        print(f"converge_after_heal_s: {converge_after_heal(root / 'peers', args.divergent):.2f}", flush=True)
        print(f"counter_mode_bytes_ratio: {counter_ratio(root, args.ratio_events):.3f}", flush=True)
        per_s, per_event = hq_shipment(root / "uplink", args.backlog)
        raw = raw_sqlite_rows_per_s(root, min(args.backlog, 200_000))
        print(f"hq_events_per_s: {per_s:.0f}")
        print(f"full_log_bytes_per_event: {per_event:.1f}")
        print(f"raw_sqlite_rows_per_s: {raw:.0f}")
        print(f"ratio_vs_raw_sqlite: {per_s / raw:.2f}")


if __name__ == "__main__":
    main()
