"""Three boxes of one store and an HQ, as real processes, with every link behind a proxy that a test cuts
and restores at random while handhelds write to different boxes. At the end every box shows the same
counts, serials and statuses, HQ holds every event once, and another store's events stay its own."""

from __future__ import annotations

import asyncio
import csv
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.conftest
from replication.device import transport
from replication.device.outbox import Identity, Outbox
from replication.device.sender import Sender, SenderSettings
from tests.conftest import DEMO_PASSWORDS, ServerProcess, free_port
from tests.replication.faults import LinkProxy

STORE_SECRET = "store-secret-for-the-test-0001"
HQ_SECRET = "hq-secret-for-the-test-00000001"
NAMES = ("a", "b", "c")
SCANS = 120


def _start(data_dir: Path, port: int, *args: str, env: dict[str, str]) -> ServerProcess:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tests.conftest, "free_port", lambda: port)
        return ServerProcess(data_dir, *args, env=env)


class Fleet:
    def __init__(self, root: Path) -> None:
        self.hq = ServerProcess(
            root / "hq", "--role", "hq", env={"STOCKVERIFY_HQ_SECRET": HQ_SECRET, "STOCKVERIFY_STORE_ID": "hq"}
        )
        ports = {name: free_port() for name in NAMES}
        # links[(x, y)]: the network box x crosses to reach y ("hq" included).
        self.links: dict[tuple[str, str], LinkProxy] = {}
        for x in NAMES:
            for y in (*NAMES, "hq"):
                if x != y:
                    self.links[(x, y)] = LinkProxy(self.hq.port if y == "hq" else ports[y])
        self.boxes: dict[str, ServerProcess] = {}
        for name in NAMES:
            env = {
                "STOCKVERIFY_STORE_ID": "demo-store",
                "STOCKVERIFY_STORE_SECRET": STORE_SECRET,
                "STOCKVERIFY_HQ_SECRET": HQ_SECRET,
                "STOCKVERIFY_HQ_URL": self.links[(name, "hq")].url,
                "STOCKVERIFY_PEERS": ",".join(self.links[(name, y)].url for y in NAMES if y != name),
                "STOCKVERIFY_REPLICATE_EVERY_S": "0.2",
            }
            if name != "a":
                env["STOCKVERIFY_LOCK_AUTHORITY"] = "false"  # b and c join a's store, whose authority a is
            args = ("--demo",) if name == "a" else ()
            self.boxes[name] = _start(root / name, ports[name], *args, env=env)
        # A box of another store that reports to the same HQ.
        self.other = ServerProcess(
            root / "other",
            env={
                "STOCKVERIFY_STORE_ID": "other-store",
                "STOCKVERIFY_HQ_SECRET": HQ_SECRET,
                "STOCKVERIFY_HQ_URL": self.hq.url,
            },
        )

    def processes(self) -> list[ServerProcess]:
        return [self.hq, *self.boxes.values(), self.other]

    def db(self, name: str) -> Path:
        if name == "hq":
            return self.hq.data_dir / "stores" / "demo-store" / "store.db"
        return (self.other if name == "other" else self.boxes[name]).data_dir / "store.db"

    def query(self, name: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.db(name)}?mode=ro", uri=True) as conn:
            return conn.execute(sql, args).fetchall()

    def vector(self, name: str) -> dict[str, int]:
        return dict(self.query(name, "SELECT writer_id, head_seq FROM writers WHERE head_seq > 0"))  # type: ignore[arg-type]

    def wait_converged(self, timeout: float = 60.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.db("hq").exists():
                vectors = [self.vector(name) for name in (*NAMES, "hq")]
                if all(v == vectors[0] for v in vectors):
                    return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"not converged after {timeout} s: {[self.vector(n) for n in NAMES]}")

    def close(self) -> None:
        for proxy in self.links.values():
            proxy.close()
        for process in self.processes():
            process.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        for process in made.processes():
            process.wait_ready()
        yield made
    finally:
        made.close()


def _client(box: ServerProcess, username: str, password: str) -> httpx.Client:
    return box.client(box.login(username, password))


def _pair(box: ServerProcess, boss: httpx.Client, folder: Path, name: str) -> Outbox:
    outbox = Outbox(folder / "outbox.db")
    public_key = outbox.key().public_key().public_bytes_raw()
    code = boss.post("/api/devices/pairing-codes").json()["code"]

    async def enrol() -> dict[str, str]:
        async with transport.open_session() as http:
            return await transport.pair(http, box.url, code, name, public_key)

    answer = asyncio.run(enrol())
    outbox.save_identity(
        Identity(answer["writer_id"], answer["device_token"], box.url, answer["store_id"], answer["node_id"], name, 0)
    )
    return outbox


