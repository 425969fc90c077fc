"""Exactly one box of a store grants locks, with real box processes.

Which box grants is a replicated designation: the store's first box designates itself, a box that
joins forwards to it, an admin moves the authority (the epoch in every token goes up, and scans made
afterwards under an older token are flagged), and two boxes that each designated themselves both
refuse claims and say why until an admin moves the authority to one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.appliance.counting.test_locks import Handheld
from tests.conftest import free_port
from tests.replication.peers.boxes import Boxes, start

MAIN = Path(__file__).resolve().parents[3]
STORE_SECRET = "store-secret-for-the-lock-authority"
COMMON = {
    "STOCKVERIFY_STORE_ID": "demo-store",
    "STOCKVERIFY_STORE_SECRET": STORE_SECRET,
    "STOCKVERIFY_REPLICATE_EVERY_S": "0.2",
    "STOCKVERIFY_LEASE_TTL_S": "60",  # no lease lapses by itself during these tests
    "STOCKVERIFY_LEASE_RENEW_S": "20",
}
T = TypeVar("T")


def _until(what: Callable[[], T | None], why: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found:
            return found
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


class Store(Boxes):
    """Two boxes of one store that pull from each other; A holds the demo store, B starts empty."""

    def __init__(self, root: Path, b_env: dict[str, str]) -> None:
        ports = {"a": free_port(), "b": free_port()}
        super().__init__(
            {
                "a": start(
                    root / "a",
                    ports["a"],
                    "--demo",
                    env={**COMMON, "STOCKVERIFY_PEERS": f"http://127.0.0.1:{ports['b']}"},
                ),
                "b": start(
                    root / "b",
                    ports["b"],
                    env={**COMMON, **b_env, "STOCKVERIFY_PEERS": f"http://127.0.0.1:{ports['a']}"},
                ),
            }
        )
        self.a, self.b = self.boxes["a"], self.boxes["b"]

    def prepare(self) -> None:
        for box in (self.a, self.b):
            box.wait_ready()
        self.node = {name: httpx.get(self.box(name).url + "/api/health").json()["node_id"] for name in "ab"}
        self.wait_caught_up()
        self.start_count("one authority")

    def wait_caught_up(self) -> None:
        """Until each box holds every event the other holds."""

        def level() -> bool:
            a, b = self.vector("a"), self.vector("b")
            return all(b.get(w, 0) >= s for w, s in a.items()) and all(a.get(w, 0) >= s for w, s in b.items())

        _until(level, "A and B did not catch up with each other", timeout=90)

    def health(self, at: str) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.box(at).url + "/api/health").json()
        return answer

    def locks(self, at: str) -> dict[str, Any]:
        found: dict[str, Any] = self.health(at)["locks"]
        return found

    def rack_id(self, code: str) -> str:
        return str(self.query("a", "SELECT rack_id FROM racks WHERE code = ?", code)[0][0])

    def late_leases(self, at: str) -> list[dict[str, Any]]:
        queue = self.client("supervisor", at).get("/api/conflicts", params={"run_id": self.run_id}).json()
        return sorted((c for c in queue if c["kind"] == "late_lease"), key=lambda c: str(c["writer_id"]))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=MAIN,
        env={**os.environ, "STOCKVERIFY_MDNS": "false"},
        check=False,
    )


# -- a store's first box grants, a box that joins forwards, an admin moves the authority -------------
@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    made = Store(tmp_path_factory.mktemp("authority"), {"STOCKVERIFY_LOCK_AUTHORITY": "false"})
    try:
        made.prepare()
        yield made
    finally:
        made.close()


def test_the_first_box_grants_and_the_box_that_joined_forwards(joined: Store) -> None:
    a = joined.node["a"]
    assert joined.locks("a") == {"role": "granting", "authority": a, "epoch": 1, "rivals": []}
    assert joined.locks("b") == {"role": "forwarding", "authority": a, "epoch": 1, "rivals": []}
    assert joined.health("b")["status"] == "ok"
    shown = joined.client("supervisor", "b").get("/api/locks/authority").json()
    assert [(d["epoch"], d["node_id"], d["by"]) for d in shown["designations"]] == [(1, a, None)]  # B made none

    claimed = joined.claim("holder", "b", "G-01")
    assert claimed.status_code == 201, claimed.text
    token = claimed.json()["token"]
    assert token == joined.last_token("a") and token >> 32 == 1
    assert joined.query("b", "SELECT counter FROM lock_authority") == [(0,)]  # B granted nothing itself
    held = joined.claim("rival", "a", "G-01")
    assert held.status_code == 409 and held.json()["code"] == "RACK_CLAIMED", held.text

    # A scan under the lease before any move: it counts, and nothing later may flag it.
    holder = joined.client("holder", "b")
    session_id = joined.people["holder"]["session_id"]
    assert (
        holder.post(f"/api/sessions/{session_id}/scans", json={"code": "4006381333931", "rack": "G-01"}).status_code
        == 201
    )
    # The rival holds G-02 through B as well, so B keeps a copy of that lease.
    assert joined.claim("rival", "b", "G-02").status_code == 201
    assert joined.late_leases("b") == []


def test_moving_the_authority_bumps_the_epoch_and_flags_scans_under_an_older_token(joined: Store) -> None:
    b = joined.node["b"]
    before = [token for (token,) in joined.query("a", "SELECT token FROM rack_leases")]
    old = joined.query("b", "SELECT token FROM rack_leases WHERE rack_id = ?", joined.rack_id("G-01"))[0][0]
    device = Handheld(joined.b, joined.client("supervisor", "b"))  # a handheld of the holder's, paired at B

    refused = joined.client("rival", "a").post("/api/locks/authority", json={"node_id": b})
    assert refused.status_code == 403, refused.text
    unknown = joined.client("admin", "a").post("/api/locks/authority", json={"node_id": "no-such-box"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "NODE_NOT_FOUND", unknown.text
    moved = joined.client("admin", "a").post("/api/locks/authority", json={"node_id": b})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["node_id"], moved.json()["epoch"]) == (b, 2)
    # A stops granting the moment it records the move; B takes over once the move reaches it.
    assert moved.json()["here"]["role"] == "forwarding"
    _until(lambda: joined.locks("b")["role"] == "granting", "B never took over")
    assert joined.locks("a") == {"role": "forwarding", "authority": b, "epoch": 2, "rivals": []}

    # Every token now comes from B's sequence at epoch 2: larger than any before.
    claimed = joined.claim("rival", "a", "G-03")
    assert claimed.status_code == 201, claimed.text
    token = claimed.json()["token"]
    assert token >> 32 == 2 and token == joined.last_token("b")
    assert token > max(before)

    # The rival's epoch-1 lease on G-02 is not honoured any more: the holder may claim the rack...
    taken = joined.claim("holder", "b", "G-02")
    assert taken.status_code == 201, taken.text
    assert taken.json()["token"] >> 32 == 2
    # ...and the holder's own epoch-1 lease on G-01 moves nothing now.
    stale = joined.client("holder", "b").post(f"/api/runs/{joined.run_id}/racks/G-01/start")
    assert stale.status_code == 409 and stale.json()["code"] == "LEASE_LAPSED", stale.text

    # Scans made now under the pre-move token are stored and flagged, from a handheld and at the box.
    holder = joined.people["holder"]
    sent = device.send_scans(holder["session_id"], joined.rack_id("G-01"), old, holder["user_id"], 3)
    assert sent["ok"] == [1, 2, 3] and not sent["errors"], sent
    assert {c["kind"] for c in sent["conflicts"]} == {"late_lease"}
    at_box = joined.client("holder", "b").post(
        f"/api/sessions/{holder['session_id']}/scans", json={"code": "LATE-AT-BOX", "rack": "G-01"}
    )
    assert at_box.status_code == 201, at_box.text

    late = joined.late_leases("b")
    assert [(c["writer_id"], c["token"], c["qty"], c["codes"]) for c in late] == sorted(
        [(device.writer_id, old, 3, [["4006381333931", 3]]), (b, old, 1, [["LATE-AT-BOX", 1]])]
    )  # the scan made under the same lease before the move is not among them
    assert all(c["current_token"] >= 2 << 32 for c in late)
    joined.wait_caught_up()
    assert joined.late_leases("a") == late  # A folds the same events to the same queue


# -- two boxes that both designated themselves ------------------------------------------------------
@pytest.fixture(scope="module")
def rivals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    made = Store(tmp_path_factory.mktemp("rivals"), {})  # B started as a first box too: it designates itself
    try:
        made.prepare()
        yield made
    finally:
        made.close()


def test_two_self_designated_boxes_both_refuse_until_an_admin_moves_the_authority(rivals: Store) -> None:
    a, b = rivals.node["a"], rivals.node["b"]
    both = sorted([a, b])
    for at, other in (("a", b), ("b", a)):
        health = _until(lambda at=at: (h := rivals.health(at))["locks"]["role"] == "conflict" and h, f"{at} saw none")
        assert health["status"] == "degraded" and health["locks"]["rivals"] == both, health
        assert other in health["reason"] and "moves the lock authority" in health["reason"], health
        refused = rivals.claim("holder", at, "G-01")
        assert refused.status_code == 503 and refused.json()["code"] == "LOCK_AUTHORITY_CONFLICT", refused.text
        assert other in refused.json()["message"] and "move-authority" in refused.json()["message"]
        status = rivals.client("supervisor", at).get("/api/replication/status").json()
        assert status["locks"]["role"] == "conflict"
    assert rivals.query("a", "SELECT counter FROM lock_authority") == [(0,)]
    assert rivals.query("b", "SELECT counter FROM lock_authority") == [(0,)]

    doctor = _cli("doctor", "--json", "--data-dir", str(rivals.b.data_dir))
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert doctor.returncode == 1 and checks["locks"]["status"] == "fail" and a in checks["locks"]["detail"]

    # The admin moves the authority from A's shell while A runs.
    moved = _cli("locks", "move-authority", "--to", a, "--data-dir", str(rivals.a.data_dir), "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["epoch"] == 2
    _until(lambda: rivals.locks("a")["role"] == "granting", "A never took the move in")
    _until(lambda: rivals.locks("b")["role"] == "forwarding", "B never heard of the move")
    assert rivals.locks("b") == {"role": "forwarding", "authority": a, "epoch": 2, "rivals": []}
    assert rivals.health("a")["status"] == rivals.health("b")["status"] == "ok"

    at_b = rivals.claim("holder", "b", "G-01")
    assert at_b.status_code == 201, at_b.text
    assert at_b.json()["token"] >> 32 == 2 and at_b.json()["token"] == rivals.last_token("a")
    at_a = rivals.claim("rival", "a", "G-02")
    assert at_a.status_code == 201, at_a.text
    assert rivals.query("b", "SELECT counter FROM lock_authority") == [(0,)]  # only A grants
    doctor = _cli("doctor", "--json", "--data-dir", str(rivals.b.data_dir))
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["locks"]["status"] == "ok" and a in checks["locks"]["detail"]
