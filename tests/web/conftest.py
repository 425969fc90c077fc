"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real box.

Playwright's own browser downloads are never used (the store's CI has no internet to fetch them and
does not need them): chromium comes from Debian (``apt-get install chromium``, listed in ``.ci/run``).
Without it a developer's run skips these tests with the reason; under ``CI=true`` it fails instead, so a
missing browser can never pass for a green dashboard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import DEMO_PASSWORDS, ServerProcess, launch_chromium
from tests.web.scenario import LONG_LEASES, CountScenario, build, password

TABLET = {"width": 1280, "height": 800}  # a 10" tablet held landscape


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium per test module. Not per session: Playwright's sync API runs one at a time in a
    process, and the handheld page's tests start their own (a persistent profile trusting the store CA)."""
    with launch_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def count(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountScenario]:
    """A demo box with a count in progress (see ``scenario.py``), one per test module."""
    server = ServerProcess(tmp_path_factory.mktemp("dashboard") / "box", "--demo", env=LONG_LEASES)
    try:
        server.wait_ready()
        yield build(server)
    finally:
        server.stop()


class Tab:
    """One person's browser tab on the dashboard, recording every request it makes and every answer."""

    def __init__(self, browser: Any, server: ServerProcess, *, own_policy: bool = False) -> None:
        self.server = server
        # bypass_csp: the page's own policy would block (and so hide) a request to another host; the
        # tests must see every request the code makes. One test keeps the policy, to show the pages
        # work under it.
        self.context = browser.new_context(viewport=TABLET, bypass_csp=not own_policy)
        self.page = self.context.new_page()
        self.requests: list[Any] = []
        self.responses: list[Any] = []
        self.errors: list[str] = []
        self.navigations = 0
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("response", lambda response: self.responses.append(response))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("framenavigated", self._navigated)
        # Every live message the page receives, for checks on what the stream carried.
        self.page.add_init_script(
            """
            window.__streamed = [];
            window.__violations = [];
            document.addEventListener("securitypolicyviolation", (event) => {
              window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
            });
            const Original = window.EventSource;
            window.EventSource = class extends Original {
              constructor(...args) {
                super(...args);
                for (const kind of ["rack", "scan", "session", "run", "conflict", "device", "presence", "box"]) {
                  super.addEventListener(kind, (event) => window.__streamed.push(event.data));
                }
              }
            };
            """
        )

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def login(self, who: str) -> Tab:
        self.page.goto(self.server.url + "/")
        self.page.fill("#login-user", who)
        self.page.fill("#login-pass", DEMO_PASSWORDS.get(who) or password(who))
        self.page.click("form.login button[type=submit]")
        self.page.wait_for_selector("#topbar:not([hidden])")
        self.wait_ready()
        return self

    def visit(self, route: str) -> str:
        """Open ``#/route`` as a person would follow a link; returns the view the page drew."""
        self.page.evaluate(
            """route => {
                document.getElementById('main').dataset.ready = '0';
                if (location.hash === route) window.dispatchEvent(new HashChangeEvent('hashchange'));
                else location.hash = route;
            }""",
            f"#/{route}",
        )
        self.wait_ready()
        view: str = self.page.get_attribute("main", "data-view") or ""
        return view

    def wait_ready(self) -> None:
        self.page.wait_for_selector("main[data-ready='1']", timeout=15000)

    def wait_live(self) -> None:
        self.page.wait_for_selector("#live[data-state='live']", timeout=15000)

    def actions(self) -> int:
        count: int = self.page.locator("[data-action]").count()
        return count

    def foreign_requests(self) -> list[str]:
        box = urlsplit(self.server.url)
        foreign = []
        for request in self.requests:
            url = request.url
            if url.startswith(("data:", "about:")):
                continue
            if url.startswith("blob:"):
                url = url[len("blob:") :]
            parts = urlsplit(url)
            if (parts.scheme, parts.hostname, parts.port) != (box.scheme, box.hostname, box.port):
                foreign.append(request.url)
        return foreign

    def bodies(self) -> list[tuple[str, str]]:
        """(url, text) of every finished answer; the live stream never finishes and is read apart."""
        out = []
        for response in self.responses:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                continue
            try:
                out.append((response.url, response.body().decode("utf-8", "replace")))
            except Exception as exc:  # a body the browser already dropped cannot be checked
                out.append((response.url, f"<unreadable: {exc}>"))
        return out

    def streamed(self) -> list[str]:
        data: list[str] = self.page.evaluate("window.__streamed")
        return data

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Any, count: CountScenario) -> Iterator[Any]:
    """Opens tabs as people (``tabs("supervisor")``) and closes them after the test."""
    opened: list[Tab] = []

    def open_as(who: str, *, own_policy: bool = False) -> Tab:
        tab = Tab(browser, count.server, own_policy=own_policy)
        opened.append(tab)
        return tab.login(who)

    yield open_as
    for tab in opened:
        assert not tab.errors, tab.errors
        tab.close()


EXPECTED = re.compile(r"\bexpected", re.IGNORECASE)
