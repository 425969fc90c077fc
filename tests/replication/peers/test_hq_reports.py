"""HQ's reports of a store equal the store's own, with real processes: a demo store counting (the
dashboard's scenario) pushes to HQ; HQ's query, snapshot list, snapshot rows, comparison and audit of
that store answer what the store answers, and the query across stores carries it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_PASSWORD_ENV, ServerProcess
from tests.web.scenario import LONG_LEASES, CountScenario, build

MAIN = Path(__file__).resolve().parents[3]
HQ_SECRET = "hq-secret-for-the-reports-001"
HQ_ENV = {"STOCKVERIFY_ROLE": "hq", "STOCKVERIFY_STORE_ID": "hq", "STOCKVERIFY_HQ_SECRET": HQ_SECRET}
STORE = "demo-store"
ARRIVAL_S = 60.0

pytestmark = pytest.mark.timeout(300)


class Chain:
    def __init__(self, root: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "appliance", "user", "add", "--data-dir", str(root / "hq"), "analyst",
             "--role", "auditor", "--password", "analyst-pass-1"],
            capture_output=True, text=True, cwd=MAIN, env={**os.environ, **FAST_PASSWORD_ENV, **HQ_ENV}, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.hq = ServerProcess(root / "hq", "--role", "hq", env=HQ_ENV)
        self.hq.wait_ready()
        store_env = {
            **LONG_LEASES,
            "STOCKVERIFY_HQ_SECRET": HQ_SECRET,
            "STOCKVERIFY_HQ_URL": self.hq.url,
            "STOCKVERIFY_REPLICATE_EVERY_S": "0.2",
        }
        self.store = ServerProcess(root / "store", "--demo", env=store_env)
        self.store.wait_ready()
        self.count = build(self.store)
        self.analyst = self.hq.client(self.hq.login("analyst", "analyst-pass-1"))

    def at_hq(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.analyst.request(method, path, json=body)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def same(self, store_path: str, hq_path: str, body: Any = None, method: str = "POST") -> Any:
        """Wait until HQ answers what the store answers (HQ pulls a few times a second), and return it."""
        mine = self.count.ok("supervisor", method, store_path, body)
        deadline = time.monotonic() + ARRIVAL_S
        theirs = None
        while time.monotonic() < deadline:
            answer = self.analyst.request(method, hq_path, json=body)
            if answer.status_code == 200:
                theirs = answer.json()
                theirs.pop("store_id", None) if isinstance(theirs, dict) else None
                if theirs == mine:
                    return mine
            time.sleep(0.2)
        raise AssertionError(f"HQ's {hq_path} never matched the store's {store_path}:\n{theirs}\n!=\n{mine}")

    def close(self) -> None:
        self.store.stop()
        self.hq.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    made = Chain(tmp_path_factory.mktemp("hq-reports"))
    try:
        yield made
    finally:
        made.close()


def test_hq_answers_a_stores_reports_as_the_store_does(chain: Chain) -> None:
    count: CountScenario = chain.count
    hq_base = f"/api/hq/stores/{STORE}/reports"
    for spec in (
        {"run_id": count.run_id, "group_by": ["rack"]},
        {"run_id": count.run_id, "group_by": ["product"], "with_variance": True, "limit": 100000},
        {"run_id": count.run_id, "group_by": ["verifier", "category"]},
    ):
        answer = chain.same("/api/reports/query", f"{hq_base}/query", spec)
        assert answer["total"]["qty"] > 0

    snap = count.ok("supervisor", "POST", "/api/reports/snapshots", {"run_id": count.run_id, "name": "For HQ"})
    listed = chain.same(
        f"/api/reports/snapshots?run_id={count.run_id}", f"{hq_base}/snapshots?run_id={count.run_id}", method="GET"
    )
    assert [s["snapshot_id"] for s in listed] == [snap["snapshot_id"]] and listed[0]["complete"]
    by_rack = {"snapshot_id": snap["snapshot_id"], "group_by": ["floor", "rack"], "limit": 100000}
    chain.same("/api/reports/query", f"{hq_base}/query", by_rack)
    spec = {"a": {"snapshot_id": snap["snapshot_id"]}, "b": {"run_id": count.run_id}, "changes": ["same", "changed"]}
    chain.same("/api/reports/compare", f"{hq_base}/compare", spec)
    audit = chain.at_hq("GET", f"{hq_base}/audit?run_id={count.run_id}")
    assert audit["chains_ok"]
    mine = count.ok("auditor", "GET", f"/api/reports/audit?run_id={count.run_id}")
    assert audit["decisions"] == mine["decisions"]

    across = chain.at_hq(
        "POST",
        "/api/hq/reports/query",
        {"runs": [{"store_id": STORE, "run_id": count.run_id}], "spec": {"group_by": ["floor"]}},
    )
    store_total = count.ok("supervisor", "POST", "/api/reports/query", {"run_id": count.run_id})["total"]
    assert across["total"]["qty"] == store_total["qty"] and {g["store_id"] for g in across["groups"]} == {STORE}
    # A store box is not HQ: its HQ report routes say so.
    refused = count.client("supervisor").post(f"{hq_base}/query", json={"run_id": count.run_id})
    assert refused.status_code in (403, 404)
