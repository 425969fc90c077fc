"""The dashboard as people use it, in headless chromium against a real box with a count in progress."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from appliance.counting.variance import REASON_CODES
from appliance.store.identity import public_bytes
from replication.device.transport import batch_body
from replication.wire.codec import ZERO_HASH, Event
from replication.wire.hlc import HybridClock
from tests.web.conftest import EXPECTED, Tab
from tests.web.scenario import SPARE_VERIFIERS, CountScenario

# Every page each role can reach from the navigation, plus the pages reached from within them.
NAV = {
    "supervisor": ["floor", "runs", "conflicts", "devices", "scanners", "reports"],
    "admin": ["floor", "runs", "conflicts", "devices", "scanners", "reports", "people"],
    "auditor": ["floor", "runs", "conflicts", "devices", "scanners", "reports", "people"],
    "verifier": ["floor", "sessions"],
}


def view_of(route: str) -> str:
    """The view a route draws: a run's or a session's own page, else the page the route names."""
    name, _, rest = route.partition("/")
    return {"runs": "run", "sessions": "session"}.get(name, name) if rest else name


def tile_colour(tab: Tab, rack: str) -> str:
    colour: str = tab.page.eval_on_selector(
        f"button.tile[data-rack='{rack}']", "el => getComputedStyle(el).backgroundColor"
    )
    return colour


def test_navigation_follows_the_role(count: CountScenario, tabs: Any) -> None:
    for who, pages in NAV.items():
        tab = tabs(who)
        links = tab.page.eval_on_selector_all("#nav a", "links => links.map(a => a.getAttribute('href'))")
        assert links == [f"#/{name}" for name in pages], who


def test_a_claim_through_the_api_recolours_its_tile_without_a_reload(count: CountScenario, tabs: Any) -> None:
    tab = tabs("supervisor")
    assert tab.visit("floor") == "floor"
    tab.wait_live()
    rack = "DMG-07"
    tile = f"button.tile[data-rack='{rack}']"
    assert tab.page.get_attribute(tile, "data-state") == "available"
    before = tile_colour(tab, rack)
    tab.page.evaluate("window.__sameDocument = true")
    navigations = tab.navigations
    held = int(tab.page.inner_text("[data-stat='held'] .value"))

    device = count.devices["Zebra TC21 #1"]["writer_id"]
    with count.client("verifier") as vani:
        answer = vani.post(
            f"/api/runs/{count.run_id}/racks/{rack}/claim",
            json={"session_id": count.sessions["verifier"], "device_id": device},
        )
    assert answer.status_code == 201, answer.text

    tab.page.wait_for_selector(f"{tile}[data-state='claimed']", timeout=5000)
    after = tile_colour(tab, rack)
    assert after != before, (before, after)
    # (text_content: a floor below the fold is not rendered until scrolled to, so it has no inner text)
    assert "Vani" in (tab.page.text_content(tile) or "")
    assert "claimed, held by Vani" in (tab.page.get_attribute(tile, "aria-label") or "")
    assert tab.page.evaluate("window.__sameDocument") is True  # the same page, never reloaded
    assert tab.navigations == navigations
    assert int(tab.page.inner_text("[data-stat='held'] .value")) == held + 1


def test_the_floor_map_works_from_the_keyboard(count: CountScenario, tabs: Any) -> None:
    tab = tabs("supervisor")
    tab.visit(f"floor/{count.run_id}")
    page = tab.page
    page.focus("#floor-show")
    page.keyboard.press("Tab")  # from the last filter to the first rack
    assert page.evaluate("document.activeElement.dataset.rack") == "G-01"
    page.keyboard.press("Enter")
    dialog = page.locator("dialog[open]")
    assert dialog.get_by_role("heading").inner_text() == "Rack G-01"
    assert page.evaluate("document.activeElement.textContent") == "Close"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # the focus ring a keyboard user follows
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog[open]", state="detached")
    assert page.evaluate("document.activeElement.dataset.rack") == "G-01"  # focus came back


def test_a_supervisor_resolves_a_conflict(count: CountScenario, tabs: Any) -> None:
    tab = tabs("supervisor")
    tab.visit("conflicts")
    card = tab.page.locator("li[data-kind='damage_exceeds']")
    assert card.count() == 1
    conflict_id = card.get_attribute("data-conflict")
    assert "recorded" in card.inner_text() and "damaged" in card.inner_text()
    card.get_by_role("button", name="Reject").click()
    dialog = tab.page.locator("dialog[open]")
    dialog.get_by_label("Reason (kept in the log)").fill("damage was entered on the wrong item")
    dialog.get_by_role("button", name="Reject").click()
    tab.page.wait_for_selector("dialog[open]", state="detached")
    tab.page.wait_for_selector(f"li[data-conflict='{conflict_id}']", state="detached")

    # Rejecting took the damage back, so the condition (and with it the conflict) is gone ...
    with count.client("supervisor") as boss:
        queue = boss.get("/api/conflicts", params={"status": "all"}).json()
        session = boss.get(f"/api/sessions/{count.sessions['verifier']}").json()
    assert conflict_id not in [c["conflict_id"] for c in queue]
    product_id = conflict_id.split(":")[-1]
    assert [i["damage_qty"] for i in session["items"] if i["product_id"] == product_id] == [0]
    # ... and the decision, with its reason, is in the box's log.
    box = httpx.get(count.server.url + "/api/health").json()["node_id"]
    with count.client("admin") as admin:
        events = admin.get(f"/api/writers/{box}/events", params={"limit": 1000}).json()
    decided = [e["payload"] for e in events if e["type"] == "conflict.resolved"]
    assert [(p["conflict_id"], p["action"], p["reason"]) for p in decided] == [
        (conflict_id, "reject", "damage was entered on the wrong item")
    ]


def test_a_supervisor_approves_a_submitted_session(count: CountScenario, tabs: Any) -> None:
    tab = tabs("supervisor")
    tab.visit(f"runs/{count.run_id}")
    row = f"tr[data-session='{count.submitted}']"
    assert tab.page.get_attribute(row, "data-status") == "SUBMITTED"
    tab.page.locator(row).get_by_role("button", name=re.compile("^Approve")).click()
    tab.page.wait_for_selector(f"{row}[data-status='APPROVED']", timeout=10000)
    with count.client("supervisor") as boss:
        assert boss.get(f"/api/sessions/{count.submitted}").json()["status"] == "APPROVED"


def test_a_supervisor_orders_a_blind_recount(count: CountScenario, tabs: Any) -> None:
    sku = count.out_of_tolerance[0]
    recounter = SPARE_VERIFIERS[0]
    tab = tabs("supervisor")
    tab.visit(f"runs/{count.run_id}")
    line = tab.page.locator(f"tr[data-sku='{sku}']")
    assert "out" in line.inner_text()
    line.get_by_role("button", name=f"Order a blind recount of {sku}").click()
    dialog = tab.page.locator("dialog[open]")
    dialog.get_by_label("Verifier").select_option(recounter)
    dialog.get_by_role("button", name="Order recount").click()
    tab.page.wait_for_selector("dialog[open]", state="detached")
    tab.page.wait_for_function(
        "sku => document.querySelector(`tr[data-sku='${sku}'] .recount`)?.textContent === 'assigned'", arg=sku
    )

    with count.client("supervisor") as boss:
        recounts = [
            s for s in boss.get("/api/sessions", params={"run_id": count.run_id}).json() if s["kind"] == "recount"
        ]
    assert len(recounts) == 1 and recounts[0]["status"] == "ASSIGNED"
    with count.client(recounter) as tara:
        blind = tara.get(f"/api/sessions/{recounts[0]['session_id']}")
    assert blind.status_code == 200 and blind.json()["items"] == []
    assert not EXPECTED.search(blind.text)


def _expected_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value if "expected" in k.lower()] + [k for v in value.values() for k in _expected_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _expected_keys(v)]
    return []


def test_a_verifier_sees_no_expected_quantity_in_the_page_or_on_the_wire(count: CountScenario, tabs: Any) -> None:
    # The check itself finds what it looks for: a supervisor's variance answer carries expected quantities.
    with count.client("supervisor") as boss:
        variance = boss.get(f"/api/runs/{count.run_id}/variance")
    assert EXPECTED.search(variance.text) and _expected_keys(variance.json())

    tab = tabs("verifier")
    tab.wait_live()
    for route in ("sessions", f"sessions/{count.sessions['verifier']}", "floor", f"floor/{count.run_id}"):
        tab.visit(route)
        assert not EXPECTED.search(tab.page.text_content("body") or ""), route
    tab.page.locator("button.tile[data-rack='G-09']").click()  # a rack's details
    assert not EXPECTED.search(tab.page.inner_text("dialog[open]"))
    tab.page.keyboard.press("Escape")
    assert tab.visit(f"runs/{count.run_id}") == "denied"  # the run view is not for a verifier

    # Live news while the verifier watches: a scan and a rack move of their own.
    with count.client("verifier") as vani:
        scan = {"code": count.skus[5]["sku"], "qty": 2, "rack": "G-09"}
        assert vani.post(f"/api/sessions/{count.sessions['verifier']}/scans", json=scan).status_code == 201
        assert vani.post(f"/api/runs/{count.run_id}/racks/G-09/pause").status_code == 200
    tab.page.wait_for_function("window.__streamed.some(d => d.includes('rack.paused'))")

    bodies = tab.bodies()
    api = [(url, text) for url, text in bodies if "/api/" in url]
    assert any("/api/sessions/" in url for url, _ in api) and any("/racks" in url for url, _ in api)
    for url, text in bodies:
        assert not EXPECTED.search(text), url
    for url, text in api:
        assert not _expected_keys(json.loads(text)), url
    streamed = tab.streamed()
    assert streamed
    for data in streamed:
        assert not EXPECTED.search(data), data
    assert not any("/variance" in r.url or re.search(r"/api/runs(/[^/]+)?$", r.url.split("?")[0]) for r in tab.requests)


def test_an_auditor_can_take_no_action(count: CountScenario, tabs: Any) -> None:
    pages = [
        *NAV["auditor"],
        f"runs/{count.run_id}",
        f"floor/{count.run_id}",
        f"sessions/{count.submitted}",
    ]
    # The same pages offer a supervisor actions, so finding none for the auditor means something.
    supervisor = tabs("supervisor")
    offered = {route: (supervisor.visit(route), supervisor.actions())[1] for route in pages if route != "people"}
    assert offered[f"runs/{count.run_id}"] > 0 and offered["conflicts"] > 0 and offered["devices"] > 0

    verbs = ("approve", "void", "reject", "accept", "recount", "decide", "revoke", "pair", "add", "complete", "close")
    tab = tabs("auditor")
    for route in pages:
        assert tab.visit(route) not in ("denied", "missing"), route
        assert tab.actions() == 0, (route, tab.page.inner_html("main")[:2000])
        labels = tab.page.eval_on_selector_all("main button", "buttons => buttons.map(b => b.textContent.trim())")
        verbs = (
            "approve",
            "void",
            "reject",
            "accept",
            "recount",
            "decide",
            "revoke",
            "pair",
            "add",
            "complete",
            "close",
        )
        assert not [label for label in labels if label.lower().startswith(verbs)], (route, labels)
    tab.visit(f"floor/{count.run_id}")
    tab.page.locator("button.tile[data-rack='G-09']").click()
    dialog = tab.page.locator("dialog[open]")
    assert dialog.locator("button").all_inner_texts() == ["Close"]
    tab.page.keyboard.press("Escape")

    changing = [
        r for r in tab.requests if r.method != "GET" and r.url.split("/api/")[-1] not in ("auth/login", "events/ticket")
    ]
    assert not changing, [(r.method, r.url) for r in changing]
    # And the box would refuse anyway.
    with count.client("auditor") as auditor:
        refused = auditor.post(f"/api/sessions/{count.submitted}/void", json={"reason": "no"})
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"


@pytest.mark.parametrize("who", ["supervisor", "admin", "verifier", "auditor"])
def test_no_page_asks_any_host_but_the_box(count: CountScenario, tabs: Any, who: str) -> None:
    tab = tabs(who)
    tab.wait_live()
    for route in NAV[who]:
        assert tab.visit(route) == route
    extra = [f"floor/{count.run_id}", f"sessions/{count.sessions['verifier']}"]
    if who != "verifier":
        extra += [f"runs/{count.run_id}", f"sessions/{count.approved}"]
    for route in extra:
        tab.visit(route)
    if who in ("supervisor", "admin"):
        tab.visit("devices")
        tab.page.get_by_role("button", name="Pair a handheld").click()
        tab.page.wait_for_function("document.querySelector('dialog[open] img')?.complete === true")
        tab.page.keyboard.press("Escape")
    urls = [r.url for r in tab.requests]
    assert any(url.endswith("/static/js/app.js") for url in urls)
    assert any("/api/events?" in url for url in urls)
    assert tab.foreign_requests() == []
    assert [r.url for r in tab.responses if r.status >= 400] == []


def test_every_page_works_under_its_own_content_security_policy(count: CountScenario, tabs: Any) -> None:
    tab = tabs("admin", own_policy=True)
    tab.wait_live()
    for route in [*NAV["admin"], f"runs/{count.run_id}", f"sessions/{count.approved}"]:
        assert tab.visit(route) == view_of(route)
    tab.visit("devices")
    tab.page.get_by_role("button", name="Pair a handheld").click()
    tab.page.wait_for_selector("dialog[open] img")
    deadline = time.monotonic() + 10
    while not tab.page.evaluate("document.querySelector('dialog[open] img').naturalWidth"):
        assert time.monotonic() < deadline, "the QR code never loaded"
        time.sleep(0.05)
    # Where a phone without the app pairs: the scanning page on this same box.
    assert tab.page.inner_text("dialog[open] [data-handheld-url]") == count.server.url + "/handheld/"
    tab.page.keyboard.press("Escape")
    assert tab.page.evaluate("window.__violations") == []
    # The watch works: an inline style, which the policy forbids, is reported.
    tab.page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">inline</p>')")
    deadline = time.monotonic() + 5
    while not tab.page.evaluate("window.__violations.length"):
        assert time.monotonic() < deadline, "the policy did not report an inline style"
        time.sleep(0.05)


def test_the_page_forbids_other_hosts_itself(count: CountScenario) -> None:
    page = httpx.get(count.server.url + "/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "http" not in policy


def test_reason_codes_on_the_page_are_the_boxs() -> None:
    from web.routes import STATIC_DIR

    source = (STATIC_DIR / "js" / "views" / "run.js").read_text(encoding="utf-8")
    block = re.search(r"export const REASON_CODES = \[(.*?)\];", source, re.DOTALL)
    assert block is not None
    assert re.findall(r'"([A-Z_]+)"', block.group(1)) == list(REASON_CODES)


class _Handheld:
    """A paired device of its own that sends real signed batches, as ``tests/appliance/counting/test_held.py``'s."""

    def __init__(self, count: CountScenario, name: str) -> None:
        self.url = count.server.url
        self.key = Ed25519PrivateKey.generate()
        code = count.ok("supervisor", "POST", "/api/devices/pairing-codes")["code"]
        paired = httpx.post(
            self.url + "/api/devices/pair",
            json={"code": code, "name": name, "public_key": public_bytes(self.key).hex()},
            timeout=30,
        ).json()
        self.writer_id: str = paired["writer_id"]
        self.headers = {"Authorization": f"Device {paired['device_token']}", "Content-Type": "application/msgpack"}
        self.clock = HybridClock()
        self.seq, self.prev = 0, ZERO_HASH

    def scans(self, payload: dict[str, Any], quantities: list[int]) -> dict[str, Any]:
        events = []
        for qty in quantities:
            self.seq += 1
            event = Event(
                self.writer_id,
                self.seq,
                str(ULID()),
                "scan.recorded",
                {**payload, "qty": qty},
                self.clock.now(),
                self.prev,
            )
            self.prev = event.hash
            events.append(event)
        answer = httpx.post(
            self.url + "/api/sync/batch",
            content=msgpack.packb(batch_body(self.writer_id, events, self.key), use_bin_type=True),
            headers=self.headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.content
        body: dict[str, Any] = msgpack.unpackb(answer.content)
        assert body["ok"] == [e.seq for e in events] and not body["errors"], body
        return body


def test_a_supervisor_accepts_scans_held_after_an_approval(count: CountScenario, tabs: Any) -> None:
    # A session nobody else uses (the second spare verifier), on a rack and a SKU the scenario leaves alone.
    counter = SPARE_VERIFIERS[1]
    made = count.ok("supervisor", "POST", f"/api/runs/{count.run_id}/sessions", {"verifier": counter})
    session_id = made["session_id"]
    count.ok(counter, "POST", f"/api/sessions/{session_id}/start")
    rack = "G-40"
    [rack_id] = [r["rack_id"] for r in count.ok("supervisor", "GET", "/api/racks?floor=G") if r["code"] == rack]
    sku = count.skus[55]["sku"]
    device = _Handheld(count, "Handheld 7")
    scan = {
        "session_id": session_id,
        "code": sku,
        "rack_id": rack_id,
        "product_id": None,
        "token": None,
        "by": made["verifier_id"],
    }
    assert not device.scans(scan, [2])["held"]
    count.ok(counter, "POST", f"/api/sessions/{session_id}/submit")
    count.ok("supervisor", "POST", f"/api/sessions/{session_id}/approve")

    def counted() -> int:
        items = count.ok("supervisor", "GET", f"/api/sessions/{session_id}")["items"]
        return sum(int(i["qty"]) for i in items)

    assert counted() == 2
    boss, auditor = tabs("supervisor"), tabs("auditor")
    for tab in (boss, auditor):
        tab.visit("conflicts")
        tab.wait_live()
    group = f"li[data-session='{session_id}']"
    assert boss.page.locator(group).count() == 0

    # The handheld, offline meanwhile, sends three more scans: stored, held, and shown without a reload.
    late = device.scans(scan, [20, 20, 10])
    assert [h["reason"] for h in late["held"]] == ["SESSION_APPROVED"] * 3
    assert counted() == 2
    for tab in (boss, auditor):
        tab.page.wait_for_selector(f"{group}[data-decision='open']", timeout=10000)
        text = tab.page.locator(group).inner_text()
        assert "Session of Sam" in text
        assert "Handheld 7 sent 3 scans (50 units) on rack G-40 after the session was approved — not counted." in text
    assert auditor.page.locator(group).locator("button").count() == 0  # an auditor reads, never decides
    assert auditor.actions() == 0

    boss.page.locator(group).get_by_role("button", name="Accept").click()
    dialog = boss.page.locator("dialog[open]")
    dialog.get_by_label("Reason (kept in the log)").fill("the 50 are on the shelf")
    dialog.get_by_role("button", name="Accept").click()
    boss.page.wait_for_selector("dialog[open]", state="detached")
    boss.page.wait_for_selector(group, state="detached")  # the page shows open events only
    auditor.page.wait_for_selector(group, state="detached", timeout=10000)  # told by the live stream

    assert counted() == 52
    decided = count.ok("supervisor", "GET", f"/api/held?session_id={session_id}&status=decided")
    assert [(d["qty"], d["decision"], d["decision_reason"]) for d in decided] == [
        (q, "accepted", "the 50 are on the shelf") for q in (20, 20, 10)
    ]
    boss.page.select_option("#conflict-status", "all")
    boss.page.wait_for_selector(f"{group}[data-decision='accepted']")
    text = boss.page.locator(group).inner_text()
    assert "accepted by a supervisor: counted" in text and "the 50 are on the shelf" in text
    assert boss.page.locator(group).locator("button").count() == 0
