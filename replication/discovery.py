"""Finding the store's boxes on the LAN by mDNS (DNS-SD), and being found.

A box advertises ``_stockverify._tcp.local.`` only once its HTTP port accepts connections (a handheld
sent to a box that refuses it would give up on discovery), and withdraws the advertisement with
goodbye packets when it stops, so peers drop it at once instead of when its records expire. It browses
for the same type and keeps a table of the boxes of its own store: boxes of other stores on a shared
LAN (a mall, a warehouse with several tenants) are seen and ignored.

TXT keys, each ``key=value`` at most 255 bytes (RFC 6763 §6.1)::

    store  the store id              node  the node id (a ULID)
    role   box or hq                 api   the API version ("1")
    port   the port to connect to    fp    the TLS certificate fingerprint, only when the box serves TLS
           (HTTPS when fp is set)

Everything runs on the caller's event loop through zeroconf's asyncio API. Browser callbacks are plain
functions on the loop; each resolution is a task kept by service name, so a box that leaves while it
is being resolved is not added back when the answer arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal

import ifaddr
from zeroconf import Error as ZeroconfError
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from replication.errors import NeedsPerson

log = logging.getLogger(__name__)

SERVICE_TYPE = "_stockverify._tcp.local."
API_VERSION = "1"
# RFC 6762 suggests 75 minutes for PTR/TXT; a box whose power is pulled sends no goodbye, and a peer
# table that still lists it an hour later misleads a field tech. Refreshing a handful of records every
# two minutes costs a store LAN nothing.
RECORD_TTL_S = 120
RESOLVE_TIMEOUT_MS = 3000
ADDRESS_WAIT_S = 5.0
LISTEN_POLL_S = 0.1
LISTEN_WARN_S = 30.0
TXT_MAX_BYTES = 255
INSTANCE_MAX_BYTES = 63

ChangeKind = Literal["found", "updated", "lost"]


class DiscoveryError(NeedsPerson):
    """An advertisement that cannot go on the wire as asked (a TXT entry over its limit).

    The settings that built it must change, so advertising again as is cannot help.
    """


@dataclass(frozen=True)
class PeerInfo:
    """A box seen on the LAN, as its advertisement describes it."""

    node_id: str
    store_id: str
    role: str
    api_version: str
    url: str
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PeerChange:
    kind: ChangeKind
    peer: PeerInfo


ChangeCallback = Callable[[PeerChange], None]


@dataclass(frozen=True)
class Advertisement:
    """What this box says about itself."""

    store_id: str
    node_id: str
    role: str
    port: int
    fingerprint: str | None = None
    api_version: str = API_VERSION

    @property
    def instance_name(self) -> str:
        """Readable in any Bonjour browser; the node's tail keeps two boxes of one store apart."""
        tail = f" {self.node_id[-6:]}"
        head = f"StockVerify {self.store_id}".encode()[: INSTANCE_MAX_BYTES - len(tail)]
        return head.decode("utf-8", "ignore") + tail

    @property
    def host_name(self) -> str:
        """From the node id, so two boxes never claim one host name (zeroconf probes service names only)."""
        return f"stockverify-{self.node_id.lower()}.local."


def encode_txt(advertisement: Advertisement) -> dict[str, str]:
    """Refuse rather than trim: a trimmed store or node id would name another store or box."""
    txt = {
        "store": advertisement.store_id,
        "node": advertisement.node_id,
        "role": advertisement.role,
        "api": advertisement.api_version,
        "port": str(advertisement.port),
    }
    if advertisement.fingerprint:
        txt["fp"] = advertisement.fingerprint
    for key, value in txt.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > TXT_MAX_BYTES:
            raise DiscoveryError(f"TXT entry {key!r} is {size} bytes; mDNS allows {TXT_MAX_BYTES}")
    return txt


def decode_txt(properties: Mapping[bytes, bytes | None], addresses: Sequence[str], port: int | None) -> PeerInfo:
    """Turn a resolved advertisement into a peer; ``ValueError`` says what it lacks.

    Keys are compared without case (RFC 6763 §6.4). The SRV port wins over the TXT one: it is what
    the resolver connects to.
    """
    txt = {
        key.decode("utf-8", "replace").lower(): value.decode("utf-8", "replace")
        for key, value in properties.items()
        if value is not None
    }
    missing = [key for key in ("store", "node", "role", "api") if not txt.get(key)]
    if missing:
        raise ValueError(f"TXT lacks {', '.join(missing)}")
    if port is None:
        try:
            port = int(txt.get("port", ""))
        except ValueError:
            raise ValueError("no port in SRV or TXT") from None
    if not addresses:
        raise ValueError("no IPv4 address")
    fingerprint = txt.get("fp") or None
    scheme = "https" if fingerprint else "http"
    return PeerInfo(
        node_id=txt["node"],
        store_id=txt["store"],
        role=txt["role"],
        api_version=txt["api"],
        url=f"{scheme}://{_reachable(addresses)}:{port}",
        fingerprint=fingerprint,
    )


