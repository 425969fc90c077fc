"""Canonical bytes, hashes and chain-head signatures: fixed vectors any client can check against."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from appliance.store.identity import public_bytes
from replication.wire.codec import (
    ZERO_HASH,
    CodecError,
    Event,
    canonical,
    pack,
    sign_chain_head,
    unpack,
    verify_chain,
    verify_chain_head,
)

# A canonical event and its bytes, hash and signed head. The key's seed is the bytes 0x00..0x1f.
VECTOR_SEED = bytes(range(32))
VECTOR_EVENT = Event(
    writer_id="01HZX3J6C8W7Q5V4T2S1R0P9N8",
    seq=1,
    event_id="01HZX3J6D0000000000000000A",
    type="scan.recorded",
    payload={
        "session_id": "01HZX3J6E0000000000000000B",
        "code": "04006381333931",
        "qty": 1,
        "rack_id": "G-01",
        "token": 7,
    },
    hlc=1767225600000 << 16,
    prev_hash=ZERO_HASH,
    occurred_at=1767225600000,
)
VECTOR_PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
VECTOR_BYTES = (
    "9901ba3031485a58334a36433857375135563454325331523050394e3801ba3031485a58334a36443030303030303030"
    "303030303030303041ad7363616e2e7265636f72646564cf019b76daa8000000cf0000019b76daa800c4200000000000"
    "00000000000000000000000000000000000000000000000000000085a4636f6465ae3034303036333831333333393331"
    "a371747901a77261636b5f6964a4472d3031aa73657373696f6e5f6964ba3031485a58334a3645303030303030303030"
    "3030303030303042a5746f6b656e07"
)
VECTOR_HASH = "feb5e501beed37bb6e091cae3058b4149669a40f72a497fe168381ee7d215a76"
VECTOR_SIGNATURE = (
    "a91788014d2bd029242446e916dfe3d5835779162092ee280a4e3ad7f53be668"
    "f5cc15f7f947843437d1188c417aeb26394e44fd2e8ed62911a68e9fe496070c"
)


def test_vector_bytes_hash_and_signature() -> None:
    key = Ed25519PrivateKey.from_private_bytes(VECTOR_SEED)
    assert public_bytes(key).hex() == VECTOR_PUBLIC_KEY
    assert VECTOR_EVENT.canonical_bytes().hex() == VECTOR_BYTES
    assert VECTOR_EVENT.hash.hex() == VECTOR_HASH
    signature = sign_chain_head(key, VECTOR_EVENT.writer_id, 1, VECTOR_EVENT.hash)
    assert signature.hex() == VECTOR_SIGNATURE  # Ed25519 is deterministic
    assert verify_chain_head(bytes.fromhex(VECTOR_PUBLIC_KEY), VECTOR_EVENT.writer_id, 1, VECTOR_EVENT.hash, signature)
    assert not verify_chain_head(
        bytes.fromhex(VECTOR_PUBLIC_KEY), VECTOR_EVENT.writer_id, 2, VECTOR_EVENT.hash, signature
    )


def test_floats_and_non_string_keys_are_refused() -> None:
    with pytest.raises(CodecError, match=r"\$\.price"):
        pack({"price": 9.99})
    with pytest.raises(CodecError, match="map keys"):
        pack({1: "x"})
    with pytest.raises(CodecError, match=r"\$\.a\[1\]\.b: floats"):
        pack({"a": [1, {"b": 0.5}]})
    with pytest.raises(CodecError, match="64-bit"):
        pack({"n": 2**64})
    with pytest.raises(CodecError, match="64-bit"):
        pack([-(2**63) - 1])
    with pytest.raises(CodecError, match="set cannot"):
        pack({"s": {1, 2}})


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_like))
def test_key_order_never_changes_the_bytes(payload: dict[str, object]) -> None:
    reordered = dict(reversed(list(payload.items())))
    assert pack(payload) == pack(reordered)
    assert unpack(pack(payload)) == payload


@given(json_like)
def test_fast_packer_writes_the_reference_bytes(value: object) -> None:
    """The packer skips building a sorted copy; its bytes must still be exactly msgpack's of the
    canonical form, or every hash a handheld computes would differ from the box's."""
    assert pack(value) == msgpack.packb(canonical(value), use_bin_type=True)


def test_verify_chain_finds_the_first_break() -> None:
    events: list[Event] = []
    prev = ZERO_HASH
    for seq in range(1, 6):
        event = Event("w", seq, f"e{seq}", "t", {"n": seq}, seq, prev)
        events.append(event)
        prev = event.hash
    assert verify_chain(events) is None
    tampered = [*events[:2], Event("w", 3, "e3", "t", {"n": 99}, 3, events[2].prev_hash), *events[3:]]
    assert verify_chain(tampered) == 3  # event 3 was altered, so event 4 no longer links
    assert verify_chain(events[1:], events[0].hash, 1) is None
