"""Rack claims under contention, leases that lapse by themselves, late scans under an old token, and
the live stream, all against the real server with real processes."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.store.identity import public_bytes
from replication.wire.codec import ZERO_HASH, Event, sign_chain_head
from replication.wire.hlc import HybridClock
from tests.conftest import DEMO_PASSWORDS, ServerProcess

CLAIMANTS = 20
ROUNDS = 100
TTL_S = 3


class Store:
    """A demo box with a running hard count and verifiers, each holding a session of their own."""

    def __init__(self, server: ServerProcess, verifiers: int) -> None:
        self.server = server
        self.admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
        self.boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        self.run_id = self.boss.post("/api/runs", json={"name": "locks", "kind": "hard"}).json()["run_id"]
        self.people: list[dict[str, Any]] = []
        for n in range(verifiers):
            name = f"claimer{n:02d}"
            self.admin.post("/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass"})
            token = server.login(name, f"{name}-pass")
            session = self.boss.post(f"/api/runs/{self.run_id}/sessions", json={"verifier": name}).json()
            self.people.append({"name": name, "token": token, "session_id": session["session_id"]})
        assert self.boss.post(f"/api/runs/{self.run_id}/start").status_code == 200
        for person in self.people:
            client = server.client(person["token"])
            person["user_id"] = client.get("/api/auth/me").json()["user_id"]
            person["display_name"] = client.get("/api/auth/me").json()["display_name"]
            assert client.post(f"/api/sessions/{person['session_id']}/start").status_code == 200
        self.racks = [r["code"] for r in self.boss.get("/api/racks").json()]


def _claimant(url: str, run_id: str, person: dict[str, Any], racks: list[str], barrier: Any, results: Any) -> None:
    """One process: at every round, wait for all the others, then claim that round's rack."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {person['token']}"}, timeout=30) as client:
        for round_no, rack in enumerate(racks):
            barrier.wait()
            answer = client.post(f"/api/runs/{run_id}/racks/{rack}/claim", json={"session_id": person["session_id"]})
            results.put((round_no, person["name"], answer.status_code, answer.json()))


@pytest.fixture(scope="module")
def contended(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    server = ServerProcess(tmp_path_factory.mktemp("locks") / "box", "--demo")
    try:
        server.wait_ready()
        yield Store(server, CLAIMANTS)
    finally:
        server.stop()


def test_twenty_processes_one_rack_exactly_one_wins_every_time(contended: Store) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(CLAIMANTS)
    results = context.Queue()
    racks = contended.racks[:ROUNDS]
    workers = [
        context.Process(
            target=_claimant, args=(contended.server.url, contended.run_id, person, racks, barrier, results)
        )
        for person in contended.people
    ]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=120) for _ in range(CLAIMANTS * ROUNDS)]
    for worker in workers:
        worker.join(timeout=30)
    names = {p["name"]: p["display_name"] for p in contended.people}
    by_round: dict[int, list[tuple[str, int, dict[str, Any]]]] = {}
    for round_no, name, status, body in answers:
        by_round.setdefault(round_no, []).append((name, status, body))
    assert sorted(by_round) == list(range(ROUNDS))
    tokens = []
    for round_no, attempts in by_round.items():
        winners = [(name, body) for name, status, body in attempts if status == 201]
        assert len(winners) == 1, (round_no, attempts)
        winner, grant = winners[0]
        tokens.append(grant["token"])
        for name, status, body in attempts:
            if name == winner:
                continue
            assert (status, body["code"]) == (409, "RACK_CLAIMED"), body
            assert body["details"]["holder_name"] == names[winner]
    assert len(set(tokens)) == ROUNDS  # every grant took a fresh fencing token


