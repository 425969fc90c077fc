"""The calling side of box ⇄ box ⇄ HQ: signed requests over aiohttp, checked answers.

Every request is signed with this node's key; every answer must be signed by the node enrolled at
that URL, so a box on the wrong end of a hijacked address gets nothing applied. Errors come back as
``PeerError`` saying whether trying again later can help (network, 5xx, 408, 429) or a person must act
(wrong store, bad secret, a forged page). A ``PeerError`` is a ``replication.errors.ReplicationError``
whose ``retryable`` is set per instance, and a refusal is judged by ``replication.retry``'s rule, the
same one a handheld's sender follows.

Over https a link trusts one CA: the store CA for the store's boxes, HQ's CA for HQ
(``replication.wire.tls``). A peer whose certificate another CA signed is refused in the handshake,
which is a person's problem (``UNTRUSTED``), not the network's.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from replication.errors import ReplicationError
from replication.retry import retryable_status
from replication.wire import protocol
from replication.wire.hlc import wall_ms

TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)


class PeerError(ReplicationError):
    """Either branch: the same call fails for a dead network or for a forged answer, so the raiser says."""

    def __init__(self, code: str, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


@dataclass
class Me:
    node_id: str
    store_id: str
    key: Ed25519PrivateKey
    public_key: bytes
    url: str = ""


class PeerClient:
    """One remote node at one URL; ``public_key`` is known once a hello has checked out.

    ``trust`` is the only CA an https URL's certificate may chain to; without one the machine's
    trusted CAs decide (an HQ with a public certificate). An http URL ignores it.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str, me: Me, *, trust: ssl.SSLContext | None = None) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.me = me
        self.ssl: ssl.SSLContext | bool = trust if trust is not None else True
        self.node_id: str | None = None
        self.public_key: bytes | None = None

    async def _call(
        self,
        path: str,
        body: bytes,
        content_type: str,
        *,
        answer_key: bytes | None,
        timeout: aiohttp.ClientTimeout = TIMEOUT,
    ) -> bytes:
        headers = protocol.signed_headers(self.me.key, self.me.node_id, "POST", path, body, wall_ms())
        headers["Content-Type"] = content_type
        try:
            async with self.http.post(
                self.url + path, data=body, headers=headers, timeout=timeout, ssl=self.ssl
            ) as response:
                payload = await response.read()
                if response.status >= 400:
                    raise _refusal(response.status, payload)
                key = answer_key if answer_key is not None else self.public_key
                if key is None:
                    raise PeerError("NOT_ENROLLED", "no key for this peer yet", retryable=True)
                try:
                    signed = protocol.read_signature(response.headers)
                except protocol.ProtocolError as exc:
                    raise PeerError("BAD_SIGNATURE", f"answer is not signed: {exc}", retryable=False) from None
                problem = protocol.verify(key, signed, "POST", path, payload, wall_ms(), answer=True)
                if problem is not None:
                    raise PeerError("BAD_SIGNATURE", f"answer from {self.url}: {problem}", retryable=False)
                return payload
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _untrusted(self.url, exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError("UNREACHABLE", f"{self.url}: {exc!r}", retryable=True) from None

    async def hello(self, role: str, secret: str) -> dict[str, Any]:
        """Enrol with the node at this URL and check that it proves the same secret back."""
        proof = protocol.enrol_proof(secret, self.me.store_id, self.me.node_id, self.me.public_key)
        body = msgpack.packb(
            {
                "node_id": self.me.node_id,
                "store_id": self.me.store_id,
                "role": role,
                "public_key": self.me.public_key,
                "proof": proof,
                "url": self.me.url,
            },
            use_bin_type=True,
        )
        # The answer names the key it is signed with; the proof below is what makes that key trusted.
        headers = protocol.signed_headers(
            self.me.key, self.me.node_id, "POST", "/api/replication/hello", body, wall_ms()
        )
        headers["Content-Type"] = "application/msgpack"
        try:
            async with self.http.post(
                self.url + "/api/replication/hello", data=body, headers=headers, timeout=TIMEOUT, ssl=self.ssl
            ) as response:
                payload = await response.read()
                if response.status >= 400:
                    raise _refusal(response.status, payload)
                answer: dict[str, Any] = msgpack.unpackb(payload, raw=False)
                signed = protocol.read_signature(response.headers)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _untrusted(self.url, exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError("UNREACHABLE", f"{self.url}: {exc!r}", retryable=True) from None
        except (ValueError, protocol.ProtocolError) as exc:
            raise PeerError("BAD_HELLO", f"{self.url} answered hello with {exc}", retryable=False) from None
        key = bytes(answer["public_key"])
        if signed.node_id != answer["node_id"] or protocol.verify(
            key, signed, "POST", "/api/replication/hello", payload, wall_ms(), answer=True
        ):
            raise PeerError("BAD_SIGNATURE", f"{self.url} signed its hello badly", retryable=False)
        if answer["store_id"] != self.me.store_id:
            raise PeerError("WRONG_STORE", f"{self.url} serves store {answer['store_id']}", retryable=False)
        if not protocol.proof_ok(secret, self.me.store_id, answer["node_id"], key, bytes(answer["proof"])):
            raise PeerError("NOT_ENROLLED", f"{self.url} does not know this store's secret", retryable=False)
        self.node_id, self.public_key = str(answer["node_id"]), key
        return answer

    async def pull(self, vector: dict[str, int], limit: int) -> tuple[dict[str, Any], int]:
        body = msgpack.packb({"vector": vector, "limit": limit}, use_bin_type=True)
        payload = await self._call("/api/replication/pull", body, "application/msgpack", answer_key=None)
        try:
            return protocol.unpack_page(payload), len(payload)
        except protocol.ProtocolError as exc:
            raise PeerError("BAD_PAGE", str(exc), retryable=False) from None

    async def push(self, packed_page: bytes) -> dict[str, Any]:
        payload = await self._call("/api/replication/push", packed_page, protocol.MEDIA_TYPE, answer_key=None)
        answer: dict[str, Any] = msgpack.unpackb(payload, raw=False)
        return answer

    async def locks(self, body: bytes, timeout: aiohttp.ClientTimeout) -> dict[str, Any]:
        """A lock operation forwarded to the store's lock authority. A person waits on the answer, so
        the caller passes a timeout far shorter than a page transfer's."""
        payload = await self._call(
            "/api/replication/locks", body, "application/msgpack", answer_key=None, timeout=timeout
        )
        try:
            answer = msgpack.unpackb(payload, raw=False)
        except ValueError as exc:
            raise PeerError("BAD_ANSWER", f"{self.url} answered a lock operation with {exc}", retryable=False) from None
        if not isinstance(answer, dict):
            raise PeerError("BAD_ANSWER", f"{self.url} answered a lock operation with no map", retryable=False)
        return answer


def _untrusted(url: str, exc: aiohttp.ClientConnectorCertificateError) -> PeerError:
    """A certificate from another CA stays so however often it is asked: a person must look."""
    return PeerError("UNTRUSTED", f"{url} presented a certificate this box does not trust: {exc}", retryable=False)


def _refusal(status: int, payload: bytes) -> PeerError:
    """The peer's ``{code, message}``; a proxy's or a crashed server's page keeps its status as the code."""
    code, message = f"HTTP_{status}", payload[:200].decode("utf-8", "replace")
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("code"):
        code, message = str(body["code"]), str(body.get("message") or "")
    return PeerError(code, message, retryable=retryable_status(status, code), status=status)
