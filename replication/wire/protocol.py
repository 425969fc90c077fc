"""The box ⇄ box ⇄ HQ wire: pages of events, node-signed requests and the enrolment proof.

``docs/replication.md`` is the reference. In short:

* A **page** is msgpack, zlib-compressed: ``{"v": 1, "store": …, "vector": {writer: seq},
  "writers": [[id, kind, store, name, public_key]], "events": [[writer, seq, event_id, type, payload,
  hlc, occurred_at, prev_hash]], "heads": [[writer, seq, hash, signature]], "more": bool}``. Payloads
  travel as the stored canonical msgpack bytes, so nothing is re-encoded on either side and every
  event's hash can be recomputed by the receiver.
* Every request and answer between boxes carries the sender's node id, a millisecond timestamp and an
  Ed25519 signature over ``[domain, method, path, time, sha256(body)]``: a box acts only on bytes
  signed by a node it enrolled, and a replayed request is refused once it is older than the window.
* **Enrolment**: a box proves it belongs to a store with ``HMAC-SHA256(secret, [domain, store, node,
  public_key])``, where the secret was set at provisioning (the store secret between boxes of one
  store, the HQ secret between a store and its HQ). Only then is its node key remembered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from replication.errors import NeedsPerson
from replication.wire.codec import Event, unpack_payload

API_VERSION = 1
MEDIA_TYPE = "application/vnd.stockverify.page+msgpack"
ENCODING = "deflate"  # zlib stream; Content-Encoding names it for proxies and logs
REQUEST_DOMAIN = "stockverify/request/v1"
ANSWER_DOMAIN = "stockverify/answer/v1"
ENROL_DOMAIN = "stockverify/enrol/v1"
NODE_HEADER = "X-StockVerify-Node"
TIME_HEADER = "X-StockVerify-Time"
SIGNATURE_HEADER = "X-StockVerify-Signature"
CLOCK_WINDOW_MS = 5 * 60 * 1000
MAX_PAGE_EVENTS = 5000
MAX_INFLATED_BYTES = 64 * 1024 * 1024


class ProtocolError(NeedsPerson, ValueError):
    """Bytes from another replica that do not follow the protocol.

    The same bytes fail the same way every time (a forged or broken page, a bad signature), so a person
    looks; still a ``ValueError`` for the callers that catch it as one.
    """


# -- pages ------------------------------------------------------------------------------------------
def event_row(event: Event) -> list[Any]:
    return [
        event.writer_id,
        event.seq,
        event.event_id,
        event.type,
        event.payload_bytes,
        event.hlc,
        event.occurred_at,
        event.prev_hash,
    ]


def run_events(rows: list[list[Any]]) -> list[Event]:
    """One writer's consecutive wire rows as events, each hashed now.

    A row whose prev_hash is nil continues the row before it and takes that event's hash (a page
    leaves those 32 random bytes out wherever it can: they were two thirds of a compressed page).
    Payload bytes are kept as sent, so each hash covers exactly what the writer hashed. One loop
    rather than a call per row: this runs for every event a box receives.
    """
    events: list[Event] = []
    before: Event | None = None
    digest = b""
    try:
        for writer_id, seq, event_id, event_type, payload, hlc, occurred_at, prev_hash in rows:
            if prev_hash is None:
                if before is None or before.seq + 1 != seq:
                    raise ProtocolError(f"event {writer_id}:{seq} leaves out prev_hash but follows no predecessor")
                prev_hash = digest
            # Positional: keywords cost twice as much, and a page builds thousands of these.
            fields = unpack_payload(payload)
            event = Event(writer_id, seq, event_id, event_type, fields, hlc, prev_hash, occurred_at, payload)
            digest = event.hash  # computed now, and cached
            events.append(event)
            before = event
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed event row: {exc}") from None
    return events


_PAGE_ENCODER = msgspec.msgpack.Encoder()  # the bytes msgpack's packer makes, in a sixth of the time


def pack_page(page: dict[str, Any]) -> bytes:
    return zlib.compress(_PAGE_ENCODER.encode(page), 1)


def unpack_page(body: bytes) -> dict[str, Any]:
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(body, MAX_INFLATED_BYTES)
        if inflater.unconsumed_tail:
            raise ProtocolError(f"page inflates beyond {MAX_INFLATED_BYTES} bytes")
        page = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (zlib.error, ValueError, msgpack.ExtraData) as exc:
        raise ProtocolError(f"page is not compressed msgpack: {exc}") from None
    if not isinstance(page, dict) or page.get("v") != API_VERSION:
        raise ProtocolError(f"page is not version {API_VERSION} of the replication protocol")
    return page


# -- signing ----------------------------------------------------------------------------------------
def _message(domain: str, method: str, path: str, stamp: int, body: bytes) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [domain, method.upper(), path, stamp, hashlib.sha256(body).digest()], use_bin_type=True
    )


def signed_headers(
    key: Ed25519PrivateKey, node_id: str, method: str, path: str, body: bytes, stamp: int, *, answer: bool = False
) -> dict[str, str]:
    domain = ANSWER_DOMAIN if answer else REQUEST_DOMAIN
    signature = key.sign(_message(domain, method, path, stamp, body))
    return {
        NODE_HEADER: node_id,
        TIME_HEADER: str(stamp),
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
    }


@dataclass(frozen=True)
class Signed:
    node_id: str
    stamp: int
    signature: bytes


def read_signature(headers: Any) -> Signed:
    """The signing headers of a request or answer (``headers`` is any case-insensitive mapping)."""
    node_id, stamp, signature = (headers.get(h) for h in (NODE_HEADER, TIME_HEADER, SIGNATURE_HEADER))
    if not node_id or not stamp or not signature:
        raise ProtocolError(f"the {NODE_HEADER}, {TIME_HEADER} and {SIGNATURE_HEADER} headers are required")
    try:
        return Signed(node_id, int(stamp), base64.b64decode(signature, validate=True))
    except ValueError:
        raise ProtocolError("malformed signature headers") from None


def verify(
    public_key: bytes,
    signed: Signed,
    method: str,
    path: str,
    body: bytes,
    now_ms: int,
    *,
    answer: bool = False,
) -> str | None:
    """Why the signature is not acceptable, or None when it is."""
    if abs(now_ms - signed.stamp) > CLOCK_WINDOW_MS:
        return f"signed {abs(now_ms - signed.stamp) // 1000} s away from this box's clock (window 300 s)"
    domain = ANSWER_DOMAIN if answer else REQUEST_DOMAIN
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signed.signature, _message(domain, method, path, signed.stamp, body)
        )
    except (InvalidSignature, ValueError):
        return "signature does not verify with the node's key"
    return None


# -- enrolment --------------------------------------------------------------------------------------
def enrol_proof(secret: str, store_id: str, node_id: str, public_key: bytes) -> bytes:
    message = msgpack.packb([ENROL_DOMAIN, store_id, node_id, public_key], use_bin_type=True)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def proof_ok(secret: str, store_id: str, node_id: str, public_key: bytes, proof: bytes) -> bool:
    return bool(secret) and hmac.compare_digest(enrol_proof(secret, store_id, node_id, public_key), proof)
