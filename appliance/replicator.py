"""The box's background exchanges: pull from the store's other boxes, push to and pull from HQ.

Every box pulls from every peer it knows (the ``peers`` setting and those mDNS finds), so two boxes
that can see each other converge within one pull interval whichever way the events flowed. HQ cannot
reach into a store, so a store box pushes up to HQ and pulls down from it (the product master and
planned runs HQ wrote, and the events of this store's other boxes HQ already holds).

A peer on the LAN is retried every fraction of a second, because a store's Wi-Fi drops and comes
back often; HQ, behind an uplink that may be gone for days, is retried with backoff from 2 s to
5 min. Each failure is logged once at warning level and then at debug until the link comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
from litestar import Litestar

from appliance import counters, replicas
from appliance.box import Box
from appliance.eventlog import version_vector
from replication import protocol
from replication.peer_client import Me, PeerClient, PeerError
from replication.sender import Backoff

log = logging.getLogger(__name__)

PAGE_EVENTS = 2000
PEER_BACKOFF = (0.1, 0.5)
HQ_BACKOFF = (2.0, 300.0)


@dataclass
class Link:
    url: str
    kind: str  # "peer" or "hq"
    client: PeerClient
    backoff: Backoff
    due: float = 0.0
    their: dict[str, int] = field(default_factory=dict)  # HQ: what it holds (log) or covers (counters)
    failing: bool = False


class Replicator:
    def __init__(
        self, box: Box, http: aiohttp.ClientSession, discovered: Callable[[], list[str]] | None = None
    ) -> None:
        self.box = box
        self.http = http
        self.settings = box.settings
        self._discovered = discovered or (lambda: [])
        self._links: dict[str, Link] = {}
        self._rng = random.Random()
        node = box.node
        self.me = Me(node.node_id, node.store_id, node.key, node.public_key, self.settings.public_url)
        self.rounds = 0

    def _targets(self) -> dict[str, str]:
        wanted = dict.fromkeys((*self.settings.peers, *self._discovered()), "peer")
        if self.settings.hq_url:
            wanted[self.settings.hq_url] = "hq"
        return wanted

    def _link(self, url: str, kind: str) -> Link:
        link = self._links.get(url)
        if link is None or link.kind != kind:
            base, ceiling = HQ_BACKOFF if kind == "hq" else PEER_BACKOFF
            link = Link(url, kind, PeerClient(self.http, url, self.me), Backoff(base, ceiling, self._rng))
            self._links[url] = link
        return link

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = [self._link(url, kind) for url, kind in self._targets().items()]
            due = [link for link in due if link.due <= now]
            if due:
                await asyncio.gather(*(self._exchange(link) for link in due))
            self.rounds += 1
            upcoming = [link.due for link in self._links.values()] or [now + self.settings.replicate_every_s]
            await asyncio.sleep(max(0.02, min(min(upcoming) - loop.time(), self.settings.replicate_every_s)))

    async def _exchange(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            if link.client.node_id is None:
                await self._hello(link)
            await self._pull(link)
            if link.kind == "hq":
                await self._push(link)
        except PeerError as exc:
            if exc.code == "NOT_ENROLLED" and link.client.node_id is not None:
                link.client.node_id = None  # the other side forgot us (a restored box): enrol again
            delay = link.backoff.next_delay()
            link.due = loop.time() + delay
            (log.debug if link.failing else log.warning)(
                "replication with %s failed: %s; next try in %.1f s", link.url, exc, delay,
                extra={"peer": link.url, "code": exc.code, "retryable": exc.retryable},
            )  # fmt: skip
            link.failing = True
            node_id, error = link.client.node_id, str(exc)
            if node_id is not None:
                await self.box.db.awrite(lambda conn: replicas.note_failure(conn, node_id, error))
            return
        if link.failing:
            log.info("replication with %s is back", link.url, extra={"peer": link.url})
        link.failing = False
        link.backoff.reset()
        link.due = loop.time() + self.settings.replicate_every_s

    async def _hello(self, link: Link) -> None:
        secret = self.settings.hq_secret if link.kind == "hq" else self.settings.store_secret
        answer = await link.client.hello("box", secret)
        node_id, key = str(answer["node_id"]), bytes(answer["public_key"])
        if node_id == self.me.node_id:
            link.client.node_id = None
            raise PeerError("SELF", f"{link.url} is this box itself", retryable=False)
        expected = "hq" if link.kind == "hq" else "box"
        if answer.get("role") != expected:
            link.client.node_id = None
            raise PeerError("WRONG_ROLE", f"{link.url} is a {answer.get('role')}, not a {expected}", retryable=False)
        store_id = self.me.store_id
        await self.box.db.awrite(lambda conn: replicas.enrol_peer(conn, node_id, store_id, expected, key, link.url))
        if link.kind == "hq":
            link.their = dict(answer["covered"] if self.settings.hq_mode == counters.MODE else answer["vector"])
        log.info("enrolled with %s", link.url, extra={"peer": link.url, "node_id": node_id, "role": expected})

    async def _pull(self, link: Link) -> None:
        node_id = link.client.node_id
        store_id = self.me.store_id
        while True:
            vector = await asyncio.to_thread(lambda: version_vector(self.box.db.read()))
            page, nbytes = await link.client.pull(vector, PAGE_EVENTS)

            def apply(conn: Any, page: dict[str, Any] = page, nbytes: int = nbytes) -> int:
                return replicas.apply_page(conn, self.box.log, store_id, page, node_id, nbytes)

            try:
                applied = await self.box.db.awrite(apply)
            except Exception as exc:  # a page we cannot apply is a person's problem, not a retry loop's
                code = getattr(exc, "code", type(exc).__name__)
                raise PeerError(code, f"page from {link.url} refused: {exc}", retryable=False) from exc
            if applied:
                log.debug("pulled %d events from %s", applied, link.url)
            if not page.get("more"):
                return

    async def _push(self, link: Link) -> None:
        node_id = link.client.node_id
        assert node_id is not None
        counter_mode = self.settings.hq_mode == counters.MODE
        while True:
            page, sent = await asyncio.to_thread(self._outgoing, link.their, counter_mode)
            if page is None:
                return
            packed = protocol.pack_page(page)
            answer = await link.client.push(packed)
            link.their = dict(answer["covered"] if counter_mode else answer["vector"])
            noted = partial(
                replicas.note_exchange, node_id=node_id, their_vector=link.their, events_out=sent, bytes_out=len(packed)
            )
            await self.box.db.awrite(noted)
            if counter_mode or not page.get("more"):
                return

    def _outgoing(self, their: dict[str, int], counter_mode: bool) -> tuple[dict[str, Any] | None, int]:
        """The next page HQ lacks (and how many events or rows it carries), or None when it has all."""
        conn, store_id = self.box.db.read(), self.me.store_id
        if counter_mode:
            page = counters.export(conn, store_id, their)
            if page["vector"] == their:
                return None, 0
            return page, sum(len(page[k]) for k in ("scan_counts", "damage_counts", "item_attrs", "sessions"))
        page = replicas.delta(conn, store_id, their, PAGE_EVENTS)
        return (page, len(page["events"])) if page["events"] else (None, 0)


@asynccontextmanager
async def replication_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run the exchanges while the server runs; HQ and a box with nobody to talk to run none."""
    box: Box = app.state.box
    settings = box.settings
    if box.node.role == "hq" or not (settings.peers or settings.hq_url or getattr(settings, "mdns", False)):
        yield
        return

    def discovered() -> list[str]:
        discovery = getattr(app.state, "discovery", None)
        return [p.url for p in discovery.peers()] if discovery is not None else []

    async with aiohttp.ClientSession() as http:
        replicator = Replicator(box, http, discovered)
        app.state.replicator = replicator
        task = asyncio.create_task(replicator.run(), name="replicator")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