def local_ipv4_addresses() -> list[str]:
    """Loopback is useless to a handheld; IPv6 link-local needs a scope that URLs carry badly."""
    found = {
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback
    }
    return sorted(found, key=ipaddress.IPv4Address)


def _reachable(addresses: Sequence[str]) -> str:
    """A box on two networks advertises both; pick the one on a network this machine is on."""
    networks = [
        ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    ]
    for address in addresses:
        if any(ipaddress.IPv4Address(address) in network for network in networks):
            return address
    return addresses[0]


class Discovery:
    """This machine's mDNS presence: the browser, the table of peers, and (on a box) its advertisement.

    ``store_id=None`` keeps every store's boxes (the ``device discover`` listing); ``node_id`` is left
    out of the table so a box never lists itself. ``addresses`` pins the IPv4 addresses to listen and
    advertise on; empty means every non-loopback one present when browsing starts.
    """

    def __init__(self, *, store_id: str | None, node_id: str | None = None, addresses: Sequence[str] = ()) -> None:
        self.store_id = store_id
        self.node_id = node_id
        self._pinned = tuple(addresses)
        self.addresses: tuple[str, ...] = ()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._peers: dict[str, PeerInfo] = {}  # by service name
        self._callbacks: list[ChangeCallback] = []
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what the replication code reads ------------------------------------------------------------
    def peers(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda peer: (peer.store_id, peer.node_id, peer.url))

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` on the event loop for each box found, changed or lost; returns an unsubscribe."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Return at once: a box that boots before its Wi-Fi has an address must still serve HTTP."""
        if self._task is None:
            self._task = asyncio.create_task(self._open(), name="mdns-open")

    async def advertise(self, advertisement: Advertisement) -> None:
        """Probe for the name (about a second) and announce; returns once the announcements are sent."""
        txt = encode_txt(advertisement)
        await self._ready.wait()
        if self._zc is None:
            return  # mDNS could not start; already logged
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{advertisement.instance_name}.{SERVICE_TYPE}",
            port=advertisement.port,
            properties=txt,
            server=advertisement.host_name,
            addresses=list(self.addresses),
            host_ttl=RECORD_TTL_S,
            other_ttl=RECORD_TTL_S,
        )
        announced = await self._zc.async_register_service(info, allow_name_change=True)
        self._info = info
        await announced
        scheme = "https" if advertisement.fingerprint else "http"
        log.info(
            "mDNS advertised",
            extra={
                "service": info.name,
                "urls": ",".join(f"{scheme}://{address}:{advertisement.port}" for address in self.addresses),
                "host": advertisement.host_name,
                "addresses": ",".join(self.addresses),
                "port": advertisement.port,
                "store_id": advertisement.store_id,
                "node_id": advertisement.node_id,
                "role": advertisement.role,
                "api": advertisement.api_version,
                "tls_fingerprint": advertisement.fingerprint or "none",
            },
        )

    async def settle(self, timeout: float) -> None:
        """A listing taken the moment a browse ends would miss boxes whose answers are on their way."""
        pending = list(self._resolving.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def stop(self) -> None:
        """Say goodbye (peers drop this box at once), then close every socket and task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending = list(self._resolving.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._resolving.clear()
        if self._zc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._info is not None:
            await (await self._zc.async_unregister_service(self._info))
            log.info("mDNS advertisement withdrawn", extra={"service": self._info.name})
            self._info = None
        await self._zc.async_close()
        self._zc = None
        self._peers.clear()

    async def _open(self) -> None:
        try:
            self.addresses = await self._wait_for_addresses()
            self._zc = AsyncZeroconf(interfaces=list(self.addresses), ip_version=IPVersion.V4Only)
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change])
        except (OSError, ZeroconfError) as exc:
            log.warning(
                "mDNS unavailable; handhelds and peers must be given this box's address",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            if self._zc is not None:
                await self._zc.async_close()
            self._zc = None
        else:
            log.info(
                "mDNS browsing",
                extra={"service": SERVICE_TYPE, "addresses": ",".join(self.addresses), "store_id": self.store_id},
            )
        finally:
            self._ready.set()

    async def _wait_for_addresses(self) -> tuple[str, ...]:
        warned = False
        while True:
            present = local_ipv4_addresses()
            wanted = tuple(a for a in present if not self._pinned or a in self._pinned)
            absent = [a for a in self._pinned if a not in present]
            if absent and not warned:
                log.warning("mdns_addresses not on this machine", extra={"absent": ",".join(absent)})
            if wanted:
                return wanted
            if not warned:
                log.warning(
                    "no network address to advertise yet; mDNS waits for one",
                    extra={"pinned": ",".join(self._pinned) or "none"},
                )
            warned = True
            await asyncio.sleep(ADDRESS_WAIT_S)

    # -- the browser --------------------------------------------------------------------------------
    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            self._drop(name)
            return
        task = asyncio.create_task(self._resolve(zeroconf, service_type, name), name="mdns-resolve")
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._resolved(name, done))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("resolving a box failed", exc_info=task.exception(), extra={"service": name})

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc, RESOLVE_TIMEOUT_MS):
            log.debug("a box did not answer its resolve", extra={"service": name})
            return
        try:
            peer = decode_txt(info.properties, info.parsed_addresses(IPVersion.V4Only), info.port)
        except ValueError as exc:
            log.debug("advertisement not understood; ignored", extra={"service": name, "reason": str(exc)})
            return
        if self.node_id is not None and peer.node_id == self.node_id:
            return
        if self.store_id is not None and peer.store_id != self.store_id:
            log.debug(
                "box of another store ignored",
                extra={
                    "service": name,
                    "store_id": peer.store_id,
                    "this_store": self.store_id,
                    "node_id": peer.node_id,
                    "url": peer.url,
                },
            )
            self._drop(name)
            return
        old = self._peers.get(name)
        self._peers[name] = peer
        if old is None:
            log.info("box found", extra={**peer.to_dict(), "service": name})
            self._emit(PeerChange("found", peer))
        elif old != peer:
            log.info("box changed", extra={**peer.to_dict(), "service": name})
            self._emit(PeerChange("updated", peer))

    def _drop(self, name: str) -> None:
        peer = self._peers.pop(name, None)
        if peer is not None:
            log.info("box lost", extra={"node_id": peer.node_id, "store_id": peer.store_id, "url": peer.url})
            self._emit(PeerChange("lost", peer))

    def _emit(self, change: PeerChange) -> None:
        for callback in list(self._callbacks):
            try:
                callback(change)
            except Exception:
                log.exception("a discovery change callback failed", extra={"change": change.kind})


# -- advertising a server -----------------------------------------------------------------------------
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - compared, never bound


def _probe_host(host: str) -> str:
    """A wildcard listener is reached on loopback; a specific one only on its own address."""
    return _WILDCARDS.get(host, host)


def addresses_for(host: str, pinned: Sequence[str]) -> tuple[str, ...] | None:
    """The addresses to advertise on, () for every LAN address, None when no handheld could connect.

    A box told to listen on one address is reachable there alone, so that is what it advertises.
    """
    if pinned or host in _WILDCARDS:
        return tuple(pinned)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()  # a host name: the LAN addresses are the best guess
    if address.is_loopback or address.version != 4:
        return None  # discovery hands out IPv4 URLs only
    return (host,)


async def wait_until_listening(host: str, port: int) -> None:
    """uvicorn runs the lifespan before it binds, so the port answering is the only sure sign."""
    target = _probe_host(host)
    started = asyncio.get_running_loop().time()
    warned = False
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout=1.0)
        except (OSError, TimeoutError):
            waited = asyncio.get_running_loop().time() - started
            if waited > LISTEN_WARN_S and not warned:
                log.warning("HTTP not listening yet; mDNS waits before advertising", extra={"port": port})
                warned = True
            await asyncio.sleep(LISTEN_POLL_S)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def advertise_when_listening(discovery: Discovery, advertisement: Advertisement, host: str) -> None:
    try:
        await wait_until_listening(host, advertisement.port)
        await discovery.advertise(advertisement)
    except (DiscoveryError, OSError, ZeroconfError):
        log.exception("mDNS advertisement failed; handhelds must be given this box's address")
