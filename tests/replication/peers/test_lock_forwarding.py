"""Claims at a box that is not the lock authority, forwarded to the box that is, with real processes.

Box A is the store's lock authority (and holds the demo store); box B is not and learns that A is from
A's hello; box C is not either and is told A's URL by ``lock_authority_url``. B reaches A through a
proxy the tests cut or point at a port that never answers, and A reaches B through another.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.settings import SettingsError, load_settings
from appliance.store.identity import load_or_create_key
from replication.wire import protocol
from replication.wire.hlc import wall_ms
from tests.conftest import free_port
from tests.replication.faults import LinkProxy
from tests.replication.peers.boxes import PASSWORD, Boxes, start

STORE_SECRET = "store-secret-for-lock-forwarding"
TTL_S = 8
TIMEOUT_S = 1.0


class Store(Boxes):
    """Three boxes of one store, a running count, and two verifiers who each hold a counting session."""

    def __init__(self, root: Path) -> None:
        ports = {name: free_port() for name in "abc"}
        self.to_a = LinkProxy(ports["a"])  # the network B crosses to reach A
        self.to_b = LinkProxy(ports["b"])  # the network A crosses to reach B
        common = {
            "STOCKVERIFY_STORE_ID": "demo-store",
            "STOCKVERIFY_STORE_SECRET": STORE_SECRET,
            "STOCKVERIFY_REPLICATE_EVERY_S": "0.2",
            "STOCKVERIFY_LEASE_TTL_S": str(TTL_S),
            "STOCKVERIFY_LEASE_RENEW_S": "1",
        }
        forwarding = {**common, "STOCKVERIFY_LOCK_AUTHORITY": "false", "STOCKVERIFY_LOCK_FORWARD_TIMEOUT_S": "1"}
        super().__init__(
            {
                "a": start(root / "a", ports["a"], "--demo", env={**common, "STOCKVERIFY_PEERS": self.to_b.url}),
                "b": start(root / "b", ports["b"], env={**forwarding, "STOCKVERIFY_PEERS": self.to_a.url}),
                "c": start(
                    root / "c",
                    ports["c"],
                    env={**forwarding, "STOCKVERIFY_LOCK_AUTHORITY_URL": f"http://127.0.0.1:{ports['a']}"},
                ),
            }
        )
        self.a, self.b, self.c = self.boxes["a"], self.boxes["b"], self.boxes["c"]
        self.a_port = ports["a"]

    def prepare(self) -> None:
        for box in self.boxes.values():
            box.wait_ready()
        self.wait_caught_up()
        self.start_count("forwarded claims")

    def wait_caught_up(self, timeout: float = 90.0) -> None:
        """Until B and C hold every event A holds."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.vector("a")
            if all(all(self.vector(name).get(w, 0) >= seq for w, seq in held.items()) for name in ("b", "c")):
                return
            assert time.monotonic() < deadline, "B and C did not catch up with A"
            time.sleep(0.2)

    def tile(self, at: str, rack: str) -> dict[str, Any]:
        board = self.client("supervisor", at).get(f"/api/runs/{self.run_id}/racks").json()
        found: dict[str, Any] = next(t for t in board if t["rack"] == rack)
        return found

    def authority_token(self) -> int:
        """The last token A's sequence handed out."""
        return self.last_token("a")

    def close(self) -> None:
        super().close()
        self.to_a.close()
        self.to_b.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    made = Store(tmp_path_factory.mktemp("forwarding"))
    try:
        made.prepare()
        yield made
    finally:
        made.close()


def test_a_claim_at_b_is_granted_by_a_and_shown_at_b(store: Store) -> None:
    claimed = store.claim("holder", "b", "G-01")
    assert claimed.status_code == 201, claimed.text
    token = claimed.json()["token"]
    assert token == store.authority_token()  # the newest of A's sequence
    assert store.query("b", "SELECT counter FROM lock_authority") == [(0,)]  # B granted nothing itself

    # B pulled the grant before answering: its floor map shows the holder at once.
    started = time.monotonic()
    while (tile := store.tile("b", "G-01"))["state"] != "claimed":
        assert time.monotonic() - started < 2.0, tile
        time.sleep(0.05)
    holder = store.people["holder"]
    assert (tile["holder"], tile["holder_name"], tile["token"]) == (holder["user_id"], holder["display_name"], token)

    # Whoever asks, and wherever, hears the same refusal naming the holder.
    at_a = store.claim("rival", "a", "G-01")
    assert at_a.status_code == 409 and at_a.json()["code"] == "RACK_CLAIMED", at_a.text
    assert at_a.json()["details"]["holder"] == holder["user_id"]
    assert at_a.json()["details"]["holder_name"] == holder["display_name"]
    for box in ("b", "c"):
        there = store.claim("rival", box, "G-01")
        assert (there.status_code, there.json()) == (at_a.status_code, at_a.json()), box


