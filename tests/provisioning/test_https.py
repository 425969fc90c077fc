"""A provisioned box over real sockets: HTTPS that verifies against the store CA and nothing else, the
plain port's health, CA and redirects, a handheld pinned at pairing, and the fingerprint in mDNS.

Every client here verifies: the store's boxes are trusted because the store CA signed them, and a box
whose certificate another CA signed is refused, however well it answers otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning.certificates import ServerIdentity, ensure_server_certificate, ensure_store_ca, fingerprint
from replication.device import transport
from replication.device.outbox import Outbox
from replication.discovery import Discovery, PeerInfo, local_ipv4_addresses
from replication.peers.client import Me, PeerClient, PeerError
from replication.wire.tls import pinned_context
from tests.conftest import ServerProcess, need
from tests.replication.conftest import CountingBox, device_cli, scan_payload


def provisioned(data_dir: Path, store_name: str, addresses: tuple[str, ...] = ("127.0.0.1",)) -> ServerIdentity:
    """A data dir as ``stockverify provision`` leaves it: the store CA and this box's certificate."""
    ensure_store_ca(data_dir, store_name)
    return ensure_server_certificate(data_dir, hostnames=["localhost"], addresses=list(addresses))


def ssl_context_from_ca(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=data_dir / "tls" / "ca.pem")


class TlsBox:
    def __init__(self, server: ServerProcess, identity: ServerIdentity) -> None:
        self.server = server
        self.identity = identity
        self.ca_pem = (server.data_dir / "tls" / "ca.pem").read_bytes()
        self.counting = CountingBox(server)