def _drain(outbox: Outbox) -> dict[str, int]:
    async def main() -> dict[str, int]:
        async with transport.open_session() as http:
            sender = Sender(outbox, http, SenderSettings(batch_size=50, backoff_base_s=0.05, backoff_max_s=0.5))
            sender.start()
            try:
                assert await sender.wait_idle(timeout=60)
            finally:
                await sender.stop()
            return sender.progress().counts

    return asyncio.run(main())


def _chaos(fleet: Fleet, stop: threading.Event, seed: int) -> int:
    """Cut and restore random links until told to stop; returns how many times a link changed."""
    rng = random.Random(seed)
    flips = 0
    while not stop.is_set():
        proxy = rng.choice(list(fleet.links.values()))
        proxy.cut() if proxy.up else proxy.heal()
        flips += 1
        stop.wait(rng.uniform(0.05, 0.3))
    for proxy in fleet.links.values():
        proxy.heal()
    return flips


def test_three_boxes_and_hq_converge_through_random_partitions(fleet: Fleet, tmp_path: Path) -> None:
    fleet.wait_converged()  # b and c joined empty and took the demo store from a (or from HQ)
    a = fleet.boxes["a"]
    admin = _client(a, "admin", DEMO_PASSWORDS["admin"])
    boss_a = _client(a, "supervisor", DEMO_PASSWORDS["supervisor"])
    for n in range(3):
        made = admin.post(
            "/api/users", json={"username": f"counter{n}", "role": "verifier", "password": "count-pass-1"}
        )
        assert made.status_code == 201, made.text
    run_id = boss_a.post("/api/runs", json={"name": "three boxes", "kind": "hard"}).json()["run_id"]
    sessions, racks = [], []
    for n in range(3):
        made = boss_a.post(
            f"/api/runs/{run_id}/sessions", json={"racks": [f"G-{n + 1:02d}"], "verifier": f"counter{n}"}
        )
        assert made.status_code == 201, made.text
        sessions.append(made.json()["session_id"])
        racks.append(made.json()["rack_ids"][0])
    assert boss_a.post(f"/api/runs/{run_id}/start").status_code == 200
    fleet.wait_converged()

    with (a.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["barcodes"]][:20]
    barcodes = [
        (boss_a.get(f"/api/products/{row['sku']}").json()["product_id"], row["barcodes"].split("|")[0]) for row in rows
    ]
    outboxes = []
    for n, name in enumerate(NAMES):  # each verifier counts at a different box, with a device paired there
        box = fleet.boxes[name]
        verifier = _client(box, f"counter{n}", "count-pass-1")
        started = verifier.post(f"/api/sessions/{sessions[n]}/start")
        assert started.status_code == 200, started.text
        by = verifier.get("/api/auth/me").json()["user_id"]
        outbox = _pair(box, _client(box, "supervisor", DEMO_PASSWORDS["supervisor"]), tmp_path / name, f"hh-{name}")
        for i in range(SCANS):
            product_id, code = barcodes[i % len(barcodes)]
            payload = {"session_id": sessions[n], "code": code, "qty": 1, "rack_id": racks[n], "product_id": None}
            outbox.append("scan.recorded", {**payload, "token": None, "by": by})
            if i % 40 == 0:
                serial = {"session_id": sessions[n], "product_id": product_id, "serial": f"SN-{name}-{i}", "by": by}
                outbox.append("serial.added", serial)
        outboxes.append(outbox)

    stop = threading.Event()
    flips: list[int] = []
    chaos = threading.Thread(target=lambda: flips.append(_chaos(fleet, stop, seed=20261123)))
    chaos.start()
    try:
        results = []
        for outbox in outboxes:
            results.append(_drain(outbox))
            time.sleep(1.0)  # let the links flap while some boxes have news and others do not
    finally:
        stop.set()
        chaos.join()
    assert flips[0] > 10
    assert all(r["synced"] == SCANS + 3 and r["pending"] == 0 for r in results), results
    healed = fleet.wait_converged()

    # Every box shows the same items and statuses, and they add up to what the devices sent.
    views = {
        name: [
            _client(fleet.boxes[name], "supervisor", DEMO_PASSWORDS["supervisor"]).get(f"/api/sessions/{s}").json()
            for s in sessions
        ]
        for name in NAMES
    }
    for name in NAMES:
        assert _summary(views[name]) == _summary(views["a"]), name
    assert sum(item["qty"] for view in views["a"] for item in view["items"]) == 3 * SCANS
    assert sorted(s for view in views["a"] for item in view["items"] for s in item["serials"]) == sorted(
        f"SN-{name}-{i}" for name in NAMES for i in range(0, SCANS, 40)
    )

    # A status set at one box reaches the others and HQ.
    verifier_c = _client(fleet.boxes["c"], "counter2", "count-pass-1")
    assert verifier_c.post(f"/api/sessions/{sessions[2]}/submit").status_code == 200
    boss_b = _client(fleet.boxes["b"], "supervisor", DEMO_PASSWORDS["supervisor"])
    deadline = time.monotonic() + 30
    while boss_b.get(f"/api/sessions/{sessions[2]}").json()["status"] != "SUBMITTED":
        assert time.monotonic() < deadline, "the submit did not reach box b"
        time.sleep(0.1)
    assert boss_b.post(f"/api/sessions/{sessions[2]}/approve").status_code == 200
    fleet.wait_converged()
    for name in (*NAMES, "hq"):
        assert fleet.query(name, "SELECT status FROM sessions WHERE session_id = ?", sessions[2]) == [("APPROVED",)]

    # HQ holds every event of the store exactly once, chained and signed as the writers made them.
    held = fleet.query("hq", "SELECT count(*), count(DISTINCT writer_id || ':' || seq) FROM events")[0]
    assert held[0] == held[1] == sum(fleet.vector("a").values())
    assert fleet.query("hq", "SELECT count(*) FROM events") == fleet.query("a", "SELECT count(*) FROM events")
    deadline = time.monotonic() + 10  # each side learns the other's vector at its next exchange
    while True:
        status = boss_b.get("/api/replication/status").json()
        assert {p["role"] for p in status["peers"]} == {"box", "hq"} and len(status["peers"]) == 3
        if all(p["pending"] == 0 and p["behind"] == 0 and p["last_ok_at"] for p in status["peers"]):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)

    # No store sees another's events (HQ itself is a writer in every store it serves).
    hq_node = httpx.get(fleet.hq.url + "/api/health").json()["node_id"]
    other_writers = {w for (w,) in fleet.query("other", "SELECT writer_id FROM writers")} - {hq_node}
    assert other_writers
    for name in (*NAMES, "hq"):
        assert not other_writers & {w for (w,) in fleet.query(name, "SELECT writer_id FROM writers")}
        assert fleet.query(name, "SELECT DISTINCT store_id FROM writers") == [("demo-store",)]
    other_replica = fleet.hq.data_dir / "stores" / "other-store" / "store.db"
    with sqlite3.connect(f"file:{other_replica}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT DISTINCT store_id FROM writers").fetchall() == [("other-store",)]
    print(f"healed in {healed:.2f} s after {flips[0]} link changes")


