"""mDNS discovery: the TXT record, own-store filtering, advertising only once HTTP listens, goodbyes.

The in-process tests multicast on this machine's own LAN addresses (multicast loops back to the
sender's host), with store ids made up per test so nothing else on the LAN can match. The end-to-end
tests put boxes in one network namespace and the device in another, joined by a veth pair, so the
device can only have learnt the box's URL from mDNS.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from zeroconf import ServiceInfo

from appliance.box import open_box
from appliance.services import Services
from appliance.settings import SettingsError, load_settings
from replication.discovery import (
    SERVICE_TYPE,
    Advertisement,
    Discovery,
    DiscoveryError,
    PeerChange,
    PeerInfo,
    decode_txt,
    encode_txt,
    local_ipv4_addresses,
)
from tests.conftest import FAST_PASSWORD_ENV, free_port, make_settings, need

MAIN = Path(__file__).resolve().parents[2]
NODE_A = "01JA0000000000000000000AAA"
NODE_B = "01JB0000000000000000000BBB"
NODE_C = "01JC0000000000000000000CCC"


def _store() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def _others() -> list[str]:
    current = asyncio.current_task()
    return sorted(task.get_name() for task in asyncio.all_tasks() if task is not current)


# -- the TXT record ---------------------------------------------------------------------------------
def _over_the_wire(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    """Encode as zeroconf puts it in the packet, and parse it back as a resolver does."""
    sent = ServiceInfo(SERVICE_TYPE, f"box.{SERVICE_TYPE}", port=8080, properties=txt)
    received = ServiceInfo(SERVICE_TYPE, f"box.{SERVICE_TYPE}", properties=sent.text)
    return received.properties


def test_txt_round_trip_without_tls() -> None:
    txt = encode_txt(Advertisement(store_id="store-7", node_id=NODE_A, role="box", port=8080))
    assert txt == {"store": "store-7", "node": NODE_A, "role": "box", "api": "1", "port": "8080"}
    peer = decode_txt(_over_the_wire(txt), ["10.9.0.5"], 8080)
    assert peer == PeerInfo(NODE_A, "store-7", "box", "1", "http://10.9.0.5:8080", None)


def test_txt_round_trip_with_fingerprint_means_https() -> None:
    fingerprint = "sha256:" + ":".join(["AB"] * 32)
    txt = encode_txt(Advertisement("store-7", NODE_B, "hq", 8443, fingerprint=fingerprint))
    assert txt["fp"] == fingerprint
    peer = decode_txt(_over_the_wire(txt), ["10.9.0.6"], 8443)
    assert peer.url == "https://10.9.0.6:8443"
    assert peer.fingerprint == fingerprint
    assert peer.role == "hq"


def test_txt_keys_are_read_without_case_and_txt_port_stands_in_for_srv() -> None:
    properties = {b"STORE": b"s", b"Node": NODE_C.encode(), b"role": b"box", b"api": b"1", b"port": b"9000"}
    assert decode_txt(properties, ["10.9.0.7"], None).url == "http://10.9.0.7:9000"


@pytest.mark.parametrize(
    ("properties", "addresses", "says"),
    [
        ({b"store": b"s", b"role": b"box", b"api": b"1"}, ["10.0.0.1"], "node"),
        ({b"store": b"s", b"node": b"n", b"role": b"box", b"api": None}, ["10.0.0.1"], "api"),
        ({b"store": b"s", b"node": b"n", b"role": b"box", b"api": b"1"}, [], "no IPv4 address"),
        ({b"store": b"s", b"node": b"n", b"role": b"box", b"api": b"1"}, ["10.0.0.1"], "no port"),
    ],
)
def test_an_advertisement_we_cannot_use_says_why(
    properties: dict[bytes, bytes | None], addresses: list[str], says: str
) -> None:
    port = 8080 if says != "no port" else None
    with pytest.raises(ValueError, match=says):
        decode_txt(properties, addresses, port)


def test_oversized_txt_is_refused_not_trimmed() -> None:
    with pytest.raises(DiscoveryError, match="'fp'"):
        encode_txt(Advertisement("s", NODE_A, "box", 8080, fingerprint="f" * 260))


def test_instance_name_fits_a_dns_label_and_keeps_the_node_tail() -> None:
    name = Advertisement("x" * 64, NODE_A, "box", 8080).instance_name
    assert len(name.encode()) <= 63
    assert name.endswith(" " + NODE_A[-6:])


def test_mdns_settings() -> None:
    assert load_settings(environ={}).mdns is True
    assert load_settings(environ={"STOCKVERIFY_MDNS": "false"}).mdns is False
    env = {"STOCKVERIFY_MDNS_ADDRESSES": "10.0.0.5, 10.0.0.6"}
    assert load_settings(environ=env).mdns_addresses == ("10.0.0.5", "10.0.0.6")
    with pytest.raises(SettingsError, match="'mdns_addresses'"):
        load_settings(environ={"STOCKVERIFY_MDNS_ADDRESSES": "10.0.0"})


# -- two or more Discovery instances on this machine's LAN addresses --------------------------------
@pytest.fixture
def lan() -> str:
    addresses = local_ipv4_addresses()
    if not addresses:
        need("no non-loopback IPv4 address to multicast on")
    return addresses[0]


def test_a_box_lists_its_own_store_only_and_never_itself(lan: str) -> None:
    store, other_store = _store(), _store()

    async def scenario() -> None:
        a = Discovery(store_id=store, node_id=NODE_A, addresses=[lan])
        b = Discovery(store_id=store, node_id=NODE_B, addresses=[lan])
        c = Discovery(store_id=other_store, node_id=NODE_C, addresses=[lan])
        everyone = Discovery(store_id=None, addresses=[lan])
        seen_by_b: list[PeerChange] = []

        def broken(change: PeerChange) -> None:
            raise RuntimeError("a consumer's bug must not stop the others from hearing")

        b.on_change(broken)
        b.on_change(seen_by_b.append)
        for discovery in (a, b, c, everyone):
            await discovery.start()
        await asyncio.gather(
            a.advertise(Advertisement(store, NODE_A, "box", 8001)),
            b.advertise(Advertisement(store, NODE_B, "box", 8002)),
            c.advertise(Advertisement(other_store, NODE_C, "box", 8003)),
        )
        ours = {NODE_A, NODE_B, NODE_C}
        await _until(lambda: ours <= {p.node_id for p in everyone.peers()}, 10, "all three boxes on the wire")
        await _until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1, 10, "a and b see each other")
        await asyncio.sleep(0.5)  # room for a wrong entry to arrive before the table is checked

        assert a.peers() == [PeerInfo(NODE_B, store, "box", "1", f"http://{lan}:8002", None)]
        assert b.peers() == [PeerInfo(NODE_A, store, "box", "1", f"http://{lan}:8001", None)]
        assert c.peers() == []  # alone in its store; a and b were on the wire all along
        assert [(change.kind, change.peer.node_id) for change in seen_by_b] == [("found", NODE_A)]

        await a.stop()
        # The goodbye, not the 120 s record expiry, takes a out of b's table.
        await _until(lambda: b.peers() == [], 3, "b drops a after a's goodbye")
        assert [(change.kind, change.peer.node_id) for change in seen_by_b] == [("found", NODE_A), ("lost", NODE_A)]
        for discovery in (b, c, everyone):
            await discovery.stop()
        assert _others() == []

    asyncio.run(scenario())


def test_the_box_advertises_only_once_its_http_port_listens(lan: str, tmp_path: Path) -> None:
    store, port = _store(), free_port()
    box = open_box(make_settings(tmp_path / "box", store_id=store, host=lan, port=port, mdns=True))

    async def scenario() -> None:
        services = Services.for_box(box)
        watcher = Discovery(store_id=store, addresses=[lan])
        await watcher.start()
        async with services.mdns():
            discovery = services.discovery
            assert isinstance(discovery, Discovery)
            # Probing and announcing take under two seconds; nothing may show while the port is shut.
            await asyncio.sleep(3)
            assert watcher.peers() == []

            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.close()

            server = await asyncio.start_server(answer, lan, port)
            expected = PeerInfo(box.node.node_id, store, "box", "1", f"http://{lan}:{port}", None)
            await _until(lambda: watcher.peers() == [expected], 10, "the box advertised after its port opened")
            assert discovery.peers() == []  # the box does not list itself
        await _until(lambda: watcher.peers() == [], 3, "the goodbye at shutdown")
        server.close()
        await server.wait_closed()
        await watcher.stop()
        assert _others() == []

    try:
        asyncio.run(scenario())
    finally:
        box.close()


def test_mdns_off_starts_nothing(tmp_path: Path) -> None:
    box = open_box(make_settings(tmp_path / "box", mdns=False))

    async def scenario() -> None:
        services = Services.for_box(box)
        async with services.mdns():
            assert services.discovery is None
            assert _others() == []

    try:
        asyncio.run(scenario())
    finally:
        box.close()


# -- end to end: a box in one network namespace, a device in another ---------------------------------
SUBNET = "10.77.0"
BOX_IP, DEVICE_IP = f"{SUBNET}.1", f"{SUBNET}.2"


@dataclass
class Namespaces:
    box: str
    device: str

    def run(self, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=MAIN,
            check=False,
        )

    def discover(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.device, sys.executable, "-m", "appliance", "device", "discover", *args)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    if not sys.platform.startswith("linux"):
        need("network namespaces are Linux only")
    if os.geteuid() != 0:
        need("making network namespaces needs root")
    if shutil.which("ip") is None:
        need("iproute2 (`ip`) is not installed")
    tag = f"svd{os.getpid() % 10_000_000}"
    made = Namespaces(box=f"{tag}-box", device=f"{tag}-dev")
    try:
        _ip("netns", "add", made.box)
    except RuntimeError as exc:
        need(f"cannot make a network namespace: {exc}")
    try:
        _ip("netns", "add", made.device)
        _ip("link", "add", f"{tag}b", "type", "veth", "peer", "name", f"{tag}d")
        for namespace, link, address in ((made.box, f"{tag}b", BOX_IP), (made.device, f"{tag}d", DEVICE_IP)):
            _ip("link", "set", link, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", link, "up")
            _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", link)
        yield made
    finally:
        for namespace in (made.box, made.device):  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


class NamespacedBox:
    """``stockverify serve`` inside the box namespace, on every address, with mDNS on."""

    def __init__(self, namespaces: Namespaces, data_dir: Path, port: int, *args: str, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://{BOX_IP}:{port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data_dir)]
        command += ["--host", "0.0.0.0", "--port", str(port), *args]  # noqa: S104 - inside the test namespace
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespaces.box, *command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=MAIN,
            env={**os.environ, **FAST_PASSWORD_ENV, "STOCKVERIFY_MDNS": "true", **env},
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_advertised(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while "mDNS advertised" not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"box exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"box not advertised after {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def node(self) -> tuple[str, str]:
        with sqlite3.connect(f"file:{self.data_dir / 'store.db'}?mode=ro", uri=True) as conn:
            node_id, store_id = conn.execute("SELECT node_id, store_id FROM node").fetchone()
        return str(node_id), str(store_id)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@dataclass
class Boxes:
    demo: NamespacedBox
    other: NamespacedBox


@pytest.fixture(scope="module")
def boxes(namespaces: Namespaces, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boxes]:
    folder = tmp_path_factory.mktemp("mdns")
    demo = NamespacedBox(namespaces, folder / "demo", 8080, "--demo")
    other = NamespacedBox(namespaces, folder / "other", 8081, STOCKVERIFY_STORE_ID="other-store")
    try:
        demo.wait_advertised()
        other.wait_advertised()
        yield Boxes(demo, other)
    finally:
        demo.stop()
        other.stop()


HEALTH = """
import asyncio, json, sys
from replication.device import transport