def test_a_claim_made_at_a_shows_as_held_on_b_board(store: Store) -> None:
    """B keeps lease copies only for grants made through it; a grant made at A itself reaches B as
    the replicated move and must show there as held, not as a lapsed lease."""
    claimed = store.claim("rival", "a", "G-05")
    assert claimed.status_code == 201, claimed.text
    started = time.monotonic()
    while (tile := store.tile("b", "G-05"))["state"] != "claimed":
        assert time.monotonic() - started < 5.0, tile
        time.sleep(0.05)
    assert (tile["holder"], tile["lapsed"], tile["token"]) == (
        store.people["rival"]["user_id"],
        False,
        claimed.json()["token"],
    )
    assert store.client("rival", "a").post(f"/api/runs/{store.run_id}/racks/G-05/release").status_code == 200


def test_the_holder_moves_and_scans_through_b_under_a_token(store: Store) -> None:
    holder = store.client("holder", "b")
    token = store.tile("b", "G-01")["token"]
    for action, state in (("start", "active"), ("pause", "paused"), ("resume", "active")):
        moved = holder.post(f"/api/runs/{store.run_id}/racks/G-01/{action}")
        assert moved.status_code == 200, moved.text
        assert (moved.json()["state"], moved.json()["token"]) == (state, token)
        assert store.tile("a", "G-01")["state"] == state
        assert store.tile("b", "G-01")["state"] == state
    session_id = store.people["holder"]["session_id"]
    scanned = holder.post(f"/api/sessions/{session_id}/scans", json={"code": "4006381333931", "rack": "G-01"})
    assert scanned.status_code == 201, scanned.text
    assert store.query("b", "SELECT token FROM lease_scans WHERE session_id = ?", session_id) == [(token,)]

    # Only the holder moves a rack, at either box.
    rival = store.client("rival", "b")
    refused = rival.post(f"/api/runs/{store.run_id}/racks/G-01/pause")
    assert refused.status_code == 403 and refused.json()["code"] == "NOT_RACK_HOLDER", refused.text

    finished = holder.post(f"/api/runs/{store.run_id}/racks/G-01/finish")
    assert finished.status_code == 200 and finished.json()["state"] == "completed", finished.text
    assert store.tile("b", "G-01")["state"] == "completed"
    again = store.claim("rival", "b", "G-01")
    assert again.status_code == 409 and again.json()["code"] == "RACK_COMPLETED", again.text


def test_a_session_lock_taken_at_b_holds_at_a(store: Store) -> None:
    session_id = store.people["holder"]["session_id"]
    at_b, at_a = store.client("holder", "b"), store.client("holder", "a")
    locked = at_b.post(f"/api/sessions/{session_id}/lock", json={"device_id": "tablet-1"})
    assert locked.status_code == 200, locked.text
    assert locked.json()["token"] == store.authority_token()
    assert at_b.get(f"/api/sessions/{session_id}/lock").json()["lock"]["device_id"] == "tablet-1"

    elsewhere = at_a.post(f"/api/sessions/{session_id}/lock", json={"device_id": "tablet-2"})
    assert elsewhere.status_code == 409 and elsewhere.json()["code"] == "SESSION_LOCKED_ON_OTHER_DEVICE"
    assert at_b.post(f"/api/sessions/{session_id}/lock", json={"device_id": "tablet-2"}).json() == elsewhere.json()

    assert at_b.delete(f"/api/sessions/{session_id}/lock").status_code == 200
    assert at_b.get(f"/api/sessions/{session_id}/lock").json()["lock"] is None
    moved = at_a.post(f"/api/sessions/{session_id}/lock", json={"device_id": "tablet-2"})
    assert moved.status_code == 200, moved.text
    assert at_a.delete(f"/api/sessions/{session_id}/lock").status_code == 200


def test_heartbeats_at_b_keep_the_lease_alive_at_a(store: Store) -> None:
    assert store.claim("holder", "b", "G-02").status_code == 201
    holder = store.client("holder", "b")
    until = time.monotonic() + TTL_S + 2
    while time.monotonic() < until:
        assert holder.post("/api/leases/renew").json()["renewed"] >= 1
        time.sleep(1)
    held = store.claim("rival", "a", "G-02")
    assert held.status_code == 409 and held.json()["code"] == "RACK_CLAIMED", held.text

    assert holder.post(f"/api/runs/{store.run_id}/racks/G-02/release").json()["state"] == "available"
    assert store.claim("rival", "a", "G-02").status_code == 201
    rival = store.client("rival", "a")
    assert rival.post(f"/api/runs/{store.run_id}/racks/G-02/release").status_code == 200


