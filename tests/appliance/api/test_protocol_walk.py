"""A handheld written from docs/sync-protocol.md alone, walked through §2 against a real box.

The client below knows only what the page says: the routes, the bodies, the answers' fields, the codes
of §4. It builds its events, its chain and its batch envelope itself (§1, §3.1) in msgpack and in JSON
(``bin`` as lowercase hex), and reads each answer in the format it sent. The box is a real
``stockverify serve --demo`` on a loopback port. The supervisor's steps (a run and its session) are not
device-protocol steps; they use the box's own routes.

The last test pushes the §6 test vector, read from the page, through the ingest of a box holding the
page's store.
"""

from __future__ import annotations

import csv
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.auth.devices import Device
from appliance.box import open_box
from appliance.counting.ingest import decode_batch, ingest, precheck
from appliance.store.eventlog import enroll_writer
from appliance.store.identity import public_bytes
from replication.wire.codec import ZERO_HASH, Event, sign_chain_head
from tests.conftest import DEMO_PASSWORDS, ServerProcess, make_settings
from tests.replication.wire.test_protocol_vectors import PROTOCOL, _fields, _section, _seed

FORMATS = ("msgpack", "json")
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json"}
BATCH_ANSWER = {"ok", "held", "conflicts", "errors", "expected_seq", "server_hlc"}
HEARTBEAT_ANSWER = {"server_hlc", "head_seq", "revoked", "leases_renewed", "lease_renew_s", "sessions"}
SESSION_FIELDS = {
    "session_id",
    "run_id",
    "kind",
    "verifier_id",
    "device_id",
    "status",
    "round",
    "status_reason",
    "racks",
    "rack_ids",
}
ITEM_FIELDS = {"product_id", "sku", "name", "qty", "damage_qty", "serials", "photos", "attributes", "status"}
PULL_FIELDS = {"session", "items", "unmatched", "buckets", "head_seq", "server_hlc"}
FIVE_MINUTES_MS = 5 * 60_000
_names = itertools.count(1)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def new_ulid() -> str:
    return str(ULID())


# -- the wire, as §3 gives it ------------------------------------------------------------------------
def hexed(value: Any) -> Any:
    """JSON writes every ``bin`` as lowercase hex (§3)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: hexed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hexed(item) for item in value]
    return value


def encode(fmt: str, body: Any) -> bytes:
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed
    return json.dumps(hexed(body)).encode()


def decode(fmt: str, response: httpx.Response) -> Any:
    """An answer, which must be in the request's format (§3: "refusals included")."""
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(CONTENT_TYPES[fmt]), (
        f"a {fmt} request was answered {response.status_code} in {content_type!r}: {response.content[:300]!r}"
    )
    if fmt == "msgpack":
        return msgpack.unpackb(response.content, raw=False)
    return response.json()