async def main() -> None:
    async with transport.open_session() as http:
        print(json.dumps(await transport.request(http, "GET", sys.argv[1] + "/api/health")))

asyncio.run(main())
"""


def test_a_device_finds_the_box_by_mdns_alone_and_reaches_it(namespaces: Namespaces, boxes: Boxes) -> None:
    node_id, store_id = boxes.demo.node()
    assert store_id == "demo-store"

    shown = namespaces.discover("--store", "demo-store")
    assert shown.returncode == 0, shown.stderr
    assert f"http://{BOX_IP}:8080" in shown.stdout
    assert node_id in shown.stdout

    listed = namespaces.discover("--store", "demo-store", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {
            "node_id": node_id,
            "store_id": "demo-store",
            "role": "box",
            "api_version": "1",
            "url": f"http://{BOX_IP}:8080",
            "fingerprint": None,
        }
    ]

    url = json.loads(listed.stdout)[0]["url"]
    health = namespaces.run(namespaces.device, sys.executable, "-c", HEALTH, url)
    assert health.returncode == 0, health.stderr
    answer = json.loads(health.stdout)
    assert (answer["status"], answer["node_id"], answer["store_id"]) == ("ok", node_id, "demo-store")


def test_a_box_of_another_store_is_not_listed(namespaces: Namespaces, boxes: Boxes) -> None:
    demo_node, _ = boxes.demo.node()
    other_node, other_store = boxes.other.node()
    assert other_store == "other-store"

    everything = namespaces.discover("--json")
    assert everything.returncode == 0, everything.stderr
    by_node = {peer["node_id"]: peer for peer in json.loads(everything.stdout)}
    # Both are on the wire, so what --store leaves out it left out on purpose.
    assert by_node[other_node]["url"] == f"http://{BOX_IP}:8081"
    assert by_node[demo_node]["url"] == f"http://{BOX_IP}:8080"

    ours = namespaces.discover("--store", "demo-store", "--json")
    assert ours.returncode == 0, ours.stderr
    assert [peer["node_id"] for peer in json.loads(ours.stdout)] == [demo_node]

    nobody = namespaces.discover("--store", "no-such-store", "--timeout", "2")
    assert nobody.returncode == 1
    assert nobody.stdout == ""
    assert "no box of store no-such-store answered" in nobody.stderr


def _lines(stream: Any) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return found


def _next_change(lines: queue.Queue[str], timeout: float) -> dict[str, Any]:
    change: dict[str, Any] = json.loads(lines.get(timeout=timeout))
    return change


def test_the_advertisement_goes_away_when_the_box_stops(namespaces: Namespaces, boxes: Boxes) -> None:
    node_id, _ = boxes.demo.node()
    discover = ["ip", "netns", "exec", namespaces.device, sys.executable, "-m", "appliance", "device", "discover"]
    watch = subprocess.Popen(
        [*discover, "--store", "demo-store", "--watch", "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=MAIN,
    )
    try:
        lines = _lines(watch.stdout)
        found = _next_change(lines, timeout=15)
        assert (found["change"], found["node_id"]) == ("found", node_id)

        stopped_at = time.monotonic()
        # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught.
        assert boxes.demo.stop() in (0, -signal.SIGTERM)
        lost = _next_change(lines, timeout=10)
        # Far sooner than the records' 120 s lifetime: the box said goodbye.
        assert (lost["change"], lost["node_id"], lost["url"]) == ("lost", node_id, f"http://{BOX_IP}:8080")
        assert time.monotonic() - stopped_at < 10
        output = boxes.demo.output()
        assert "mDNS advertisement withdrawn" in output
        assert "Application shutdown complete" in output
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    assert watch.returncode == 0, watch.stderr.read() if watch.stderr else ""
