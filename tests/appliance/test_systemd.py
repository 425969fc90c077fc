"""The box tells systemd it is ready and alive: a real socket stands in for systemd's notify socket.

The server tests start the real box with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` as systemd sets them
and read what arrives. A frozen process (SIGSTOP) and a loop blocked by a sleeping callback show the
pings come from the event loop: while it cannot run, they stop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.systemd import Notifier, notifying, ping_watchdog, watchdog_interval
from tests.conftest import ServerProcess, free_port

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class NotifySocket:
    """A datagram socket bound where systemd's would be, recording each notification and when it came."""

    def __init__(self, address: str) -> None:
        self.address = address  # as $NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.received.append((time.monotonic(), data.decode().split("\n")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def times(self, line: str, since: float = 0.0) -> list[float]:
        with self._lock:
            return [at for at, lines in self.received if line in lines and at >= since]

    def wait_for(self, line: str, timeout: float, since: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.times(line, since):
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no {line} within {timeout}s; received {self.received}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = str(tmp_path / "notify")
    if len(path.encode()) >= 100:  # AF_UNIX paths stop at 107 bytes: a deep temp dir goes abstract
        path = f"@stockverify-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(path)
    yield listener
    listener.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket(f"@stockverify-test-{os.getpid()}-{time.monotonic_ns()}")
    yield listener
    listener.close()


def _serve(tmp_path: Path, notify: NotifySocket, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "box", env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC), **env}
    )


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.slow
def test_ready_once_health_answers_then_pings_every_half_watchdog(tmp_path: Path, notify_socket: NotifySocket) -> None:
    server = _serve(tmp_path, notify_socket)
    try:
        ready_at = notify_socket.wait_for("READY=1", timeout=60)
        # READY=1 means listening: the health route answers at once, with no retry.
        assert httpx.get(server.url + "/api/health", timeout=5).status_code == 200
        ready = next(lines for at, lines in notify_socket.received if at == ready_at)
        assert any(line.startswith("STATUS=serving box ") for line in ready), ready
        assert notify_socket.times("STATUS=starting: waiting for HTTP on port " + str(server.port))
        time.sleep(3.0)
        pings = notify_socket.times("WATCHDOG=1", since=ready_at)
        assert len(pings) >= 5, pings
        gaps = _gaps(pings)
        assert all(0.3 < gap < 0.9 for gap in gaps), gaps
        assert abs(sum(gaps) / len(gaps) - 0.5) < 0.1, gaps
    finally:
        server.stop()


@pytest.mark.slow
def test_a_box_serving_https_is_ready_once_both_ports_answer(tmp_path: Path, notify_socket: NotifySocket) -> None:
    from provisioning.certificates import ensure_server_certificate, ensure_store_ca

    ensure_store_ca(tmp_path / "box", "Test Store")
    ensure_server_certificate(tmp_path / "box", hostnames=["localhost"], addresses=["127.0.0.1"])
    https_port = free_port()
    server = _serve(tmp_path, notify_socket, STOCKVERIFY_HTTPS_PORT=str(https_port))
    try:
        ready_at = notify_socket.wait_for("READY=1", timeout=60)
        assert httpx.get(server.url + "/api/health", timeout=5).status_code == 200
        with socket.create_connection(("127.0.0.1", https_port), timeout=5):
            pass
        ready = next(lines for at, lines in notify_socket.received if at == ready_at)
        assert f"STATUS=serving box store-001 on 127.0.0.1 (http {server.port}, https {https_port})" in ready
        time.sleep(1.2)
        assert len(notify_socket.times("WATCHDOG=1", since=ready_at)) >= 2
    finally:
        server.stop()