def refusal(fmt: str, response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A whole-request refusal of §4.1: the status, and ``{"code", "message", "details"}`` in the format."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = decode(fmt, response)
    assert isinstance(body, dict)
    assert {"code", "message", "details"} <= set(body), body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def wire_event(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "type": event.type,
        "hlc": event.hlc,
        "occurred_at": event.occurred_at,
        "prev_hash": event.prev_hash,
        "payload": event.payload,
    }


def check_batch_answer(answer: Any) -> dict[str, Any]:
    """Every field of a §3.1 answer, of its type; every held or flagged event is also in ``ok``."""
    assert isinstance(answer, dict)
    assert set(answer) == BATCH_ANSWER, answer
    assert all(isinstance(seq, int) for seq in answer["ok"])
    for held in answer["held"]:
        assert set(held) == {"seq", "event_id", "session_id", "reason"}, held
        assert held["seq"] in answer["ok"]
    for conflict in answer["conflicts"]:
        assert set(conflict) == {"seq", "event_id", "conflict_id", "kind"}, conflict
        assert conflict["seq"] in answer["ok"]
    for error in answer["errors"]:
        assert set(error) == {"seq", "code", "message"}, error
        assert error["seq"] not in answer["ok"]
    assert isinstance(answer["expected_seq"], int) and answer["expected_seq"] >= 1
    assert isinstance(answer["server_hlc"], int) and answer["server_hlc"] > 0
    return answer


# -- the handheld --------------------------------------------------------------------------------------
class Handheld:
    """A device: its key, its writer id and token, its chain and its hybrid clock (§1)."""

    def __init__(self, url: str, fmt: str) -> None:
        self.url = url
        self.fmt = fmt
        self.key = Ed25519PrivateKey.generate()
        self.writer_id = ""
        self.device_token = ""
        self.last_hlc = 0
        self.head_seq = 0
        self.head_hash = ZERO_HASH
        self.stored: dict[int, Event] = {}  # what the box answered ok

    # §2.1
    def pair(self, code: str) -> dict[str, Any]:
        answer = httpx.post(
            self.url + "/api/devices/pair",
            json={"code": code, "name": f"Handheld {next(_names)}", "public_key": public_bytes(self.key).hex()},
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        self.writer_id = body["writer_id"]
        self.device_token = body["device_token"]
        self.observe(body["server_hlc"])
        return body

    # §1: the clock
    def observe(self, server_hlc: int) -> None:
        self.last_hlc = max(self.last_hlc, server_hlc)

    def tick(self) -> int:
        self.last_hlc = max(wall_ms() << 16, self.last_hlc + 1)
        return self.last_hlc

    # §1: events and the chain
    def chain(
        self,
        specs: list[tuple[str, dict[str, Any]]],
        *,
        seq: int | None = None,
        prev: bytes | None = None,
    ) -> list[Event]:
        """New events continuing the chain (from the acknowledged head unless told otherwise)."""
        seq = self.head_seq if seq is None else seq
        prev = self.head_hash if prev is None else prev
        events = []
        for event_type, payload in specs:
            seq += 1
            event = Event(self.writer_id, seq, new_ulid(), event_type, payload, self.tick(), prev, wall_ms())
            prev = event.hash
            events.append(event)
        return events

    def envelope(self, events: list[Event], *, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """§3.1, with the head of §1 signed over the batch's last event."""
        last = events[-1]
        signature = sign_chain_head(key or self.key, self.writer_id, last.seq, last.hash)
        return {
            "writer_id": self.writer_id,
            "events": [wire_event(event) for event in events],
            "head": {"seq": last.seq, "hash": last.hash, "signature": signature},
        }

    # §3: requests
    def headers(self, token: str | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Device {self.device_token if token is None else token}",
            "Content-Type": CONTENT_TYPES[self.fmt],
        }

    def post(self, path: str, content: bytes, *, token: str | None = None) -> httpx.Response:
        return httpx.post(self.url + path, content=content, headers=self.headers(token), timeout=60.0)

    def post_batch(self, body: Any) -> dict[str, Any]:
        """A 200 answer of §3.1, checked field by field, in the request's format."""
        response = self.post("/api/sync/batch", encode(self.fmt, body))
        assert response.status_code == 200, response.content[:500]
        answer = check_batch_answer(decode(self.fmt, response))
        self.observe(answer["server_hlc"])
        return answer

    def send(self, events: list[Event], *, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        answer = self.post_batch(self.envelope(events, key=key))
        if not answer["errors"]:
            for event in events:
                self.stored[event.seq] = event
            last = events[-1]
            if last.seq > self.head_seq:
                self.head_seq, self.head_hash = last.seq, last.hash
        return answer

    def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post("/api/sync/heartbeat", encode(self.fmt, body))
        assert response.status_code == 200, response.content[:500]
        answer: dict[str, Any] = decode(self.fmt, response)
        assert set(answer) == HEARTBEAT_ANSWER, answer
        self.observe(answer["server_hlc"])
        return answer

    def pull(self, session_id: str) -> dict[str, Any]:
        """§3.3. The page gives no body for a GET, so the answer's format is read from its content type."""
        response = httpx.get(
            self.url + "/api/sync/pull",
            params={"session_id": session_id},
            headers={"Authorization": f"Device {self.device_token}", "Accept": CONTENT_TYPES[self.fmt]},
        )
        assert response.status_code == 200, response.content[:500]
        kind = "msgpack" if response.headers["content-type"].startswith(CONTENT_TYPES["msgpack"]) else "json"
        answer: dict[str, Any] = decode(kind, response)
        assert set(answer) == PULL_FIELDS, answer
        self.observe(answer["server_hlc"])
        return answer


# -- the store: the people and the supervisor's steps --------------------------------------------------
@dataclass
class Counting:
    """A device paired, a verifier logged in on it, a session started, locked, its rack claimed."""

    device: Handheld
    verifier: httpx.Client
    verifier_id: str
    run_id: str
    session_id: str
    rack: str
    rack_id: str
    token: int
    barcode: str
    product_id: str

    def scan(self, qty: int = 1, **fields: Any) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "session_id": self.session_id,
            "code": self.barcode,
            "qty": qty,
            "rack_id": self.rack_id,
            "product_id": None,
            "token": self.token,
            "by": self.verifier_id,
        }
        return "scan.recorded", {**payload, **fields}


class Store:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
        self.boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        racks = self.boss.get("/api/racks")
        assert racks.status_code == 200, racks.text
        self.rack_ids: dict[str, str] = {r["code"]: r["rack_id"] for r in racks.json()}
        self._racks = iter(sorted(self.rack_ids))
        with (server.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["barcodes"]]
        self._products = iter(rows)

    def product(self) -> tuple[str, str]:
        """A demo product with a barcode: (barcode, product_id)."""
        row = next(self._products)
        barcode = row["barcodes"].split("|")[0]
        found = self.boss.get("/api/products/resolve", params={"code": barcode})
        assert found.status_code == 200, found.text
        assert found.json()["sku"] == row["sku"]
        return barcode, found.json()["product_id"]

    def pairing_code(self) -> dict[str, Any]:
        answer = self.boss.post("/api/devices/pairing-codes")
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def new_verifier(self) -> tuple[str, str]:
        """A verifier of this test's own (one active session per verifier): (username, password)."""
        name = f"walker{next(_names)}"
        made = self.admin.post("/api/users", json={"username": name, "role": "verifier", "password": "walk-password-1"})
        assert made.status_code == 201, made.text
        return name, "walk-password-1"

    def login(self, username: str, password: str) -> dict[str, Any]:
        """§2.2 as the device does it."""
        answer = httpx.post(self.server.url + "/api/auth/login", json={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert set(body) >= {"token", "expires_at", "user"}
        assert set(body["user"]) >= {"user_id", "username", "display_name", "role"}
        return body

    def assign(self, verifier: str, device_id: str | None) -> tuple[str, str, str]:
        """The supervisor: a hard run, a session of one rack for ``verifier``, the run started."""
        rack = next(self._racks)
        run = self.boss.post("/api/runs", json={"name": f"walk {rack}", "kind": "hard"})
        assert run.status_code == 201, run.text
        run_id: str = run.json()["run_id"]
        body: dict[str, Any] = {"racks": [rack], "verifier": verifier}
        if device_id is not None:
            body["device_id"] = device_id
        made = self.boss.post(f"/api/runs/{run_id}/sessions", json=body)
        assert made.status_code == 201, made.text
        started = self.boss.post(f"/api/runs/{run_id}/start")
        assert started.status_code == 200, started.text
        return run_id, made.json()["session_id"], rack

    def counting(self, fmt: str) -> Counting:
        """§2.1 to §2.5 without the checks the walk makes: a device ready to scan."""
        device = Handheld(self.server.url, fmt)
        device.pair(self.pairing_code()["code"])
        username, password = self.new_verifier()
        login = self.login(username, password)
        verifier = self.server.client(login["token"])
        run_id, session_id, rack = self.assign(username, device.writer_id)
        assert verifier.post(f"/api/sessions/{session_id}/start").status_code == 200
        locked = verifier.post(f"/api/sessions/{session_id}/lock", json={"device_id": device.writer_id})
        assert locked.status_code == 200, locked.text
        claim = verifier.post(
            f"/api/runs/{run_id}/racks/{rack}/claim", json={"session_id": session_id, "device_id": device.writer_id}
        )
        assert claim.status_code == 201, claim.text
        assert verifier.post(f"/api/runs/{run_id}/racks/{rack}/start").status_code == 200
        barcode, product_id = self.product()
        return Counting(
            device,
            verifier,
            login["user"]["user_id"],
            run_id,
            session_id,
            rack,
            self.rack_ids[rack],
            claim.json()["token"],
            barcode,
            product_id,
        )

    def session(self, session_id: str) -> dict[str, Any]:
        answer = self.boss.get(f"/api/sessions/{session_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def counted(self, session_id: str, product_id: str) -> int:
        """The product's quantity in the session as the box counts it (held events left out)."""
        return sum(int(i["qty"]) for i in self.session(session_id)["items"] if i["product_id"] == product_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    # Pairing counts against the login throttle of 10 a minute per address; this module pairs more
    # handhelds than that from 127.0.0.1 within a minute.
    server = ServerProcess(
        tmp_path_factory.mktemp("walk") / "box", "--demo", env={"STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "1000"}
    )
    try:
        server.wait_ready()
        yield Store(server)
    finally:
        server.stop()


def pulled_qty(pull: dict[str, Any], product_id: str) -> int:
    return sum(int(item["qty"]) for item in pull["items"] if item["product_id"] == product_id)


# -- §2, step by step ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_handheld_walks_from_pairing_to_a_finished_rack(store: Store, fmt: str) -> None:
    url = store.server.url

    # §2.1 pairing: a code from a supervisor, then the device pairs without a login.
    started_ms = wall_ms()
    code = store.pairing_code()
    assert set(code) >= {"code", "expires_at", "qr"}
    assert isinstance(code["code"], str) and code["code"]
    assert code["qr"].startswith("stockverify://pair?")
    assert started_ms + 9 * 60_000 <= code["expires_at"] <= wall_ms() + 10 * 60_000 + 1000  # "last 10 minutes"
    device = Handheld(url, fmt)
    paired = device.pair(code["code"])
    assert set(paired) >= {"writer_id", "device_token", "store_id", "node_id", "head_seq", "server_hlc"}
    assert paired["head_seq"] == 0
    assert isinstance(paired["server_hlc"], int) and paired["server_hlc"] > 0
    # "Codes ... work once".
    again = httpx.post(
        url + "/api/devices/pair",
        json={
            "code": code["code"],
            "name": "Second try",
            "public_key": public_bytes(Ed25519PrivateKey.generate()).hex(),
        },
    )
    assert again.status_code == 401 and again.json()["code"] == "PAIRING_CODE_INVALID", again.text

    # §2.2 the verifier logs in on the device.
    username, password = store.new_verifier()
    wrong = httpx.post(url + "/api/auth/login", json={"username": username, "password": "not-the-password"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "BAD_CREDENTIALS", wrong.text
    login = store.login(username, password)
    assert login["user"]["username"] == username and login["user"]["role"] == "verifier"
    by: str = login["user"]["user_id"]
    verifier = store.server.client(login["token"])

    # The supervisor's part (not a device step): a run, a session for this verifier on this device.
    run_id, session_id, rack = store.assign(username, device.writer_id)
    barcode, product_id = store.product()

    # §2.3 the session and its racks.
    listed = verifier.get("/api/sessions")
    assert listed.status_code == 200, listed.text
    mine = [s for s in listed.json() if s["session_id"] == session_id]
    assert len(mine) == 1, listed.json()
    session = mine[0]
    assert set(session) >= SESSION_FIELDS
    assert session["status"] == "ASSIGNED"
    assert session["run_id"] == run_id and session["verifier_id"] == by and session["device_id"] == device.writer_id
    assert session["racks"] == [rack]
    assert session["rack_ids"] == [store.rack_ids[rack]]
    rack_id: str = session["rack_ids"][0]
    one = verifier.get(f"/api/sessions/{session_id}")
    assert one.status_code == 200, one.text
    assert one.json()["session_id"] == session_id and one.json()["rack_ids"] == [rack_id]
    # The session assigned to this device comes in every heartbeat answer too.
    beat = device.heartbeat({"queue_depth": 0, "app_version": "walk/1", "session_id": None})
    assert [s["session_id"] for s in beat["sessions"]] == [session_id]
    assert set(beat["sessions"][0]) >= SESSION_FIELDS and beat["sessions"][0]["status"] == "ASSIGNED"

    started = verifier.post(f"/api/sessions/{session_id}/start")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "IN_PROGRESS"

    # §2.4 the session lock.
    locked = verifier.post(f"/api/sessions/{session_id}/lock", json={"device_id": device.writer_id})
    assert locked.status_code == 200, locked.text
    lock = locked.json()
    assert set(lock) >= {"session_id", "user_id", "device_id", "token", "expires_at"}
    assert (lock["session_id"], lock["user_id"], lock["device_id"]) == (session_id, by, device.writer_id)

    # §2.5 the rack: claim (the lease's fencing token), then start.
    claimed = verifier.post(
        f"/api/runs/{run_id}/racks/{rack}/claim", json={"session_id": session_id, "device_id": device.writer_id}
    )
    assert claimed.status_code == 201, claimed.text
    claim = claimed.json()
    assert set(claim) >= {"run_id", "rack", "state", "token", "expires_at"}
    assert (claim["run_id"], claim["rack"], claim["state"]) == (run_id, rack, "claimed")
    token: int = claim["token"]
    assert isinstance(token, int)
    active = verifier.post(f"/api/runs/{run_id}/racks/{rack}/start")
    assert active.status_code == 200, active.text
    assert active.json()["state"] == "active"

    def scan(qty: int = 1, code: str = barcode, product: str | None = None) -> tuple[str, dict[str, Any]]:
        return "scan.recorded", {
            "session_id": session_id,
            "code": code,
            "qty": qty,
            "rack_id": rack_id,
            "product_id": product,
            "token": token,
            "by": by,
        }

    # §2.6 scanning, in batches (§3.1).
    first = device.chain([scan(1), scan(1, product=product_id), scan(2)])
    assert [e.seq for e in first] == [1, 2, 3]
    assert first[0].prev_hash == ZERO_HASH
    answer = device.send(first)
    assert answer["ok"] == [1, 2, 3]
    assert (answer["held"], answer["conflicts"], answer["errors"]) == ([], [], [])
    assert answer["expected_seq"] == 4
    assert answer["server_hlc"] > first[-1].hlc  # the box's clock moved past what it took
    unknown = f"WALK-UNKNOWN-{fmt.upper()}"
    second = device.chain([scan(1, code=unknown), scan(1)])
    answer = device.send(second)
    assert answer["ok"] == [4, 5] and answer["expected_seq"] == 6
    assert (answer["held"], answer["conflicts"], answer["errors"]) == ([], [], [])
    second_answer = answer

    # §2.7 heartbeats: the lease renewed, the session listed, the head known.
    beat = device.heartbeat({"queue_depth": 0, "app_version": "walk/1", "session_id": session_id})
    assert beat["head_seq"] == 5
    assert beat["revoked"] is False
    assert beat["leases_renewed"] >= 1  # == 1 per the page: see test_leases_renewed_counts_the_rack_leases
    assert beat["lease_renew_s"] == 20
    assert [s["session_id"] for s in beat["sessions"]] == [session_id]
    assert beat["sessions"][0]["status"] == "IN_PROGRESS"
    assert isinstance(beat["server_hlc"], int) and beat["server_hlc"] > second[-1].hlc
    # Every field may be left out.
    assert device.heartbeat({})["head_seq"] == 5

    # §2.8 pull: the counts as the box holds them, blind.
    pull = device.pull(session_id)
    assert pull["session"]["session_id"] == session_id and pull["session"]["status"] == "IN_PROGRESS"
    assert pull["head_seq"] == 5
    assert pulled_qty(pull, product_id) == 5
    assert [item["product_id"] for item in pull["items"]] == [product_id]
    item = pull["items"][0]
    assert set(item) >= ITEM_FIELDS, item  # the box adds last_scan_hlc and product_uom
    assert item["qty"] == 5
    assert "expected_qty" not in item and "expected" not in json.dumps(pull)
    assert {"code": unknown, "qty": 1} in pull["unmatched"]

    # A lost answer: the same batch again is ok again and changes nothing.
    answer = device.send(second)
    assert answer["ok"] == second_answer["ok"] == [4, 5]
    assert (answer["held"], answer["conflicts"], answer["errors"]) == ([], [], [])
    assert answer["expected_seq"] == 6
    assert pulled_qty(device.pull(session_id), product_id) == 5
    assert store.counted(session_id, product_id) == 5

    # §2.9 finishing: the rack, then (queue empty) the session.
    finished = verifier.post(f"/api/runs/{run_id}/racks/{rack}/finish")
    assert finished.status_code == 200, finished.text
    submitted = verifier.post(f"/api/sessions/{session_id}/submit")
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] == "SUBMITTED"
    beat = device.heartbeat({"queue_depth": 0})
    assert [(s["session_id"], s["status"]) for s in beat["sessions"]] == [(session_id, "SUBMITTED")]

    # §4.3: what reaches the box after the submit is stored and held, not counted.
    late = device.chain([scan(4)])
    answer = device.send(late)
    assert answer["ok"] == [6] and answer["errors"] == [] and answer["expected_seq"] == 7
    assert answer["held"] == [
        {"seq": 6, "event_id": late[0].event_id, "session_id": session_id, "reason": "SESSION_NOT_IN_PROGRESS"}
    ]
    assert pulled_qty(device.pull(session_id), product_id) == 5
    # Sent again: held again.
    assert device.send(late)["held"] == answer["held"]

    # A supervisor approves; the device's next scan is held SESSION_APPROVED, and heartbeats drop it.
    approved = store.boss.post(f"/api/sessions/{session_id}/approve")
    assert approved.status_code == 200, approved.text
    assert device.heartbeat({"queue_depth": 1})["sessions"] == []
    after = device.chain([scan(3)])
    answer = device.send(after)
    assert answer["ok"] == [7] and answer["errors"] == []
    assert answer["held"] == [
        {"seq": 7, "event_id": after[0].event_id, "session_id": session_id, "reason": "SESSION_APPROVED"}
    ]
    assert store.counted(session_id, product_id) == 5

    # GET /api/held lists both; POST /api/held/decide: only an accepted one counts.
    held = store.boss.get("/api/held", params={"session_id": session_id})
    assert held.status_code == 200, held.text
    assert {row["event_id"] for row in held.json()} == {late[0].event_id, after[0].event_id}
    rejected = store.boss.post(
        "/api/held/decide",
        json={"event_ids": [late[0].event_id], "decision": "rejected", "reason": "after the submit"},
    )
    assert rejected.status_code == 200, rejected.text
    assert store.counted(session_id, product_id) == 5
    accepted = store.boss.post(
        "/api/held/decide",
        json={"event_ids": [after[0].event_id], "decision": "accepted", "reason": "checked on the shelf"},
    )
    assert accepted.status_code == 200, accepted.text
    assert store.counted(session_id, product_id) == 8
    assert store.boss.get("/api/held", params={"session_id": session_id}).json() == []


# -- §4.2: refused events --------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=FORMATS)
def counting(request: pytest.FixtureRequest, store: Store) -> Counting:
    """One device per format, counting, with two scans stored; a refused batch stores nothing, so the
    refusal tests share it (each starts from the device's acknowledged head)."""
    ready = store.counting(request.param)
    answer = ready.device.send(ready.device.chain([ready.scan(1), ready.scan(1)]))
    assert answer["ok"] == [1, 2] and answer["errors"] == [], answer
    return ready


@pytest.fixture(scope="module")
def other_writer(store: Store) -> Event:
    """A scan another device got stored (in a session of its own): its event_id is taken."""
    ready = store.counting("msgpack")
    events = ready.device.chain([ready.scan(1)])
    assert ready.device.send(events)["ok"] == [1]
    return events[0]


Spoil = Callable[[Counting, list[Event]], tuple[list[Event], Ed25519PrivateKey | None]]


def _rebuild(c: Counting, events: list[Event], index: int, **changes: Any) -> list[Event]:
    """The batch with event ``index`` changed (``event_id``, ``type``, ``payload``, ``hlc`` or
    ``prev_hash``), the events after it re-chained to it, so that only that one is wrong."""
    out = events[:index]
    prev = events[index].prev_hash
    for position, event in enumerate(events[index:], start=index):
        mine = changes if position == index else {}
        rebuilt = Event(
            event.writer_id,
            event.seq,
            mine.get("event_id", event.event_id),
            mine.get("type", event.type),
            mine.get("payload", event.payload),
            mine.get("hlc", event.hlc),
            mine.get("prev_hash", prev),
            event.occurred_at,
        )
        out.append(rebuilt)
        prev = rebuilt.hash
    return out


def _payload(c: Counting, events: list[Event], **fields: Any) -> list[Event]:
    return _rebuild(c, events, 1, payload={**events[1].payload, **fields})


def _undo(c: Counting, events: list[Event], **fields: Any) -> list[Event]:
    target = c.device.stored[1]
    undo = {
        "session_id": c.session_id,
        "undoes": target.event_id,
        "of_writer": c.device.writer_id,
        "code": target.payload["code"],
        "rack_id": target.payload["rack_id"],
        "qty": target.payload["qty"],
        "by": c.verifier_id,
    }
    return _rebuild(c, events, 1, type="scan.undone", payload={**undo, **fields})


def _typed(c: Counting, events: list[Event], event_type: str, **fields: Any) -> list[Event]:
    """The middle event as another type of §5, with ``by`` and ``session_id`` and these fields."""
    payload = {"session_id": c.session_id, "by": c.verifier_id, **fields}
    return _rebuild(c, events, 1, type=event_type, payload=payload)


def _ahead(c: Counting, events: list[Event]) -> list[Event]:
    """The middle event 6 minutes ahead of the box, the last just above it (so the hlcs still rise)."""
    ahead = (wall_ms() + FIVE_MINUTES_MS + 60_000) << 16
    return _rebuild(c, _rebuild(c, events, 1, hlc=ahead), 2, hlc=ahead + 1)


# Each case spoils the middle of three good events; the page names the code it gets.
MIDDLE_CASES: dict[str, tuple[str, Spoil]] = {
    "unknown type": ("VALIDATION", lambda c, e: (_rebuild(c, e, 1, type="scan.teleported"), None)),
    "payload field missing": (
        "VALIDATION",
        lambda c, e: (_rebuild(c, e, 1, payload={k: v for k, v in e[1].payload.items() if k != "token"}), None),
    ),
    "payload field unknown": ("VALIDATION", lambda c, e: (_payload(c, e, colour="red"), None)),
    "qty out of bounds": ("VALIDATION", lambda c, e: (_payload(c, e, qty=100_001), None)),
    "id over 64 characters": ("VALIDATION", lambda c, e: (_payload(c, e, session_id="S" * 65), None)),
    "count.adjusted with delta 0": (
        "VALIDATION",
        lambda c, e: (_typed(c, e, "count.adjusted", product_id=c.product_id, delta=0, target=0), None),
    ),
    "attrs value a list": (
        "VALIDATION",
        lambda c, e: (_typed(c, e, "item.attributes_set", product_id=c.product_id, attrs={"uom": ["EA"]}), None),
    ),
    "mfg_date not a real date": (
        "VALIDATION",
        lambda c, e: (
            _typed(c, e, "item.attributes_set", product_id=c.product_id, attrs={"mfg_date": "2026-02-30"}),
            None,
        ),
    ),
    "mrp_minor over 1000000000": (
        "VALIDATION",
        lambda c, e: (
            _typed(c, e, "item.attributes_set", product_id=c.product_id, attrs={"mrp_minor": 1_000_000_001}),
            None,
        ),
    ),
    "serial of 65 characters": (
        "VALIDATION",
        lambda c, e: (_typed(c, e, "serial.added", product_id=c.product_id, serial="S" * 65), None),
    ),
    "event_id of this writer's stored event": (
        "EVENT_ID_REUSED",
        lambda c, e: (_rebuild(c, e, 1, event_id=c.device.stored[1].event_id), None),
    ),
    "hlc not above the one before": ("CLOCK_BACKWARDS", lambda c, e: (_rebuild(c, e, 1, hlc=e[0].hlc), None)),
    "prev_hash not the one before": (
        "CHAIN_BROKEN",
        lambda c, e: (_rebuild(c, e, 1, prev_hash=bytes(range(32))), None),
    ),
    "hlc six minutes ahead": ("CLOCK_AHEAD", lambda c, e: (_ahead(c, e), None)),
    "unknown session": ("SESSION_NOT_FOUND", lambda c, e: (_payload(c, e, session_id=new_ulid()), None)),
    "unknown person": ("USER_NOT_FOUND", lambda c, e: (_payload(c, e, by=new_ulid()), None)),
    "unknown product": ("PRODUCT_NOT_FOUND", lambda c, e: (_payload(c, e, product_id=new_ulid()), None)),
    "rack code for rack id": ("RACK_NOT_FOUND", lambda c, e: (_payload(c, e, rack_id=c.rack), None)),
    "no rack in a session of racks": ("RACK_NOT_IN_SESSION", lambda c, e: (_payload(c, e, rack_id=""), None)),
    "undo of an unknown scan": ("SCAN_NOT_FOUND", lambda c, e: (_undo(c, e, undoes=new_ulid()), None)),
    "undo not copied from its scan": ("SCAN_NOT_FOUND", lambda c, e: (_undo(c, e, qty=7), None)),
}


def _three(c: Counting) -> list[Event]:
    return c.device.chain([c.scan(1), c.scan(1), c.scan(1)])


def _refused(c: Counting, answer: dict[str, Any], events: list[Event], codes: list[str], before: int) -> None:
    """Nothing of the batch stored: no ok, each event its code, ``expected_seq`` where it was."""
    assert answer["ok"] == [] and answer["held"] == [] and answer["conflicts"] == [], answer
    assert [(e["seq"], e["code"]) for e in answer["errors"]] == list(zip([e.seq for e in events], codes, strict=True))
    assert answer["expected_seq"] == before + 1
    # Nothing stored: the head is where it was, and a good batch at that seq is taken.
    assert c.device.heartbeat({"queue_depth": 3})["head_seq"] == before
    good = c.device.chain([c.scan(1)])
    assert c.device.send(good)["ok"] == [before + 1]


@pytest.mark.parametrize("case", list(MIDDLE_CASES))
def test_a_refused_event_gets_its_code_and_the_others_not_processed(
    counting: Counting, store: Store, case: str
) -> None:
    code, spoil = MIDDLE_CASES[case]
    before = counting.device.head_seq
    counted = store.counted(counting.session_id, counting.product_id)
    events, key = spoil(counting, _three(counting))
    answer = counting.device.post_batch(counting.device.envelope(events, key=key))
    assert store.counted(counting.session_id, counting.product_id) == counted
    _refused(counting, answer, events, ["NOT_PROCESSED", code, "NOT_PROCESSED"], before)


def test_rack_not_in_session(counting: Counting, store: Store) -> None:
    """The id of a rack of this store that is not one of the session's racks."""
    other = next(rack_id for code, rack_id in store.rack_ids.items() if code != counting.rack)
    before = counting.device.head_seq
    events = _payload(counting, _three(counting), rack_id=other)
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, ["NOT_PROCESSED", "RACK_NOT_IN_SESSION", "NOT_PROCESSED"], before)


def test_event_id_of_another_writer(counting: Counting, other_writer: Event) -> None:
    before = counting.device.head_seq
    events = _rebuild(counting, _three(counting), 1, event_id=other_writer.event_id)
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, ["NOT_PROCESSED", "EVENT_ID_REUSED", "NOT_PROCESSED"], before)


def test_event_id_twice_in_one_batch(counting: Counting) -> None:
    """The later of the two is the one reusing an id."""
    before = counting.device.head_seq
    events = _three(counting)
    events = _rebuild(counting, events, 2, event_id=events[1].event_id)
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, ["NOT_PROCESSED", "NOT_PROCESSED", "EVENT_ID_REUSED"], before)


def test_a_float_anywhere_is_validation(counting: Counting) -> None:
    """§1: "no floats anywhere"; an event that breaks the canonical rules gets VALIDATION."""
    before = counting.device.head_seq
    events = _three(counting)
    body = counting.device.envelope(events)
    body["events"][1]["payload"] = {**body["events"][1]["payload"], "qty": 1.5}
    answer = counting.device.post_batch(body)
    _refused(counting, answer, events, ["NOT_PROCESSED", "VALIDATION", "NOT_PROCESSED"], before)


def test_hlc_not_above_the_writers_stored_event(counting: Counting) -> None:
    before = counting.device.head_seq
    stored = counting.device.stored[before]
    events = _rebuild(counting, _three(counting), 0, hlc=stored.hlc)
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, ["CLOCK_BACKWARDS", "NOT_PROCESSED", "NOT_PROCESSED"], before)


def test_first_prev_hash_not_the_stored_head(counting: Counting) -> None:
    before = counting.device.head_seq
    events = _rebuild(counting, _three(counting), 0, prev_hash=bytes(32))
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, ["CHAIN_BROKEN", "NOT_PROCESSED", "NOT_PROCESSED"], before)


def _whole_batch(c: Counting, answer: dict[str, Any], events: list[Event], code: str, before: int) -> None:
    """A fault of the batch as a whole: each event NOT_PROCESSED "or the same code" (§3.1)."""
    codes = [e["code"] for e in answer["errors"]]
    assert [e["seq"] for e in answer["errors"]] == [e.seq for e in events], answer
    assert code in codes and set(codes) <= {code, "NOT_PROCESSED"}, answer
    assert answer["ok"] == [] and answer["held"] == [] and answer["expected_seq"] == before + 1, answer
    assert c.device.heartbeat({})["head_seq"] == before
    assert c.device.send(c.device.chain([c.scan(1)]))["ok"] == [before + 1]


def test_head_not_the_last_event(counting: Counting) -> None:
    before = counting.device.head_seq
    events = _three(counting)
    body = counting.device.envelope(events)
    body["head"]["hash"] = events[1].hash
    body["head"]["signature"] = sign_chain_head(
        counting.device.key, counting.device.writer_id, events[-1].seq, events[1].hash
    )
    _whole_batch(counting, counting.device.post_batch(body), events, "CHAIN_BROKEN", before)


def test_head_signed_with_another_key(counting: Counting) -> None:
    before = counting.device.head_seq
    events = _three(counting)
    answer = counting.device.post_batch(counting.device.envelope(events, key=Ed25519PrivateKey.generate()))
    _whole_batch(counting, answer, events, "BAD_SIGNATURE", before)


def test_sequence_gap_then_resend_from_expected_seq(counting: Counting) -> None:
    before = counting.device.head_seq
    events = counting.device.chain([counting.scan(1), counting.scan(1)], seq=before + 1, prev=bytes(range(32)))
    assert events[0].seq == before + 2
    answer = counting.device.post_batch(counting.device.envelope(events))
    _whole_batch(counting, answer, events, "SEQUENCE_GAP", before)


def test_a_stored_seq_with_other_content(counting: Counting, store: Store) -> None:
    """[stored seq h-1 as it was, seq h changed, a new seq h+1]: the changed one is DUPLICATE_OR_REPLAY."""
    head = counting.device.head_seq
    counted = store.counted(counting.session_id, counting.product_id)
    kept, changed = counting.device.stored[head - 1], counting.device.stored[head]
    replay = Event(
        changed.writer_id,
        changed.seq,
        changed.event_id,
        changed.type,
        {**changed.payload, "qty": changed.payload["qty"] + 1},
        changed.hlc,
        changed.prev_hash,
        changed.occurred_at,
    )
    events = [kept, replay, *counting.device.chain([counting.scan(1)], seq=head, prev=replay.hash)]
    answer = counting.device.post_batch(counting.device.envelope(events))
    assert answer["ok"] == [] and answer["held"] == [], answer
    assert [(e["seq"], e["code"]) for e in answer["errors"]] == [
        (head - 1, "NOT_PROCESSED"),
        (head, "DUPLICATE_OR_REPLAY"),
        (head + 1, "NOT_PROCESSED"),
    ]
    assert answer["expected_seq"] == head + 1
    assert store.counted(counting.session_id, counting.product_id) == counted
    assert counting.device.heartbeat({})["head_seq"] == head


# §4.2's order: the batch step before the stored step, each in the table's order; the first check that
# fails, at its first failing event, decides.
def _reused_and_lost(c: Counting, events: list[Event]) -> list[Event]:
    payload = {**events[1].payload, "session_id": new_ulid()}
    return _rebuild(c, events, 1, event_id=c.device.stored[1].event_id, payload=payload)


def _reused_then_ahead(c: Counting, events: list[Event]) -> list[Event]:
    ahead = (wall_ms() + FIVE_MINUTES_MS + 60_000) << 16
    return _rebuild(c, _rebuild(c, events, 1, event_id=c.device.stored[1].event_id), 2, hlc=ahead)


def _off_the_chain_then_ahead(c: Counting, events: list[Event]) -> list[Event]:
    ahead = (wall_ms() + FIVE_MINUTES_MS + 60_000) << 16
    return _rebuild(c, _rebuild(c, events, 0, prev_hash=bytes(32)), 2, hlc=ahead)


def _behind_the_store_then_ahead(c: Counting, events: list[Event]) -> list[Event]:
    ahead = (wall_ms() + FIVE_MINUTES_MS + 60_000) << 16
    stored_hlc = c.device.stored[c.device.head_seq].hlc
    return _rebuild(c, _rebuild(c, events, 0, hlc=stored_hlc), 2, hlc=ahead)


ORDER_CASES: dict[str, tuple[list[str], Callable[[Counting, list[Event]], list[Event]]]] = {
    # Both stored checks; SESSION_NOT_FOUND comes before a taken event_id in the stored step.
    "stored event_id and unknown session": (["NOT_PROCESSED", "SESSION_NOT_FOUND", "NOT_PROCESSED"], _reused_and_lost),
    # A batch check (CLOCK_AHEAD) at event 3 decides before any stored check at an earlier event.
    "stored event_id, then an hlc ahead": (["NOT_PROCESSED", "NOT_PROCESSED", "CLOCK_AHEAD"], _reused_then_ahead),
    "off the stored chain, then an hlc ahead": (
        ["NOT_PROCESSED", "NOT_PROCESSED", "CLOCK_AHEAD"],
        _off_the_chain_then_ahead,
    ),
    "hlc behind the stored event, then an hlc ahead": (
        ["NOT_PROCESSED", "NOT_PROCESSED", "CLOCK_AHEAD"],
        _behind_the_store_then_ahead,
    ),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_the_checks_run_in_the_pages_order(counting: Counting, case: str) -> None:
    codes, spoil = ORDER_CASES[case]
    before = counting.device.head_seq
    events = spoil(counting, _three(counting))
    answer = counting.device.post_batch(counting.device.envelope(events))
    _refused(counting, answer, events, codes, before)


def test_every_type_of_section_5_is_taken(counting: Counting, store: Store) -> None:
    """One event of each type a device may send, with the fields §5 lists, in one batch: all ok."""
    c = counting
    scan = c.scan(2, product_id=c.product_id)
    before = c.device.head_seq
    first = c.device.chain([scan])
    serial = f"SN-{c.device.fmt}-{before}"
    common = {"session_id": c.session_id, "by": c.verifier_id, "product_id": c.product_id}
    rest = c.device.chain(
        [
            (
                "scan.undone",
                {
                    "session_id": c.session_id,
                    "by": c.verifier_id,
                    "undoes": first[0].event_id,
                    "of_writer": c.device.writer_id,
                    "code": c.barcode,
                    "rack_id": c.rack_id,
                    "qty": 2,
                },
            ),
            ("count.adjusted", {**common, "delta": 3, "target": 3}),
            ("damage.adjusted", {**common, "delta": 1, "target": 1}),
            (
                "item.attributes_set",
                {
                    **common,
                    "attrs": {
                        "mfg_date": "2025-06-01",
                        "mrp_minor": 99_900,
                        "uom": "EA",
                        "condition": "good",
                        "category": "Shelf",
                        "status": None,
                    },
                },
            ),
            ("serial.added", {**common, "serial": serial}),
        ],
        seq=first[0].seq,
        prev=first[0].hash,
    )
    events = [*first, *rest]
    added = events[-1]
    events += c.device.chain(
        [("serial.removed", {**common, "serial": serial, "tags": [added.event_id]})], seq=added.seq, prev=added.hash
    )
    counted = store.counted(c.session_id, c.product_id)
    answer = c.device.send(events)
    assert answer["errors"] == [] and answer["held"] == [], answer
    assert answer["ok"] == [e.seq for e in events]
    assert answer["expected_seq"] == events[-1].seq + 1
    # The scan and its undo cancel; the adjustment adds 3.
    assert store.counted(c.session_id, c.product_id) == counted + 3
    item = next(i for i in c.device.pull(c.session_id)["items"] if i["product_id"] == c.product_id)
    assert item["qty"] == counted + 3 and item["damage_qty"] == 1
    assert serial not in json.dumps(item["serials"])


def test_occurred_at_nil_500_events_and_a_clock_a_little_ahead(store: Store) -> None:
    """§1: ``occurred_at`` may be nil; §3.1: up to 500 events; a device clock 4 minutes fast is taken,
    but the box's clock (``server_hlc``) follows it at most 1 second past the box's wall time."""
    c = store.counting("msgpack")
    kind, payload = c.scan(1)
    nil = Event(c.device.writer_id, 1, new_ulid(), kind, payload, c.device.tick(), ZERO_HASH, None)
    events = [nil, *c.device.chain([c.scan(1)] * 499, seq=1, prev=nil.hash)]
    answer = c.device.send(events)
    assert answer["ok"] == list(range(1, 501)) and answer["errors"] == [], answer["errors"][:3]
    assert answer["expected_seq"] == 501
    assert store.counted(c.session_id, c.product_id) == 500  # a scanned barcode counts for its product
    assert answer["held"] == []
    c.device.last_hlc = (wall_ms() + 4 * 60_000) << 16
    fast = c.device.chain([c.scan(1)])
    sent_at = wall_ms()
    answer = c.device.send(fast)
    assert answer["ok"] == [501] and answer["errors"] == []
    assert answer["server_hlc"] >> 16 <= wall_ms() + 1000 + 50, (answer["server_hlc"] >> 16) - sent_at


# -- §4.3: held events the routes of §2 can provoke --------------------------------------------------------
def test_another_device_in_a_locked_session_is_held(counting: Counting, store: Store) -> None:
    """§2.4: while a device holds the lock, what another device sends into the session is held."""
    second = Handheld(store.server.url, counting.device.fmt)
    second.pair(store.pairing_code()["code"])
    counted = store.counted(counting.session_id, counting.product_id)
    events = second.chain([counting.scan(2)])
    answer = second.send(events)
    assert answer["ok"] == [1] and answer["errors"] == []
    assert answer["held"] == [
        {"seq": 1, "event_id": events[0].event_id, "session_id": counting.session_id, "reason": "SESSION_LOCKED"}
    ]
    assert store.counted(counting.session_id, counting.product_id) == counted


def test_a_person_not_of_the_session_is_held(counting: Counting, store: Store) -> None:
    """§4.3 NOT_ASSIGNED: ``by`` is neither the session's verifier nor a supervisor or admin."""
    someone = store.login("verifier", DEMO_PASSWORDS["verifier"])["user"]["user_id"]
    assert someone != counting.verifier_id
    counted = store.counted(counting.session_id, counting.product_id)
    events = counting.device.chain([counting.scan(2, by=someone)])
    answer = counting.device.send(events)
    assert answer["ok"] == [events[0].seq] and answer["errors"] == []
    assert [h["reason"] for h in answer["held"]] == ["NOT_ASSIGNED"]
    assert store.counted(counting.session_id, counting.product_id) == counted
    assert pulled_qty(counting.device.pull(counting.session_id), counting.product_id) == counted


@pytest.mark.parametrize("fmt", FORMATS)
def test_not_started_then_another_devices_session(store: Store, fmt: str) -> None:
    """§4.3: a session not started yet (SESSION_NOT_IN_PROGRESS, listed once though NOT_ASSIGNED applies
    too), then one assigned to another device that holds no lock (NOT_ASSIGNED); its own device counts."""
    mine, stranger = Handheld(store.server.url, fmt), Handheld(store.server.url, fmt)
    mine.pair(store.pairing_code()["code"])
    stranger.pair(store.pairing_code()["code"])
    username, password = store.new_verifier()
    login = store.login(username, password)
    verifier, by = store.server.client(login["token"]), login["user"]["user_id"]
    _, session_id, rack = store.assign(username, mine.writer_id)
    barcode, product_id = store.product()
    scan = (
        "scan.recorded",
        {
            "session_id": session_id,
            "code": barcode,
            "qty": 1,
            "rack_id": store.rack_ids[rack],
            "product_id": None,
            "token": None,
            "by": by,
        },
    )
    early = stranger.chain([scan])
    answer = stranger.send(early)
    assert answer["ok"] == [1] and answer["errors"] == []
    assert answer["held"] == [
        {"seq": 1, "event_id": early[0].event_id, "session_id": session_id, "reason": "SESSION_NOT_IN_PROGRESS"}
    ]
    assert verifier.post(f"/api/sessions/{session_id}/start").status_code == 200
    answer = stranger.send(stranger.chain([scan]))
    assert answer["ok"] == [2] and [h["reason"] for h in answer["held"]] == ["NOT_ASSIGNED"]
    answer = mine.send(mine.chain([scan, scan]))
    assert answer["ok"] == [1, 2] and answer["held"] == [] and answer["errors"] == []
    assert store.counted(session_id, product_id) == 2


def test_leases_renewed_counts_the_rack_leases_and_the_session_lock(counting: Counting) -> None:
    """§3.2: "`leases_renewed` how many of its leases (rack leases and its session lock) the heartbeat
    renewed": the device holds one rack lease and the session's lock."""
    assert counting.device.heartbeat({})["leases_renewed"] == 2


# -- §4.1: whole-request refusals ---------------------------------------------------------------------------
def _good_body(c: Counting) -> dict[str, Any]:
    return c.device.envelope(c.device.chain([c.scan(1)]))


ENVELOPES: dict[str, Callable[[Counting], Any]] = {
    "head missing": lambda c: {k: v for k, v in _good_body(c).items() if k != "head"},
    "unknown field": lambda c: {**_good_body(c), "device": "x"},
    "event field missing": lambda c: {
        **(b := _good_body(c)),
        "events": [{k: v for k, v in b["events"][0].items() if k != "occurred_at"}],
    },
    "seq of another type": lambda c: {**(b := _good_body(c)), "events": [{**b["events"][0], "seq": "1"}]},
    "hlc out of range": lambda c: {**(b := _good_body(c)), "events": [{**b["events"][0], "hlc": 2**63}]},
    "occurred_at past 9999": lambda c: {
        **(b := _good_body(c)),
        "events": [{**b["events"][0], "occurred_at": 253402300800000}],
    },
    "event_id not a ULID": lambda c: {
        **(b := _good_body(c)),
        "events": [{**b["events"][0], "event_id": b["events"][0]["event_id"].lower()}],
    },
    "event_id starting with 8": lambda c: {
        **(b := _good_body(c)),
        "events": [{**b["events"][0], "event_id": "8" + b["events"][0]["event_id"][1:]}],
    },
    "no events": lambda c: {**_good_body(c), "events": []},
    "501 events": lambda c: c.device.envelope(c.device.chain([c.scan(1)] * 501)),
    "holes in seq": lambda c: {
        **(b := c.device.envelope(c.device.chain([c.scan(1), c.scan(1)]))),
        "events": [b["events"][0], {**b["events"][1], "seq": b["events"][1]["seq"] + 1}],
    },
    "another writer": lambda c: {**_good_body(c), "writer_id": new_ulid()},
    "not an envelope at all": lambda c: [1, 2, 3],
}


def _raw_cases(fmt: str) -> dict[str, bytes]:
    cases = {"not msgpack or JSON": b"\xc1\xff not a body"}
    if fmt == "msgpack":
        cases["nested too deep"] = b"\x81\xa6events" + b"\x91" * 100_000 + b"\xc0"
    else:
        cases["nested too deep"] = b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return cases


def _nothing_stored(c: Counting, before: int) -> None:
    assert c.device.heartbeat({})["head_seq"] == before
    assert c.device.send(c.device.chain([c.scan(1)]))["ok"] == [before + 1]


@pytest.mark.parametrize("case", [*ENVELOPES, "bin not hex", "raw"])
def test_a_malformed_envelope_is_validation_in_the_requests_format(counting: Counting, case: str) -> None:
    fmt, before = counting.device.fmt, counting.device.head_seq
    if case == "bin not hex":
        body = _good_body(counting)
        if fmt == "json":
            content = encode(fmt, body).replace(body["head"]["hash"].hex().encode(), b"zz" * 32)
        else:  # msgpack: a bin field of another type
            body["head"]["hash"] = body["head"]["hash"].hex()
            content = encode(fmt, body)
        bodies = [content]
    elif case == "raw":
        bodies = list(_raw_cases(fmt).values())
    else:
        bodies = [encode(fmt, ENVELOPES[case](counting))]
    for content in bodies:
        refusal(fmt, counting.device.post("/api/sync/batch", content), 400, "VALIDATION")
    _nothing_stored(counting, before)


HEARTBEATS: dict[str, Any] = {
    "queue_depth negative": {"queue_depth": -1},
    "queue_depth over a billion": {"queue_depth": 1_000_000_001},
    "queue_depth a string": {"queue_depth": "3"},
    "app_version of 65 characters": {"app_version": "v" * 65},
    "session_id of 65 characters": {"session_id": "s" * 65},
    "unknown field": {"battery": 80},
    "not a map": [0, "walk/1", None],
}


@pytest.mark.parametrize("case", [*HEARTBEATS, "not msgpack or JSON"])
def test_a_malformed_heartbeat_is_validation_in_the_requests_format(counting: Counting, case: str) -> None:
    fmt = counting.device.fmt
    content = b"\xc1\xff not a body" if case not in HEARTBEATS else encode(fmt, HEARTBEATS[case])
    refusal(fmt, counting.device.post("/api/sync/heartbeat", content), 400, "VALIDATION")


def test_the_largest_heartbeat_fields_are_taken(counting: Counting) -> None:
    beat = counting.device.heartbeat(
        {"queue_depth": 1_000_000_000, "app_version": "v" * 64, "session_id": counting.session_id}
    )
    assert beat["head_seq"] == counting.device.head_seq


def test_an_unknown_device_token_is_unauthenticated(counting: Counting) -> None:
    fmt = counting.device.fmt
    body = encode(fmt, _good_body(counting))
    refusal(fmt, counting.device.post("/api/sync/batch", body, token="not-a-token"), 401, "UNAUTHENTICATED")
    refusal(fmt, counting.device.post("/api/sync/heartbeat", encode(fmt, {}), token="x"), 401, "UNAUTHENTICATED")
    no_token = httpx.post(
        counting.device.url + "/api/sync/batch", content=body, headers={"Content-Type": CONTENT_TYPES[fmt]}
    )
    refusal(fmt, no_token, 401, "UNAUTHENTICATED")
    _nothing_stored(counting, counting.device.head_seq)


def test_a_heartbeat_over_64_kib_is_too_large(counting: Counting) -> None:
    fmt = counting.device.fmt
    content = encode(fmt, {"queue_depth": 0, "app_version": "v" * (65 * 1024)})
    assert len(content) > 64 * 1024
    refusal(fmt, counting.device.post("/api/sync/heartbeat", content), 413, "PAYLOAD_TOO_LARGE")


def test_a_batch_over_8_mib_is_too_large(counting: Counting) -> None:
    fmt, before = counting.device.fmt, counting.device.head_seq
    body = _good_body(counting)
    body["padding"] = "p" * (8 * 1024 * 1024 + 1)
    refusal(fmt, counting.device.post("/api/sync/batch", encode(fmt, body)), 413, "PAYLOAD_TOO_LARGE")
    _nothing_stored(counting, before)


def test_pull_answers_in_the_requests_format(counting: Counting) -> None:
    """§3.3: a pull answers in the format its ``Accept`` header asks for, refusals included."""
    fmt = counting.device.fmt
    headers = {"Authorization": f"Device {counting.device.device_token}", "Accept": CONTENT_TYPES[fmt]}
    refused = httpx.get(counting.device.url + "/api/sync/pull", params={"session_id": new_ulid()}, headers=headers)
    refusal(fmt, refused, 404, "SESSION_NOT_FOUND")
    answer = httpx.get(
        counting.device.url + "/api/sync/pull", params={"session_id": counting.session_id}, headers=headers
    )
    assert answer.status_code == 200
    assert set(decode(fmt, answer)) == PULL_FIELDS


def test_pull_of_a_session_another_device_holds(counting: Counting, store: Store) -> None:
    other = Handheld(store.server.url, counting.device.fmt)
    other.pair(store.pairing_code()["code"])
    answer = httpx.get(
        other.url + "/api/sync/pull",
        params={"session_id": counting.session_id},
        headers={"Authorization": f"Device {other.device_token}"},
    )
    assert answer.status_code == 403 and answer.json()["code"] == "SESSION_NOT_YOURS", answer.text


def test_a_held_lock_and_a_claimed_rack_name_their_holder(counting: Counting, store: Store) -> None:
    """§2.4 and §2.5: the lock another person holds, the same verifier's other device, a claimed rack."""
    by_other = store.boss.post(f"/api/sessions/{counting.session_id}/lock", json={"device_id": new_ulid()})
    assert by_other.status_code == 409 and by_other.json()["code"] == "SESSION_LOCKED_BY_OTHER_USER", by_other.text
    other_device = counting.verifier.post(f"/api/sessions/{counting.session_id}/lock", json={"device_id": new_ulid()})
    assert other_device.status_code == 409, other_device.text
    assert other_device.json()["code"] == "SESSION_LOCKED_ON_OTHER_DEVICE"
    claimed = store.boss.post(
        f"/api/runs/{counting.run_id}/racks/{counting.rack}/claim", json={"session_id": counting.session_id}
    )
    assert claimed.status_code == 409 and claimed.json()["code"] == "RACK_CLAIMED", claimed.text
    for answer in (by_other, other_device, claimed):
        assert counting.verifier_id in json.dumps(answer.json()["details"]), answer.text


def test_pull_of_an_unknown_session(counting: Counting) -> None:
    answer = httpx.get(
        counting.device.url + "/api/sync/pull",
        params={"session_id": new_ulid()},
        headers={"Authorization": f"Device {counting.device.device_token}"},
    )
    assert answer.status_code == 404 and answer.json()["code"] == "SESSION_NOT_FOUND", answer.text


# -- §6: the test vector is one a box accepts ---------------------------------------------------------------
def test_the_vector_is_accepted_by_a_box_holding_the_pages_store(tmp_path: Path) -> None:
    section = _section(PROTOCOL.read_text(encoding="utf-8"), "6. Test vectors")
    vector = _fields(section)
    key = Ed25519PrivateKey.from_private_bytes(_seed(section))
    assert public_bytes(key).hex() == vector["public_key"]
    payload = json.loads(vector["payload"])
    occurred = vector["occurred_at"]
    event = Event(
        writer_id=vector["writer_id"],
        seq=int(vector["seq"]),
        event_id=vector["event_id"],
        type=vector["type"],
        payload=payload,
        hlc=int(vector["hlc"]),
        prev_hash=bytes.fromhex(vector["prev_hash"]),
        occurred_at=None if occurred in ("nil", "null") else int(occurred),
    )
    assert event.hash.hex() == vector["hash"]
    session_id, rack_id, verifier_id = payload["session_id"], payload["rack_id"], payload["by"]
    public_key = bytes.fromhex(vector["public_key"])

    # The page's store: a verifier, a rack, an IN_PROGRESS session over it, the device paired.
    box = open_box(make_settings(tmp_path / "box"))
    try:

        def setup(conn: sqlite3.Connection) -> None:
            log = box.log
            admin = new_ulid()
            log.record(
                conn,
                "user.added",
                {"user_id": admin, "username": "boss", "display_name": "Boss", "role": "admin", "password_hash": "x"},
            )
            log.record(
                conn,
                "user.added",
                {
                    "user_id": verifier_id,
                    "username": "vector-verifier",
                    "display_name": "Vector",
                    "role": "verifier",
                    "password_hash": "x",
                },
            )
            floor_id = new_ulid()
            log.record(conn, "floor.added", {"floor_id": floor_id, "code": "V", "name": "Vector", "position": 1})
            log.record(conn, "rack.added", {"rack_id": rack_id, "floor_id": floor_id, "code": "V-01", "name": "V-01"})
            run_id = new_ulid()
            log.record(
                conn,
                "run.created",
                {"run_id": run_id, "kind": "hard", "name": "Vector", "notes": "", "planned_start": None, "by": admin},
            )
            log.record(
                conn, "run.status_changed", {"run_id": run_id, "status": "IN_PROGRESS", "reason": "", "by": admin}
            )
            log.record(
                conn,
                "session.created",
                {
                    "session_id": session_id,
                    "run_id": run_id,
                    "kind": "count",
                    "rack_ids": [rack_id],
                    "product_ids": [],
                    "by": admin,
                },
            )
            log.record(
                conn,
                "session.assigned",
                {"session_id": session_id, "verifier_id": verifier_id, "device_id": None, "by": admin},
            )
            for status in ("ASSIGNED", "IN_PROGRESS"):
                log.record(
                    conn,
                    "session.status_changed",
                    {"session_id": session_id, "status": status, "round": 0, "reason": "", "by": verifier_id},
                )
            enroll_writer(conn, vector["writer_id"], "device", box.node.store_id, "Vector handheld", public_key)

        box.db.write(setup)
        status = box.db.read().execute("SELECT status FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        assert status[0] == "IN_PROGRESS"

        batch = {
            "writer_id": vector["writer_id"],
            "events": [wire_event(event)],
            "head": {
                "seq": 1,
                "hash": bytes.fromhex(vector["hash"]),
                "signature": bytes.fromhex(vector["head_signature"]),
            },
        }
        device = Device(vector["writer_id"], "Vector handheld", public_key, 0)
        wire = decode_batch(encode("msgpack", batch), CONTENT_TYPES["msgpack"])
        # JSON decodes to the same batch.
        assert decode_batch(encode("json", batch), CONTENT_TYPES["json"]) == wire
        events, refused = precheck(device, wire, box.log.clock)
        assert refused is None, refused
        outcome = box.db.write(lambda conn: ingest(conn, box.log, device, events, wire.head.signature))
        assert outcome.ok == [1]
        assert outcome.held == []
        assert outcome.errors == []
        assert outcome.expected_seq == 2
        stored = (
            box.db.read()
            .execute("SELECT event_id, hash FROM events WHERE writer_id = ? AND seq = 1", (vector["writer_id"],))
            .fetchone()
        )
        assert (stored[0], bytes(stored[1]).hex()) == (vector["event_id"], vector["hash"])
    finally:
        box.close()
