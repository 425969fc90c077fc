"""The verifier's scanning page in chromium over real HTTPS, the store CA trusted as a handheld trusts it.

A verifier pairs, logs in, claims a rack and scans at scanner speed; records damage, serials, a date and
a photo; the Wi-Fi drops, the page is reloaded with the box out of reach and still shows its queue; the
Wi-Fi comes back and the queue drains by itself. The box's own SQLite file is the judge: every scan
stored exactly once, its totals equal to the page's, and no expected quantity ever reaching the page.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import ServerProcess
from tests.web.handheld import (
    LONG_LEASES,
    Cable,
    Phone,
    Store,
    provisioned_server,
    trusting_browser,
    trusting_home,
)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = provisioned_server(tmp_path_factory.mktemp("handheld") / "box", env=LONG_LEASES)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def store(box: ServerProcess) -> Store:
    return Store(box)


@pytest.fixture(scope="module")
def home(box: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trusting_home(tmp_path_factory.mktemp("home"), box.data_dir / "tls" / "ca.pem")


@pytest.fixture
def context(home: Path, tmp_path: Path) -> Iterator[Any]:
    """A handheld of its own: a fresh browser profile, so a fresh device key and queue."""
    with trusting_browser(home, tmp_path / "profile") as made:
        yield made


def counting(phone: Phone, store: Store, name: str, racks: list[str]) -> dict[str, Any]:
    """Pair the phone, log ``name`` in and claim the session's first rack."""
    store.verifier(name)
    session = store.session(name, racks, start=True)
    phone.pair(store.pairing_code(), f"{name}'s phone")
    phone.login(name, f"{name}-pass")
    phone.open_session(session["session_id"])
    phone.claim(racks[0])
    return session


def writer_id(phone: Phone) -> str:
    found: str = phone.page.evaluate("window.__handheld.identity.writer_id")
    return found


def stored(server: ServerProcess, writer: str) -> list[tuple[int, str, str]]:
    """(seq, event_id, type) of every event the box holds of ``writer``, from its SQLite file."""
    conn = sqlite3.connect(f"file:{server.data_dir / 'store.db'}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT seq, event_id, type FROM events WHERE writer_id = ? ORDER BY seq", (writer,)
        ).fetchall()
    finally:
        conn.close()


