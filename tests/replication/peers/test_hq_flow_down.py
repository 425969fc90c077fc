"""What HQ sends down, with real processes: HQ staff import a product master and plan a run for a store
before any box of it has reached HQ; the store's box, started afterwards, shows both (written by HQ's
node, chain intact) within a bounded time, and later writes follow it down. HQ refuses what a person
may not do or did not mean, with the stable codes HQ staff and their scripts switch on."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_PASSWORD_ENV, ServerProcess

MAIN = Path(__file__).resolve().parents[3]
HQ_SECRET = "hq-secret-for-the-flow-down-01"
HQ_ENV = {"STOCKVERIFY_ROLE": "hq", "STOCKVERIFY_STORE_ID": "hq", "STOCKVERIFY_HQ_SECRET": HQ_SECRET}
PLANNER, PLANNER_PASSWORD = "planner", "planner-pass-1"  # an HQ admin
WATCHER, WATCHER_PASSWORD = "watcher", "watcher-pass-1"  # an HQ supervisor: may look, not write
STORE = "store-014"
ARRIVAL_S = 30.0

MASTER = b"""sku,barcodes,name,category,uom,mrp,expected_qty
HQ-1001,4006381333931,Basmati Rice 5kg,Grocery,EA,649.00,40
HQ-1002,5901234123457,Sunflower Oil 1L,Grocery,EA,189.50,120
HQ-1003,9780201379624,Notebook A5,Stationery,PK,45,300
"""
MASTER_UPDATE = b"""sku,barcodes,name,category,uom,mrp,expected_qty
HQ-1001,4006381333931,Basmati Rice 5kg (new pack),Grocery,EA,659.00,40
HQ-1002,5901234123457,Sunflower Oil 1L,Grocery,EA,189.50,120
HQ-1003,9780201379624,Notebook A5,Stationery,PK,45,300
HQ-1004,4012345678901,Ballpoint Pen Blue,Stationery,EA,10,500
"""


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``stockverify …`` in a process of its own, as HQ staff or a field tech run it."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=MAIN,
        env={**os.environ, **FAST_PASSWORD_ENV, "STOCKVERIFY_MDNS": "false", **(env or {})},
        check=False,
    )


def _add_user(data_dir: Path, env: dict[str, str], username: str, role: str, password: str) -> str:
    done = _run("user", "add", "--data-dir", str(data_dir), username, "--role", role, "--password", password, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]  # "added NAME (ROLE) as USER_ID"


class FlowDown:
    """HQ with two HQ accounts; the store's box starts only when a test asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.planner_id = _add_user(root / "hq", HQ_ENV, PLANNER, "admin", PLANNER_PASSWORD)
        _add_user(root / "hq", HQ_ENV, WATCHER, "supervisor", WATCHER_PASSWORD)
        self.hq = ServerProcess(root / "hq", "--role", "hq", env=HQ_ENV)
        self.store: ServerProcess | None = None

    def start_store(self) -> ServerProcess:
        if self.store is None:
            env = {"STOCKVERIFY_STORE_ID": STORE, "STOCKVERIFY_HQ_SECRET": HQ_SECRET}
            _add_user(self.root / "store", env, "manager", "admin", "manager-pass-1")
            env |= {"STOCKVERIFY_HQ_URL": self.hq.url, "STOCKVERIFY_REPLICATE_EVERY_S": "0.2"}
            self.store = ServerProcess(self.root / "store", env=env)
            self.store.wait_ready()
        return self.store

    def hq_client(self, username: str = PLANNER, password: str = PLANNER_PASSWORD) -> httpx.Client:
        return self.hq.client(self.hq.login(username, password))

    def cli(self, *args: str, password: str = PLANNER_PASSWORD) -> subprocess.CompletedProcess[str]:
        env = {"STOCKVERIFY_HQ_URL": self.hq.url, "STOCKVERIFY_HQ_USER": PLANNER, "STOCKVERIFY_HQ_PASSWORD": password}
        return _run("hq", *args, env=env)

    def replica(self, store_id: str) -> Path:
        return self.hq.data_dir / "stores" / store_id / "store.db"

    def close(self) -> None:
        for process in (self.store, self.hq):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowDown]:
    made = FlowDown(tmp_path_factory.mktemp("flow-down"))
    try:
        made.hq.wait_ready()
        yield made
    finally:
        made.close()


