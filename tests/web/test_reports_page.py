"""The Reports page in chromium, against a real box with the dashboard's count (``scenario.py``).

A supervisor walks each mode: a query grouped by category with a filter, whose totals are the box's; a
snapshot, a session approved, a second snapshot; the two compared, the added and changed rows and their
differences the box's, and the comparison exported as XLSX from the page and read back with openpyxl;
the audit showing who approved; an import with a mapping, its dry run's errors and its commit, and the
same file again changing nothing; the insights with the floor heatmap. Import and Insights are skipped
on a box that does not route them. An auditor sees every mode and can change nothing; a verifier has no
Reports at all. HQ's page reads a replicating store's reports equal to the store's own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest

from tests.conftest import FAST_PASSWORD_ENV, ServerProcess
from tests.web.conftest import Tab
from tests.web.scenario import LONG_LEASES, CountScenario, build

pytestmark = pytest.mark.timeout(300)
WAIT_MS = 30000


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _numbers(text: str) -> int:
    return int(text.replace(",", "").replace("+", "").strip() or 0)


def _offered(count: CountScenario, path: str) -> bool:
    """Whether this box serves a route at all (a route it lacks answers a bare 404 NOT_FOUND)."""
    with count.client("supervisor") as http:
        answer = http.get(path)
    return not (answer.status_code == 404 and answer.json().get("code") == "NOT_FOUND")


def test_a_supervisor_queries_snapshots_compares_exports_and_audits(count: CountScenario, tabs: Any) -> None:
    expect = _expect()
    tab = tabs("supervisor")
    page = tab.page
    assert "#/reports" in page.eval_on_selector_all("#nav a", "links => links.map(a => a.getAttribute('href'))")

    # -- Query: grouped by category, filtered to two categories; the totals row is the box's.
    assert tab.visit("reports/query") == "reports"
    assert page.locator(".tabs a").all_inner_texts() == [
        "Query",
        "Snapshot",
        "Compare",
        "Audit",
        "Insights",
        "Import",
        "Exports",
    ]
    assert page.input_value("#q-source") == f"run:{count.run_id}"
    page.click(".chips button[data-group='category']")
    expect(page.locator(".chips button[data-group='category']")).to_have_attribute("aria-pressed", "true")
    page.click("#q-run")
    expect(page.locator("#q-results tfoot tr.totals")).to_be_visible(timeout=WAIT_MS)
    everything = count.ok(
        "supervisor", "POST", "/api/reports/query", {"run_id": count.run_id, "group_by": ["category"]}
    )
    assert page.locator("#q-results tbody tr").count() == len(everything["groups"])
    categories = [o for o in page.eval_on_selector_all("#f-category option", "os => os.map(o => o.value)") if o]
    assert sorted(categories) == sorted(g["category"] for g in everything["groups"] if g["category"])
    # Filtered to all but one subcategory: the totals move, and are the box's.
    subcategories = [o for o in page.eval_on_selector_all("#f-subcategory option", "os => os.map(o => o.value)") if o]
    assert len(subcategories) >= 2, subcategories
    chosen = subcategories[:-1]
    page.select_option("#f-subcategory", chosen)
    page.click("#q-run")
    spec = {"run_id": count.run_id, "group_by": ["category"], "filters": {"subcategory": chosen}}
    answer = count.ok("supervisor", "POST", "/api/reports/query", spec)
    assert answer["total"]["qty"] != everything["total"]["qty"]
    expect(page.locator("#q-results tfoot td[data-measure='qty']")).to_have_text(
        f"{answer['total']['qty']:,}", timeout=WAIT_MS
    )
    footer = page.locator("#q-results tfoot tr.totals")
    for measure in ("qty", "damage", "expected", "variance"):
        shown = footer.locator(f"td[data-measure='{measure}']").inner_text()
        assert _numbers(shown) == answer["total"][measure], (measure, shown, answer["total"])
    shown_groups = {
        row.get_attribute("data-group"): _numbers(row.locator("td[data-measure='qty']").inner_text())
        for row in page.locator("#q-results tbody tr").all()
    }
    assert shown_groups == {g["category"]: g["qty"] for g in answer["groups"]}
    # Saved by name, and loaded again in a fresh page: the same query, the same totals.
    page.click("#q-save")
    page.fill("dialog[open] input[name='name']", "Apparel without one subcategory")
    page.click("dialog[open] button[type='submit']")
    expect(page.locator("dialog[open]")).to_have_count(0)
    saved = count.ok("supervisor", "GET", "/api/reports/queries")
    assert [q["spec"]["filters"] for q in saved if q["name"] == "Apparel without one subcategory"] == [
        {"subcategory": chosen}
    ]
    assert tab.visit("reports/query") == "reports"
    page.select_option("#q-saved", label="Apparel without one subcategory")
    expect(page.locator("#q-results tfoot td[data-measure='qty']")).to_have_text(
        f"{answer['total']['qty']:,}", timeout=WAIT_MS
    )
    expect(page.locator(".chips button[data-group='category']")).to_have_attribute("aria-pressed", "true")
    assert sorted(page.eval_on_selector_all("#f-subcategory option:checked", "os => os.map(o => o.value)")) == sorted(
        chosen
    )
    # A header sorts: counted, most first.
    page.click("#q-results th button[data-sort='qty']")
    expect(page.locator("#q-results th[aria-sort='descending'] button[data-sort='qty']")).to_be_visible()
    first = _numbers(page.locator("#q-results tbody tr").first.locator("td[data-measure='qty']").inner_text())
    assert first == max(g["qty"] for g in answer["groups"])

    # -- Snapshot, an approval, a second snapshot.
    assert tab.visit("reports/snapshot") == "reports"
    for name in ("Before the approval", "After the approval"):
        if name.startswith("After"):
            count.ok("supervisor", "POST", f"/api/sessions/{count.submitted}/approve")
        made = page.locator("tr[data-snapshot]").count()
        page.fill("#s-name", name)
        page.fill("#s-note", "taken from the dashboard")
        page.click("#s-take")
        expect(page.locator("tr[data-snapshot]")).to_have_count(made + 1, timeout=WAIT_MS)
        expect(page.locator(".snapshot-detail h2")).to_have_text(f'Snapshot "{name}"', timeout=WAIT_MS)
        expect(page.locator(".snapshot-detail #q-results tbody tr").first).to_be_visible(timeout=WAIT_MS)
    snapshots = count.ok("supervisor", "GET", "/api/reports/snapshots")
    before = next(s for s in snapshots if s["name"] == "Before the approval")
    after = next(s for s in snapshots if s["name"] == "After the approval")
    assert after["by_name"] and after["by_name"] in page.inner_text(f"tr[data-snapshot='{after['snapshot_id']}']")
    assert before["complete"] and after["complete"]

    # -- Compare the two: what the page lists is what the box compares.
    assert tab.visit("reports/compare") == "reports"
    assert page.input_value("#c-a") == f"snap:{before['snapshot_id']}"
    assert page.input_value("#c-b") == f"snap:{after['snapshot_id']}"
    page.click("#c-run")
    expect(page.locator("#c-results")).to_be_visible(timeout=WAIT_MS)
    diff = count.ok(
        "supervisor",
        "POST",
        "/api/reports/compare",
        {"a": {"snapshot_id": before["snapshot_id"]}, "b": {"snapshot_id": after["snapshot_id"]}},
    )
    assert diff["counts"]["added"] + diff["counts"]["changed"] > 0, diff["counts"]
    for change in ("added", "removed", "changed", "same"):
        assert _numbers(page.inner_text(f"[data-count='{change}']")) == diff["counts"][change]
    rows = page.locator("#c-results tbody tr[data-change]")
    expect(rows).to_have_count(len(diff["rows"]))
    shown = sorted(
        (
            r.get_attribute("data-change"),
            r.get_attribute("data-sku"),
            r.get_attribute("data-rack"),
            _numbers(r.locator("td[data-col='diff']").inner_text()),
        )
        for r in rows.all()
    )
    assert shown == sorted((r["change"], r["sku"] or r["code"], r["rack"] or "", r["diff"]) for r in diff["rows"])
    # Only what was added: a toggle asks the box again.
    page.uncheck("#c-show-changed")
    page.uncheck("#c-show-removed")
    expect(page.locator("#c-results tbody tr[data-change]")).to_have_count(diff["counts"]["added"], timeout=WAIT_MS)
    page.check("#c-show-changed")
    page.check("#c-show-removed")
    expect(rows).to_have_count(len(diff["rows"]), timeout=WAIT_MS)
    # One rack: the list offers the racks compared, and choosing one asks the box for that rack alone.
    rack = diff["rows"][0]["rack"]
    page.click(".compare details.filter-box summary")
    page.select_option("#c-rack", rack)
    in_rack = [r for r in diff["rows"] if r["rack"] == rack]
    expect(rows).to_have_count(len(in_rack), timeout=WAIT_MS)
    assert {r.get_attribute("data-rack") for r in rows.all()} == {rack}
    page.select_option("#c-rack", [])
    expect(rows).to_have_count(len(diff["rows"]), timeout=WAIT_MS)

    # The comparison as XLSX, made by a job the page follows to its download link.
    page.click(".export-bar button[data-export='xlsx']")
    link = page.locator(".export-bar li[data-format='xlsx'][data-status='done'] a[data-download]")
    expect(link).to_be_visible(timeout=WAIT_MS)
    with page.expect_download(timeout=WAIT_MS) as downloading:
        link.click()
    path = downloading.value.path()
    assert downloading.value.suggested_filename.endswith(".xlsx")
    book = openpyxl.load_workbook(io.BytesIO(Path(path).read_bytes()), read_only=True)
    sheet = book.worksheets[0]
    cells = list(sheet.iter_rows(values_only=True))
    header = list(cells[0])
    found = [dict(zip(header, row, strict=False)) for row in cells[1:] if any(v is not None for v in row)]
    assert sorted((r["SKU"] or r["Unmatched code"], r["Change"], r["Difference"]) for r in found) == sorted(
        (r["sku"] or r["code"], r["change"], r["diff"]) for r in diff["rows"]
    )

    # -- Audit: the chains, and the approvals with who made them.
    assert tab.visit("reports/audit") == "reports"
    expect(page.locator("[data-chains]")).to_be_visible(timeout=WAIT_MS)
    page.select_option("#a-scope", count.run_id)
    audit = count.ok("supervisor", "GET", f"/api/reports/audit?run_id={count.run_id}")
    approvals = [e for e in audit["decisions"] if "APPROVED" in e["detail"]]
    assert len(approvals) >= 2, audit["decisions"]
    decided = page.locator("#audit-decisions tbody tr[data-type='session.status_changed']")
    expect(decided).to_have_count(
        sum(1 for e in audit["decisions"] if e["type"] == "session.status_changed"), timeout=WAIT_MS
    )
    approved_rows = [r for r in decided.all() if "APPROVED" in r.inner_text()]
    assert len(approved_rows) == len(approvals)
    for row, entry in zip(approved_rows, approvals, strict=True):
        assert entry["by_name"] and entry["by_name"] in row.inner_text()
    chains_ok = page.get_attribute("[data-chains]", "data-chains")
    assert chains_ok == ("ok" if audit["chains_ok"] else "problems")
    assert page.locator("tr[data-chain]").count() == len(audit["chains"])

    # -- The box's export jobs, from the page.
    assert tab.visit("reports/exports") == "reports"
    expect(page.locator("#exports-list tr[data-status='done'] a[data-download]").first).to_be_visible()


def test_a_supervisor_imports_with_a_mapping(count: CountScenario, tabs: Any, tmp_path: Any) -> None:
    if not _offered(count, "/api/imports/mappings"):
        pytest.skip("this box does not serve imports yet (/api/imports is not routed)")
    expect = _expect()
    tab = tabs("supervisor")
    page = tab.page
    products = count.ok("supervisor", "GET", "/api/products?limit=3")["items"]
    sheet = tmp_path / "erp.csv"
    lines = ["Item Code,Description,Qty on hand"]
    lines += [f"{p['sku']},{p['name']},{int(p['expected_qty']) + 7}" for p in products[:2]]
    lines += ["NO-SUCH-SKU-1,,abc"]
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert tab.visit("reports/import") == "reports"
    page.fill("#m-source", "ERP weekly")
    page.set_input_files("#m-file", str(sheet))
    page.click("#m-preview")
    expect(page.locator(".import-preview")).to_be_visible(timeout=WAIT_MS)
    page.select_option("#map-sku", "Item Code")
    expect(page.locator(".import-preview[data-mapping-from='given']")).to_be_visible(timeout=WAIT_MS)
    page.select_option("#map-name", "Description")
    page.select_option("#map-expected_qty", "Qty on hand")
    expect(page.locator("tr[data-header='Qty on hand'] td").nth(2)).to_have_text("expected_qty", timeout=WAIT_MS)
    expect(page.locator("#import-errors tbody tr.out").first).to_be_visible()
    assert page.locator("#m-commit").is_disabled()
    # The dry run's errors on the page are the box's: row, column, value and reason.
    mapping = {"Item Code": "sku", "Description": "name", "Qty on hand": "expected_qty"}
    with count.client("supervisor") as http:
        dry = http.post(
            "/api/imports/preview",
            params={
                "target": "products",
                "source": "ERP weekly",
                "filename": "erp.csv",
                "mapping": json.dumps(mapping),
            },
            content=sheet.read_bytes(),
        ).json()
    assert dry["errors"]
    shown_errors = sorted(
        tuple(cell.strip() for cell in row.locator("td").all_inner_texts()[:5])
        for row in page.locator("#import-errors tbody tr.out").all()
    )
    assert shown_errors == sorted(
        (
            str(e["row"] if e["row"] is not None else ""),
            e["column"] or "",
            e.get("file_column") or "",
            e["value"] or "",
            e["reason"],
        )
        for e in dry["errors"]
    )

    good = tmp_path / "erp-good.csv"
    good.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    page.set_input_files("#m-file", str(good))
    page.click("#m-preview")
    expect(page.locator(".import-preview[data-valid='1']")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#m-commit")).to_be_enabled()
    page.click("#m-commit")
    expect(page.locator(".import-result")).to_be_visible(timeout=WAIT_MS)
    assert _numbers(page.inner_text(".import-result [data-count='changed'] .value")) == 2
    # The same file again: the mapping is remembered for the source, and nothing changes.
    page.click("#m-preview")
    expect(page.locator(".import-preview[data-valid='1']")).to_be_visible(timeout=WAIT_MS)
    page.click("#m-commit")
    expect(page.locator(".import-result[data-result='nothing']")).to_be_visible(timeout=WAIT_MS)
    assert _numbers(page.inner_text(".import-result [data-count='changed'] .value")) == 0
    with count.client("supervisor") as http:
        remembered = http.get("/api/imports/mappings", params={"target": "products"}).json()
    assert any(m["source"] == "ERP weekly" and m["mapping"].get("Item Code") == "sku" for m in remembered), remembered


def test_a_supervisor_reads_insights(count: CountScenario, tabs: Any) -> None:
    if not _offered(count, f"/api/reports/insights/kpis?run_id={count.run_id}"):
        pytest.skip("this box does not serve insights yet (/api/reports/insights is not routed)")
    expect = _expect()
    tab = tabs("supervisor")
    page = tab.page
    assert tab.visit("reports/insights") == "reports"
    out = page.locator(".insights [aria-live]")
    for kind in ("trends", "kpis", "productivity", "damage", "serials", "quality", "heatmap"):
        page.select_option("#i-kind", kind)
        expect(out).to_have_attribute("data-loading", "0", timeout=WAIT_MS)
        assert out.locator(".error-text").count() == 0, (kind, out.inner_text())
    # The heatmap: a tile per rack of the run, coloured by its variance rate (or by its time).
    heat = count.ok("supervisor", "GET", f"/api/reports/insights/heatmap?run_id={count.run_id}")
    expect(page.locator(".heatmap .heat")).to_have_count(len(heat["racks"]), timeout=WAIT_MS)
    rack = next(r for r in heat["racks"] if r["variance_rate"] is not None)
    tile = page.locator(f".heatmap .heat[data-rack='{rack['rack']}']")
    assert tile.get_attribute("data-level") == str(min(5, int(rack["variance_rate"] * 5.999)))
    page.check("#heat-time")
    expect(page.locator(".heatmap .heat[data-level='none']").first).to_be_visible()
    # Productivity: a line per verifier with their scans.
    productivity = count.ok("supervisor", "GET", f"/api/reports/insights/productivity?run_id={count.run_id}")
    page.select_option("#i-kind", "productivity")
    expect(out).to_have_attribute("data-loading", "0", timeout=WAIT_MS)
    expect(out.locator("tr[data-insight='productivity']")).to_have_count(len(productivity["verifiers"]))


def test_an_auditor_reads_every_mode_and_changes_nothing(count: CountScenario, tabs: Any) -> None:
    expect = _expect()
    tab = tabs("auditor")
    page = tab.page
    assert tab.visit("reports") == "reports"
    assert page.locator(".tabs a").all_inner_texts() == ["Query", "Snapshot", "Compare", "Audit", "Insights", "Exports"]
    for mode in ("query", "snapshot", "compare", "audit", "exports"):
        assert tab.visit(f"reports/{mode}") == "reports", mode
        assert tab.actions() == 0, mode
    assert tab.visit("reports/snapshot") == "reports"
    assert page.locator("#s-take").count() == 0
    assert tab.visit("reports/query") == "reports"
    assert page.locator("#q-save").count() == 0
    page.click("#q-run")
    expect(page.locator("#q-results")).to_be_visible(timeout=WAIT_MS)
    assert tab.visit("reports/import") == "reports"
    assert page.locator("[data-denied='import']").count() == 1
    changing = [
        r.url
        for r in tab.requests
        if r.method != "GET" and not r.url.endswith(("/api/auth/login", "/api/events/ticket", "/api/reports/query"))
    ]
    assert changing == []


def test_a_verifier_has_no_reports(count: CountScenario, tabs: Any) -> None:
    tab = tabs("verifier")
    links = tab.page.eval_on_selector_all("#nav a", "links => links.map(a => a.getAttribute('href'))")
    assert "#/reports" not in links and "#/hq-reports" not in links
    assert tab.visit("reports") == "denied"
    assert "Not for your role" in tab.page.inner_text("main")
    assert not [r.url for r in tab.requests if "/api/reports" in r.url]


HQ_SECRET = "hq-secret-for-the-report-pages-01"
HQ_ENV = {"STOCKVERIFY_ROLE": "hq", "STOCKVERIFY_STORE_ID": "hq", "STOCKVERIFY_HQ_SECRET": HQ_SECRET}
PLANNER = ("--role", "admin", "--password", "planner-pass-1")  # an HQ admin


def test_hq_reads_a_stores_reports_equal_to_the_stores_own(browser: Any, tmp_path: Path) -> None:
    """HQ's page over a store that replicates to it: the store's query as the store answers it, and the
    same run across stores. A store box has no HQ page in its navigation."""
    expect = _expect()
    added = subprocess.run(
        [sys.executable, "-m", "appliance", "user", "add", "--data-dir", str(tmp_path / "hq"), "planner", *PLANNER],
        env={**os.environ, **FAST_PASSWORD_ENV, **HQ_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    hq = ServerProcess(tmp_path / "hq", "--role", "hq", env=HQ_ENV)
    store: ServerProcess | None = None
    try:
        hq.wait_ready()
        env = {**LONG_LEASES, "STOCKVERIFY_HQ_SECRET": HQ_SECRET, "STOCKVERIFY_HQ_URL": hq.url}
        store = ServerProcess(tmp_path / "store", "--demo", env={**env, "STOCKVERIFY_REPLICATE_EVERY_S": "0.2"})
        store.wait_ready()
        count = build(store)
        store_id = httpx.get(store.url + "/api/health").json()["store_id"]
        own = count.ok("supervisor", "POST", "/api/reports/query", {"run_id": count.run_id})
        token = hq.login("planner", "planner-pass-1")
        deadline = time.monotonic() + 60
        with hq.client(token) as http:
            while True:
                answer = http.post(f"/api/hq/stores/{store_id}/reports/query", json={"run_id": count.run_id})
                if answer.status_code == 200 and answer.json()["total"] == own["total"]:
                    break
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.2)

        tab = Tab(browser, hq)
        try:
            tab.page.add_init_script(f"sessionStorage.setItem('stockverify.token', {token!r})")
            tab.page.goto(hq.url + "/")
            tab.wait_ready()
            page = tab.page
            assert "#/hq-reports" in page.eval_on_selector_all("#nav a", "ls => ls.map(a => a.getAttribute('href'))")
            assert tab.visit("hq-reports") == "hq-reports"
            expect(page.locator(f"tr[data-store='{store_id}']").first).to_be_visible()
            page.click("#x-run")
            row = page.locator(f"#x-stores tr[data-store='{store_id}']")
            expect(row).to_be_visible(timeout=WAIT_MS)
            assert _numbers(row.locator("td").nth(1).inner_text()) == own["total"]["qty"]

            assert tab.visit(f"hq-reports/{store_id}/query") == "hq-reports"
            page.click("#q-run")
            footer = page.locator("#q-results tfoot tr.totals")
            expect(footer).to_be_visible(timeout=WAIT_MS)
            for measure in ("qty", "damage", "expected", "variance"):
                assert _numbers(footer.locator(f"td[data-measure='{measure}']").inner_text()) == own["total"][measure]
            assert tab.visit(f"hq-reports/{store_id}/audit") == "hq-reports"
            expect(page.locator("#audit-decisions tbody tr[data-type]").first).to_be_visible(timeout=WAIT_MS)
            assert not tab.errors, tab.errors
        finally:
            tab.close()

        at_store = Tab(browser, store)
        try:
            at_store.login("supervisor")
            links = at_store.page.eval_on_selector_all("#nav a", "ls => ls.map(a => a.getAttribute('href'))")
            assert "#/reports" in links and "#/hq-reports" not in links
            assert not [r.url for r in at_store.responses if r.status >= 400]
        finally:
            at_store.close()
    finally:
        if store is not None:
            store.stop()
        hq.stop()