def png(width: int, height: int) -> bytes:
    """A real PNG (a camera photo's stand-in), made without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def page_totals(phone: Phone) -> dict[str, Any]:
    totals: dict[str, Any] = phone.page.evaluate(
        """() => {
            const t = window.__handheld.tally;
            return {
                items: Object.fromEntries(
                    [...t.items].filter(([, e]) => e.qty || e.damage).map(([id, e]) => [id, [e.qty, e.damage]])
                ),
                unmatched: Object.fromEntries([...t.unmatched].filter(([, q]) => q)),
            };
        }"""
    )
    return totals


def box_totals(store: Store, session_id: str) -> dict[str, Any]:
    session = store.items(session_id)
    return {
        "items": {
            i["product_id"]: [i["qty"], i["damage_qty"]] for i in session["items"] if i["qty"] or i["damage_qty"]
        },
        "unmatched": {u["code"]: u["qty"] for u in session.get("unmatched", []) if u["qty"]},
    }


def codes_of(store: Store, count: int) -> list[str]:
    """Barcodes as scanners read them (EAN-13 and UPC-A without the GTIN-14's leading zeros)."""
    out = []
    for product in store.products(count):
        if product["codes"]:
            out.append(product["codes"][0]["code"].lstrip("0").rjust(13, "0"))
        else:
            out.append(product["sku"])
    return out


def item_details(phone: Phone, *, damage: int, serials: list[str], mfg: str, photo: Path | None, prefix: str) -> None:
    page = phone.page
    page.click("#last-details")
    page.wait_for_selector("#item-dialog[open]")
    page.fill("#item-damage", str(damage))
    for serial in serials[:2]:  # scanned one by one
        page.fill("#item-serial", serial)
        page.press("#item-serial", "Enter")
    page.fill("#item-serial-list", "\n".join(serials[2:4]))  # pasted
    page.fill("#item-serial-from", f"{prefix}-0001")  # a range
    page.fill("#item-serial-to", f"{prefix}-0005")
    page.click("#item-serial-add")
    page.fill("#item-mfg", mfg)
    page.select_option("#item-condition", "good")
    if photo:
        page.set_input_files("#item-photo", str(photo))
    page.click("#item-finalize")
    saved(phone)


def saved(phone: Phone) -> None:
    """The item dialog closed: everything it recorded is committed (or it says why not)."""
    phone.until("!document.getElementById('item-dialog').open || document.getElementById('item-error').textContent")
    assert phone.text("#item-error") == ""


def test_a_verifier_counts_a_rack_through_a_wifi_drop(
    box: ServerProcess, store: Store, context: Any, tmp_path: Path
) -> None:
    phone = Phone(context, box)
    session = counting(phone, store, "asha", ["G-01", "G-02"])
    codes = codes_of(store, 40)
    photo = tmp_path / "shelf.png"
    photo.write_bytes(png(1600, 1200))

    # 500 codes as keystrokes at scanner speed, details on three items along the way.
    started = time.monotonic()
    for n in range(500):
        phone.scan(codes[n % len(codes)] if n % 50 else f"NOLABEL-{n}")
        if n in (10, 203, 405):  # three different products
            phone.until(f"document.body.dataset.scans === '{n + 1}'")
            item_details(
                phone,
                damage=1,
                serials=[f"SN{n}-A", f"SN{n}-B", f"SN{n}-C", f"SN{n}-D"],
                mfg="2026-03-01",
                photo=photo if n == 10 else None,
                prefix=f"R{n}",
            )
    phone.until("document.body.dataset.scans === '500'")
    online_s = time.monotonic() - started
    phone.wait_drained(60)

    # The Wi-Fi drops: 300 more scans, all kept on the device.
    context.set_offline(True)
    for n in range(300):
        phone.scan(codes[(n * 7) % len(codes)])
    phone.until("document.body.dataset.scans === '800'")
    phone.until("Number(document.body.dataset.pending) === 300")
    assert phone.page.get_attribute("#link", "data-state") == "offline"

    # Reloaded with the box out of reach: the service worker opens the page, IndexedDB has the queue.
    phone.page.reload()
    phone.page.wait_for_selector("body[data-view='count']", timeout=20000)
    phone.until("Number(document.body.dataset.pending) === 300")
    assert "300" in phone.text("#queue-depth")
    assert phone.text("#rack-units") == "800"

    # Back online: it drains by itself, nothing typed or tapped.
    context.set_offline(False)
    drained_s = phone.wait_drained(30)

    # Finalize: the rack finished, the session submitted.
    phone.page.click("#rack-finish")
    phone.page.wait_for_selector("body[data-view='session']")
    phone.page.click("[data-action='session-submit']")
    phone.page.wait_for_selector("body[data-view='sessions']")

    writer = writer_id(phone)
    events = stored(box, writer)
    scans = [e for e in events if e[2] == "scan.recorded"]
    assert len(scans) == 800
    assert len({e[1] for e in events}) == len(events)  # each stored once
    assert [e[0] for e in events] == list(range(1, len(events) + 1))  # the chain is gap-free
    kinds = Counter(e[2] for e in events)
    assert kinds["damage.adjusted"] == 3
    assert kinds["serial.added"] == 3 * 9
    assert kinds["photo.attached"] == 1
    assert kinds["item.attributes_set"] == 3

    box_view = box_totals(store, session["session_id"])
    phone.open_session(session["session_id"])
    assert page_totals(phone) == box_view
    assert sum(q for q, _d in box_view["items"].values()) + sum(box_view["unmatched"].values()) == 800
    item = next(i for i in store.items(session["session_id"])["items"] if i["photos"])
    assert item["attributes"]["mfg_date"] == "2026-03-01"
    assert item["attributes"]["status"] == "finalized"
    assert {"R10-0001", "R10-0003", "R10-0005", "SN10-A", "SN10-D"} <= set(item["serials"])
    assert store.items(session["session_id"])["status"] == "SUBMITTED"
    assert not phone.errors
    print(f"500 scans in {online_s:.1f} s online; 300 drained in {drained_s:.2f} s after reconnect")


def test_the_page_opens_offline_from_its_own_origin(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    phone.until("navigator.serviceWorker.controller !== null || navigator.serviceWorker.ready.then(() => true)")
    phone.page.evaluate("navigator.serviceWorker.ready")
    manifest = phone.page.evaluate("fetch('/handheld/manifest.webmanifest').then((r) => r.json())")
    assert manifest["start_url"] == "/handheld/" and manifest["display"] == "standalone"
    assert {"192x192", "512x512"} <= {icon["sizes"] for icon in manifest["icons"]}
    context.set_offline(True)
    try:
        phone.page.reload()
        phone.page.wait_for_selector("body[data-view='pair']", timeout=20000)
        assert phone.page.get_attribute("#link", "data-state") in ("offline", "unknown")
    finally:
        context.set_offline(False)
    box_origin = urlsplit(box.url)
    foreign = [url for url in phone.requests if urlsplit(url).netloc not in ("", box_origin.netloc)]
    assert not [url for url in foreign if not url.startswith(("data:", "blob:"))]


def test_a_tab_closed_mid_send_loses_and_duplicates_nothing(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    counting(phone, store, "bilal", ["G-03"])
    codes = codes_of(store, 20)
    context.set_offline(True)
    for n in range(450):
        phone.scan(codes[n % len(codes)])
    phone.until("Number(document.body.dataset.pending) === 450")
    writer = writer_id(phone)
    sent = []
    phone.page.on("request", lambda request: sent.append(request) if "/api/sync/batch" in request.url else None)
    context.set_offline(False)
    deadline = time.monotonic() + 20
    while not sent and time.monotonic() < deadline:
        phone.page.wait_for_timeout(5)
    assert sent, "the page never started sending"
    phone.page.close(run_before_unload=False)  # closed mid-send: the answer is lost with the tab
    phone.open()
    phone.page.wait_for_selector("body[data-view='count']")
    phone.wait_drained(30)
    scans = [e for e in stored(box, writer) if e[2] == "scan.recorded"]
    assert len(scans) == 450
    assert len({e[1] for e in scans}) == 450
    synced = phone.page.evaluate(
        "import('/static/handheld/js/db.js').then((db) => db.all('events')).then((rows) => rows.map((r) => r.state))"
    )
    assert Counter(synced) == {"synced": 450}


def test_a_conflict_the_box_flags_shows_on_the_device(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    counting(phone, store, "chen", ["G-04"])
    code = codes_of(store, 1)[0]
    phone.scan(code)
    phone.until("document.body.dataset.scans === '1'")
    # More damaged than counted: the box stores it and flags it for a supervisor.
    phone.page.click("#last-details")
    phone.page.fill("#item-damage", "3")
    phone.page.click("#item-partial")
    saved(phone)
    phone.wait_drained(30)
    phone.until("document.getElementById('count-error').textContent.includes('damage exceeds')")
    assert "supervisor" in phone.text("#count-error")
    phone.page.click("[data-go='session']")
    phone.page.wait_for_selector("#flags-list li[data-kind='conflict']")
    assert "damage_exceeds" in phone.text("#flags-list")


def test_no_expected_quantity_reaches_the_page(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    bodies: list[bytes] = []
    phone.page.on("response", lambda response: bodies.append(response.body()) if "/api/" in response.url else None)
    counting(phone, store, "dev", ["G-05"])
    for code in codes_of(store, 10):
        phone.scan(code)
    phone.wait_drained(30)
    phone.page.reload()
    phone.page.wait_for_selector("body[data-view='count']")
    phone.wait_drained(30)
    assert bodies
    assert not [b for b in bodies if re.search(rb"expected(?!_seq)", b)]
    stored_catalog = phone.page.evaluate("import('/static/handheld/js/db.js').then((db) => db.getMeta('catalog'))")
    assert stored_catalog["products"], "the catalog was prefetched"
    assert "expected" not in json.dumps(stored_catalog)


def test_undo_pause_and_resume(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    session = counting(phone, store, "esha", ["G-06", "G-07"])
    code = codes_of(store, 1)[0]
    for _ in range(3):
        phone.scan(code)
    phone.until("document.body.dataset.scans === '3'")
    phone.page.click("#last-undo")
    phone.until("document.getElementById('rack-units').textContent === '2'")
    phone.page.click("#rack-pause")
    phone.until("document.getElementById('scan').disabled")
    assert phone.text("#hud-lease") == "paused"
    phone.page.click("#rack-pause")  # now "Resume"
    phone.until("!document.getElementById('scan').disabled")
    phone.scan(code)
    phone.until("document.getElementById('rack-units').textContent === '3'")
    phone.wait_drained(30)
    kinds = Counter(e[2] for e in stored(box, writer_id(phone)))
    assert (kinds["scan.recorded"], kinds["scan.undone"]) == (4, 1)
    assert box_totals(store, session["session_id"]) == page_totals(phone)
    assert sum(q for q, _d in page_totals(phone)["items"].values()) == 3


def test_a_revoked_device_stops_sending_and_says_why(box: ServerProcess, store: Store, context: Any) -> None:
    phone = Phone(context, box)
    counting(phone, store, "farid", ["G-08"])
    code = codes_of(store, 1)[0]
    phone.scan(code)
    phone.wait_drained(30)
    answer = store.boss.post(f"/api/devices/{writer_id(phone)}/revoke", json={"reason": "lost on the floor"})
    assert answer.status_code == 200, answer.text
    phone.scan(code)
    phone.until("!document.getElementById('sender-stopped').hidden", 30)
    assert "REVOKED" in phone.text("#sender-stopped")
    assert phone.pending() == 0  # not sent again and again: it waits for a person
    failed = phone.page.evaluate(
        "import('/static/handheld/js/db.js').then((db) => db.all('events')).then((rows) => rows.map((r) => r.state))"
    )
    assert Counter(failed) == {"synced": 1, "failed": 1}  # kept on the device, never dropped


def test_a_lost_lease_is_shown(tmp_path: Path) -> None:
    """The handheld drops out of reach past its lease; another verifier claims the rack; when the
    handheld comes back its later scans are kept, flagged late_lease, and the page says the lease is lost."""
    server = provisioned_server(
        tmp_path / "box", env={"STOCKVERIFY_LEASE_TTL_S": "3", "STOCKVERIFY_LEASE_RENEW_S": "1"}
    )
    try:
        server.wait_ready()
        store = Store(server)
        home = trusting_home(tmp_path / "home", server.data_dir / "tls" / "ca.pem")
        assert server.https_port is not None
        wifi = Cable(server.https_port)
        for name in ("gita", "hari"):
            store.verifier(name)
        run = store.boss.post("/api/runs", json={"name": "lease", "kind": "hard"}).json()["run_id"]
        mine = store.boss.post(f"/api/runs/{run}/sessions", json={"racks": ["G-01"], "verifier": "gita"}).json()
        theirs = store.boss.post(f"/api/runs/{run}/sessions", json={"racks": ["G-01"], "verifier": "hari"}).json()
        assert store.boss.post(f"/api/runs/{run}/start").status_code == 200
        with trusting_browser(home, tmp_path / "profile") as context:
            phone = Phone(context, server, url=wifi.url)
            phone.pair(store.pairing_code())
            phone.login("gita", "gita-pass")
            phone.open_session(mine["session_id"])
            phone.page.click("[data-action='session-start']")
            phone.page.wait_for_selector("[data-action='rack-G-01']:not([disabled])")
            phone.claim("G-01")
            code = codes_of(store, 1)[0]
            phone.scan(code)
            phone.until("document.body.dataset.scans === '1'")
            phone.wait_drained(30)
            wifi.set_cut(True)
            time.sleep(4)  # past the lease: nobody renewed it
            hari = server.client(server.login("hari", "hari-pass"))
            assert hari.post(f"/api/sessions/{theirs['session_id']}/start").status_code == 200
            taken = hari.post(f"/api/runs/{run}/racks/G-01/claim", json={"session_id": theirs["session_id"]})
            assert taken.status_code == 201, taken.text
            phone.scan(code)  # made offline, under the old token
            phone.until("document.body.dataset.scans === '2'")
            wifi.set_cut(False)
            phone.until("!document.getElementById('lease-lost').hidden", 30)
            assert "Lease lost on rack G-01" in phone.text("#lease-lost")
            phone.wait_drained(30)
            phone.until("document.querySelector('#recent li[data-state=\"conflict\"]') !== null", 15)
            assert "late_lease" in phone.text("#recent")
            assert phone.text("#hud-lease") == "lease lost"
        wifi.close()
    finally:
        server.stop()


def test_a_record_the_box_refuses_is_set_aside_and_the_rest_go(box: ServerProcess, store: Store, context: Any) -> None:
    """A record naming a session the box does not have can never be accepted: a person sets it aside on
    the device (where it stays listed) and the records made after it are chained again and sent."""
    phone = Phone(context, box)
    counting(phone, store, "jaya", ["G-12"])
    code = codes_of(store, 1)[0]
    phone.scan(code)
    phone.until("document.body.dataset.scans === '1'")
    phone.wait_drained(30)
    context.set_offline(True)
    phone.page.evaluate(
        """async () => {
            const queue = await import('/static/handheld/js/queue.js');
            const app = window.__handheld;
            await queue.record(app.identity.writer_id, 'scan.recorded', {
                session_id: '01NOSVCHSESS10N0000000000X', code: 'STRAY', qty: 1, rack_id: app.work.rack_id,
                product_id: null, token: app.work.token, by: app.login.user.user_id,
            });
        }"""
    )
    for _ in range(3):
        phone.scan(code)
    phone.until("Number(document.body.dataset.pending) === 4")
    context.set_offline(False)
    phone.until("!document.getElementById('sender-stopped').hidden", 30)
    assert "SESSION_NOT_FOUND" in phone.text("#sender-stopped")
    phone.page.once("dialog", lambda dialog: dialog.accept())
    phone.page.click("#sender-drop")
    phone.wait_drained(30)
    events = stored(box, writer_id(phone))
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    assert len([e for e in events if e[2] == "scan.recorded"]) == 4
    dropped = phone.page.evaluate(
        """import('/static/handheld/js/db.js')
            .then((db) => db.getMeta('dropped'))
            .then((d) => d.map((e) => [e.seq, e.payload.code, e.error.code]))"""
    )
    assert dropped == [[2, "STRAY", "SESSION_NOT_FOUND"]]
    assert phone.page.get_attribute("#sender-stopped", "hidden") is not None
