"""Regenerate the dashboard's screenshots in ``docs/screenshots/`` from a demo box with a count in progress,
or, with ``--handheld``, the verifier's scanning page's.

    .venv/bin/python -m web.screenshots [--out docs/screenshots]
    .venv/bin/python -m web.screenshots --handheld [--out docs/screenshots]
    .venv/bin/python -m web.screenshots --scanners [--out docs/screenshots]
    .venv/bin/python -m web.screenshots --reports [--out docs/screenshots]

A developer's tool (it needs the test extras and Debian's chromium): it starts a demo box on a loopback
port, makes the count of ``tests/web/scenario.py`` through the API, and photographs each main view the
way a store manager sees it on a 10" tablet (1280x800), plus the floor map held upright (800x1280).

``--handheld`` starts a provisioned demo box over HTTPS instead (the page needs a secure context, and
chromium trusts the store CA as a handheld does: ``tests/web/handheld.py``) and photographs the page on
a phone held upright (393x851, device scale 2) as a verifier goes: pairing (``handheld-pair``), their
sessions (``handheld-sessions``), a rack after 20 scans with a known item last (``handheld-count``), that
item's details (``handheld-item``) and the Wi-Fi gone with scans waiting (``handheld-offline``).

``--scanners`` starts a demo box under umockdev (``tests/hardware/scanner_box.py``) with a Zebra and a
Datalogic scanner plugged in, the Zebra a station of a verifier's session with a few codes read, the
Datalogic unassigned with a code kept, and photographs the Scanners page (``scanners``) and the Zebra's
station screen (``station``) on the 10" tablet.

``--reports`` starts a demo box with the same count, takes a snapshot, approves the session waiting for
it, takes a second, and photographs the Reports page's modes on the 10" tablet as a supervisor: a query
grouped by category (``reports-query``), the two snapshots compared (``reports-compare``) and the run's
audit (``reports-audit``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.conftest import DEMO_PASSWORDS, ServerProcess
from tests.web.handheld import Phone, Store, provisioned_server, trusting_browser, trusting_home
from tests.web.scenario import LONG_LEASES, CountScenario, build

CHROMIUM = "/usr/bin/chromium"
LANDSCAPE = {"width": 1280, "height": 800}
PORTRAIT = {"width": 800, "height": 1280}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _page(browser: Any, server: ServerProcess, who: str | None, viewport: dict[str, int]) -> Any:
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = context.new_page()
    if who is not None:
        token = server.login(who, DEMO_PASSWORDS[who])
        page.add_init_script(f"sessionStorage.setItem('stockverify.token', {token!r})")
    return page


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("main[data-ready='1']", timeout=30000)
    page.wait_for_timeout(400)  # the live dot turns green, dialogs settle


def shoot(count: CountScenario, out: Path, browser: Any) -> list[Path]:
    url = count.server.url
    made: list[Path] = []

    def save(page: Any, name: str) -> None:
        path = out / f"{name}.png"
        page.screenshot(path=str(path))
        made.append(path)

    page = _page(browser, count.server, None, LANDSCAPE)
    _open(page, url + "/")
    page.fill("#login-user", "supervisor")
    save(page, "login")
    page.context.close()

    page = _page(browser, count.server, "supervisor", LANDSCAPE)
    _open(page, f"{url}/#/floor/{count.run_id}")
    page.wait_for_selector("#live[data-state='live']")
    save(page, "floor-map")
    page.click("button.tile[data-rack='G-09']")
    page.wait_for_timeout(200)
    save(page, "rack-details")
    page.keyboard.press("Escape")

    _open(page, f"{url}/#/runs/{count.run_id}")
    save(page, "run")
    page.evaluate("document.getElementById('sessions').scrollIntoView()")
    save(page, "run-sessions-variance")
    page.locator(f"tr[data-sku='{count.out_of_tolerance[0]}']").get_by_role("button", name="Decide").click()
    page.wait_for_timeout(200)
    save(page, "decision")
    page.keyboard.press("Escape")

    _open(page, f"{url}/#/conflicts")
    save(page, "conflicts")
    _open(page, f"{url}/#/devices")
    page.get_by_role("button", name="Pair a handheld").click()
    page.wait_for_selector("dialog[open] img")
    page.wait_for_timeout(300)
    save(page, "devices-pairing")
    page.context.close()

    page = _page(browser, count.server, "admin", LANDSCAPE)
    _open(page, f"{url}/#/people")
    save(page, "people")
    page.context.close()

    page = _page(browser, count.server, "verifier", LANDSCAPE)
    _open(page, f"{url}/#/sessions/{count.sessions['verifier']}")
    save(page, "verifier-session")
    page.context.close()

    page = _page(browser, count.server, "supervisor", PORTRAIT)
    _open(page, f"{url}/#/floor/{count.run_id}")
    save(page, "floor-map-portrait")
    page.context.close()
    return made


def shoot_handheld(out: Path, tmp: Path) -> list[Path]:
    """The handheld page on a phone, against a provisioned box of its own (started and stopped here)."""
    made: list[Path] = []
    server = provisioned_server(tmp / "handheld-box", env={**LONG_LEASES, "STOCKVERIFY_LOG_LEVEL": "warning"})
    try:
        server.wait_ready()
        store = Store(server)
        home = trusting_home(tmp / "handheld-home", server.data_dir / "tls" / "ca.pem")
        with trusting_browser(home, tmp / "handheld-profile") as context:
            phone = Phone(context, server)
            page = phone.page

            def save(name: str, settle_ms: int = 900) -> None:
                page.wait_for_timeout(settle_ms)  # the scan's flash fades, the banner's clock ticks
                path = out / f"{name}.png"
                page.screenshot(path=str(path))
                made.append(path)

            store.verifier("maya")
            session = store.session("maya", ["G-01", "G-02", "G-03"], start=True)
            page.fill("#pair-code", store.pairing_code())
            page.fill("#pair-name", "Maya's handheld")
            save("handheld-pair", 300)
            page.click("#pair-form button[type=submit]")
            page.wait_for_selector("body[data-view='login']", timeout=15000)
            phone.login("maya", "maya-pass")
            phone.until("document.getElementById('link').dataset.state === 'online'")
            save("handheld-sessions", 300)

            phone.open_session(session["session_id"])
            phone.claim("G-01")
            codes = [p["codes"][0]["code"].lstrip("0").rjust(13, "0") for p in store.products(20) if p["codes"]][:7]
            for n in range(19):
                phone.scan(codes[n % 7] if n != 9 else "2000000000015")  # one code the store does not know
            phone.scan(codes[0])  # a known item last: the third of it
            phone.until("document.body.dataset.scans === '20'")
            phone.wait_drained(30)
            save("handheld-count")

            page.click("#last-details")
            page.wait_for_selector("#item-dialog[open]")
            page.fill("#item-damage", "1")
            page.fill("#item-mfg", "2026-03-01")
            page.select_option("#item-condition", "good")
            page.fill("#item-serial", "SN-0001")
            page.press("#item-serial", "Enter")
            phone.until("document.getElementById('item-serial-count').textContent === '1'")
            save("handheld-item", 300)
            page.keyboard.press("Escape")
            phone.until("!document.getElementById('item-dialog').open")

            context.set_offline(True)
            try:
                for n in range(12):
                    phone.scan(codes[(n * 3) % 7])
                phone.until("document.body.dataset.pending === '12'")
                phone.until("document.getElementById('link').dataset.state === 'offline'", 30)
                save("handheld-offline", 2200)
            finally:
                context.set_offline(False)
    finally:
        server.stop()
    return made


def shoot_scanners(out: Path, tmp: Path) -> list[Path]:
    from tests.hardware.scanner_box import ScannerBox, station_session

    box = ScannerBox(tmp / "box", "--demo", env={"STOCKVERIFY_LOG_LEVEL": "warning"})
    made: list[Path] = []
    try:
        station = station_session(box.server)
        client = station["supervisor"]
        box.plug("zebra_ds2208_hid")
        box.plug("datalogic_gryphon_hid")
        rows = {}
        for _ in range(100):
            rows = {r["live"]["devnode"]: r for r in client.get("/api/scanners").json()["scanners"] if r["live"]}
            if len(rows) == 2 and all(r["live"]["state"] == "reading" for r in rows.values()):
                break
            time.sleep(0.1)
        zebra = rows[box.devnodes["zebra_ds2208_hid"]]["writer_id"]
        client.patch(f"/api/scanners/{zebra}", json={"name": "Back room table"})
        client.put(
            f"/api/scanners/{zebra}/station",
            json={"session_id": station["session_id"], "rack_id": station["racks"]["G-01"]},
        )
        products = client.get("/api/products", params={"limit": 4}).json()["items"]
        for product in products[:3]:
            box.type("zebra_ds2208_hid", product["sku"] + "\r")
        box.type("zebra_ds2208_hid", "]d20104006381333931" + "10LOT7\x1d17271231\r")
        box.type("datalogic_gryphon_hid", products[3]["sku"] + "\r")
        time.sleep(1.0)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = _page(browser, box.server, "supervisor", LANDSCAPE)
                _open(page, box.server.url + "/#scanners")
                page.wait_for_timeout(800)
                page.screenshot(path=str(out / "scanners.png"), full_page=True)
                made.append(out / "scanners.png")
                _open(page, box.server.url + f"/#station/{zebra}")
                page.wait_for_timeout(500)
                box.type("zebra_ds2208_hid", products[0]["sku"] + "\r")
                page.wait_for_timeout(1200)
                page.screenshot(path=str(out / "station.png"))
                made.append(out / "station.png")
            finally:
                browser.close()
    finally:
        box.close()
    return made


def shoot_reports(out: Path, tmp: Path) -> list[Path]:
    """The Reports page's Query, Compare and Audit modes, against a demo box of its own."""
    made: list[Path] = []
    server = ServerProcess(tmp / "reports-box", "--demo", env={**LONG_LEASES, "STOCKVERIFY_LOG_LEVEL": "warning"})
    try:
        server.wait_ready()
        count = build(server)
        count.ok("supervisor", "POST", "/api/reports/snapshots", {"run_id": count.run_id, "name": "Before approval"})
        count.ok("supervisor", "POST", f"/api/sessions/{count.submitted}/approve")
        count.ok(
            "supervisor",
            "POST",
            "/api/reports/snapshots",
            {"run_id": count.run_id, "name": "After approval", "note": "Ground floor approved"},
        )
        url = server.url
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = _page(browser, server, "supervisor", LANDSCAPE)

                def save(name: str, full_page: bool = True) -> None:
                    page.evaluate("window.scrollTo(0, 0)")
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(out / f"{name}.png"), full_page=full_page)
                    made.append(out / f"{name}.png")

                _open(page, f"{url}/#/reports/query")
                page.click(".chips button[data-group='subcategory']")
                page.click("#q-run")
                page.wait_for_selector("#q-results tfoot tr.totals")
                page.click("#q-results th button[data-sort='variance']")
                page.wait_for_selector("#q-results th[aria-sort] button[data-sort='variance']")
                save("reports-query")

                _open(page, f"{url}/#/reports/compare")
                page.click("#c-run")
                page.wait_for_selector("#c-results")
                page.click(".export-bar button[data-export='xlsx']")
                page.wait_for_selector(".export-bar li[data-status='done'] a[data-download]", timeout=30000)
                save("reports-compare")

                _open(page, f"{url}/#/reports/audit")
                page.select_option("#a-scope", count.run_id)
                page.wait_for_selector("#audit-decisions tr[data-type='session.status_changed']")
                save("reports-audit", full_page=False)
            finally:
                browser.close()
    finally:
        server.stop()
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--handheld", action="store_true", help="the handheld page's screenshots instead")
    parser.add_argument("--scanners", action="store_true", help="the Scanners page and a station's screen instead")
    parser.add_argument("--reports", action="store_true", help="the Reports page's Query, Compare and Audit instead")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reports:
        with tempfile.TemporaryDirectory() as tmp:
            made = shoot_reports(args.out, Path(tmp))
        for path in made:
            print(path)
        return
    if args.scanners:
        with tempfile.TemporaryDirectory() as tmp:
            made = shoot_scanners(args.out, Path(tmp))
        for path in made:
            print(path)
        return
    if args.handheld:
        with tempfile.TemporaryDirectory() as tmp:
            made = shoot_handheld(args.out, Path(tmp))
        for path in made:
            print(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "box", "--demo", env={**LONG_LEASES, "STOCKVERIFY_LOG_LEVEL": "warning"})
        try:
            server.wait_ready()
            count = build(server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                try:
                    made = shoot(count, args.out, browser)
                finally:
                    browser.close()
        finally:
            server.stop()
    for path in made:
        print(path)


if __name__ == "__main__":
    main()
