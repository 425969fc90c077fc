"""Reports through the real server: snapshot → compare → export in every format, each file read back by
a real reader and its numbers equal to the API's; who may do what.

The demo store with the dashboard's count in progress (``tests/web/scenario.py``): one session approved,
one submitted, the rest counting. A second approval between two snapshots gives the comparison
something to find.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openpyxl
import pytest
from pypdf import PdfReader

from tests.conftest import ServerProcess
from tests.web.scenario import LONG_LEASES, CountScenario, build

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def count(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountScenario]:
    server = ServerProcess(tmp_path_factory.mktemp("reports") / "box", "--demo", env=LONG_LEASES)
    server.wait_ready()
    try:
        yield build(server)
    finally:
        server.stop()


def _call(count: CountScenario, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
    with count.client(who) as http:
        return http.request(method, path, json=body)


def _export(count: CountScenario, body: dict[str, Any], who: str = "supervisor") -> bytes:
    with count.client(who) as http:
        job = http.post("/api/reports/exports", json=body)
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = http.get(f"/api/exports/{job_id}").json()
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state["status"] == "done", state
        download = http.get(f"/api/exports/{job_id}/download")
        assert download.status_code == 200, download.text
        return download.content


def _rows_by_sku(rows: list[dict[str, Any]]) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for row in rows:
        key = row.get("sku") or row.get("code")
        out[key] = out.get(key, 0) + int(row["qty"])
    return out


def test_snapshot_compare_and_export_in_every_format_read_back_equal(count: CountScenario) -> None:
    run_id = count.run_id
    first = count.ok("supervisor", "POST", "/api/reports/snapshots", {"run_id": run_id, "name": "Before Deepa"})
    assert first["complete"] and first["summary"]["sessions"] == 1
    by_product = count.ok(
        "supervisor",
        "POST",
        "/api/reports/query",
        {"snapshot_id": first["snapshot_id"], "group_by": ["product"], "limit": 100000},
    )
    counted = {g["sku"] or g["code"]: g["qty"] for g in by_product["groups"] if g["qty"]}
    assert sum(counted.values()) == first["summary"]["qty"] > 0

    # CSV, streamed whole, and as a job: the csv module reads back the API's numbers.
    streamed = httpx.get(
        f"{count.server.url}/api/reports/snapshots/{first['snapshot_id']}/export.csv",
        headers={"Authorization": f"Bearer {count.tokens['auditor']}"},
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(streamed.content.decode("utf-8-sig"))))
    assert len(rows) == first["row_count"]
    assert {
        k: v
        for k, v in _rows_by_sku(
            [{"sku": r["SKU"], "code": r["Unmatched code"], "qty": r["Counted"]} for r in rows]
        ).items()
        if v
    } == counted
    job_csv = _export(count, {"format": "csv", "snapshot_id": first["snapshot_id"]})
    assert job_csv == streamed.content

    count.ok("supervisor", "POST", f"/api/sessions/{count.submitted}/approve")
    second = count.ok("supervisor", "POST", "/api/reports/snapshots", {"run_id": run_id, "name": "With Deepa"})
    assert second["summary"]["sessions"] == 2 and second["summary"]["qty"] > first["summary"]["qty"]
    spec = {"a": {"snapshot_id": first["snapshot_id"]}, "b": {"snapshot_id": second["snapshot_id"]}}
    diff = count.ok("supervisor", "POST", "/api/reports/compare", spec)
    assert diff["counts"]["added"] > 0 and diff["counts"]["removed"] == 0
    assert sum(r["diff"] for r in diff["rows"]) == second["summary"]["qty"] - first["summary"]["qty"]
    assert diff["b"]["qty"] - diff["a"]["qty"] == sum(r["diff"] for r in diff["rows"])

    # XLSX of the comparison, read by openpyxl: the same rows and differences.
    book = openpyxl.load_workbook(io.BytesIO(_export(count, {"format": "xlsx", "compare": spec})), read_only=True)
    sheet = next(
        ws for ws in book.worksheets if any(c.value == "Difference" for row in ws.iter_rows(max_row=30) for c in row)
    )
    cells = list(sheet.iter_rows(values_only=True))
    header_at = next(i for i, row in enumerate(cells) if "Difference" in row)
    header = list(cells[header_at])
    found = [dict(zip(header, row, strict=False)) for row in cells[header_at + 1 :] if any(v is not None for v in row)]
    assert sorted((r["SKU"] or r["Unmatched code"], r["Difference"]) for r in found) == sorted(
        (r["sku"] or r["code"], r["diff"]) for r in diff["rows"]
    )

    # The same comparison as CSV and as PDF: the csv module and a PDF text extractor read the same rows.
    as_csv = list(csv.DictReader(io.StringIO(_export(count, {"format": "csv", "compare": spec}).decode("utf-8-sig"))))
    assert sorted((r["SKU"] or r["Unmatched code"], int(r["Difference"])) for r in as_csv) == sorted(
        (r["sku"] or r["code"], r["diff"]) for r in diff["rows"]
    )
    pdf = "\n".join(
        p.extract_text() for p in PdfReader(io.BytesIO(_export(count, {"format": "pdf", "compare": spec}))).pages
    )
    for row in diff["rows"]:
        assert (row["sku"] or row["code"]) in pdf
    for change, number in diff["counts"].items():  # the summary page's counts, each beside its label
        assert re.search(rf"{change.capitalize()}\s*:?\s*{number}\b", pdf), (change, number)

    # PDF of a query grouped by category, read by a PDF text extractor: the summary and every group.
    query = {"run_id": run_id, "group_by": ["category"]}
    grouped = count.ok("supervisor", "POST", "/api/reports/query", query)
    text = "\n".join(
        page.extract_text() for page in PdfReader(io.BytesIO(_export(count, {"format": "pdf", "query": query}))).pages
    )
    for group in grouped["groups"]:
        assert f"{group['qty']}" in text and (group["category"] or "") in text
    assert str(grouped["total"]["qty"]) in text


def test_who_may_see_and_change_reports(count: CountScenario) -> None:
    run_id = count.run_id
    reads = [
        ("POST", "/api/reports/query", {"run_id": run_id}),
        ("GET", "/api/reports/snapshots", None),
        ("GET", "/api/reports/queries", None),
        ("GET", "/api/reports/audit", None),
        ("GET", "/api/exports", None),
    ]
    changes = [
        ("POST", "/api/reports/snapshots", {"run_id": run_id, "name": "x"}),
        ("POST", "/api/reports/queries", {"name": "x", "spec": {"run_id": run_id}}),
    ]
    for method, path, body in reads + changes:
        assert _call(count, "verifier", method, path, body).status_code == 403, path
    for method, path, body in reads:
        assert _call(count, "auditor", method, path, body).status_code == 200, path
    for method, path, body in changes:
        answer = _call(count, "auditor", method, path, body)
        assert answer.status_code == 403 and answer.json()["details"]["permission"] == "reports.write", path
    audit = count.ok("auditor", "GET", f"/api/reports/audit?run_id={run_id}")
    assert audit["chains_ok"] and any(d["type"] == "session.status_changed" for d in audit["decisions"])
