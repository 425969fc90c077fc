"""The handheld page's chain code in the browser, against the protocol page and the box's own codec.

``web/static/handheld/js/chain.js`` must make the same canonical bytes, hashes and head signatures as the
Python client and the box: the test vectors of docs/sync-protocol.md §6 are read from the page and
checked in chromium (WebCrypto Ed25519, the bundled msgpack and BLAKE2b), then a thousand seeded random
events of every device type, with integers at every msgpack width, are packed by both and compared.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replication.wire.codec import Event, sign_chain_head
from tests.conftest import ServerProcess, launch_chromium
from tests.replication.wire.test_protocol_vectors import PROTOCOL, _fields, _section, _seed, vector_event

PKCS8_ED25519_PREFIX = "302e020100300506032b657004220420"  # RFC 8410: a PKCS #8 wrapper for a 32-byte seed


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = ServerProcess(tmp_path_factory.mktemp("chain") / "box")
    try:
        server.wait_ready()
        with launch_chromium() as browser:
            tab = browser.new_page()
            # The loopback origin is a secure context, so WebCrypto is there as it is over HTTPS.
            tab.goto(server.url + "/handheld/")
            tab.evaluate("async () => { window.chain = await import('/static/handheld/js/chain.js'); }")
            yield tab
    finally:
        server.stop()


def js_event(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "type": event.type,
        "hlc": str(event.hlc),
        "occurred_at": event.occurred_at,
        "prev_hash": event.prev_hash.hex(),
        "payload": event.payload,
    }


PACK = """([writer, events]) => events.map((e) => {
    const event = { ...e, hlc: BigInt(e.hlc), prev_hash: window.chain.fromHex(e.prev_hash) };
    const { hex, eventBytes, eventHash } = window.chain;
    return [hex(eventBytes(writer, event)), hex(eventHash(writer, event))];
})"""


def test_the_protocol_vectors_pass_in_the_browser(page: Any) -> None:
    section = _section(PROTOCOL.read_text(encoding="utf-8"), "6. Test vectors")
    vectors = _fields(section)
    seed = _seed(section)
    event = vector_event(vectors)
    [(canonical, digest)] = page.evaluate(PACK, [event.writer_id, [js_event(event)]])
    assert canonical == vectors["canonical_bytes"]
    assert digest == vectors["hash"]
    signed = page.evaluate(
        """async ([pkcs8, writer, seq, hash, publicHex]) => {
            const der = window.chain.fromHex(pkcs8);
            const key = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
            const signature = await window.chain.signHead(key, writer, seq, window.chain.fromHex(hash));
            const made = await window.chain.makeKeyPair();
            return {
                signature: window.chain.hex(signature),
                extractable: made.privateKey.extractable,
                publicLength: (await window.chain.publicKeyHex(made.publicKey)).length,
            };
        }""",
        [PKCS8_ED25519_PREFIX + seed.hex(), event.writer_id, event.seq, vectors["hash"], vectors["public_key"]],
    )
    assert signed["signature"] == vectors["head_signature"]  # Ed25519 is deterministic
    assert signed["extractable"] is False  # the device key never leaves WebCrypto
    assert signed["publicLength"] == 64


def _text(rng: random.Random, low: int = 1, high: int = 64) -> str:
    alphabet = string.ascii_letters + string.digits + "-_ ./é漢字\x1d🙂"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _int(rng: random.Random) -> int:
    """An integer from every msgpack width: fixint, 8, 16, 32 and 64 bits, both signs."""
    bits = rng.choice([4, 7, 8, 15, 16, 31, 32, 33, 52, 53])
    value = rng.randint(0, 2**bits)
    return value if rng.random() < 0.7 else -value


def _payload(rng: random.Random, kind: str) -> dict[str, Any]:
    base = {"session_id": _text(rng, 26, 26), "by": _text(rng, 26, 26)}
    if kind == "scan.recorded":
        # A token reaches the page in JSON (the claim's answer), so it is at most 2^53 there.
        token = rng.choice([None, rng.randint(0, 2**53), 7])
        product = rng.choice([None, _text(rng, 26, 26)])
        return {
            **base,
            "code": _text(rng),
            "qty": rng.randint(1, 100000),
            "rack_id": _text(rng, 0, 26),
            "product_id": product,
            "token": token,
        }
    if kind == "count.adjusted":
        return {**base, "product_id": _text(rng, 26, 26), "delta": _int(rng), "target": rng.randint(0, 100000)}
    if kind == "item.attributes_set":
        attrs = {"mfg_date": "2025-02-28", "mrp_minor": rng.randint(0, 10**9), "uom": _text(rng, 1, 8), "status": None}
        return {
            **base,
            "product_id": _text(rng, 26, 26),
            "attrs": dict(rng.sample(sorted(attrs.items()), rng.randint(1, 4))),
        }
    return {
        **base,
        "product_id": _text(rng, 26, 26),
        "serial": _text(rng),
        "tags": [_text(rng, 26, 26) for _ in range(rng.randint(0, 3))],
    }


def test_random_events_pack_byte_for_byte_as_the_box_packs_them(page: Any) -> None:
    rng = random.Random(20261207)
    events = []
    for seq in range(1, 1001):
        kind = rng.choice(["scan.recorded", "count.adjusted", "item.attributes_set", "serial.removed"])
        events.append(
            Event(
                writer_id="01HZX3J6C8W7Q5V4T2S1R0P9N8",
                seq=rng.choice([seq, rng.randint(1, 2**53)]),
                event_id="01HZX3J6D" + "".join(rng.choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(17)),
                type=kind,
                payload=_payload(rng, kind),
                hlc=rng.choice([rng.randint(2**40, 2**63 - 1), 115816896921600000]),
                prev_hash=rng.randbytes(32),
                occurred_at=rng.choice([None, 0, rng.randint(0, 253402300799999)]),
            )
        )
    packed = page.evaluate(PACK, ["01HZX3J6C8W7Q5V4T2S1R0P9N8", [js_event(e) for e in events]])
    mismatched = [
        (e.seq, e.type, e.canonical_bytes().hex(), js)
        for e, (js, _digest) in zip(events, packed, strict=True)
        if js != e.canonical_bytes().hex()
    ]
    assert not mismatched, mismatched[:3]
    assert [digest for _js, digest in packed] == [e.hash.hex() for e in events]


def test_a_float_is_refused_rather_than_packed(page: Any) -> None:
    error = page.evaluate(
        "() => { try { window.chain.canonical({ qty: 1.5 }); return ''; } catch (e) { return e.message; } }"
    )
    assert "no floats" in error


def test_a_head_signed_in_the_browser_verifies_with_the_python_key(page: Any, tmp_path: Path) -> None:
    """The other way round: a key made from a seed signs the same head in both."""
    seed = bytes(range(100, 132))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(seed)
    head_hash = bytes(range(32))
    browser = page.evaluate(
        """async ([pkcs8, hash]) => {
            const der = window.chain.fromHex(pkcs8);
            const key = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
            return window.chain.hex(await window.chain.signHead(key, "W1", 2 ** 40, window.chain.fromHex(hash)));
        }""",
        [PKCS8_ED25519_PREFIX + seed.hex(), head_hash.hex()],
    )
    assert browser == sign_chain_head(key, "W1", 2**40, head_hash).hex()
