"""The handheld page in a real browser over real HTTPS: a provisioned box, and Debian's chromium trusting
the store CA the way a handheld does once the CA is installed on it (in the browser's own NSS database,
with ``certutil``), so a certificate error is an error, never ignored.

Shared by the handheld page's tests, its chaos test and its bench.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from provisioning.certificates import ensure_server_certificate, ensure_store_ca
from tests.conftest import CHROMIUM, DEMO_PASSWORDS, ServerProcess, need

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

PHONE: ViewportSize = {"width": 393, "height": 851}  # a 6" Android phone held upright (Pixel 5 class)
LONG_LEASES = {"STOCKVERIFY_LEASE_TTL_S": "3600", "STOCKVERIFY_LEASE_RENEW_S": "60"}


def provisioned_server(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """A demo box as ``stockverify provision`` leaves it: the store CA and a certificate for 127.0.0.1."""
    ensure_store_ca(data_dir, "Main Street")
    ensure_server_certificate(data_dir, hostnames=["localhost"], addresses=["127.0.0.1"])
    return ServerProcess(data_dir, "--demo", *args, env=env, https=True)


def trusting_home(home: Path, ca_pem: Path) -> Path:
    """A HOME whose NSS database (what chromium on Linux trusts) holds the store CA and nothing else."""
    certutil = shutil.which("certutil")
    if certutil is None:
        need("certutil is not installed (apt-get install libnss3-tools)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run([certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(
        [certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "StockVerify store CA", "-i", str(ca_pem)],
        check=True,
        capture_output=True,
    )
    return home


@contextmanager
def trusting_browser(home: Path, profile: Path, *, camera: Path | None = None) -> Iterator[Any]:
    """A persistent chromium profile (IndexedDB and the service worker survive a closed tab, as on a
    phone) under a HOME that trusts the store CA. Yields the browser context.

    ``camera``: a Y4M video the browser's camera films (chromium's fake capture device), permission
    granted as a verifier would grant it."""
    if not CHROMIUM.exists():
        need(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            viewport=PHONE,
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            ignore_https_errors=False,
            service_workers="allow",
            args=(
                [
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-video-capture={camera}",
                ]
                if camera
                else []
            ),
        )
        try:
            yield context
        finally:
            context.close()


@dataclass
class Store:
    """The box's side of a handheld test: people and sessions made through the API."""

    server: ServerProcess

    def __post_init__(self) -> None:
        self.boss = self.server.client(self.server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        self.admin = self.server.client(self.server.login("admin", DEMO_PASSWORDS["admin"]))

    def pairing_code(self) -> str:
        answer = self.boss.post("/api/devices/pairing-codes")
        assert answer.status_code == 201, answer.text
        code: str = answer.json()["code"]
        return code

    def verifier(self, name: str) -> str:
        """A verifier of our own (each test counts with its own person: one active session each)."""
        answer = self.admin.post(
            "/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass", "display_name": name}
        )
        assert answer.status_code == 201, answer.text
        user_id: str = answer.json()["user_id"]
        return user_id

    def session(self, verifier: str, racks: list[str], *, start: bool = False) -> dict[str, Any]:
        run = self.boss.post("/api/runs", json={"name": f"handheld {verifier}", "kind": "hard"})
        assert run.status_code == 201, run.text
        run_id = run.json()["run_id"]
        made = self.boss.post(f"/api/runs/{run_id}/sessions", json={"racks": racks, "verifier": verifier})
        assert made.status_code == 201, made.text
        assert self.boss.post(f"/api/runs/{run_id}/start").status_code == 200
        session: dict[str, Any] = made.json()
        if start:
            client = self.server.client(self.server.login(verifier, f"{verifier}-pass"))
            assert client.post(f"/api/sessions/{session['session_id']}/start").status_code == 200
        return session

    def products(self, count: int) -> list[dict[str, Any]]:
        listed = self.boss.get(f"/api/products?limit={count}").json()["items"]
        return [self.boss.get(f"/api/products/{p['sku']}").json() for p in listed]

    def items(self, session_id: str) -> dict[str, Any]:
        answer = self.boss.get(f"/api/sessions/{session_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


class Phone:
    """One verifier's phone: a tab of the handheld page, driven as a person and a scanner would."""

    def __init__(self, context: Any, server: ServerProcess, url: str | None = None) -> None:
        self.url = url or server.url
        self.context = context
        self.server = server
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = self.open()

    def open(self) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))
        page.goto(self.url + "/handheld/")
        page.wait_for_selector("body:not([data-view='boot'])", timeout=20000)
        self.page = page
        return page

    def reopen(self) -> Any:
        self.page.close()
        return self.open()

    @property
    def view(self) -> str:
        view: str = self.page.get_attribute("body", "data-view") or ""
        return view

    def pair(self, code: str, name: str = "Handheld 7") -> None:
        self.page.fill("#pair-code", code)
        self.page.fill("#pair-name", name)
        self.page.click("#pair-form button[type=submit]")
        self.page.wait_for_selector("body[data-view='login']", timeout=15000)

    def login(self, username: str, password: str) -> None:
        self.page.fill("#login-user", username)
        self.page.fill("#login-pass", password)
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_selector("body[data-view='sessions']", timeout=15000)

    def open_session(self, session_id: str) -> None:
        self.page.click(f"[data-session='{session_id}']")
        self.page.wait_for_selector("body[data-view='session']", timeout=15000)

    def claim(self, rack: str) -> None:
        self.page.click(f"[data-action='rack-{rack}']")
        self.page.wait_for_selector("body[data-view='count']", timeout=15000)

    def until(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll a JavaScript expression until it is truthy. (``wait_for_function`` evaluates its predicate
        with ``new Function``, which the page's own policy forbids, as it should.)"""
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {timeout} s")
            time.sleep(0.02)

    def scans(self) -> int:
        return int(self.page.get_attribute("body", "data-scans") or 0)

    def scan(self, code: str, *, delay_ms: float = 0) -> None:
        """Keystrokes as a keyboard-wedge scanner sends them, ending in Enter."""
        self.page.keyboard.type(code, delay=delay_ms)
        self.page.keyboard.press("Enter")

    def pending(self) -> int:
        return int(self.page.get_attribute("body", "data-pending") or 0)

    def wait_drained(self, timeout: float = 60.0) -> float:
        """Until no scan is being committed, the device's queue in IndexedDB holds nothing pending and
        the sender is idle; returns the seconds it took."""
        start = time.monotonic()
        self.until(
            """(async () => {
                const queue = await import('/static/handheld/js/queue.js');
                const { pending } = await queue.stats();
                const app = window.__handheld;
                return !app.busy() && pending === 0 && app.sender.state === 'idle';
            })()""",
            timeout,
        )
        return time.monotonic() - start

    def text(self, selector: str) -> str:
        found: str = self.page.inner_text(selector)
        return found


class Cable:
    """The Wi-Fi between a handheld and the box, as a TCP relay that can be cut: while cut, every open
    connection is reset and new ones are refused at once, as when a phone walks out of range. TLS passes
    through untouched (the box's certificate names 127.0.0.1, whatever the port)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)  # the box is down: the phone sees a refused connection
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self._lock:
                    self._open.discard(end)
                _reset(end)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            with self._lock:
                ends, self._open = list(self._open), set()
            for end in ends:
                _reset(end)

    def close(self) -> None:
        self.set_cut(True)
        self._listener.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
    with contextlib.suppress(OSError):
        sock.close()


def box_scans(server: ServerProcess, writer_id: str) -> list[dict[str, Any]]:
    """Every scan event the box holds of one writer, from its own SQLite file."""
    import sqlite3

    conn = sqlite3.connect(server.data_dir / "store.db")
    try:
        rows = conn.execute(
            "SELECT seq, event_id FROM events WHERE writer_id = ? AND type = 'scan.recorded' ORDER BY seq",
            (writer_id,),
        ).fetchall()
    finally:
        conn.close()
    return [{"seq": seq, "event_id": event_id} for seq, event_id in rows]


def verify(server: ServerProcess) -> httpx.Client:
    return server.client()