@pytest.fixture(scope="module")
def tls_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBox]:
    data_dir = tmp_path_factory.mktemp("tls") / "box"
    identity = provisioned(data_dir, "Main Street")
    server = ServerProcess(data_dir, "--demo", https=True)
    try:
        server.wait_ready()
        yield TlsBox(server, identity)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rogue_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A box with a certificate of its own CA: right names, right protocol, wrong store."""
    data_dir = tmp_path_factory.mktemp("rogue") / "box"
    provisioned(data_dir, "Not Main Street")
    server = ServerProcess(data_dir, https=True)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_box_answers_https_with_a_chain_the_store_ca_verifies(tls_box: TlsBox) -> None:
    server = tls_box.server
    context = ssl_context_from_ca(server.data_dir)
    health = httpx.get(server.url + "/api/health", verify=context)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert server.url.startswith("https://")

    der = _peer_certificate(server.https_port or 0, context)
    assert hashlib.sha256(der).hexdigest() == tls_box.identity.fingerprint
    # The machine's own trust store knows nothing of the store CA.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/api/health", verify=ssl.create_default_context())
    assert "https_port=" in server.output() and tls_box.identity.fingerprint in server.output()


def test_the_plain_port_serves_health_the_ca_and_redirects_everything_else(tls_box: TlsBox) -> None:
    server = tls_box.server
    with httpx.Client(base_url=server.plain_url, timeout=10) as plain:
        health = plain.get("/api/health")
        secure = httpx.get(server.url + "/api/health", verify=server.verify)
        assert health.status_code == 200
        assert set(health.json()) == set(secure.json()) and health.json()["node_id"] == secure.json()["node_id"]

        ca = plain.get("/ca.pem")
        assert ca.status_code == 200 and ca.headers["content-type"] == "application/x-x509-ca-cert"
        assert ca.content == tls_box.ca_pem and fingerprint(ca.content) == fingerprint(tls_box.ca_pem)

        page = plain.get("/ca")
        digits = fingerprint(tls_box.ca_pem).upper()
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert " ".join(digits[i : i + 2] for i in range(0, 16, 2)) in page.text
        assert 'href="/ca.pem"' in page.text and "Certificate Trust Settings" in page.text

        https = f"https://127.0.0.1:{server.https_port}"
        runs = plain.get("/api/runs", params={"status": "open"})
        assert runs.status_code == 308 and runs.headers["location"] == f"{https}/api/runs?status=open"
        batch = plain.post("/api/sync/batch", content=b"\x80")
        assert batch.status_code == 308 and batch.headers["location"] == f"{https}/api/sync/batch"
        dashboard = plain.get("/")
        assert dashboard.status_code == 308 and dashboard.headers["location"] == f"{https}/"
        assert plain.post("/api/auth/login", json={}).status_code == 308  # no password crosses in the clear


def test_a_handheld_pinned_at_pairing_syncs_over_https(tls_box: TlsBox, tmp_path: Path) -> None:
    box, server = tls_box.counting, tls_box.server
    device_dir = tmp_path / "handheld"
    ca_fingerprint = fingerprint(tls_box.ca_pem)

    # The QR a supervisor's screen shows: the box, the code, the CA's fingerprint and where to fetch it.
    qr = box.boss.post("/api/devices/pairing-codes").json()["qr"]
    fields = dict(parse_qsl(urlsplit(qr).query))
    assert fields["box"] == server.url and fields["ca"] == ca_fingerprint
    assert fields["ca_url"] == f"{server.plain_url}/ca.pem"

    paired = device_cli("pair", "--qr", qr, "--name", "Pinned", "--data-dir", str(device_dir))
    assert paired.returncode == 0, paired.stderr
    with Outbox(device_dir / "outbox.db") as outbox:
        identity = outbox.require_identity()
        assert identity.box_url == server.url and identity.box_ca == tls_box.ca_pem.decode()
        session = box.counting_session()
        outbox.append("scan.recorded", scan_payload(box, session))
        outbox.append("scan.recorded", scan_payload(box, session))

    synced = device_cli("sync", "--data-dir", str(device_dir), "--once", "--json", "--timeout", "30")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["counts"]["synced"] == 2
    assert box.session_qty(session) == 2
    box.finish(session)


def test_a_box_of_another_ca_is_refused_with_a_clear_error(
    tls_box: TlsBox, rogue_box: ServerProcess, tmp_path: Path
) -> None:
    store_ca = tls_box.ca_pem

    async def ask(url: str) -> transport.SyncError:
        async with transport.open_session(ca_pem=store_ca) as http:
            assert (await transport.request(http, "GET", tls_box.server.url + "/api/health"))["status"] == "ok"
            with pytest.raises(transport.SyncError) as refused:
                await transport.request(http, "GET", url)
            return refused.value

    refused = asyncio.run(ask(rogue_box.url + "/api/health"))
    assert isinstance(refused, transport.NeedsPerson) and refused.code == "UNTRUSTED_BOX"
    assert "did not sign" in refused.message and "CERTIFICATE_VERIFY_FAILED" in refused.message

    # Pairing: the rogue's CA is not the one whose fingerprint the person was shown.
    ca_fingerprint = fingerprint(store_ca)
    as_shown = ":".join(ca_fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    fetched = device_cli(
        "pair",
        *("--box", rogue_box.url, "--code", "123-456", "--name", "X", "--data-dir", str(tmp_path / "a")),
        *("--ca-fingerprint", as_shown, "--ca-url", f"{rogue_box.plain_url}/ca.pem"),
    )
    assert fetched.returncode == 1 and "CA_MISMATCH" in fetched.stderr and ca_fingerprint in fetched.stderr
    (tmp_path / "store-ca.pem").write_bytes(store_ca)
    given = device_cli(
        "pair",
        *("--box", rogue_box.url, "--code", "123-456", "--name", "X", "--data-dir", str(tmp_path / "b")),
        *("--ca-file", str(tmp_path / "store-ca.pem")),
    )
    assert given.returncode == 1 and "UNTRUSTED_BOX" in given.stderr
    unpinned = device_cli(
        "pair", "--box", rogue_box.url, "--code", "123-456", "--name", "X", "--data-dir", str(tmp_path / "c")
    )
    assert unpinned.returncode == 1 and "--ca-fingerprint" in unpinned.stderr


def test_the_peer_client_trusts_the_store_ca_alone(tls_box: TlsBox, rogue_box: ServerProcess) -> None:
    key = Ed25519PrivateKey.generate()
    me = Me("01JZ0000000000000000000ZZZ", "store-001", key, key.public_key().public_bytes_raw())
    trust = pinned_context(tls_box.ca_pem)

    async def hello(url: str) -> PeerError:
        async with transport.open_session() as http:
            with pytest.raises(PeerError) as refused:
                await PeerClient(http, url, me, trust=trust).hello("box", "s" * 16)
            return refused.value

    ours = asyncio.run(hello(tls_box.server.url))
    assert ours.code not in {"UNTRUSTED", "UNREACHABLE"}  # the handshake passed; the box refused the secret
    theirs = asyncio.run(hello(rogue_box.url))
    assert theirs.code == "UNTRUSTED" and not theirs.retryable


def test_mdns_advertises_the_https_port_and_the_certificate_fingerprint(tmp_path: Path) -> None:
    addresses = local_ipv4_addresses()
    if not addresses:
        need("no non-loopback IPv4 address to multicast on")
    lan = addresses[0]
    store = f"t-{uuid.uuid4().hex[:12]}"
    identity = provisioned(tmp_path / "box", "Main Street", addresses=("127.0.0.1", lan))
    env = {"STOCKVERIFY_MDNS": "true", "STOCKVERIFY_MDNS_ADDRESSES": lan, "STOCKVERIFY_STORE_ID": store}
    server = ServerProcess(tmp_path / "box", "--host", "0.0.0.0", env=env, https=True)  # noqa: S104

    async def watch() -> list[PeerInfo]:
        async with Discovery(store_id=store, addresses=[lan]) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.peers() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return watcher.peers()

    try:
        server.wait_ready()
        [peer] = asyncio.run(watch())
    finally:
        server.stop()
    assert peer.fingerprint == identity.fingerprint
    assert peer.url == f"https://{lan}:{server.https_port}"
    assert f"tls_fingerprint={identity.fingerprint}" in server.output()


def test_a_certificate_replaced_while_the_box_runs_is_served_without_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    first = provisioned(data_dir, "Night Shift")
    server = ServerProcess(data_dir, https=True, env={"STOCKVERIFY_TLS_CHECK_S": "1"})
    try:
        server.wait_ready()
        context = ssl_context_from_ca(data_dir)
        assert hashlib.sha256(_peer_certificate(server.https_port or 0, context)).hexdigest() == first.fingerprint
        # A new address for the box: the certificate is issued again, as provisioning would.
        second = ensure_server_certificate(data_dir, hostnames=["localhost"], addresses=["127.0.0.1", "10.9.8.7"])
        assert second.fingerprint != first.fingerprint
        deadline = time.monotonic() + 10
        while hashlib.sha256(_peer_certificate(server.https_port or 0, context)).hexdigest() != second.fingerprint:
            assert time.monotonic() < deadline, server.output()[-2000:]
            time.sleep(0.2)
        assert httpx.get(server.url + "/api/health", verify=context).status_code == 200
        assert "server certificate reloaded" in server.output()
    finally:
        server.stop()