def test_a_person_the_authority_does_not_know_yet_hears_so(store: Store) -> None:
    store.to_b.cut()  # A cannot pull from B, so a person added at B stays unknown at A
    try:
        admin = store.client("admin", "b")
        made = admin.post("/api/users", json={"username": "newcomer", "role": "verifier", "password": PASSWORD})
        assert made.status_code == 201, made.text
        newcomer = store.client("newcomer", "b")
        path = f"/api/runs/{store.run_id}/racks/G-03/claim"
        refused = newcomer.post(path, json={"session_id": store.people["rival"]["session_id"]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "USER_UNKNOWN_AT_AUTHORITY"
    finally:
        store.to_b.heal()
    deadline = time.monotonic() + 20
    while (answer := newcomer.post(path, json={"session_id": store.people["rival"]["session_id"]})).status_code == 503:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    # Known now, the newcomer meets the authority's own rule: the session is someone else's.
    assert answer.status_code == 403 and answer.json()["code"] == "SESSION_NOT_YOURS", answer.text


def test_the_node_route_serves_only_enrolled_boxes(store: Store) -> None:
    url = store.a.url + "/api/replication/locks"
    unsigned = httpx.post(url, content=b"\x80")
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "NODE_SIGNATURE_REQUIRED"

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    body = b"\x82\xa2op\xa5claim\xa7user_id\xa1x"
    stranger = protocol.signed_headers(
        Ed25519PrivateKey.generate(), "stranger-node", "POST", "/api/replication/locks", body, wall_ms()
    )
    refused = httpx.post(url, content=body, headers=stranger)
    assert refused.status_code == 401 and refused.json()["code"] == "NOT_ENROLLED", refused.text

    # B is enrolled at A, but a body other than the one it signed is refused before anything runs.
    key, made = load_or_create_key(store.b.data_dir / "keys")
    assert not made
    node_id = httpx.get(store.b.url + "/api/health").json()["node_id"]
    headers = protocol.signed_headers(key, node_id, "POST", "/api/replication/locks", body, wall_ms())
    tampered = httpx.post(url, content=body.replace(b"x", b"y"), headers=headers)
    assert tampered.status_code == 401 and tampered.json()["code"] == "BAD_SIGNATURE", tampered.text


def test_a_box_told_the_authority_url_forwards_there(store: Store) -> None:
    claimed = store.claim("rival", "c", "G-04")
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["token"] == store.authority_token()
    assert store.tile("c", "G-04")["holder"] == store.people["rival"]["user_id"]
    held = store.claim("holder", "b", "G-04")
    assert held.status_code == 409 and held.json()["details"]["holder_name"] == store.people["rival"]["display_name"]
    released = store.client("rival", "c").post(f"/api/runs/{store.run_id}/racks/G-04/release")
    assert released.status_code == 200 and released.json()["state"] == "available"


def test_an_unreachable_authority_fails_fast_and_scanning_goes_on(store: Store) -> None:
    # First a network that swallows requests: A's port answers nothing at all.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        store.to_a.cut()
        store.to_a.target_port = silent.getsockname()[1]
        store.to_a.heal()
        started = time.monotonic()
        answer = store.claim("holder", "b", "G-05")
        took = time.monotonic() - started
        assert answer.status_code == 503 and answer.json()["code"] == "LOCK_AUTHORITY_UNREACHABLE", answer.text
        assert TIMEOUT_S <= took < TIMEOUT_S + 2.0, took
    finally:
        store.to_a.cut()
        store.to_a.target_port = store.a_port
        store.to_a.heal()
        silent.close()

    # The holder claims while A is there, then A stops: claims fail at once, scans go on.
    claimed = store.claim("holder", "b", "G-05")
    assert claimed.status_code == 201, claimed.text
    store.a.stop()
    started = time.monotonic()
    answer = store.claim("holder", "b", "G-06")
    assert answer.status_code == 503 and answer.json()["code"] == "LOCK_AUTHORITY_UNREACHABLE", answer.text
    assert time.monotonic() - started < TIMEOUT_S + 2.0
    session_id = store.people["holder"]["session_id"]
    scanned = store.client("holder", "b").post(
        f"/api/sessions/{session_id}/scans", json={"code": "4006381333931", "rack": "G-05"}
    )
    assert scanned.status_code == 201, scanned.text
    rack_id = store.tile("b", "G-05")["rack_id"]
    tokens = store.query("b", "SELECT token FROM lease_scans WHERE session_id = ? AND rack_id = ?", session_id, rack_id)
    assert tokens == [(claimed.json()["token"],)]


def test_a_box_cannot_both_grant_locks_and_forward_them(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="lock_authority_url"):
        load_settings({"data_dir": tmp_path, "lock_authority_url": "http://10.0.0.2:8080"}, environ={})
    settings = load_settings(
        {"data_dir": tmp_path, "lock_authority": False, "lock_authority_url": "http://10.0.0.2:8080/"}, environ={}
    )
    assert (settings.lock_authority_url, settings.lock_forward_timeout_s) == ("http://10.0.0.2:8080", 3.0)
