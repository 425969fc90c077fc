"""A whole directed count over HTTP against the real server: plan, count, approve, recount, decide,
complete, close. Totals count approved sessions only; every refused transition answers its code."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DEMO_PASSWORDS, ServerProcess


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("directed") / "box", "--demo")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Person:
    """One person's client: every call returns (status, body) so refusals can be checked."""

    def __init__(self, server: ServerProcess, username: str, password: str) -> None:
        self.client = server.client(server.login(username, password))
        self.username = username

    def call(self, method: str, url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        answer = self.client.request(method, url, json=body, **kwargs)
        return answer.status_code, answer.json()

    def ok(self, method: str, url: str, body: Any = None, **kwargs: Any) -> Any:
        status, data = self.call(method, url, body, **kwargs)
        assert status in (200, 201), (method, url, status, data)
        return data

    def refused(self, method: str, url: str, body: Any = None, *, status: int, code: str) -> Any:
        got, data = self.call(method, url, body)
        assert (got, data["code"]) == (status, code), (method, url, got, data)
        return data


def _catalog(server: ServerProcess) -> list[dict[str, str]]:
    with (server.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_directed_count_end_to_end(store: ServerProcess) -> None:
    admin = Person(store, "admin", DEMO_PASSWORDS["admin"])
    boss = Person(store, "supervisor", DEMO_PASSWORDS["supervisor"])
    for name in ("vera", "victor", "vikram", "vani2"):
        admin.ok("POST", "/api/users", {"username": name, "role": "verifier", "password": f"{name}-pass"})
    v1, v2, v3, v4 = (Person(store, n, f"{n}-pass") for n in ("vera", "victor", "vikram", "vani2"))

    rows = [r for r in _catalog(store) if r["barcodes"]][:8]
    a, b, c, d, e, f, x, g = rows  # a-f directed; x undirected; g will receive an unmatched code
    expected = {r["sku"]: int(r["expected_qty"] or 0) for r in rows}
    info = {r["sku"]: boss.ok("GET", f"/api/products/{r['sku']}") for r in rows}

    # -- plan -------------------------------------------------------------------------------------
    run = boss.ok("POST", "/api/runs", {"name": "Ground floor directed", "kind": "directed"})
    run_id = run["run_id"]
    scope = "sku,rack\n" + "\n".join(f"{r['sku']},G-0{i + 1}" for i, r in enumerate([a, b, c, d, e, f][:3]))
    scope += "\n" + "\n".join(r["sku"] + "," for r in [d, e, f])
    imported = boss.ok("POST", f"/api/runs/{run_id}/scope/import", content=scope.encode())
    assert imported == {"products": 6, "racks": 3}
    boss.refused("POST", f"/api/runs/{run_id}/start", status=409, code="RUN_NEEDS_ASSIGNED_SESSION")

    s1 = boss.ok("POST", f"/api/runs/{run_id}/sessions", {"verifier": "vera", "racks": ["G-01"]})["session_id"]
    s2 = boss.ok("POST", f"/api/runs/{run_id}/sessions", {"verifier": "victor", "racks": ["G-02"]})["session_id"]
    s3 = boss.ok("POST", f"/api/runs/{run_id}/sessions", {"verifier": "vikram", "racks": ["G-03"]})["session_id"]
    boss.refused(
        "POST",
        f"/api/runs/{run_id}/sessions",
        {"verifier": "vera", "racks": ["G-04"]},
        status=409,
        code="VERIFIER_BUSY",
    )
    boss.refused("POST", f"/api/runs/{run_id}/close", status=409, code="RUN_INVALID_TRANSITION")
    v1.refused("POST", f"/api/sessions/{s1}/start", status=409, code="RUN_NOT_IN_PROGRESS")
    assert boss.ok("POST", f"/api/runs/{run_id}/start")["status"] == "IN_PROGRESS"
    boss.refused("POST", f"/api/runs/{run_id}/start", status=409, code="RUN_INVALID_TRANSITION")

    # -- count ------------------------------------------------------------------------------------
    for person, session in ((v1, s1), (v2, s2), (v3, s3)):
        assert person.ok("POST", f"/api/sessions/{session}/start")["status"] == "IN_PROGRESS"
    v1.refused("POST", f"/api/sessions/{s2}/scans", {"code": b["sku"]}, status=403, code="SESSION_NOT_YOURS")

    over = expected[a["sku"]] + 5  # beyond the tolerance set below
    barcode_a = a["barcodes"].split("|")[0]
    scan = v1.ok("POST", f"/api/sessions/{s1}/scans", {"code": barcode_a, "qty": over})
    assert scan["product_id"] == info[a["sku"]]["product_id"] and scan["item_qty"] == over
    v1.ok("POST", f"/api/sessions/{s1}/scans", {"code": b["sku"], "qty": max(expected[b["sku"]], 1)})
    v1.ok("POST", f"/api/sessions/{s1}/scans", {"code": x["sku"], "qty": 2})  # undirected
    wrong = v1.ok("POST", f"/api/sessions/{s1}/scans", {"code": b["sku"]})
    v1.ok("POST", f"/api/sessions/{s1}/scans/{wrong['event_id']}/undo")
    v1.refused("POST", f"/api/sessions/{s1}/scans/{wrong['event_id']}/undo", status=409, code="SCAN_ALREADY_UNDONE")
    unknown = v1.ok("POST", f"/api/sessions/{s1}/scans", {"code": "NOT-IN-MASTER-77", "qty": 3})
    assert unknown["product_id"] is None and unknown["matched_by"] == "unmatched"
    v1.refused("POST", f"/api/sessions/{s1}/scans", {"code": b["sku"], "qty": 0}, status=422, code="VALIDATION")

    mine = v1.ok("GET", f"/api/sessions/{s1}")
    assert mine["buckets"]["counted"] == 2 and mine["buckets"]["undirected"] == 1 and mine["buckets"]["unmatched"] == 1
    assert mine["buckets"]["uncounted"] == 4
    assert "expected" not in json.dumps(mine)  # blind: no expected quantity reaches a verifier
    v1.refused("GET", f"/api/runs/{run_id}/variance", status=403, code="FORBIDDEN")
    v1.refused("GET", f"/api/sessions/{s2}", status=403, code="SESSION_NOT_YOURS")

    v2.ok("POST", f"/api/sessions/{s2}/scans", {"code": c["sku"], "qty": max(expected[c["sku"]], 1)})
    v2.ok("PUT", f"/api/sessions/{s2}/items/{info[d['sku']]['product_id']}", {"qty": max(expected[d["sku"]], 1)})
    v3.ok("POST", f"/api/sessions/{s3}/scans", {"code": e["sku"], "qty": 4})

    live = boss.ok("GET", f"/api/runs/{run_id}/buckets")
    assert (live["counted"], live["undirected"], live["unmatched"]) == (5, 1, 1)

    # The unmatched code turns out to be product g: mapping it re-resolves the count already made.
    boss.ok("POST", "/api/codes/map", {"code": "NOT-IN-MASTER-77", "sku": g["sku"]})
    mapped = boss.ok("GET", f"/api/runs/{run_id}/buckets")
    assert (mapped["unmatched"], mapped["undirected"]) == (0, 2)

    # -- submit, void one, approve two --------------------------------------------------------------
    for person, session in ((v1, s1), (v2, s2), (v3, s3)):
        assert person.ok("POST", f"/api/sessions/{session}/submit")["status"] == "SUBMITTED"
    v1.refused("POST", f"/api/sessions/{s1}/approve", status=403, code="FORBIDDEN")
    boss.refused("POST", f"/api/sessions/{s3}/void", {"reason": " "}, status=422, code="REASON_REQUIRED")
    assert boss.ok("POST", f"/api/sessions/{s3}/void", {"reason": "counted the wrong rack"})["status"] == "VOID"
    assert boss.ok("POST", f"/api/sessions/{s1}/approve")["status"] == "APPROVED"
    assert boss.ok("POST", f"/api/sessions/{s2}/approve")["status"] == "APPROVED"
    boss.refused("POST", f"/api/sessions/{s1}/approve", status=409, code="SESSION_INVALID_TRANSITION")
    boss.refused(
        "POST", f"/api/sessions/{s3}/send-back", {"reason": "again"}, status=409, code="SESSION_INVALID_TRANSITION"
    )

    rollup = boss.ok("GET", f"/api/runs/{run_id}/rollup")
    first_total = over + max(expected[b["sku"]], 1) + 2 + 3 + max(expected[c["sku"]], 1) + max(expected[d["sku"]], 1)
    assert rollup["total_counted"] == first_total  # e's 4 units were in the voided session
    assert rollup["sessions_approved"] == 2 and rollup["skus_assigned"] == 6

    # -- variance, blind recount ---------------------------------------------------------------------
    boss.ok("PUT", "/api/tolerances", {"scope": "store", "units": 2, "pct_bp": 0})
    lines = {line["sku"]: line for line in boss.ok("GET", f"/api/runs/{run_id}/variance")}
    assert lines[a["sku"]]["variance"] == 5 and not lines[a["sku"]]["within_tolerance"]
    assert lines[b["sku"]]["within_tolerance"]
    boss.refused(
        "POST",
        f"/api/runs/{run_id}/recounts",
        {"skus": [a["sku"]], "verifier": "vera"},
        status=409,
        code="RECOUNT_SAME_VERIFIER",
    )
    boss.refused(
        "POST",
        f"/api/runs/{run_id}/recounts",
        {"skus": [b["sku"]], "verifier": "vani2"},
        status=409,
        code="WITHIN_TOLERANCE",
    )
    recount = boss.ok("POST", f"/api/runs/{run_id}/recounts", {"skus": [a["sku"]], "verifier": "vani2"})
    assert recount["kind"] == "recount" and recount["status"] == "ASSIGNED"

    blind = v4.ok("GET", f"/api/sessions/{recount['session_id']}")
    assert blind["items"] == [] and "expected" not in json.dumps(blind)  # neither S nor the first count
    boss.refused("POST", f"/api/runs/{run_id}/complete", status=409, code="RUN_HAS_OPEN_SESSIONS")
    v4.ok("POST", f"/api/sessions/{recount['session_id']}/start")
    v4.ok("POST", f"/api/sessions/{recount['session_id']}/scans", {"code": barcode_a, "qty": expected[a["sku"]]})
    v4.ok("POST", f"/api/sessions/{recount['session_id']}/submit")
    boss.ok("POST", f"/api/sessions/{recount['session_id']}/approve")
    lines = {line["sku"]: line for line in boss.ok("GET", f"/api/runs/{run_id}/variance")}
    assert lines[a["sku"]]["counted"] == expected[a["sku"]] and lines[a["sku"]]["within_tolerance"]

    # -- decisions, complete, close --------------------------------------------------------------------
    gate = boss.refused("POST", f"/api/runs/{run_id}/complete", status=409, code="RUN_HAS_UNCOUNTED_SKUS")
    assert sorted(gate["details"]["skus"]) == sorted([e["sku"], f["sku"]])
    boss.refused(
        "POST",
        f"/api/runs/{run_id}/decisions",
        {"sku": e["sku"], "decision": "zeroed", "reason_code": "?"},
        status=422,
        code="VALIDATION",
    )
    boss.ok(
        "POST", f"/api/runs/{run_id}/decisions", {"sku": e["sku"], "decision": "zeroed", "reason_code": "NOT_FOUND"}
    )
    boss.ok(
        "POST",
        f"/api/runs/{run_id}/decisions",
        {"sku": f["sku"], "decision": "skipped", "reason_code": "DATA_ERROR", "note": "listed twice in the master"},
    )
    boss.ok(
        "POST",
        f"/api/runs/{run_id}/decisions",
        {"sku": a["sku"], "decision": "applied", "reason_code": "COUNT_CONFIRMED"},
    )
    assert boss.ok("POST", f"/api/runs/{run_id}/complete")["status"] == "COMPLETED"
    boss.refused("POST", f"/api/runs/{run_id}/sessions", {"racks": ["G-05"]}, status=409, code="RUN_NOT_OPEN")
    assert boss.ok("POST", f"/api/runs/{run_id}/close")["status"] == "CLOSED"
    boss.refused("POST", f"/api/runs/{run_id}/cancel", {"reason": "late"}, status=409, code="RUN_INVALID_TRANSITION")

    final = boss.ok("GET", f"/api/runs/{run_id}/rollup")
    assert final["total_counted"] == first_total - over + expected[a["sku"]]  # the recount replaced a's count
    assert final["sessions_approved"] == 3
    decided = {line["sku"]: line["decision"] for line in boss.ok("GET", f"/api/runs/{run_id}/variance")}
    assert decided[f["sku"]]["reason_code"] == "DATA_ERROR" and decided[f["sku"]]["by_user"]

    # The auditor reads all of it and can change none of it.
    auditor = Person(store, "auditor", DEMO_PASSWORDS["auditor"])
    assert auditor.ok("GET", f"/api/runs/{run_id}")["status"] == "CLOSED"
    auditor.refused("POST", "/api/runs", {"name": "x"}, status=403, code="FORBIDDEN")
    with httpx.Client(base_url=store.url) as anonymous:
        assert anonymous.get(f"/api/runs/{run_id}").status_code == 401
