"""The network edge of a device: the box's sync endpoints over aiohttp, msgpack in and out.

Everything aiohttp can raise stops here and comes out as one of ours, so the sender decides what to
do from the class alone (docs/sync-protocol.md §4)::

    SyncError                 anything that kept a request from being answered with 2xx
    ├── Retryable             the network, a timeout, 5xx, 408, 429: try again after a backoff
    └── NeedsPerson           the box refused the request as such: stop and show it
        └── PayloadTooLarge   413: the sender may split the batch instead of stopping

Each carries the HTTP ``status`` (0 when there was no answer) and the box's ``code``. They hang under
``replication.errors`` (``Retryable`` is also an ``errors.Retryable``, ``NeedsPerson`` an
``errors.NeedsPerson``), and which refusals are retryable is ``replication.retry``'s rule, the one the
peer client follows too.

One ``aiohttp.ClientSession`` per process (``open_session``), handed to every call: it pools the
connections, so two batches in flight reuse two kept-alive sockets instead of a handshake each.

Over https the session trusts the one CA the device was given at pairing (``fetch_ca`` checks it
against the fingerprint a person read off the box or its pairing QR), never the device's whole trust
store: a box whose certificate another CA signed is refused as ``UNTRUSTED_BOX``, a ``NeedsPerson``,
since no retry makes that certificate the store's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from replication import errors
from replication.retry import retryable_status
from replication.wire import tls
from replication.wire.codec import Event, pack, sign_chain_head

MSGPACK = "application/msgpack"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=5, sock_connect=5, sock_read=30)
PLAIN_PORT = 8080  # where a box serves its CA in the clear, unless the pairing QR says otherwise


class SyncError(errors.ReplicationError):
    """A request the box did not answer with success."""

    def __init__(
        self, message: str, *, status: int = 0, code: str = "NETWORK", details: Any = None, retry_after: float = 0
    ) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.retry_after = retry_after


class Retryable(SyncError, errors.Retryable):
    """Nothing is wrong with the request; the way to the box or the box itself is not well now."""


class NeedsPerson(SyncError, errors.NeedsPerson):
    """Sending it again will get the same answer; someone has to look (pair again, fix, ask)."""


class PayloadTooLarge(NeedsPerson):
    """The body is over the box's ``max_request_bytes``; smaller batches will pass."""


def open_session(
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT, *, connections: int = 4, ca_pem: bytes | str | None = None
) -> aiohttp.ClientSession:
    """The process's one client session. Close it (``async with``) when the process ends.

    ``ca_pem`` is the CA the box was paired with: https URLs are then trusted to it alone. Without
    one, the device's trusted CAs decide (a box with a retailer's certificate from a public CA).
    """
    trust = tls.pinned_context(ca_pem) if ca_pem else True
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=aiohttp.TCPConnector(limit=connections, ssl=trust),
        headers={"Accept": f"{MSGPACK}, application/json"},
        raise_for_status=False,
    )


def _device(token: str) -> dict[str, str]:
    return {"Authorization": f"Device {token}"}


def _decode(body: bytes, content_type: str) -> Any:
    if content_type.startswith(MSGPACK):
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    return json.loads(body)