class Handheld:
    def __init__(self, server: ServerProcess, boss: httpx.Client) -> None:
        self.key = Ed25519PrivateKey.generate()
        code = boss.post("/api/devices/pairing-codes").json()["code"]
        paired = httpx.post(
            server.url + "/api/devices/pair",
            json={"code": code, "name": "lease test", "public_key": public_bytes(self.key).hex()},
        ).json()
        self.writer_id = paired["writer_id"]
        self.headers = {"Authorization": f"Device {paired['device_token']}"}
        self.url = server.url
        self.prev, self.seq, self.clock = ZERO_HASH, 0, HybridClock()

    def heartbeat(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.post(self.url + "/api/sync/heartbeat", json={}, headers=self.headers).json()
        return answer

    def send_scans(self, session_id: str, rack_id: str, token: int, by: str, count: int) -> dict[str, Any]:
        events = []
        for _ in range(count):
            self.seq += 1
            payload = {
                "session_id": session_id,
                "code": "4006381333931",
                "qty": 1,
                "rack_id": rack_id,
                "product_id": None,
                "token": token,
                "by": by,
            }
            event = Event(self.writer_id, self.seq, str(ULID()), "scan.recorded", payload, self.clock.now(), self.prev)
            self.prev = event.hash
            events.append(event)
        last = events[-1]
        body = {
            "writer_id": self.writer_id,
            "events": [
                {
                    "seq": e.seq,
                    "event_id": e.event_id,
                    "type": e.type,
                    "hlc": e.hlc,
                    "occurred_at": e.occurred_at,
                    "prev_hash": e.prev_hash.hex(),
                    "payload": e.payload,
                }
                for e in events
            ],
            "head": {
                "seq": last.seq,
                "hash": last.hash.hex(),
                "signature": sign_chain_head(self.key, self.writer_id, last.seq, last.hash).hex(),
            },
        }
        answer: dict[str, Any] = httpx.post(self.url + "/api/sync/batch", json=body, headers=self.headers).json()
        return answer


@pytest.fixture(scope="module")
def short_leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    env = {"STOCKVERIFY_LEASE_TTL_S": str(TTL_S), "STOCKVERIFY_LEASE_RENEW_S": "1"}
    server = ServerProcess(tmp_path_factory.mktemp("leases") / "box", "--demo", env=env)
    try:
        server.wait_ready()
        yield Store(server, 2)
    finally:
        server.stop()


def test_a_silent_lease_lapses_at_ttl_and_late_scans_are_flagged_not_dropped(short_leases: Store) -> None:
    store = short_leases
    first, second = store.people
    device = Handheld(store.server, store.boss)
    one = store.server.client(first["token"])
    two = store.server.client(second["token"])
    racks = {r["code"]: r["rack_id"] for r in store.boss.get("/api/racks").json()}
    rack = "F1-07"

    grant = one.post(
        f"/api/runs/{store.run_id}/racks/{rack}/claim",
        json={"session_id": first["session_id"], "device_id": device.writer_id},
    ).json()
    assert one.post(f"/api/runs/{store.run_id}/racks/{rack}/start").json()["state"] == "active"
    for _ in range(3):  # heartbeats keep it alive past the TTL
        time.sleep(1)
        assert device.heartbeat()["leases_renewed"] >= 1
    silent_since = time.monotonic()
    held = two.post(f"/api/runs/{store.run_id}/racks/{rack}/claim", json={"session_id": second["session_id"]})
    assert held.status_code == 409 and held.json()["details"]["holder_name"] == first["display_name"]

    while True:  # the device has gone quiet; the second verifier keeps trying
        answer = two.post(f"/api/runs/{store.run_id}/racks/{rack}/claim", json={"session_id": second["session_id"]})
        if answer.status_code == 201:
            lapsed_after = time.monotonic() - silent_since
            break
        assert answer.json()["code"] == "RACK_CLAIMED"
        assert time.monotonic() - silent_since < TTL_S + 2, "the lease never lapsed"
        time.sleep(0.05)
    assert TTL_S - 1 <= lapsed_after <= TTL_S + 1, lapsed_after
    assert answer.json()["token"] > grant["token"]

    # The first device comes back with scans made under its old lease: stored, flagged, not dropped.
    late = device.send_scans(first["session_id"], racks[rack], grant["token"], first["user_id"], 4)
    assert late["ok"] == [1, 2, 3, 4] and not late["errors"]
    assert {c["kind"] for c in late["conflicts"]} == {"late_lease"}
    queue = [
        c for c in store.boss.get("/api/conflicts", params={"run_id": store.run_id}).json() if c["kind"] == "late_lease"
    ]
    assert len(queue) == 1 and queue[0]["qty"] == 4 and queue[0]["token"] == grant["token"]
    counted = store.boss.get(f"/api/sessions/{first['session_id']}").json()["items"]
    assert sum(item["qty"] for item in counted) == 4

    # Rejecting them takes them out of the count; the events stay in the log.
    resolved = store.boss.post(
        f"/api/conflicts/{queue[0]['conflict_id']}/resolve",
        json={"action": "reject", "reason": "made after the lease passed"},
    )
    assert resolved.status_code == 200
    counted = store.boss.get(f"/api/sessions/{first['session_id']}").json()["items"]
    assert sum(item["qty"] for item in counted) == 0
    board = {t["rack"]: t for t in store.boss.get(f"/api/runs/{store.run_id}/racks").json()}
    assert board[rack]["state"] == "claimed" and board[rack]["holder_name"] == second["display_name"]


def test_rack_moves_and_their_refusals(short_leases: Store) -> None:
    store = short_leases
    first, second = store.people
    one = store.server.client(first["token"])
    two = store.server.client(second["token"])
    base = f"/api/runs/{store.run_id}/racks/G-20"
    assert one.post(base + "/claim", json={"session_id": first["session_id"]}).status_code == 201
    assert two.post(base + "/pause").json()["code"] == "NOT_RACK_HOLDER"
    assert one.post(base + "/pause").json()["code"] == "RACK_INVALID_TRANSITION"
    for action, state in (("start", "active"), ("pause", "paused"), ("resume", "active"), ("finish", "completed")):
        assert one.post(f"{base}/{action}").json()["state"] == state
    assert two.post(base + "/claim", json={"session_id": second["session_id"]}).json()["code"] == "RACK_COMPLETED"
    assert store.boss.post(base + "/reverify", json={"reason": ""}).json()["code"] == "REASON_REQUIRED"
    assert store.boss.post(base + "/reverify", json={"reason": "numbers look off"}).json()["state"] == "re-verify"
    assert two.post(base + "/claim", json={"session_id": second["session_id"]}).status_code == 201
    assert store.boss.post(base + "/force-release", json={"reason": "shift over"}).json()["state"] == "available"
    moves = [
        e["type"]
        for e in store.admin.get(f"/api/writers/{_box_writer(store)}/events", params={"limit": 1000}).json()
        if e["payload"].get("rack") == "G-20"
    ]
    assert moves == [
        "rack.claimed",
        "rack.started",
        "rack.paused",
        "rack.resumed",
        "rack.finished",
        "rack.reverify_requested",
        "rack.claimed",
        "rack.released",
    ]


def _box_writer(store: Store) -> str:
    node_id: str = httpx.get(store.server.url + "/api/health").json()["node_id"]
    return node_id


def test_session_locks_tell_other_user_from_other_device(short_leases: Store) -> None:
    store = short_leases
    first, second = store.people
    one = store.server.client(first["token"])
    two = store.server.client(second["token"])
    lock = f"/api/sessions/{first['session_id']}/lock"
    assert one.post(lock, json={"device_id": "phone-1"}).json()["device_id"] == "phone-1"
    assert one.post(lock, json={"device_id": "tablet-2"}).json()["code"] == "SESSION_LOCKED_ON_OTHER_DEVICE"
    assert store.boss.post(lock, json={"device_id": "desk"}).json()["code"] == "SESSION_LOCKED_BY_OTHER_USER"
    assert two.post(lock, json={"device_id": "x"}).json()["code"] == "SESSION_NOT_YOURS"
    got = one.get(lock)
    assert got.json()["lock"]["holder_name"] == first["display_name"], got.text
    assert store.boss.post(lock + "/force-release", json={"reason": "phone died"}).status_code == 200
    assert one.get(lock).json()["lock"] is None
    assert one.post(lock, json={"device_id": "tablet-2"}).status_code == 200
    assert one.delete(lock).status_code == 200


def test_live_stream_shows_a_claim_within_100_ms(short_leases: Store) -> None:
    store = short_leases
    first = store.people[0]
    one = store.server.client(first["token"])
    arrived: list[tuple[float, dict[str, Any]]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", store.server.url + "/api/events", params={"access_token": first["token"]}, timeout=30
        ) as stream:
            ready.set()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("type") == "rack.claimed" and message.get("rack") == "BG-03":
                        arrived.append((time.perf_counter(), message))
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    time.sleep(0.2)
    answer = one.post(f"/api/runs/{store.run_id}/racks/BG-03/claim", json={"session_id": first["session_id"]})
    answered = time.perf_counter()
    assert answer.status_code == 201
    listener.join(5)
    assert arrived, "the claim never reached the live stream"
    delay_ms = (arrived[0][0] - answered) * 1000
    assert delay_ms <= 100, delay_ms
    assert arrived[0][1]["holder"] == first["user_id"] and arrived[0][1]["token"] == answer.json()["token"]
