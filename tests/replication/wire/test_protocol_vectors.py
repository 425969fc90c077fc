"""The test vectors printed in docs/sync-protocol.md §6, read from the page itself.

A client in another language is written from that page, so the page must agree with our codec byte for
byte; reading the values from the markdown (not copying them here) keeps the two from drifting apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from replication.wire.codec import Event, chain_head_message, sign_chain_head, verify_chain_head

PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "sync-protocol.md"


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"{PROTOCOL.name} has no section '## {heading}'"
    return match.group(1)


def _seed(section: str) -> bytes:
    """The page writes the seed as a range, e.g. ``00 01 02 … 1f``: first and last byte, counting up."""
    match = re.search(r"seed is the bytes `([0-9a-f]{2}) [0-9a-f ]*… ([0-9a-f]{2})`", section)
    assert match, "the seed sentence is missing from §6"
    first, last = int(match.group(1), 16), int(match.group(2), 16)
    seed = bytes(range(first, last + 1))
    assert len(seed) == 32
    return seed


def _fields(section: str) -> dict[str, str]:
    block = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert block, "§6 has no ```text block"
    fields: dict[str, str] = {}
    for line in block.group(1).splitlines():
        if line.strip():
            name, _, value = line.partition(": ")
            fields[name.strip()] = value.strip()
    return fields


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    section = _section(PROTOCOL.read_text(encoding="utf-8"), "6. Test vectors")
    fields = _fields(section)
    return {"seed": _seed(section), **fields}


@pytest.fixture(scope="module")
def event(vectors: dict[str, Any]) -> Event:
    return vector_event(vectors)


def vector_event(vectors: dict[str, Any]) -> Event:
    """The page's event, as the box's codec holds it (the handheld page's test checks it in a browser)."""
    occurred = vectors["occurred_at"]
    return Event(
        writer_id=vectors["writer_id"],
        seq=int(vectors["seq"]),
        event_id=vectors["event_id"],
        type=vectors["type"],
        payload=json.loads(vectors["payload"]),
        hlc=int(vectors["hlc"]),
        prev_hash=bytes.fromhex(vectors["prev_hash"]),
        occurred_at=None if occurred in ("nil", "null") else int(occurred),
    )


def test_the_page_lists_every_vector(vectors: dict[str, Any]) -> None:
    expected = {"public_key", "writer_id", "seq", "event_id", "type", "hlc", "occurred_at", "prev_hash", "payload"}
    assert expected | {"canonical_bytes", "hash", "head_signature"} <= set(vectors)


def test_public_key_follows_from_the_seed(vectors: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(vectors["seed"])
    assert key.public_key().public_bytes_raw().hex() == vectors["public_key"]


def test_hash(vectors: dict[str, Any], event: Event) -> None:
    assert event.hash.hex() == vectors["hash"]


def test_canonical_bytes(vectors: dict[str, Any], event: Event) -> None:
    assert event.canonical_bytes().hex() == vectors["canonical_bytes"]


def test_hlc_is_physical_ms_shifted_by_16(vectors: dict[str, Any], event: Event) -> None:
    assert event.occurred_at is not None
    assert event.hlc == event.occurred_at << 16


def test_head_signature(vectors: dict[str, Any], event: Event) -> None:
    key = Ed25519PrivateKey.from_private_bytes(vectors["seed"])
    signature = sign_chain_head(key, event.writer_id, event.seq, event.hash)
    assert signature.hex() == vectors["head_signature"]  # Ed25519 is deterministic
    public = bytes.fromhex(vectors["public_key"])
    assert verify_chain_head(public, event.writer_id, event.seq, event.hash, bytes.fromhex(vectors["head_signature"]))
    assert not verify_chain_head(public, event.writer_id, event.seq + 1, event.hash, signature)
    assert chain_head_message(event.writer_id, event.seq, event.hash)[:1] == b"\x94"  # a 4-element array
