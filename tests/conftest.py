"""Fixtures that build real things: a box on disk, a server process on a loopback port."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.settings import Settings, load_settings

# Cheap password hashing in tests: the cost is a setting, the algorithm is the same.
FAST_PASSWORDS = {"password_memory_kib": 1024, "password_time_cost": 1}
FAST_PASSWORD_ENV = {"STOCKVERIFY_PASSWORD_MEMORY_KIB": "1024", "STOCKVERIFY_PASSWORD_TIME_COST": "1"}

DEMO_PASSWORDS = {
    "admin": "admin-demo",
    "supervisor": "supervisor-demo",
    "verifier": "verifier-demo",
    "auditor": "auditor-demo",
}


CHROMIUM = Path(os.environ.get("STOCKVERIFY_CHROMIUM", "/usr/bin/chromium"))


def need(reason: str) -> NoReturn:
    """Locally a missing system capability skips; under CI it fails, so a test cannot silently stop
    running (``.ci/run`` installs what the tests need)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason} (see .ci/run)")
    pytest.skip(reason)


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright through ``executable_path`` (never a browser of its own)."""
    if not CHROMIUM.exists():
        need(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


def person(box: Box, username: str) -> User:
    """A person of the store as the domain takes them (the actor of a command), by username."""
    row = (
        box.db.read()
        .execute("SELECT user_id, username, display_name, role FROM users WHERE username = ?", (username,))
        .fetchone()
    )
    assert row is not None, f"no person {username!r} in this store"
    return User(row["user_id"], row["username"], row["display_name"], row["role"])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings({"data_dir": data_dir, **FAST_PASSWORDS, "mdns": False, **overrides}, environ={})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "box")


@pytest.fixture
def box(settings: Settings) -> Iterator[Box]:
    opened = open_box(settings)
    yield opened
    opened.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``stockverify serve`` in a real process on a loopback port.

    ``https``: the data dir already holds a server certificate (``provisioning.certificates``); the box
    also listens on ``https_port``, ``url`` is the HTTPS one, clients trust the store CA in the data dir
    alone, and ``plain_url`` is the plain port (health, the CA, redirects).
    """

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        https: bool = False,
        launcher: Sequence[str] = (),
        module: Sequence[str] = ("appliance",),
    ) -> None:
        """``launcher`` runs before the interpreter (``umockdev-wrapper``); ``module`` is what ``-m`` runs,
        with any arguments it takes before the CLI's (``tests.hardware.scanner_box``)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.plain_url = f"http://127.0.0.1:{self.port}"
        self.url = self.plain_url
        self.verify: ssl.SSLContext | bool = True
        self.https_port: int | None = None
        if https:
            self.https_port = free_port()
            self.url = f"https://127.0.0.1:{self.https_port}"
            self.verify = ssl.create_default_context(cafile=data_dir / "tls" / "ca.pem")
            env = {**(env or {}), "STOCKVERIFY_HTTPS_PORT": str(self.https_port)}
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._command = [
            *launcher,
            sys.executable,
            "-m",
            *module,
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self._env = {**os.environ, **FAST_PASSWORD_ENV, "STOCKVERIFY_MDNS": "false", **(env or {})}
        self._log = self.log_path.open("wb")
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command, stdout=self._log, stderr=subprocess.STDOUT, env=self._env)

    def restart(self, *, kill: bool = False) -> float:
        """Stop the box (SIGTERM, or SIGKILL with ``kill``: a power cut) and start it again on the same
        ports and data dir, as systemd would; returns seconds until it answered again."""
        if kill and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()
        self._log = self.log_path.open("ab")
        self.process = self._start()
        return self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll ``/api/health``; return seconds until it answered 200."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.plain_url + "/api/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, verify=self.verify)

    def login(self, username: str, password: str) -> str:
        answer = httpx.post(
            self.url + "/api/auth/login", json={"username": username, "password": password}, verify=self.verify
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["token"]
        return token

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo store for the whole run: 6 floors, 300 racks, 5,000 products, a user per role."""
    server = ServerProcess(tmp_path_factory.mktemp("demo") / "box", "--demo")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_tokens(demo_server: ServerProcess) -> dict[str, str]:
    return {role: demo_server.login(role, password) for role, password in DEMO_PASSWORDS.items()}
