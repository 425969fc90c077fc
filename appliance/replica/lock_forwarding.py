"""Lock operations at a box that is not the store's lock authority travel to the box that is.

One box per store grants every rack claim and session lock (DESIGN §6), so every fencing token comes
from one sequence and two verifiers can never both win a rack. A claim, a holder's rack move or a
session lock made at another box is sent, node-signed, to the authority's
``POST /api/replication/locks``; the authority runs the same function of ``appliance.counting.locks`` for the
named person and answers with its result or its error, which this box hands on unchanged. A verifier
thus gets the same answer, holder's name included, whichever box their handheld talks to.

Which box is the authority is replicated state (``appliance.counting.authority``): the box the
store's newest designation names, reached over the replicator's link to that node (or at
``lock_authority_url``, an explicit pointer). No designation yet is ``LOCK_AUTHORITY_UNKNOWN``, two at
one epoch ``LOCK_AUTHORITY_CONFLICT``, never a guess: two boxes granting locks would hand one rack to
two people.

After a grant this box keeps a mirror of the lease in its own lease tables, so scans recorded here
carry the authority's token at once and the floor map shows the holder; it then pulls from the
authority straight away, so the rack's move event (and its state) is here before the answer leaves.
Heartbeats renew the mirror here and the lease at the authority. When the authority cannot be
reached within ``lock_forward_timeout_s`` the operation fails with ``LOCK_AUTHORITY_UNREACHABLE``;
scans under leases already held go on, as they need no grant.

Supervisors' force release and re-verify of a rack are events that need no grant, so they are
recorded at whichever box the supervisor uses and reach the authority by replication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from appliance.auth.people import User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.counting import locks
from appliance.counting.authority import CONFLICT, GRANTING, conflict_error
from appliance.errors import BadRequest, Forbidden, StockVerifyError, Unavailable, error_from
from replication.peers.client import PeerError
from replication.peers.replicator import Link, Replicator
from replication.wire.hlc import wall_ms

log = logging.getLogger(__name__)

# What each forwarded operation needs the person to be allowed, checked again at the authority.
PERMISSION = {
    "claim": "sessions.count",
    "move": "sessions.count",
    "lock_session": "sessions.count",
    "release_session": "sessions.count",
}


class LockOp(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One lock operation, as a handler asks for it and as it travels to the authority."""

    op: str  # claim | move | lock_session | release_session | renew
    user_id: str = ""  # whose operation; a device's renewal names no person
    run_id: str = ""
    rack: str = ""
    action: str = ""  # a rack move: start, pause, resume, finish, release
    session_id: str = ""
    device_id: str | None = None
    reason: str = ""
    force: bool = False


def apply(conn: sqlite3.Connection, box: Box, actor: User, op: LockOp) -> dict[str, Any]:
    """Run the operation here: the lock authority does this for its own people and forwarded ones alike."""
    ttl_ms = box.settings.lease_ttl_s * 1000
    # Checked in the write job, after any designation folded before it: a box that has just seen the
    # authority move away hands out no further token.
    box.authority.refuse_unless_granting()
    if op.op == "claim":
        return locks.claim_rack(
            conn,
            box.log,
            actor,
            run_id=op.run_id,
            rack_code=op.rack,
            session_id=op.session_id,
            device_id=op.device_id,
            ttl_ms=ttl_ms,
            authority=True,
        )
    if op.op == "move":
        return locks.move_rack(
            conn,
            box.log,
            actor,
            run_id=op.run_id,
            rack_code=op.rack,
            action=op.action,
            ttl_ms=ttl_ms,
            authority=True,
        )
    if op.op == "lock_session":
        return locks.lock_session(
            conn,
            box.log,
            actor,
            session_id=op.session_id,
            device_id=op.device_id or "",
            ttl_ms=ttl_ms,
            authority=True,
        )
    if op.op == "release_session":
        locks.release_session(conn, box.log, actor, session_id=op.session_id, reason=op.reason, force=op.force)
        return {"session_id": op.session_id, "lock": None}
    raise BadRequest(f"unknown lock operation {op.op!r}", code="BAD_LOCK_REQUEST")


async def perform(box: Box, forwarder: LockForwarder | None, actor: User, op: LockOp) -> dict[str, Any]:
    """What a lock route does: grant here at the authority, or forward and hand the answer on."""
    standing = box.authority.standing()
    if standing.role == GRANTING:
        return await box.db.awrite(lambda conn: apply(conn, box, actor, op))
    if standing.role == CONFLICT:
        raise conflict_error(standing)
    if forwarder is None:
        raise _unknown("this box does not grant locks and has no other box of the store to forward them to")
    return await forwarder.forward(op)