def _summary(views: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            view["session_id"],
            view["status"],
            sorted((item["product_id"], item["qty"], tuple(item["serials"])) for item in view["items"]),
        )
        for view in views
    ]


def test_a_peer_without_the_store_secret_is_refused(fleet: Fleet) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from replication.peers.client import Me, PeerClient, PeerError

    key = Ed25519PrivateKey.generate()
    me = Me("intruder-node", "demo-store", key, key.public_key().public_bytes_raw())

    async def attempt(url: str, secret: str) -> str:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            client = PeerClient(http, url, me)
            try:
                await client.hello("box", secret)
            except PeerError as exc:
                return exc.code
            return "enrolled"

    assert asyncio.run(attempt(fleet.boxes["a"].url, "a-wrong-secret-of-16-chars")) == "NOT_ENROLLED"
    # An unsigned pull is refused before anything is read.
    answer = httpx.post(fleet.boxes["a"].url + "/api/replication/pull", content=b"\x80")
    assert answer.status_code == 401 and answer.json()["code"] == "NODE_SIGNATURE_REQUIRED"


def test_a_peer_that_stays_down_is_noted_once_not_at_every_retry(fleet: Fleet) -> None:
    """A box retries a lost peer every fraction of a second; its status row says so once (and then once
    a minute), not with a committed write, an fsync on a Pi's SD card, per retry."""
    link = fleet.links[("a", "b")]
    sql = "SELECT last_error, last_error_at FROM peers WHERE url = ?"
    link.cut()
    try:
        deadline = time.monotonic() + 10
        while fleet.query("a", sql, link.url)[0][0] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        error, first_at = fleet.query("a", sql, link.url)[0]
        assert error and first_at, "the lost peer's failure is on its status row"
        seen = set()
        until = time.monotonic() + 2.0  # a dozen retries at the LAN pace
        while time.monotonic() < until:
            seen.add(fleet.query("a", sql, link.url)[0][1])
            time.sleep(0.05)
        assert seen == {first_at}
    finally:
        link.heal()
