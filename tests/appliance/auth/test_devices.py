"""Pairing, device credentials, presence, pull, revocation and quarantine, against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.store.identity import public_bytes
from replication.wire.codec import ZERO_HASH, Event, sign_chain_head
from replication.wire.hlc import HybridClock
from tests.conftest import DEMO_PASSWORDS, ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    box = ServerProcess(tmp_path_factory.mktemp("devices") / "box", "--demo")
    try:
        box.wait_ready()
        yield box
    finally:
        box.stop()


class Handheld:
    """A minimal device: its key, its chain, its credential."""

    def __init__(self, server: ServerProcess, supervisor: httpx.Client, name: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.url = server.url
        code = supervisor.post("/api/devices/pairing-codes").json()["code"]
        answer = httpx.post(
            server.url + "/api/devices/pair",
            json={"code": code, "name": name, "public_key": public_bytes(self.key).hex()},
        )
        assert answer.status_code == 201, answer.text
        paired = answer.json()
        self.writer_id: str = paired["writer_id"]
        self.headers = {"Authorization": f"Device {paired['device_token']}"}
        self.clock = HybridClock()
        self.prev, self.seq = ZERO_HASH, 0
        self.rack_id = ""  # the rack of the session it counts (its id, as scans name it)

    def scans(self, session_id: str, by: str, count: int, code: str = "4006381333931") -> list[Event]:
        events = []
        for _ in range(count):
            self.seq += 1
            payload = {
                "session_id": session_id,
                "code": code,
                "qty": 1,
                "rack_id": self.rack_id,
                "product_id": None,
                "token": None,
                "by": by,
            }
            event = Event(self.writer_id, self.seq, str(ULID()), "scan.recorded", payload, self.clock.now(), self.prev)
            self.prev = event.hash
            events.append(event)
        return events

    def send_json(self, events: list[Event]) -> httpx.Response:
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
        return httpx.post(
            self.url + "/api/sync/batch",
            content=json.dumps(body),
            headers={**self.headers, "content-type": "application/json"},
        )


@pytest.fixture(scope="module")
def people(server: ServerProcess) -> dict[str, httpx.Client]:
    return {role: server.client(server.login(role, password)) for role, password in DEMO_PASSWORDS.items()}


def _counting_session(people: dict[str, httpx.Client], device: Handheld, rack: str) -> tuple[str, str]:
    boss = people["supervisor"]
    run_id = boss.post("/api/runs", json={"name": f"devices {rack}", "kind": "hard"}).json()["run_id"]
    session = boss.post(
        f"/api/runs/{run_id}/sessions", json={"racks": [rack], "verifier": "verifier", "device_id": device.writer_id}
    ).json()
    assert boss.post(f"/api/runs/{run_id}/start").status_code == 200
    assert people["verifier"].post(f"/api/sessions/{session['session_id']}/start").status_code == 200
    device.rack_id = session["rack_ids"][0]
    verifier_id = people["verifier"].get("/api/auth/me").json()["user_id"]
    return session["session_id"], verifier_id


def _finish(people: dict[str, httpx.Client], session_id: str) -> None:
    assert people["verifier"].post(f"/api/sessions/{session_id}/submit").status_code == 200


def test_pairing_codes_work_once_and_only_for_managers(server: ServerProcess, people: dict[str, httpx.Client]) -> None:
    assert people["verifier"].post("/api/devices/pairing-codes").status_code == 403
    made = people["supervisor"].post("/api/devices/pairing-codes").json()
    assert len(made["code"]) == 7 and made["qr"].startswith("stockverify://pair?")
    key = public_bytes(Ed25519PrivateKey.generate()).hex()
    first = httpx.post(server.url + "/api/devices/pair", json={"code": made["code"], "name": "HH", "public_key": key})
    assert first.status_code == 201
    again = httpx.post(server.url + "/api/devices/pair", json={"code": made["code"], "name": "HH", "public_key": key})
    assert again.status_code == 401 and again.json()["code"] == "PAIRING_CODE_INVALID"
    bad = httpx.post(server.url + "/api/devices/pair", json={"code": "000-000", "name": "HH", "public_key": key})
    assert bad.json()["code"] == "PAIRING_CODE_INVALID"


def test_json_batch_heartbeat_pull_and_device_list(server: ServerProcess, people: dict[str, httpx.Client]) -> None:
    device = Handheld(server, people["supervisor"], "Handheld JSON")
    session_id, by = _counting_session(people, device, "G-11")
    answer = device.send_json(device.scans(session_id, by, 4))
    assert answer.status_code == 200, answer.text
    assert answer.json()["ok"] == [1, 2, 3, 4] and answer.json()["expected_seq"] == 5

    beat = httpx.post(
        server.url + "/api/sync/heartbeat", json={"queue_depth": 7, "app_version": "1.2"}, headers=device.headers
    )
    assert beat.json()["head_seq"] == 4
    assert [s["session_id"] for s in beat.json()["sessions"]] == [session_id]

    pulled = httpx.get(server.url + "/api/sync/pull", params={"session_id": session_id}, headers=device.headers).json()
    assert pulled["head_seq"] == 4 and pulled["items"][0]["qty"] == 4
    assert "expected" not in json.dumps(pulled)

    listed = {d["writer_id"]: d for d in people["auditor"].get("/api/devices").json()}
    assert listed[device.writer_id]["queue_depth"] == 7 and listed[device.writer_id]["app_version"] == "1.2"
    assert people["supervisor"].patch(f"/api/devices/{device.writer_id}", json={"name": "Aisle 3"}).status_code == 200
    listed = {d["writer_id"]: d for d in people["auditor"].get("/api/devices").json()}
    assert listed[device.writer_id]["name"] == "Aisle 3"
    other = Handheld(server, people["supervisor"], "Someone else")
    refused = httpx.get(server.url + "/api/sync/pull", params={"session_id": session_id}, headers=other.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "SESSION_NOT_YOURS"
    _finish(people, session_id)


def _item_qty(people: dict[str, httpx.Client], session_id: str) -> int:
    items = people["supervisor"].get(f"/api/sessions/{session_id}").json()["items"]
    return sum(item["qty"] for item in items)


def test_revocation_is_immediate_and_quarantines_unapproved_counts(
    server: ServerProcess, people: dict[str, httpx.Client]
) -> None:
    device = Handheld(server, people["supervisor"], "Lost handheld")
    session_id, by = _counting_session(people, device, "G-12")
    assert device.send_json(device.scans(session_id, by, 3)).json()["ok"] == [1, 2, 3]
    assert _item_qty(people, session_id) == 3

    boss = people["supervisor"]
    assert boss.post(f"/api/devices/{device.writer_id}/revoke", json={"reason": ""}).json()["code"] == "REASON_REQUIRED"
    revoked = boss.post(f"/api/devices/{device.writer_id}/revoke", json={"reason": "left in the car park"})
    assert revoked.status_code == 200
    late = device.send_json(device.scans(session_id, by, 2))
    assert late.status_code == 403 and late.json()["code"] == "REVOKED"
    beat = httpx.post(server.url + "/api/sync/heartbeat", json={}, headers=device.headers)
    assert beat.status_code == 403 and beat.json()["code"] == "REVOKED"
    writer = people["auditor"].get(f"/api/writers/{device.writer_id}/events").json()
    assert [e["seq"] for e in writer] == [1, 2, 3]  # nothing of the late batch was stored

    held = [q for q in boss.get("/api/quarantine").json() if q["writer_id"] == device.writer_id]
    assert held == [
        {
            "writer_id": device.writer_id,
            "device": "Lost handheld",
            "session_id": session_id,
            "decision": "pending",
            "session_status": "IN_PROGRESS",
            "units": 3,
        }
    ]
    assert _item_qty(people, session_id) == 0  # held back until a supervisor decides
    decide = {
        "writer_id": device.writer_id,
        "session_id": session_id,
        "decision": "accepted",
        "reason": "counted right",
    }
    assert people["verifier"].post("/api/quarantine/decide", json=decide).status_code == 403
    assert boss.post("/api/quarantine/decide", json=decide).status_code == 200
    assert _item_qty(people, session_id) == 3
    assert boss.post("/api/quarantine/decide", json={**decide, "decision": "rejected"}).status_code == 200
    assert _item_qty(people, session_id) == 0
    _finish(people, session_id)


def test_device_routes_refuse_person_tokens_and_garbage(server: ServerProcess, people: dict[str, httpx.Client]) -> None:
    token = people["admin"].headers["Authorization"]
    answer = httpx.post(server.url + "/api/sync/heartbeat", json={}, headers={"Authorization": token})
    assert answer.status_code == 401
    device = Handheld(server, people["supervisor"], "Garbage sender")
    junk = httpx.post(
        server.url + "/api/sync/batch",
        content=b"\xc1\xc1",
        headers={**device.headers, "content-type": "application/msgpack"},
    )
    assert junk.status_code == 400 and msgpack.unpackb(junk.content)["code"] == "VALIDATION"
    empty: dict[str, Any] = {
        "writer_id": device.writer_id,
        "events": [],
        "head": {"seq": 0, "hash": "", "signature": ""},
    }
    answer = httpx.post(server.url + "/api/sync/batch", json=empty, headers=device.headers)
    assert answer.status_code == 400 and "1 to 500" in answer.json()["message"]