@pytest.mark.slow
def test_a_frozen_box_stops_pinging_and_resumes_when_thawed(tmp_path: Path, notify_socket: NotifySocket) -> None:
    server = _serve(tmp_path, notify_socket)
    try:
        notify_socket.wait_for("READY=1", timeout=60)
        time.sleep(1.2)
        os.kill(server.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        time.sleep(2.5)
        thawed_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGCONT)
        # Nothing while frozen (a ping in flight at the stop may land just after it).
        assert notify_socket.times("WATCHDOG=1", since=frozen_at + 0.2) == []
        resumed_at = notify_socket.wait_for("WATCHDOG=1", timeout=2.0, since=thawed_at)
        assert resumed_at - thawed_at < 1.0
        time.sleep(1.6)
        assert len(notify_socket.times("WATCHDOG=1", since=resumed_at)) >= 3
        assert httpx.get(server.url + "/api/health", timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_sigterm_says_stopping_and_pings_end(tmp_path: Path, abstract_notify_socket: NotifySocket) -> None:
    """Also: a ``$NOTIFY_SOCKET`` in the abstract namespace (``@name``) is reached."""
    server = _serve(tmp_path, abstract_notify_socket)
    try:
        abstract_notify_socket.wait_for("READY=1", timeout=60)
        server.process.send_signal(signal.SIGTERM)
        stopping_at = abstract_notify_socket.wait_for("STOPPING=1", timeout=15)
        server.process.wait(timeout=15)
        time.sleep(0.6)
        assert abstract_notify_socket.times("WATCHDOG=1", since=stopping_at + 0.01) == []
    finally:
        server.stop()


@pytest.mark.slow
def test_no_pings_when_systemd_watches_another_process(tmp_path: Path, notify_socket: NotifySocket) -> None:
    """A process that inherited the watchdog environment from the one systemd watches keeps quiet."""
    server = _serve(tmp_path, notify_socket, WATCHDOG_PID=str(os.getpid()))
    try:
        ready_at = notify_socket.wait_for("READY=1", timeout=60)
        time.sleep(1.5)
        assert notify_socket.times("WATCHDOG=1") == []
        assert notify_socket.times("READY=1") == [ready_at]
    finally:
        server.stop()


def test_a_blocked_loop_leaves_a_gap_in_the_pings(notify_socket: NotifySocket) -> None:
    """A callback that sleeps on the loop (as a blocking call in a route would) holds the pings back."""

    async def main() -> None:
        notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address})
        task = asyncio.create_task(ping_watchdog(notifier, 0.1))
        await asyncio.sleep(0.55)
        asyncio.get_running_loop().call_soon(time.sleep, 1.2)
        await asyncio.sleep(0.6)
        task.cancel()
        notifier.close()

    started = time.monotonic()
    asyncio.run(main())
    time.sleep(0.2)
    gaps = _gaps(notify_socket.times("WATCHDOG=1", since=started))
    assert max(gaps) >= 1.1, gaps
    assert sum(1 for gap in gaps if gap >= 0.5) == 1, gaps
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.1, abs=0.05), gaps


def test_the_lifespan_tells_systemd_in_order(notify_socket: NotifySocket) -> None:
    """Starting, then ready once the port answers, then stopping; nothing once the lifespan is left."""

    async def main() -> None:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        environ = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"}
        async with notifying("127.0.0.1", [port], "serving a test", environ):
            await asyncio.sleep(0.5)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    time.sleep(0.3)
    kinds = [lines[0] for _at, lines in notify_socket.received]
    assert kinds[0].startswith("STATUS=starting")
    assert kinds[-1] == "STOPPING=1"
    assert kinds.count("READY=1") == 1
    assert kinds.count("WATCHDOG=1") >= 4
    assert notify_socket.received[kinds.index("READY=1")][1] == ["READY=1", "STATUS=serving a test"]


def test_ready_waits_for_every_port(notify_socket: NotifySocket) -> None:
    """With TLS the box listens twice (plain HTTP and HTTPS); ready means both answer."""
    opened: list[float] = []

    async def main() -> None:
        first = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            second_port = probe.getsockname()[1]
        ports = [first.sockets[0].getsockname()[1], second_port]
        async with notifying("127.0.0.1", ports, "serving a test", {"NOTIFY_SOCKET": notify_socket.address}):
            await asyncio.sleep(0.6)
            opened.append(time.monotonic())
            second = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", second_port)
            await asyncio.sleep(0.4)
        for server in (first, second):
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    ready_at = notify_socket.wait_for("READY=1", timeout=1)
    assert ready_at > opened[0]


def test_nothing_is_sent_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("ready")
    assert not notifier.watchdog()


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    notifier.close()
    assert [r.getMessage() for r in caplog.records].count("systemd did not take a notification") == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected
