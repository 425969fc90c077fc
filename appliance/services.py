"""What runs beside the routes: the app's services and the background work the lifespan owns.

``Services`` holds every long-lived object a route may need (the box, password hashing, the login
throttle, the per-device sync limits, stream tickets, HQ's hub, the replicator, the lock forwarder).
Routes get them by name through Litestar's ``Provide`` (``appliance.api.deps``), typed, never by
looking them up on the app.

The lifespan hooks, entered in this order and left in reverse, start what runs for as long as the
server does, and stop it before the database closes:

1. lease watch — tells live listeners when a rack lease lapsed (a lapse is no event), and picks up a
   lock authority move the CLI wrote to this box's database from another process;
2. mDNS — browses for the store's other boxes, advertises this one once HTTP listens;
3. replicator — pulls from peers, pushes to and pulls from HQ (``replication.peers``);
4. lock forwarder — while this box does not grant locks, sends claims to the one that does;
5. scanners — follows scanners plugged into the box and records what they read
   (``appliance.scanners``);
6. export jobs — writes report files in the background (``appliance.reports.jobs``);
7. systemd — ``READY=1`` once HTTP listens, watchdog pings from the event loop, ``STOPPING=1`` first
   on the way out (``appliance.systemd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from litestar import Litestar

from appliance.auth.people import LoginThrottle, Passwords, StreamTickets
from appliance.auth.throttle import DeviceThrottle
from appliance.box import Box
from appliance.counting import locks
from appliance.hq.hub import Hub
from appliance.replica.lock_forwarding import LockForwarder
from appliance.replica.store import BoxReplica
from appliance.reports.jobs import ExportJobs
from appliance.scanners import ScannerService
from appliance.systemd import notifying
from hardware.udev import DEFAULT_ALLOW
from replication.discovery import Advertisement, Discovery, addresses_for, advertise_when_listening
from replication.peers.client import Me
from replication.peers.replicator import Replicator
from replication.tasks import running
from replication.wire.hlc import wall_ms
from replication.wire.tls import TrustError, pinned_context

log = logging.getLogger(__name__)

LEASE_WATCH_S = 0.5
STORE_CA_FILE = "tls/ca.pem"  # provisioning.certificates puts the store CA there on every box of the store

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class Tls:
    """The box's HTTPS listener as mDNS and the pairing QR describe it to devices."""

    port: int
    fingerprint: str  # the server certificate's, in the mDNS TXT ``fp``
    ca_fingerprint: str | None  # the store CA's, which a device pins at pairing; None for a retailer's own


@dataclass
class Services:
    box: Box
    passwords: Passwords
    login_throttle: LoginThrottle
    device_throttle: DeviceThrottle
    stream_tickets: StreamTickets = field(default_factory=StreamTickets)
    hub: Hub | None = None  # HQ only: a replica per store behind the same endpoints
    discovery: Discovery | None = None  # while mDNS runs
    replicator: Replicator | None = None  # while a store box has someone to exchange with
    lock_forwarder: LockForwarder | None = None  # used while this box is not the store's lock authority
    tls: Tls | None = None  # while the box serves HTTPS
    scanners: ScannerService | None = None  # while the box reads scanners plugged into it
    exports: ExportJobs | None = None  # while the export worker runs

    @classmethod
    def for_box(cls, box: Box, *, tls: Tls | None = None) -> Services:
        settings = box.settings
        return cls(
            box=box,
            passwords=Passwords(settings.password_memory_kib, settings.password_time_cost),
            login_throttle=LoginThrottle(settings.login_attempts_per_minute),
            device_throttle=DeviceThrottle(
                settings.device_batches_per_s,
                settings.device_batch_burst,
                settings.device_heartbeats_per_s,
                settings.device_heartbeat_burst,
            ),
            hub=Hub(box) if box.node.role == "hq" else None,
            tls=tls,
        )

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
        self.box.close()

    def lifespans(self) -> list[Lifespan]:
        return [
            lambda _app: self.lease_watch(),
            lambda _app: self.mdns(),
            lambda _app: self.replication(),
            lambda _app: self.lock_forwarding(),
            lambda _app: self.scanner_service(),
            lambda _app: self.export_jobs(),
            lambda _app: self.systemd(),
        ]

    # -- 1. lease watch ------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease_watch(self) -> AsyncIterator[None]:
        box = self.box

        def expired(since_ms: int, until_ms: int) -> list[dict[str, Any]]:
            return locks.expired_leases(box.db.read(), since_ms, until_ms)

        def authority_behind() -> bool:
            return box.authority.behind(box.db.read())

        async def watch() -> None:
            last = wall_ms()
            while True:
                await asyncio.sleep(LEASE_WATCH_S)
                now = wall_ms()
                lapsed = await asyncio.to_thread(expired, last, now)
                last = now
                box.bus.publish([(None, _lapsed(row)) for row in lapsed])
                if await asyncio.to_thread(authority_behind):
                    # Read again on the writer thread, where no designation can be half folded.
                    await box.db.awrite(box.authority.load)

        async with running(watch(), "lease-watch"):
            yield

    # -- 2. mDNS -------------------------------------------------------------------------------------
    @asynccontextmanager
    async def mdns(self) -> AsyncIterator[None]:
        """Browse from start to stop, advertise once HTTP listens."""
        box, settings = self.box, self.box.settings
        if not settings.mdns:
            log.info("mDNS off (setting mdns); handhelds and peers must be given this box's address")
            yield
            return
        addresses = addresses_for(settings.host, settings.mdns_addresses)
        discovery = Discovery(store_id=box.node.store_id, node_id=box.node.node_id, addresses=addresses or ())
        await discovery.start()
        self.discovery = discovery
        advertisement = Advertisement(
            store_id=box.node.store_id,
            node_id=box.node.node_id,
            role=box.node.role,
            # Devices and peers go to the HTTPS port; the plain one would only redirect them.
            port=self.tls.port if self.tls else settings.port,
            fingerprint=self.tls.fingerprint if self.tls else None,
        )
        advertising: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if advertisement.port == 0:
            log.warning("mDNS not advertising: port 0 means the port is not known before uvicorn binds it")
        elif addresses is None:
            log.warning("mDNS not advertising: no IPv4 handheld can reach this host", extra={"host": settings.host})
        else:
            advertising = running(advertise_when_listening(discovery, advertisement, settings.host), "mdns-advertise")
        try:
            async with advertising:
                yield
        finally:
            self.discovery = None
            await discovery.stop()

    # -- 3. replicator -------------------------------------------------------------------------------
    @asynccontextmanager
    async def replication(self) -> AsyncIterator[None]:
        """Run the exchanges while the server runs; HQ and a box with nobody to talk to run none."""
        box, settings = self.box, self.box.settings
        if box.node.role == "hq" or not (
            settings.peers or settings.hq_url or settings.lock_authority_url or settings.mdns
        ):
            yield
            return

        def discovered() -> list[str]:
            return [peer.url for peer in self.discovery.peers()] if self.discovery is not None else []

        node = box.node
        me = Me(node.node_id, node.store_id, node.key, node.public_key, settings.public_url)
        store = BoxReplica(box.db, box.log, node.store_id)
        async with aiohttp.ClientSession() as http:
            replicator = Replicator(
                me,
                store,
                settings,
                http,
                discovered,
                hello_heard=box.authority.heard,
                store_trust=_trust(settings.data_dir / STORE_CA_FILE, "the store CA"),
                hq_trust=_trust(Path(settings.hq_ca_file), "hq_ca_file") if settings.hq_ca_file else None,
            )
            self.replicator = replicator
            try:
                async with running(replicator.run(), "replicator"):
                    yield
            finally:
                self.replicator = None

    # -- 4. lock forwarder ---------------------------------------------------------------------------
    @asynccontextmanager
    async def lock_forwarding(self) -> AsyncIterator[None]:
        """Every store box may have to forward: which box grants is replicated state and can move while
        the box runs (the forwarder costs nothing until a claim needs it)."""
        box = self.box
        if box.node.role == "hq":
            yield
            return
        forwarder = LockForwarder(box, lambda: self.replicator, asyncio.get_running_loop())
        self.lock_forwarder = forwarder
        try:
            yield
        finally:
            self.lock_forwarder = None
            await forwarder.close()

    # -- 5. scanners ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def scanner_service(self) -> AsyncIterator[None]:
        box, settings = self.box, self.box.settings
        if box.node.role == "hq" or not settings.scanners:
            yield
            return
        service = ScannerService(box, allow=DEFAULT_ALLOW.extended(settings.scanner_allow))
        await service.start()
        self.scanners = service
        try:
            yield
        finally:
            self.scanners = None
            await service.stop()

    # -- 6. export jobs -------------------------------------------------------------------------------
    @asynccontextmanager
    async def export_jobs(self) -> AsyncIterator[None]:
        jobs = ExportJobs(self.box.db, self.box.settings.data_dir)
        async with jobs.running():
            self.exports = jobs
            try:
                yield
            finally:
                self.exports = None

    # -- 7. systemd ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def systemd(self) -> AsyncIterator[None]:
        """Entered last, so the box is whole before systemd hears it is ready, and left first, so
        systemd hears of the stop before the rest winds down."""
        node, settings = self.box.node, self.box.settings
        ports = [settings.port] if self.tls is None else [settings.port, self.tls.port]
        where = f"http {settings.port}" + (f", https {self.tls.port}" if self.tls else "")
        serving = f"serving {node.role} {node.store_id} on {settings.host} ({where})"
        async with notifying(settings.host, ports, serving):
            yield


def _trust(path: Path, what: str) -> ssl.SSLContext | None:
    """The CA a kind of link pins over https; none leaves the machine's trusted CAs to decide."""
    try:
        return pinned_context(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, TrustError) as exc:
        log.error("CA certificate unusable; https links it should pin will fail", extra={"ca": what, "error": str(exc)})
        raise


def _lapsed(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "rack",
        "type": "lease.lapsed",
        "state": "available",
        "lapsed": True,
        "run_id": row["run_id"],
        "rack_id": row["rack_id"],
        "rack": row["code"],
        "holder": row["user_id"],
        "token": row["token"],
    }