def _failure(status: int, body: Any, reason: str, retry_after: float) -> SyncError:
    fields = body if isinstance(body, dict) else {}
    code = str(fields.get("code") or f"HTTP_{status}")
    message = str(fields.get("message") or fields.get("detail") or reason)
    details = fields.get("details")
    if retryable_status(status, code):
        return Retryable(message, status=status, code=code, details=details, retry_after=retry_after)
    if status == 413:
        return PayloadTooLarge(message, status=status, code=code, details=details)
    return NeedsPerson(message, status=status, code=code, details=details)


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """One call to the box, in msgpack unless ``as_json`` (pairing, which is not a sync request); the
    answer's map, or a ``SyncError``."""
    headers = {**(_device(token) if token else {}), "Accept": "application/json" if as_json else MSGPACK}
    data = None
    if body is not None:
        data = json.dumps(body).encode() if as_json else pack(body)
        headers["Content-Type"] = "application/json" if as_json else MSGPACK
    try:
        async with http.request(method, url, data=data, params=params, headers=headers) as answer:
            raw = await answer.read()
            content_type = answer.headers.get("Content-Type", "")
            status = answer.status
            reason = answer.reason or ""
            retry_after = _seconds(answer.headers.get("Retry-After"))
    except TimeoutError as exc:
        raise Retryable(f"no answer from {url} in time", code="TIMEOUT") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        raise NeedsPerson(
            f"{url} presented a certificate the store CA this device paired with did not sign: not this store's"
            f" box, or its certificate was replaced; do not send to it ({exc.certificate_error})",
            code="UNTRUSTED_BOX",
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise Retryable(f"{type(exc).__name__}: {exc}", code="NETWORK") from exc
    try:
        decoded = _decode(raw, content_type) if raw else None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # Not the box talking (a captive portal, a proxy page) or a box cut off mid-answer.
        if 200 <= status < 300:
            raise Retryable(f"the answer from {url} could not be read", status=status, code="BAD_ANSWER") from exc
        decoded = None
    if 200 <= status < 300:
        if not isinstance(decoded, dict):
            raise Retryable(f"the answer from {url} is not a map", status=status, code="BAD_ANSWER")
        return decoded
    raise _failure(status, decoded, reason, retry_after)


def _seconds(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value else 0.0
    except ValueError:
        return 0.0


def _url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def ca_url(box_url: str, plain_port: int = PLAIN_PORT) -> str:
    """Where the box at ``box_url`` serves its CA in the clear: the same host, the plain port."""
    host = urlsplit(box_url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{plain_port}/ca.pem"


async def fetch_ca(http: aiohttp.ClientSession, url: str, fingerprint: str) -> bytes:
    """The box's CA, fetched over plain HTTP and kept only if it has the fingerprint a person read off
    the box's /ca page or its pairing QR: anyone on the LAN could answer a plain request."""
    try:
        async with http.get(url, headers={"Accept": "application/x-x509-ca-cert"}) as answer:
            body = await answer.read()
            status = answer.status
    except TimeoutError as exc:
        raise Retryable(f"no answer from {url} in time", code="TIMEOUT") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise Retryable(f"{type(exc).__name__}: {exc}", code="NETWORK") from exc
    if status != 200:
        raise NeedsPerson(f"{url} answered {status}, not the store CA", status=status, code="NO_CA")
    try:
        return tls.check_ca(body, fingerprint)
    except tls.TrustError as exc:
        raise NeedsPerson(str(exc), code="CA_MISMATCH") from exc


# -- the endpoints ----------------------------------------------------------------------------------
async def pair(http: aiohttp.ClientSession, base_url: str, code: str, name: str, public_key: bytes) -> dict[str, Any]:
    """Enrol this device's key with a pairing code; the box answers with its writer id and token.

    JSON, as §2 shows it: pairing is not a sync request, and the box reads it as JSON only.
    """
    body = {"code": code, "name": name, "public_key": public_key.hex()}
    return await request(http, "POST", _url(base_url, "/api/devices/pair"), body=body, as_json=True)


def wire_event(e: Event) -> dict[str, Any]:
    """An event as a batch carries it (docs/sync-protocol.md §3.1): the writer is named once, above."""
    return {
        "seq": e.seq,
        "event_id": e.event_id,
        "type": e.type,
        "hlc": e.hlc,
        "occurred_at": e.occurred_at,
        "prev_hash": e.prev_hash,
        "payload": e.payload,
    }


def batch_body(writer_id: str, events: Sequence[Event], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The §3.1 envelope: the events and one signature over the batch's last hash."""
    if not events:
        raise ValueError("a batch holds at least one event")
    last = events[-1]
    return {
        "writer_id": writer_id,
        "events": [wire_event(e) for e in events],
        "head": {"seq": last.seq, "hash": last.hash, "signature": sign_chain_head(key, writer_id, last.seq, last.hash)},
    }


async def send_batch(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    writer_id: str,
    events: Sequence[Event],
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """POST one batch; the answer's ``ok``, ``conflicts``, ``errors``, ``expected_seq``, ``server_hlc``."""
    body = batch_body(writer_id, events, key)
    return await request(http, "POST", _url(base_url, "/api/sync/batch"), token=token, body=body)


async def heartbeat(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    *,
    queue_depth: int,
    app_version: str,
    session_id: str | None = None,
) -> dict[str, Any]:
    """Renew the device's leases and tell the box how deep the queue is."""
    body = {"queue_depth": queue_depth, "app_version": app_version, "session_id": session_id}
    return await request(http, "POST", _url(base_url, "/api/sync/heartbeat"), token=token, body=body)


async def pull(http: aiohttp.ClientSession, base_url: str, token: str, session_id: str) -> dict[str, Any]:
    """The session as the box holds it, to refresh before writing after a restart or a device switch."""
    return await request(http, "GET", _url(base_url, "/api/sync/pull"), token=token, params={"session_id": session_id})
