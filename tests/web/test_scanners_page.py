"""The Scanners page and a station's screen in chromium, against a real box whose scanner is umockdev's.

A supervisor watches a scanner arrive when it is plugged in, makes it a station of a verifier's session
from the page, and sees each code it reads arrive with what became of it; the station's screen shows a
further scan large, with its totals; a code read while the scanner counts for no station is kept, and
counted into the session from the page. The box's own answers say what was counted, and where.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.hardware.scanner_box import ScannerBox, station_session
from tests.web.conftest import Tab

MODEL = "zebra_ds2208_hid"
UNKNOWN = "SV-NO-SUCH-0001"  # no product of the demo catalogue has it: counted as an unmatched code
WAIT_MS = 15000


@pytest.fixture(scope="module")
def scanner_box(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScannerBox]:
    """A demo box under umockdev (``browser`` first: without chromium nothing here runs)."""
    box = ScannerBox(tmp_path_factory.mktemp("scanners") / "box", "--demo")
    try:
        yield box
    finally:
        box.close()


def demo_products(client: Any, wanted: int = 2) -> list[dict[str, Any]]:
    """Products of the demo catalogue with a barcode a scanner prints as digits, and that barcode."""
    found = []
    for item in client.get("/api/products", params={"limit": 5}).json()["items"]:
        product = client.get(f"/api/products/{item['sku']}").json()
        raw = next((c["raw"] for c in product["codes"] if c["kind"] in ("ean13", "ean8") and c["raw"].isdigit()), None)
        if raw is not None:
            found.append(
                {"sku": product["sku"], "name": product["name"], "product_id": product["product_id"], "raw": raw}
            )
    assert len(found) >= wanted, found
    return found[:wanted]


def counted(client: Any, session_id: str) -> dict[str, int]:
    """What the box counted in the session: units by SKU, and unknown codes by code."""
    session = client.get(f"/api/sessions/{session_id}").json()
    totals = {item["sku"]: int(item["qty"]) for item in session["items"] if item["qty"]}
    totals.update({code["code"]: int(code["qty"]) for code in session["unmatched"] if code["qty"]})
    return totals


def test_a_supervisor_makes_a_scanner_a_station_and_follows_its_scans(browser: Any, scanner_box: ScannerBox) -> None:
    from playwright.sync_api import expect

    server = scanner_box.server
    station = station_session(server)
    boss = station["supervisor"]
    session_id, g01 = station["session_id"], station["racks"]["G-01"]
    first, second = demo_products(boss)

    tab = Tab(browser, server)
    try:
        page = tab.login("supervisor").page
        assert "#/scanners" in page.eval_on_selector_all("#nav a", "links => links.map(a => a.getAttribute('href'))")
        assert tab.visit("scanners") == "scanners"
        tab.wait_live()
        assert page.locator("tr[data-scanner]").count() == 0
        page.evaluate("window.__sameDocument = true")

        # Plugged in: the page hears it, no reload.
        scanner_box.plug(MODEL)
        row = page.locator("tr[data-scanner][data-plugged='1'][data-state='reading']")
        expect(row).to_have_count(1, timeout=WAIT_MS)
        writer_id = row.get_attribute("data-scanner")
        assert writer_id
        row = page.locator(f"tr[data-scanner='{writer_id}']")
        expect(row).to_contain_text("plugged in")
        expect(row).to_contain_text("not assigned")

        # Made a station of the verifier's session, rack G-01, from the page's own controls.
        row.get_by_role("button", name="Assign…").click()
        dialog = page.locator("dialog[open]")
        dialog.get_by_label("Session").select_option(session_id)
        dialog.get_by_label("Rack").select_option(label="G-01")
        dialog.get_by_role("button", name="Assign").click()
        expect(dialog).to_have_count(0)
        expect(page.locator(f"tr[data-scanner='{writer_id}'][data-assigned='{session_id}']")).to_have_count(
            1, timeout=WAIT_MS
        )
        expect(row).to_contain_text("rack G-01")
        expect(row).to_contain_text("Vani")
        assert boss.get(f"/api/scanners/{writer_id}/station").json()["station"]["rack_id"] == g01

        # Three codes: each arrives on the page with what became of it, raw and as counted.
        cell = page.locator(f"td[data-last-code='{writer_id}']")
        for code, product in ((first["raw"], first), (second["raw"], second), (UNKNOWN, None)):
            scanner_box.type(MODEL, code + "\r", layout="us")
            expect(cell.locator("code[data-raw]")).to_have_text(code, timeout=WAIT_MS)
            expect(cell).to_have_attribute("data-outcome", "counted")
            expect(cell.locator("[data-product]")).to_contain_text(
                f"{product['name']} ({product['sku']})" if product else "unknown code"
            )
        assert counted(boss, session_id) == {first["sku"]: 1, second["sku"]: 1, UNKNOWN: 1}
        assert page.evaluate("window.__sameDocument") is True  # all of it live, never reloaded

        # The station's screen: a further scan arrives large, with the totals updated.
        page.locator(f"tr[data-scanner='{writer_id}'] a[data-station-link]").click()
        tab.wait_ready()
        assert page.get_attribute("main", "data-view") == "station"
        screen = page.locator(f"section.station[data-station='{writer_id}'][data-assigned='1']")
        expect(screen).to_have_count(1)
        expect(screen.locator(".station-rack")).to_have_text("Rack G-01")
        expect(screen.locator(".station-who")).to_contain_text("Vani")
        expect(screen.locator("[data-total='session_units'] .value")).to_have_text("3")
        expect(screen.locator("[data-total='rack_units'] .value")).to_have_text("3")
        expect(screen.locator(".station-latest")).to_have_attribute("data-code", UNKNOWN)
        scanner_box.type(MODEL, first["raw"] + "\r", layout="us")
        latest = screen.locator(f".station-latest[data-code='{first['raw']}'][data-outcome='counted']")
        expect(latest).to_have_count(1, timeout=WAIT_MS)
        expect(latest.locator(".station-product")).to_have_text(first["name"])
        expect(screen.locator("[data-total='session_units'] .value")).to_have_text("4", timeout=WAIT_MS)
        expect(screen.locator("[data-total='scanner_units'] .value")).to_have_text("4")
        expect(screen).to_have_attribute("data-heard", "counted")
        size = float(latest.locator(".station-product").evaluate("el => parseFloat(getComputedStyle(el).fontSize)"))
        assert size >= 40, size  # read from across a table
        earlier = screen.locator(".station-recent li")
        expect(earlier).to_have_count(3)
        assert earlier.first.get_attribute("data-code") == UNKNOWN  # newest first, under the latest
        assert counted(boss, session_id) == {first["sku"]: 2, second["sku"]: 1, UNKNOWN: 1}

        # Unassigned, the scanner's code is kept; counted from the page into the session, it counts there.
        assert tab.visit("scanners") == "scanners"
        row = page.locator(f"tr[data-scanner='{writer_id}']")
        row.get_by_role("button", name="Unassign").click()
        expect(page.locator(f"tr[data-scanner='{writer_id}'][data-assigned='']")).to_have_count(1, timeout=WAIT_MS)
        before = counted(boss, session_id)
        scanner_box.type(MODEL, second["raw"] + "\r", layout="us")
        kept = page.locator(f"tr[data-kept][data-code='{second['raw']}']")
        expect(kept).to_have_count(1, timeout=WAIT_MS)
        expect(kept).to_contain_text("UNASSIGNED")
        expect(cell).to_have_attribute("data-outcome", "kept")
        assert counted(boss, session_id) == before
        kept_id = kept.get_attribute("data-kept")
        kept.get_by_role("checkbox").check()
        page.get_by_role("button", name=re.compile(r"^Count into session")).click()
        dialog = page.locator("dialog[open]")
        dialog.get_by_label("Session").select_option(session_id)
        dialog.get_by_label("Rack").select_option(label="G-02")
        dialog.get_by_role("button", name="Count", exact=True).click()
        expect(dialog).to_have_count(0)
        expect(page.locator(f"tr[data-kept='{kept_id}']")).to_have_count(0, timeout=WAIT_MS)
        after = counted(boss, session_id)
        assert after == {**before, second["sku"]: before[second["sku"]] + 1}
        assert sum(after.values()) == sum(before.values()) + 1
        assert boss.get("/api/scanners/kept").json() == []
        assert not tab.errors, tab.errors
    finally:
        tab.close()

    # An auditor reads the page and can change nothing from it.
    auditor = Tab(browser, server)
    try:
        auditor.login("auditor")
        assert auditor.visit("scanners") == "scanners"
        assert auditor.page.locator(f"tr[data-scanner='{writer_id}']").count() == 1
        assert auditor.actions() == 0
        assert auditor.page.locator("main input[type=checkbox]").count() == 0
        assert not auditor.errors, auditor.errors
    finally:
        auditor.close()

    # A verifier's navigation has no Scanners, and the page is not for them.
    vani = Tab(browser, server)
    try:
        vani.login("verifier")
        links = vani.page.eval_on_selector_all("#nav a", "links => links.map(a => a.getAttribute('href'))")
        assert links and "#/scanners" not in links
        assert vani.page.get_by_role("link", name="Scanners").count() == 0
        assert vani.visit("scanners") == "denied"
        assert not vani.errors, vani.errors
    finally:
        vani.close()
