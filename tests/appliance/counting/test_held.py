"""Device writes obey the session: what is wrong outright is refused, what a device could not have known
offline is stored and held, and no approved total moves until a supervisor accepts what was held.

A real box on a loopback port; handhelds pair with it and send real signed batches in msgpack.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.store.identity import public_bytes
from replication.device.transport import batch_body
from replication.wire.codec import ZERO_HASH, Event
from replication.wire.hlc import HybridClock
from tests.conftest import DEMO_PASSWORDS, ServerProcess

MSGPACK = "application/msgpack"
_names = itertools.count(1)
_racks = iter(f"G-{n:02d}" for n in range(1, 100))


class Handheld:
    """A device with its key and chain; a refused batch leaves the chain where it was, as the page says."""

    def __init__(self, server: ServerProcess, boss: httpx.Client) -> None:
        self.key = Ed25519PrivateKey.generate()
        code = boss.post("/api/devices/pairing-codes").json()["code"]
        paired = httpx.post(
            server.url + "/api/devices/pair",
            json={"code": code, "name": f"Handheld {next(_names)}", "public_key": public_bytes(self.key).hex()},
        ).json()
        self.url = server.url
        self.writer_id: str = paired["writer_id"]
        self.headers = {"Authorization": f"Device {paired['device_token']}", "Content-Type": MSGPACK}
        self.clock = HybridClock()
        self.seq, self.prev = 0, ZERO_HASH
        self.last_batch: list[Event] = []

    def make(self, specs: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        events, seq, prev = [], self.seq, self.prev
        for event_type, payload in specs:
            seq += 1
            event = Event(self.writer_id, seq, str(ULID()), event_type, payload, self.clock.now(), prev)
            prev = event.hash
            events.append(event)
        return events

    def send(self, events: list[Event]) -> dict[str, Any]:
        answer = httpx.post(
            self.url + "/api/sync/batch",
            content=msgpack.packb(batch_body(self.writer_id, events, self.key), use_bin_type=True),
            headers=self.headers,
        )
        assert answer.status_code == 200, answer.content
        assert answer.headers["content-type"].startswith(MSGPACK)
        body: dict[str, Any] = msgpack.unpackb(answer.content)
        if not body["errors"]:
            self.seq, self.prev = events[-1].seq, events[-1].hash
            self.last_batch = events
        return body

    def scans(self, session: Session, qty: int = 1, count: int = 1, **fields: Any) -> dict[str, Any]:
        payload = {
            "session_id": session.session_id,
            "code": "4006381333931",
            "qty": qty,
            "rack_id": session.rack_id,
            "product_id": None,
            "token": None,
            "by": session.verifier_id,
            **fields,
        }
        return self.send(self.make([("scan.recorded", payload)] * count))


class Session:
    def __init__(self, run_id: str, session_id: str, rack_id: str, verifier_id: str, verifier: httpx.Client) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.rack_id = rack_id
        self.verifier_id = verifier_id
        self.verifier = verifier


class Store:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
        self.boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))

    def verifier(self) -> tuple[str, httpx.Client]:
        """A verifier of their own, so that each test's sessions leave the others' verifiers free."""
        name = f"counter{next(_names)}"
        made = self.admin.post("/api/users", json={"username": name, "role": "verifier", "password": "long-password-1"})
        assert made.status_code == 201, made.text
        return made.json()["user_id"], self.server.client(self.server.login(name, "long-password-1"))

    def session(self, device_id: str | None = None) -> Session:
        rack = next(_racks)
        verifier_id, verifier = self.verifier()
        run_id = self.boss.post("/api/runs", json={"name": f"held {rack}", "kind": "hard"}).json()["run_id"]
        body: dict[str, Any] = {"racks": [rack], "verifier": verifier_id}
        if device_id:
            body["device_id"] = device_id
        made = self.boss.post(f"/api/runs/{run_id}/sessions", json=body)
        assert made.status_code == 201, made.text
        assert self.boss.post(f"/api/runs/{run_id}/start").status_code == 200
        session_id = made.json()["session_id"]
        assert verifier.post(f"/api/sessions/{session_id}/start").status_code == 200
        return Session(run_id, session_id, made.json()["rack_ids"][0], verifier_id, verifier)

    def approve(self, session: Session) -> None:
        assert session.verifier.post(f"/api/sessions/{session.session_id}/submit").status_code == 200
        approved = self.boss.post(f"/api/sessions/{session.session_id}/approve")
        assert approved.status_code == 200, approved.text

    def counted(self, session: Session) -> int:
        return sum(i["qty"] for i in self.boss.get(f"/api/sessions/{session.session_id}").json()["items"])

    def approved_total(self, session: Session) -> int:
        total: int = self.boss.get(f"/api/runs/{session.run_id}/rollup").json()["total_counted"]
        return total

    def held(self, session: Session, status: str = "open") -> list[dict[str, Any]]:
        answer = self.boss.get("/api/held", params={"session_id": session.session_id, "status": status})
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()
        return rows

    def decide(self, event_ids: list[str], decision: str) -> httpx.Response:
        return self.boss.post(
            "/api/held/decide", json={"event_ids": event_ids, "decision": decision, "reason": "checked on the shelf"}
        )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    server = ServerProcess(tmp_path_factory.mktemp("held") / "box", "--demo")
    try:
        server.wait_ready()
        yield Store(server)
    finally:
        server.stop()


def _reasons(answer: dict[str, Any]) -> list[str]:
    return [h["reason"] for h in answer["held"]]


def test_a_scan_into_an_approved_session_is_held_until_a_supervisor_accepts_it(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    first = device.scans(session, count=6)
    assert first["ok"] == [1, 2, 3, 4, 5, 6] and not first["held"] and not first["errors"]
    store.approve(session)
    assert store.approved_total(session) == 6

    late = device.scans(session, qty=50)
    assert late["ok"] == [7] and not late["errors"]
    assert _reasons(late) == ["SESSION_APPROVED"] and late["held"][0]["seq"] == 7
    assert store.approved_total(session) == 6 and store.counted(session) == 6

    # The answer was lost; the device sends the batch again and learns again that it is held.
    again = device.send(device.last_batch)
    assert again["ok"] == [7] and _reasons(again) == ["SESSION_APPROVED"]

    [row] = store.held(session)
    assert row["qty"] == 50 and row["reasons"] == ["SESSION_APPROVED"] and row["writer_id"] == device.writer_id
    assert store.decide([row["event_id"]], "rejected").status_code == 200
    assert store.approved_total(session) == 6 and store.held(session) == []
    assert store.decide([row["event_id"]], "accepted").status_code == 200
    assert store.approved_total(session) == 56 and store.counted(session) == 56
    assert store.held(session, "decided")[0]["decision"] == "accepted"


def test_a_scan_into_a_void_session_is_held(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    device.scans(session, count=2)
    voided = store.boss.post(f"/api/sessions/{session.session_id}/void", json={"reason": "wrong aisle"})
    assert voided.status_code == 200
    late = device.scans(session, qty=5)
    assert late["ok"] == [3] and _reasons(late) == ["SESSION_VOID"]
    assert [r["qty"] for r in store.held(session)] == [5]


def test_a_session_assigned_to_another_device_holds_what_a_second_device_sends(store: Store) -> None:
    mine, other = Handheld(store.server, store.boss), Handheld(store.server, store.boss)
    session = store.session(device_id=mine.writer_id)
    assert not mine.scans(session, qty=2)["held"]
    stray = other.scans(session, qty=3)
    assert stray["ok"] == [1] and _reasons(stray) == ["NOT_ASSIGNED"]
    assert store.counted(session) == 2
    # Someone else's name in ``by`` is the same: the session is not theirs.
    stranger_id, _ = store.verifier()
    assert _reasons(mine.scans(session, by=stranger_id)) == ["NOT_ASSIGNED"]
    assert store.counted(session) == 2


def test_a_session_locked_by_another_device_holds_scans_and_refuses_other_people(store: Store) -> None:
    locker, other = Handheld(store.server, store.boss), Handheld(store.server, store.boss)
    session = store.session()
    locked = session.verifier.post(f"/api/sessions/{session.session_id}/lock", json={"device_id": locker.writer_id})
    assert locked.status_code == 200, locked.text
    assert not locker.scans(session)["held"]
    assert _reasons(other.scans(session, qty=4)) == ["SESSION_LOCKED"]
    assert store.counted(session) == 1
    # On the box's own API a person other than the lock's holder is refused outright: they are online.
    refused = store.boss.post(f"/api/sessions/{session.session_id}/scans", json={"code": "4006381333931"})
    assert refused.status_code == 409 and refused.json()["code"] == "SESSION_LOCKED"


def test_by_an_unknown_person_is_refused_and_by_a_deactivated_one_is_held(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    refused = device.scans(session, by="01HZX3J6C8W7Q5V4T2S1R0P9N8")
    assert refused["ok"] == [] and refused["expected_seq"] == 1
    assert [e["code"] for e in refused["errors"]] == ["USER_NOT_FOUND"]
    assert store.counted(session) == 0

    gone = store.admin.post(f"/api/users/{session.verifier_id}/active", json={"active": False})
    assert gone.status_code == 200 and gone.json()["active"] is False
    held = device.scans(session, qty=3)
    assert held["ok"] == [1] and _reasons(held) == ["PERSON_INACTIVE"]
    assert store.counted(session) == 0


def test_what_is_wrong_outright_is_refused_with_its_own_code_and_nothing_stored(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    other = store.session()
    racks = {r["code"]: r["rack_id"] for r in store.boss.get("/api/racks").json()}
    code_of_rack = next(code for code, rack_id in racks.items() if rack_id == session.rack_id)

    def first_error(answer: dict[str, Any]) -> str:
        assert answer["ok"] == [] and answer["expected_seq"] == 1, answer
        codes = [e["code"] for e in answer["errors"]]
        assert set(codes[1:]) <= {"NOT_PROCESSED"}
        return codes[0]

    assert first_error(device.scans(session, session_id="01HZX3J6E0000000000000000B")) == "SESSION_NOT_FOUND"
    assert first_error(device.scans(session, rack_id=code_of_rack)) == "RACK_NOT_FOUND"
    assert first_error(device.scans(session, rack_id="")) == "RACK_NOT_IN_SESSION"
    assert first_error(device.scans(session, rack_id=other.rack_id)) == "RACK_NOT_IN_SESSION"
    assert first_error(device.scans(session, product_id="01HZX3J6E0000000000000000C")) == "PRODUCT_NOT_FOUND"
    undo = {
        "session_id": session.session_id,
        "undoes": "01HZX3J6E0000000000000000D",
        "of_writer": device.writer_id,
        "code": "4006381333931",
        "rack_id": session.rack_id,
        "qty": 1,
        "by": session.verifier_id,
    }
    assert first_error(device.send(device.make([("scan.undone", undo)]))) == "SCAN_NOT_FOUND"

    # An undo of a real scan goes through; one that copies the scan wrongly does not.
    scan = device.scans(session, qty=2)
    assert scan["ok"] == [1]
    scan_id = device.last_batch[0].event_id
    wrong = device.send(device.make([("scan.undone", {**undo, "undoes": scan_id, "qty": 5})]))
    assert [e["code"] for e in wrong["errors"]] == ["SCAN_NOT_FOUND"]
    right = device.send(device.make([("scan.undone", {**undo, "undoes": scan_id, "qty": 2})]))
    assert right["ok"] == [2] and store.counted(session) == 0


def test_a_writers_hlc_never_goes_backwards(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    assert device.scans(session)["ok"] == [1]
    stored_hlc = device.last_batch[0].hlc
    payload = dict(device.last_batch[0].payload)
    behind = Event(device.writer_id, 2, str(ULID()), "scan.recorded", payload, stored_hlc, device.prev)
    refused = device.send([behind])
    assert [e["code"] for e in refused["errors"]] == ["CLOCK_BACKWARDS"] and refused["expected_seq"] == 2
    second = Event(device.writer_id, 2, str(ULID()), "scan.recorded", payload, stored_hlc + 10, device.prev)
    third = Event(device.writer_id, 3, str(ULID()), "scan.recorded", payload, stored_hlc + 5, second.hash)
    inside = device.send([second, third])
    assert [e["code"] for e in inside["errors"]] == ["NOT_PROCESSED", "CLOCK_BACKWARDS"]


def test_an_hlc_ahead_of_the_box_moves_its_clock_only_a_little(store: Store) -> None:
    device = Handheld(store.server, store.boss)
    session = store.session()
    device.clock = HybridClock(wall=lambda: time.time_ns() // 1_000_000 + 4 * 60_000)  # 4 min fast
    answer = device.scans(session)
    assert answer["ok"] == [1]
    ahead_ms = (answer["server_hlc"] >> 16) - time.time_ns() // 1_000_000
    assert ahead_ms <= 1_500, f"server_hlc was dragged {ahead_ms} ms ahead"
