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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from replication.errors import NeedsPerson

FORMAT_VERSION = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
CHAIN_HEAD_DOMAIN = "stockverify/chain-head/v1"
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_ARRAY_OF_9 = b"\x99"  # msgpack fixarray header for the nine fields of an event
# msgspec writes the same bytes as msgpack's packer for these types (smallest integer forms, str8/bin8
# and up); with sorted keys it writes canonical maps without a sorted copy being built first.
_ENCODER = msgspec.msgpack.Encoder(order="sorted")
_SCALARS = frozenset({str, int, bytes, bool, type(None)})
_STR = frozenset({str})


class CodecError(NeedsPerson, ValueError):
    """A value cannot be put into canonical form.

    Only a change to the value helps, never a retry; still a ``ValueError`` for older ``except`` clauses.
    """


def canonical(value: Any) -> Any:
    """Return ``value`` in canonical form, or raise ``CodecError`` naming the offending path.

    This runs for every event a box receives, so the common case takes no detours: the path of a bad
    value is worked out only once one is found.
    """
    try:
        return _canonical(value)
    except CodecError:
        _explain(value, "$")
        raise


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    if kind is int:
        if INT_MIN <= value <= INT_MAX:
            return value
        raise CodecError("integer out of the 64-bit range")
    if kind is dict:
        if all(type(key) is str for key in value):
            return {key: _canonical(value[key]) for key in sorted(value)}
        raise CodecError("map keys must be strings")
    if kind is list or kind is tuple:
        return [_canonical(item) for item in value]
    raise CodecError(f"{kind.__name__} cannot be encoded")


def _explain(value: Any, path: str) -> None:
    """Raise ``CodecError`` with the path of the first value ``_canonical`` refuses."""
    kind = type(value)
    if kind is float:
        raise CodecError(f"{path}: floats are not allowed; use integers (minor units) or strings")
    if kind is str or kind is bytes or kind is bool or value is None:
        return
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise CodecError(f"{path}: integer out of the 64-bit range")
        return
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise CodecError(f"{path}: map keys must be strings, got {type(key).__name__}")
            _explain(value[key], f"{path}.{key}")
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _explain(item, f"{path}[{index}]")
        return
    raise CodecError(f"{path}: {kind.__name__} cannot be encoded")


def _check(value: Any) -> None:
    """Raise ``CodecError`` unless ``value`` holds only canonical types (the encoder would take floats,
    and so must never see one). Whole containers of scalars are checked in one pass at C speed."""
    kind = type(value)
    if kind is dict:
        if not _STR.issuperset(map(type, value)):
            raise CodecError("map keys must be strings")
        if not _SCALARS.issuperset(map(type, value.values())):
            for item in value.values():
                _check(item)
    elif kind is list or kind is tuple:
        if not _SCALARS.issuperset(map(type, value)):
            for item in value:
                _check(item)
    elif kind not in _SCALARS:
        raise CodecError(f"{kind.__name__} cannot be encoded")


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of ``value``."""
    try:
        _check(value)
        return _ENCODER.encode(value)
    except (CodecError, OverflowError):
        _explain(value, "$")
        raise CodecError("integer out of the 64-bit range") from None


_DECODER = msgspec.msgpack.Decoder()
_PAYLOAD_DECODER = msgspec.msgpack.Decoder(dict[str, Any])


def unpack(data: bytes) -> Any:
    """Decode msgpack (msgspec decodes twice as fast as msgpack's unpacker; this runs for every event read)."""
    return _DECODER.decode(data)


def unpack_payload(data: bytes) -> dict[str, Any]:
    """An event's payload: a map with string keys, or ``ValueError``."""
    return _PAYLOAD_DECODER.decode(data)


@dataclass(slots=True)
class Event:
    """One event as every replica sees it; never changed once made (its hash is cached on first use).

    Not a frozen dataclass: a frozen one costs three microseconds to build against half of one, and
    a box builds one for every event it receives, replicates or folds.
    """

    writer_id: str
    seq: int
    event_id: str
    type: str
    payload: dict[str, Any]
    hlc: int
    prev_hash: bytes
    occurred_at: int | None = None
    # Computed once: the payload bytes are both hashed and stored, the hash both checked and stored.
    # Two slots rather than a dict: one container less per event, for a collector that walks them.
    _payload_bytes: bytes | None = field(default=None, repr=False, compare=False)
    _hash: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def payload_bytes(self) -> bytes:
        """Canonical msgpack of the payload."""
        if self._payload_bytes is None:
            self._payload_bytes = pack(self.payload)
        return self._payload_bytes

    def canonical_bytes(self) -> bytes:
        # A msgpack array is its header followed by its elements' encodings, so the eight scalar
        # fields are packed as one array whose 8-element header is swapped for the 9-element one,
        # and the packed payload is appended as it is rather than encoded a second time.
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
        # ``pack`` inlined for the common case: this runs for every event a box receives, and the
        # calls alone were a tenth of decoding a replicated page. ``pack`` still says what is wrong.
        if _SCALARS.issuperset(map(type, head)):
            try:
                return _ARRAY_OF_9 + _ENCODER.encode(head)[1:] + (self._payload_bytes or self.payload_bytes)
            except OverflowError:
                pass
        return _ARRAY_OF_9 + pack(head)[1:] + self.payload_bytes

    @property
    def hash(self) -> bytes:
        if self._hash is None:
            self._hash = hashlib.blake2b(self.canonical_bytes(), digest_size=HASH_SIZE).digest()
        return self._hash


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


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """An Ed25519 key kept as its 32-byte seed at ``path`` (mode 0600), made on first use; returns the
    key and whether it was just made. Written to a temporary file, fsynced and renamed, so a crash
    never leaves half a key. Raises ``ValueError`` for a damaged file."""
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"key {path} is damaged ({len(seed)} bytes, expected 32)")
        return Ed25519PrivateKey.from_private_bytes(seed), False
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key, True