def renew_at_authority(
    forwarder: LockForwarder | None, *, user_id: str | None = None, device_id: str | None = None
) -> None:
    """After a heartbeat renewed this box's mirror, renew the leases at the authority too (in the
    background: a heartbeat is answered whether or not the authority is reachable)."""
    if forwarder is not None:
        forwarder.renew_soon(user_id=user_id, device_id=device_id)


# -- at the authority -------------------------------------------------------------------------------
def decode(body: bytes) -> LockOp:
    try:
        op = msgspec.msgpack.decode(body, type=LockOp)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"not a lock operation: {exc}", code="BAD_LOCK_REQUEST") from None
    if op.op not in PERMISSION and op.op != "renew":
        raise BadRequest(f"unknown lock operation {op.op!r}", code="BAD_LOCK_REQUEST")
    return op


def check_caller(box: Box, caller: sqlite3.Row) -> None:
    """Only another box of this very store may act for its people here."""
    if box.node.role == "hq":
        raise Forbidden("HQ grants no store's locks", code="NOT_LOCK_AUTHORITY")
    if caller["role"] != "box" or caller["store_id"] != box.node.store_id:
        raise Forbidden(
            f"node {caller['node_id']} is not a box of store {box.node.store_id}", code="WRONG_STORE", details=None
        )


def _person(conn: sqlite3.Connection, user_id: str) -> User:
    row = conn.execute(
        "SELECT user_id, username, display_name, role, active FROM users WHERE user_id = ?", (user_id,)
    ).fetchone()
    if row is None:
        # Users are events: one added at another box a moment ago may not have been pulled here yet.
        raise Unavailable(
            "the lock authority box does not know this person yet; try again in a moment",
            code="USER_UNKNOWN_AT_AUTHORITY",
            details={"user_id": user_id, "retry_after_s": 1},
        )
    if not row["active"]:
        raise Forbidden("this account is not active", code="USER_INACTIVE")
    return User(row["user_id"], row["username"], row["display_name"], row["role"])


def grant(conn: sqlite3.Connection, box: Box, op: LockOp) -> dict[str, Any]:
    """A forwarded operation, in one write job at the authority: the person looked up here (their role
    as this box knows it), their permission checked again, then the same function as for a local claim."""
    box.authority.refuse_unless_granting()
    if op.op == "renew":  # extends only leases already granted to that person or device; grants nothing
        if not (op.user_id or op.device_id):
            raise BadRequest("a renewal names a person or a device", code="BAD_LOCK_REQUEST")
        ttl_ms = box.settings.lease_ttl_s * 1000
        return {"renewed": locks.renew(conn, ttl_ms=ttl_ms, device_id=op.device_id, user_id=op.user_id or None)}
    actor = _person(conn, op.user_id)
    permission = "sessions.manage" if op.force else PERMISSION[op.op]
    if not allowed(permission, actor.role):
        raise Forbidden(
            f"a {actor.role} may not do this ({permission})", details={"permission": permission, "role": actor.role}
        )
    return apply(conn, box, actor, op)


async def answer(box: Box, caller: sqlite3.Row, body: bytes) -> dict[str, Any]:
    """The authority's answer to a forwarded operation: ``{"ok": result}`` or ``{"error": {status, code,
    message, details}}``. A refusal travels inside the signed answer, so the forwarding box can tell
    "the authority said no" (hand it on) from "the authority could not be asked" (its own error)."""
    check_caller(box, caller)
    op = decode(body)
    try:
        result = await box.db.awrite(lambda conn: grant(conn, box, op))
    except StockVerifyError as exc:
        log.debug(
            "forwarded lock operation refused",
            extra={"op": op.op, "peer": caller["node_id"], "user_id": op.user_id, "code": exc.code},
        )
        return {"error": {"status": exc.status, **exc.to_dict()}}
    log.debug("forwarded lock operation granted", extra={"op": op.op, "peer": caller["node_id"], "user_id": op.user_id})
    return {"ok": result}