def _until(what: str, check: Callable[[], Any], timeout: float = ARRIVAL_S) -> tuple[Any, float]:
    """Poll until ``check`` answers something truthy; that answer and the seconds it took."""
    start = time.monotonic()
    while True:
        found = check()
        if found:
            return found, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def _refused(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


def test_a_store_receives_what_hq_planned_before_its_first_uplink(flow: FlowDown, tmp_path: Path) -> None:
    planner = flow.hq_client()
    hq_node = httpx.get(flow.hq.url + "/api/health").json()["node_id"]

    # A store no box of which has reached HQ is refused unless HQ staff ask for its replica.
    answer = planner.post(f"/api/hq/stores/{STORE}/products/import", content=MASTER, params={"filename": "m.csv"})
    _refused(answer, 404, "STORE_UNKNOWN")
    assert not flow.replica(STORE).exists()

    master = tmp_path / "master.csv"
    master.write_bytes(MASTER)
    done = flow.cli("products", "import", "--store", STORE, "--create-store", str(master))
    assert done.returncode == 0, done.stderr
    assert f"{STORE}: imported 3 products (3 new, 0 updated)" in done.stdout
    done = flow.cli(
        "runs", "plan", "--store", STORE, "--name", "Spring count", "--sku", "HQ-1001", "--sku", "HQ-1002", "--json"
    )
    assert done.returncode == 0, done.stderr
    planned = json.loads(done.stdout)
    run_id = planned["run_id"]
    assert (planned["status"], planned["kind"], planned["created_by"]) == ("PLANNED", "directed", flow.planner_id)
    listed = flow.cli("runs", "list", "--store", STORE)
    assert listed.returncode == 0 and run_id in listed.stdout and "PLANNED" in listed.stdout, listed.stderr

    # The store's box comes up afterwards and pulls both from HQ.
    started = time.monotonic()
    store = flow.start_store()
    manager = store.client(store.login("manager", "manager-pass-1"))
    product, _ = _until(
        "the product master at the store", lambda: (a := manager.get("/api/products/HQ-1001")).is_success and a.json()
    )
    run, _ = _until(
        "the planned run at the store", lambda: (a := manager.get(f"/api/runs/{run_id}")).is_success and a.json()
    )
    print(f"HQ's master and run were at the new box {time.monotonic() - started:.2f} s after it was started")
    assert product["name"] == "Basmati Rice 5kg" and product["mrp_minor"] == 64900 and product["expected_qty"] == 40
    assert [code["code"] for code in product["codes"]] == ["04006381333931"]
    assert manager.get("/api/products", params={"q": "HQ-"}).json()["total"] == 3
    assert (run["status"], run["kind"], run["name"]) == ("PLANNED", "directed", "Spring count")
    assert run["created_by"] == flow.planner_id
    assert run["buckets"]["uncounted"] == 2  # the directed list came with it

    # Written by HQ's node, and its chain verifies at the store back to HQ's key.
    events = manager.get(f"/api/writers/{hq_node}/events").json()
    types = [event["type"] for event in events]
    assert types[:1] == ["writer.enrolled"] and "products.imported" in types and "run.created" in types
    created = next(event for event in events if event["type"] == "run.created")
    assert created["payload"]["run_id"] == run_id and created["payload"]["by"] == flow.planner_id
    assert manager.get(f"/api/writers/{hq_node}/verify").json()["ok"] is True

    # Once the store is connected, what HQ writes follows it down at the next pull.
    answer = planner.post(
        f"/api/hq/stores/{STORE}/products/import", content=MASTER_UPDATE, params={"filename": "u.csv"}
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["created"], answer.json()["updated"]) == (1, 3)
    _until(
        "the updated master at the store",
        lambda: (
            manager.get("/api/products/HQ-1001").json()["name"] == "Basmati Rice 5kg (new pack)"
            and manager.get("/api/products/HQ-1004").is_success
        ),
    )

    # HQ's list of stores tells HQ staff the store got everything HQ wrote for it.
    watcher = flow.hq_client(WATCHER, WATCHER_PASSWORD)

    def delivered() -> dict[str, Any] | None:
        stores = {s["store_id"]: s for s in watcher.get("/api/hq/stores").json()["stores"]}
        figures = stores[STORE]
        return figures if figures["hq_events_delivered"] == figures["hq_events"] else None

    figures, _ = _until("HQ's figures showing the store caught up", delivered)
    assert figures["products"] == 4 and figures["runs"] == {"PLANNED": 1} and figures["boxes"] == 1
    assert figures["last_contact_at"] is not None
    shown = flow.cli("stores")
    assert shown.returncode == 0 and re.search(rf"^{STORE}\s+\d+\s+4\s+1\s+1\s", shown.stdout, re.M), shown.stdout

    # A store box is not HQ: it has no stores to write for, and says so with its own code.
    _refused(manager.get("/api/hq/stores"), 404, "NOT_HQ")
    _refused(manager.post(f"/api/hq/stores/{STORE}/runs", json={"name": "x"}), 404, "NOT_HQ")


def test_hq_refuses_what_a_person_may_not_do_or_did_not_mean(flow: FlowDown, tmp_path: Path) -> None:
    planner, watcher = flow.hq_client(), flow.hq_client(WATCHER, WATCHER_PASSWORD)
    assert planner.post("/api/hq/stores/store-031/runs", params={"create": "true"}, json={"name": "Audit"}).is_success

    # An HQ supervisor may look at the stores but not write into one.
    assert watcher.get("/api/hq/stores").status_code == 200
    _refused(watcher.post("/api/hq/stores/store-031/runs", json={"name": "x"}), 403, "FORBIDDEN")
    _refused(watcher.post("/api/hq/stores/store-031/products/import", content=MASTER), 403, "FORBIDDEN")

    # A store HQ does not hold, and names that are no store id (".." would be HQ's own database).
    _refused(planner.post("/api/hq/stores/store-404/runs", json={"name": "x"}), 404, "STORE_UNKNOWN")
    _refused(planner.post("/api/hq/stores/store-404/products/import", content=MASTER), 404, "STORE_UNKNOWN")
    _refused(planner.get("/api/hq/stores/store-404/runs"), 404, "STORE_UNKNOWN")
    assert not flow.replica("store-404").parent.exists()
    for bad in ("%2E%2E", "bad%20id", "x" * 65):
        answer = planner.post(f"/api/hq/stores/{bad}/runs", params={"create": "true"}, json={"name": "x"})
        _refused(answer, 400, "BAD_STORE_ID")
    with sqlite3.connect(f"file:{flow.hq.data_dir / 'store.db'}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)

    # A bad file gets the store import's own code and every problem, and nothing is written.
    no_name = b"sku,barcodes\nHQ-2001,4006381333931\n"
    body = _refused(planner.post("/api/hq/stores/store-031/products/import", content=no_name), 422, "IMPORT_INVALID")
    assert any("required column name is missing" in e["message"] for e in body["details"]["errors"]), body
    bad_digit = b"sku,barcodes,name\nHQ-2001,4006381333932,Tea\nHQ-2002,,\n"
    body = _refused(planner.post("/api/hq/stores/store-031/products/import", content=bad_digit), 422, "IMPORT_INVALID")
    assert [(e["line"], e["column"]) for e in body["details"]["errors"]] == [(2, "barcodes"), (3, "name")]
    _refused(planner.post("/api/hq/stores/store-031/products/import", content=b"\xff\xfe\x00"), 422, "IMPORT_INVALID")
    preview = planner.post(
        "/api/hq/stores/store-031/products/import", content=MASTER, params={"dry_run": "true", "filename": "m.csv"}
    )
    assert preview.status_code == 200 and preview.json()["valid"] and preview.json()["created"] == 3, preview.text
    stores = {s["store_id"]: s for s in planner.get("/api/hq/stores").json()["stores"]}
    assert stores["store-031"]["products"] == 0

    bad_file = tmp_path / "bad.csv"
    bad_file.write_bytes(bad_digit)
    done = flow.cli("products", "import", "--store", "store-031", str(bad_file))
    assert done.returncode == 1 and "IMPORT_INVALID" in done.stderr and "line 2, barcodes:" in done.stderr, done.stderr
    done = flow.cli("runs", "plan", "--store", "store-404", "--name", "x")
    assert done.returncode == 1 and "STORE_UNKNOWN" in done.stderr, done.stderr
    done = flow.cli("stores", password="not-the-password")
    assert done.returncode == 1 and "BAD_CREDENTIALS" in done.stderr, done.stderr

    # A run whose list names what the store does not have is refused whole: no run without its list.
    answer = planner.post("/api/hq/stores/store-031/runs", json={"name": "Tea", "skus": ["NOPE-1"], "racks": ["Z-99"]})
    body = _refused(answer, 422, "UNKNOWN_SCOPE")
    assert body["details"] == {"skus": ["NOPE-1"], "racks": ["Z-99"]}
    assert [run["name"] for run in planner.get("/api/hq/stores/store-031/runs").json()] == ["Audit"]
