"""Regenerate the dashboard's screenshots in ``docs/screenshots/`` from a demo box with a count in progress.

    .venv/bin/python -m web.screenshots [--out docs/screenshots]

A developer's tool (it needs the test extras and Debian's chromium): it starts a demo box on a loopback
port, makes the count of ``tests/web/scenario.py`` through the API, and photographs each main view the
way a store manager sees it on a 10" tablet (1280x800), plus the floor map held upright (800x1280).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.conftest import DEMO_PASSWORDS, ServerProcess
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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