# -- at the forwarding box --------------------------------------------------------------------------
def mirror(conn: sqlite3.Connection, op: LockOp, result: dict[str, Any], ttl_ms: int) -> None:
    """Keep here what the authority granted, so that this box's scans carry its token, its floor map
    shows the holder, and its heartbeats keep the lease alive here as they do at the authority."""
    expires_at = wall_ms() + ttl_ms
    if op.op == "lock_session":
        conn.execute(
            "INSERT OR REPLACE INTO session_locks (session_id, user_id, device_id, token, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (op.session_id, result["user_id"], result["device_id"], result["token"], expires_at),
        )
        return
    if op.op == "release_session":
        conn.execute("DELETE FROM session_locks WHERE session_id = ?", (op.session_id,))
        return
    rack = conn.execute("SELECT rack_id FROM racks WHERE code = ?", (op.rack.strip().upper(),)).fetchone()
    if rack is None:
        return  # the layout has not reached this box yet; the next pull brings it, and the board with it
    if op.op == "claim":
        conn.execute(
            "INSERT OR REPLACE INTO rack_leases (run_id, rack_id, session_id, user_id, device_id, token, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (op.run_id, rack["rack_id"], op.session_id, op.user_id, op.device_id, result["token"], expires_at),
        )
    elif result.get("state") in ("completed", "available"):
        conn.execute("DELETE FROM rack_leases WHERE run_id = ? AND rack_id = ?", (op.run_id, rack["rack_id"]))
    else:
        conn.execute(
            "UPDATE rack_leases SET expires_at = ? WHERE run_id = ? AND rack_id = ?",
            (expires_at, op.run_id, rack["rack_id"]),
        )


def _unknown(message: str, details: Any = None) -> Unavailable:
    return Unavailable(message, code="LOCK_AUTHORITY_UNKNOWN", details=details)


