"""The event codec: canonical bytes, the hash chain and chain-head signatures.

These bytes are the contract between every writer (a handheld in any language, a box, HQ): an event's
hash is BLAKE2b-256 of its canonical bytes, each event carries its predecessor's hash, and a writer
signs only the head of its chain, so one Ed25519 signature vouches for every event before it.

Canonical bytes are msgpack of a fixed array::

    [1, writer_id, seq, event_id, type, hlc, occurred_at, prev_hash, payload]

with maps sorted by key (keys are strings), integers in the smallest msgpack form, strings as UTF-8
``str``, raw bytes as ``bin``, and no floats anywhere (money and quantities are integers), because float
encodings differ between platforms and would break hashes. ``docs/sync-protocol.md`` is the reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT_VERSION = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
CHAIN_HEAD_DOMAIN = "stockverify/chain-head/v1"
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_ARRAY_OF_9 = b"\x99"  # msgpack fixarray header for the nine fields of an event


class CodecError(ValueError):
    """A value cannot be put into canonical form."""


def canonical(value: Any, path: str = "$") -> Any:
    """Return ``value`` in canonical form, or raise ``CodecError`` naming the offending path."""
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise CodecError(f"{path}: integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        raise CodecError(f"{path}: floats are not allowed; use integers (minor units) or strings")
    if isinstance(value, dict):
        out = {}
        for key in sorted(value):
            if not isinstance(key, str):
                raise CodecError(f"{path}: map keys must be strings, got {type(key).__name__}")
            out[key] = canonical(value[key], f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise CodecError(f"{path}: {type(value).__name__} cannot be encoded")


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of ``value``."""
    return msgpack.packb(canonical(value), use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


@dataclass(frozen=True)
class Event:
    """One immutable event as every replica sees it."""

    writer_id: str
    seq: int
    event_id: str
    type: str
    payload: dict[str, Any]
    hlc: int
    prev_hash: bytes
    occurred_at: int | None = None
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def payload_bytes(self) -> bytes:
        """Canonical msgpack of the payload, computed once (it is both hashed and stored)."""
        if "payload" not in self._cache:  # the dataclass is frozen; the cache is not part of it
            self._cache["payload"] = pack(self.payload)
        return self._cache["payload"]

    def canonical_bytes(self) -> bytes:
        # A msgpack array is its header followed by its elements' encodings, so the packed payload
        # is appended as it is rather than encoded a second time.
        head = [
            FORMAT_VERSION,
            self.writer_id,
            self.seq,
            self.event_id,
            self.type,
            self.hlc,
            self.occurred_at,
            self.prev_hash,
        ]
        return _ARRAY_OF_9 + b"".join(pack(item) for item in head) + self.payload_bytes

    @property
    def hash(self) -> bytes:
        if "hash" not in self._cache:
            self._cache["hash"] = digest(self.canonical_bytes())
        return self._cache["hash"]


def chain_head_message(writer_id: str, seq: int, head_hash: bytes) -> bytes:
    """The bytes a writer signs to vouch for its chain up to ``seq``."""
    return pack([CHAIN_HEAD_DOMAIN, writer_id, seq, head_hash])


def sign_chain_head(key: Ed25519PrivateKey, writer_id: str, seq: int, head_hash: bytes) -> bytes:
    return key.sign(chain_head_message(writer_id, seq, head_hash))


def verify_chain_head(public_key: bytes, writer_id: str, seq: int, head_hash: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, chain_head_message(writer_id, seq, head_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_chain(events: list[Event], start_hash: bytes = ZERO_HASH, start_seq: int = 0) -> int | None:
    """Check that ``events`` continue a chain at ``start_seq``/``start_hash``.

    Returns the index of the first event that breaks the chain (wrong seq or prev_hash), or None.
    """
    expected_hash, expected_seq = start_hash, start_seq + 1
    for index, event in enumerate(events):
        if event.seq != expected_seq or event.prev_hash != expected_hash:
            return index
        expected_hash, expected_seq = event.hash, expected_seq + 1
    return None
