"""A replica's background exchanges: pull from the store's other boxes, push to and pull from HQ.

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
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from replication.peers.client import Me, PeerClient, PeerError
from replication.peers.store import COUNTERS, LOG, LinkSettings, ReplicaStore
from replication.retry import Backoff
from replication.wire import protocol, vectors

log = logging.getLogger(__name__)

PAGE_EVENTS = 5000
Outgoing = tuple[dict[str, Any], bytes, int]  # a page, its packed bytes, how many events or rows it carries
PEER_BACKOFF = (0.05, 0.15)
PUSH_WINDOW = 2  # pages on their way to HQ at once
HQ_BACKOFF = (2.0, 300.0)
FAILURE_NOTE_EVERY_S = 60.0  # a peer that stays down: its status row is rewritten this often, not per retry


@dataclass
class Link:
    url: str
    kind: str  # "peer" or "hq"
    client: PeerClient
    backoff: Backoff
    due: float = 0.0
    their: dict[str, int] = field(default_factory=dict)  # HQ: what it holds (log) or covers (counters)
    failing: bool = False
    lock_authority: bool = False  # its last hello said it grants the store's locks
    lock_epoch: int = 0  # the epoch of the store's lock authority as its last hello gave it
    noted: tuple[str, float] | None = None  # the code of the failure last written to its status row, and when


class Replicator:
    def __init__(
        self,
        me: Me,
        store: ReplicaStore,
        settings: LinkSettings,
        http: aiohttp.ClientSession,
        discovered: Callable[[], list[str]] | None = None,
        hello_heard: Callable[[str, bool, int], None] | None = None,
        *,
        store_trust: ssl.SSLContext | None = None,
        hq_trust: ssl.SSLContext | None = None,
    ) -> None:
        self.me = me
        # The CA each kind of link trusts over https: the store's for its boxes, HQ's for HQ.
        self._trust = {"peer": store_trust, "hq": hq_trust}
        # Told of every peer's hello answer (node id, whether it grants locks, at which epoch): a box
        # that grants learns at once that another box of the store says it does too.
        self._hello_heard = hello_heard
        self.store = store
        self.settings = settings
        self.http = http
        self._discovered = discovered or (lambda: [])
        self._links: dict[str, Link] = {}
        self._rng = random.Random()
        # Per writer, the highest seq of pages received and queued for the writer thread but perhaps
        # not yet committed. Pulls ask from here, so that two peers relaying the same third box's
        # events do not both send them; forgotten when a page fails, and the next pull asks from disk.
        self._coming: dict[str, int] = {}

    def _targets(self) -> dict[str, str]:
        wanted = dict.fromkeys((*self.settings.peers, *self._discovered()), "peer")
        if self.settings.lock_authority_url:  # its grants must reach this box's floor map too
            wanted[self.settings.lock_authority_url] = "peer"
        if self.settings.hq_url:
            wanted[self.settings.hq_url] = "hq"
        return wanted

    def _link(self, url: str, kind: str) -> Link:
        link = self._links.get(url)
        if link is None or link.kind != kind:
            base, ceiling = HQ_BACKOFF if kind == "hq" else PEER_BACKOFF
            client = PeerClient(self.http, url, self.me, trust=self._trust[kind])
            link = Link(url, kind, client, Backoff(base, ceiling, self._rng))
            self._links[url] = link
        return link

    def peer_links(self) -> list[Link]:
        """The links to the store's other boxes this box exchanges with now (a box mDNS lost is left out)."""
        return [link for url, kind in self._targets().items() if kind == "peer" and (link := self._links.get(url))]

    def peer_link(self, url: str) -> Link:
        return self._link(url, "peer")

    async def enrol(self, link: Link) -> None:
        """Say hello now rather than at the link's next exchange (a claim is waiting on it)."""
        await self._hello(link)

    async def pull_now(self, link: Link) -> None:
        """Fetch what the peer holds at once; safe beside the regular exchange, as applying a page twice
        changes nothing."""
        await self._pull(link)

    async def run(self) -> None:
        """Follow every link in a task of its own, so that a long catch-up with one peer never holds
        back the retry or the exchange with another; look for new and vanished targets meanwhile."""
        followers: dict[str, tuple[Link, asyncio.Task[None]]] = {}
        try:
            while True:
                targets = self._targets()
                for url, kind in targets.items():
                    link = self._link(url, kind)
                    known = followers.get(url)
                    if known is None or known[0] is not link or known[1].done():
                        if known is not None:
                            known[1].cancel()
                        followers[url] = (link, asyncio.create_task(self._follow(link), name=f"replicate:{url}"))
                for url in [url for url in followers if url not in targets]:
                    followers.pop(url)[1].cancel()
                await asyncio.sleep(self.settings.replicate_every_s)
        finally:
            for _link, task in followers.values():
                task.cancel()
            await asyncio.gather(*(task for _link, task in followers.values()), return_exceptions=True)

    async def _follow(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, link.due - loop.time()))
            try:
                await self._exchange(link)
            except Exception:  # a bug or a full disk: say so, and try again later rather than stop for good
                log.exception("replication with %s failed unexpectedly", link.url, extra={"peer": link.url})
                link.due = loop.time() + link.backoff.next_delay()

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
            # Written when the failure starts or changes and then once a minute: a peer retried every
            # fraction of a second would otherwise cost a committed write (an fsync on the box's SD
            # card) per retry for as long as it is down.
            fresh = (
                link.noted is None or link.noted[0] != exc.code or loop.time() - link.noted[1] >= FAILURE_NOTE_EVERY_S
            )
            if node_id is not None and fresh:
                await self.store.note_failure(node_id, error)
                link.noted = (exc.code, loop.time())
            return
        if link.failing:
            log.info("replication with %s is back", link.url, extra={"peer": link.url})
        link.failing = False
        link.noted = None
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
        if not self.store.is_enrolled(node_id, store_id, expected, key, link.url):
            await self.store.enrol(node_id, store_id, expected, key, link.url)
        link.lock_authority = link.kind == "peer" and answer.get("lock_authority") is True
        epoch = answer.get("lock_epoch")
        link.lock_epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
        if link.kind == "peer" and self._hello_heard is not None:
            self._hello_heard(node_id, link.lock_authority, link.lock_epoch)
        if link.kind == "hq":
            link.their = dict(answer["covered"] if self.settings.hq_mode == COUNTERS else answer["vector"])
        log.info(
            "enrolled with %s",
            link.url,
            extra={"peer": link.url, "node_id": node_id, "role": expected, "lock_authority": link.lock_authority},
        )

    async def _pull(self, link: Link) -> None:
        """Fetch pages until the peer has nothing more. The next page is asked for while this one is
        applied (the vector it is asked with is the one this page will leave), so the peer builds and
        sends while this box writes; a page that fails to apply cancels the one in flight."""
        node_id = link.client.node_id
        assert node_id is not None
        vector = await asyncio.to_thread(self.store.vector)
        fetch = asyncio.ensure_future(link.client.pull(self._ahead(vector), PAGE_EVENTS))
        try:
            while True:
                page, nbytes = await fetch
                more = bool(page.get("more"))
                if more:
                    vector = vectors.after_page(vector, page)
                    fetch = asyncio.ensure_future(link.client.pull(self._ahead(vector), PAGE_EVENTS))
                # Noted and handed to the store in one step of the loop: a page another pull asks for
                # from this vector is queued behind this one.
                self._coming = vectors.after_page(self._coming, page)
                try:
                    applied = await self.store.apply_page(page, node_id, nbytes)
                except Exception as exc:
                    # A page this store refuses is a person's problem, not a retry loop's; unless the
                    # store says the trouble is its own and passes (a 5xx-class status: a full disk).
                    self._coming = {}
                    code = getattr(exc, "code", type(exc).__name__)
                    passing = getattr(exc, "status", 0) >= 500
                    raise PeerError(code, f"page from {link.url} refused: {exc}", retryable=passing) from exc
                if applied:
                    log.debug("pulled %d events from %s", applied, link.url)
                if not more:
                    return
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, PeerError):
                    await fetch

    def _ahead(self, vector: dict[str, int]) -> dict[str, int]:
        """``vector`` with the pages already on their way to this box's disk counted in."""
        return vectors.join(vector, self._coming)

    async def _push(self, link: Link) -> None:
        """Send HQ what it lacks, keeping PUSH_WINDOW pages on their way: while HQ writes one it decodes
        the next, and meanwhile this box reads and packs the one after (from the vector HQ will hold
        once those are in). Answers are taken in order; a page that fails cancels those behind it."""
        node_id = link.client.node_id
        assert node_id is not None
        counter_mode = self.settings.hq_mode == COUNTERS
        assumed = dict(link.their)
        outgoing = await asyncio.to_thread(self._outgoing, assumed, counter_mode)
        window: deque[tuple[asyncio.Future[dict[str, Any]], int, int]] = deque()
        try:
            while outgoing is not None or window:
                while outgoing is not None and len(window) < (1 if counter_mode else PUSH_WINDOW):
                    page, packed, sent = outgoing
                    window.append((asyncio.ensure_future(link.client.push(packed)), len(packed), sent))
                    more = not counter_mode and bool(page.get("more"))
                    if more:
                        assumed = vectors.after_page(assumed, page)
                    outgoing = await asyncio.to_thread(self._outgoing, assumed, False) if more else None
                sending, nbytes, sent = window.popleft()
                answer = await sending
                link.their = dict(answer["covered"] if counter_mode else answer["vector"])
                # Status bookkeeping only: committed with the next write, never waited for.
                self.store.note_sent(node_id, link.their, sent, nbytes)
        finally:
            for sending, _nbytes, _sent in window:
                sending.cancel()
            await asyncio.gather(*(sending for sending, _nbytes, _sent in window), return_exceptions=True)

    def _outgoing(self, their: dict[str, int], counter_mode: bool) -> Outgoing | None:
        """The next page HQ lacks, packed, and how many events or rows it carries; None when it has all."""
        found = self.store.next_page(their, COUNTERS if counter_mode else LOG, PAGE_EVENTS)
        if found is None:
            return None
        page, sent = found
        return page, protocol.pack_page(page), sent