class LockForwarder:
    """Sends this box's lock operations to the authority over the replicator's signed links."""

    def __init__(self, box: Box, replicator: Callable[[], Replicator | None], loop: asyncio.AbstractEventLoop) -> None:
        self.box = box
        self._replicator = replicator
        self._loop = loop
        self.timeout_s = box.settings.lock_forward_timeout_s
        self._http_timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._renewals: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._renew_failing = False
        self._closed = False

    async def forward(self, op: LockOp) -> dict[str, Any]:
        link = self._authority_link()
        started = self._loop.time()
        answer = await self._ask(link, op)
        error = answer.get("error")
        if isinstance(error, dict) and error.get("code") == "NOT_LOCK_AUTHORITY":
            # The authority moved and only that box has heard yet: its log says where to, so fetch it
            # and ask the box the newer designation names, once.
            await self._catch_up(link)
            moved = self._authority_link()
            if moved is link:
                if self.box.settings.lock_authority_url:
                    raise _unknown(
                        f"the box at {link.url} (lock_authority_url) does not grant the store's locks: point"
                        " lock_authority_url at the box that does, or leave it empty to follow the store's designation",
                        details={"url": link.url},
                    )
                raise _unknown("the box that granted the store's locks no longer does; try again in a moment")
            link = moved
            answer = await self._ask(link, op)
            error = answer.get("error")
        if isinstance(error, dict):
            raise error_from(
                int(error.get("status") or 500),
                str(error.get("code") or "INTERNAL"),
                str(error.get("message") or ""),
                error.get("details"),
            )
        result = answer.get("ok")
        if not isinstance(result, dict):
            raise Unavailable(
                f"the lock authority at {link.url} answered in a form this box does not know",
                code="LOCK_AUTHORITY_REFUSED",
                details={"url": link.url},
            )
        ttl_ms = self.box.settings.lease_ttl_s * 1000
        await self.box.db.awrite(lambda conn: mirror(conn, op, result, ttl_ms))
        await self._catch_up(link)
        log.debug(
            "lock operation forwarded",
            extra={"op": op.op, "authority": link.url, "ms": round((self._loop.time() - started) * 1000, 1)},
        )
        return result

    def _authority_link(self) -> Link:
        replicator = self._replicator()
        if replicator is None:
            raise _unknown("this box does not grant locks and knows no other box of the store to forward them to")
        if self.box.settings.lock_authority_url:
            return replicator.peer_link(self.box.settings.lock_authority_url)
        standing = self.box.authority.standing()
        node_id = standing.node_id
        if standing.role == CONFLICT:
            raise conflict_error(standing)
        if node_id is None:
            raise _unknown(
                "no box of this store has been designated the lock authority, or its designation has not reached"
                " this box yet: check that this box reaches the store's other boxes (peers, mDNS)"
            )
        found: Link | None = None
        for link in replicator.peer_links():
            if link.client.node_id == node_id and (found is None or (found.failing and not link.failing)):
                found = link  # one box found at two addresses: the one that answers
        if found is not None:
            return found
        # Known only by replication through another box: the address it gave when it enrolled here.
        row = self.box.db.read().execute("SELECT url FROM peers WHERE node_id = ?", (node_id,)).fetchone()
        if row is not None and row[0]:
            return replicator.peer_link(str(row[0]))
        raise _unknown(
            f"the store's lock authority is box {node_id} (epoch {standing.epoch}), which this box has no address"
            " for yet: add it to peers, or set lock_authority_url",
            details={"authority": node_id, "epoch": standing.epoch},
        )

    async def _ask(self, link: Link, op: LockOp) -> dict[str, Any]:
        """One signed request to the authority, enrolling first if need be, all within the timeout."""
        body = msgspec.msgpack.encode(op)
        retried = False
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    try:
                        if link.client.node_id is None or link.client.public_key is None:
                            await self._enrol(link)
                        return await link.client.locks(body, self._http_timeout)
                    except PeerError as exc:
                        if exc.code == "NOT_ENROLLED" and not retried and link.client.node_id is not None:
                            retried = True  # the authority forgot this box (restored from a backup): hello again
                            link.client.node_id = None
                            continue
                        raise
        except TimeoutError:
            raise self._unreachable(link, f"no answer within {self.timeout_s:g} s") from None
        except PeerError as exc:
            if exc.code == "UNREACHABLE" or (exc.status or 0) >= 500 or exc.status in (408, 429):
                raise self._unreachable(link, exc.message, exc.code) from None
            raise Unavailable(
                f"the lock authority at {link.url} refused this box: {exc.message}",
                code="LOCK_AUTHORITY_REFUSED",
                details={"url": link.url, "reason": exc.code},
            ) from None

    async def _enrol(self, link: Link) -> None:
        replicator = self._replicator()
        if replicator is None:
            raise PeerError("NOT_ENROLLED", "replication has stopped", retryable=True)
        await replicator.enrol(link)

    def _unreachable(self, link: Link, why: str, reason: str = "TIMEOUT") -> Unavailable:
        return Unavailable(
            f"the lock authority box cannot be reached ({why}); scanning under racks already held goes on",
            code="LOCK_AUTHORITY_UNREACHABLE",
            details={"url": link.url, "reason": reason, "timeout_s": self.timeout_s},
        )

    async def _catch_up(self, link: Link) -> None:
        """Pull the grant's event now, so the rack's state is here before the person's answer leaves."""
        replicator = self._replicator()
        if replicator is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await replicator.pull_now(link)
        except (TimeoutError, PeerError) as exc:
            log.debug("the grant's events come with the next exchange", extra={"peer": link.url, "error": str(exc)})

    # -- heartbeats ------------------------------------------------------------------------------
    def renew_soon(self, *, user_id: str | None = None, device_id: str | None = None) -> None:
        """Thread-safe: device heartbeats are answered on worker threads."""
        op = LockOp("renew", user_id=user_id or "", device_id=device_id)
        with contextlib.suppress(RuntimeError):  # the loop has closed: the box is stopping
            self._loop.call_soon_threadsafe(self._start_renewal, op)

    def _start_renewal(self, op: LockOp) -> None:
        key = (op.user_id, op.device_id or "")
        if self._closed or key in self._renewals:
            return  # one renewal in flight per person or device is enough
        task = asyncio.create_task(self._renew(op), name=f"lease-renewal {key[0] or key[1]}")
        self._renewals[key] = task
        task.add_done_callback(lambda _done: self._renewals.pop(key, None))

    async def _renew(self, op: LockOp) -> None:
        problem: str | None = None
        try:
            answer = await self._ask(self._authority_link(), op)
            error = answer.get("error")
            if isinstance(error, dict):
                problem = f"{error.get('code')}: {error.get('message')}"
        except StockVerifyError as exc:
            problem = f"{exc.code}: {exc.message}"
        if problem is None:
            if self._renew_failing:
                log.info("leases are renewed at the lock authority again")
            self._renew_failing = False
            return
        (log.debug if self._renew_failing else log.warning)(
            "leases could not be renewed at the lock authority: %s", problem, extra={"op": "renew"}
        )
        self._renew_failing = True

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._renewals.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
