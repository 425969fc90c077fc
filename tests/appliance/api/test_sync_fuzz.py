"""Random batches and heartbeats against the real application: never a 5xx, never a refused event stored.

Hypothesis draws envelopes of every shape (fields of the wrong type, missing or unknown, bodies nested
up to 100,000 deep, random bytes), chains of real signed events carrying extreme integers, attribute
values of every type, event ids reused from the log or within the batch, in msgpack and in JSON, and
heartbeats of any body; and bodies of any value for the person API's write routes (scans, item edits,
serials). After each example the session, its run, its buckets and the device's pull must still answer
200: a value stored once is read by every one of them from then on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import hypothesis
import msgpack
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from ulid import ULID

from appliance.box import Box, open_box
from appliance.counting import items
from replication.device import transport
from replication.wire.codec import CodecError, Event
from replication.wire.hlc import wall_ms
from tests.appliance.counting.test_bounds import BARCODE_A, MSGPACK, Rig, decoded, hexed, make_rig
from tests.conftest import make_settings

I63 = 2**63 - 1
EDGES = [0, 1, -1, items.MAX_QTY, items.MAX_QTY + 1, -items.MAX_QTY, -items.MAX_QTY - 1, 2**31, 2**53]
EDGES += [I63, I63 + 1, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 253_402_300_799_999, 253_402_300_800_000]
INTS = st.sampled_from(EDGES) | st.integers(min_value=-(2**70), max_value=2**70)
SCALARS = st.none() | st.booleans() | INTS | st.text(max_size=70)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TYPES = [
    "scan.recorded",
    "scan.undone",
    "count.adjusted",
    "damage.adjusted",
    "item.attributes_set",
    "serial.added",
    "serial.removed",
]
ATTRIBUTE_VALUES = {
    "mfg_date": st.sampled_from(["2025-01-31", "2026-02-30", "20250131", ""]),
    "mrp_minor": INTS,
    "uom": st.text(max_size=70),
    "condition": st.sampled_from(["good", "broken"]),
    "category": st.text(max_size=70),
    "status": st.sampled_from(["partial", "finalized", "done"]),
}


@pytest.fixture(scope="module")
def module_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """One store for every example: what earlier examples stored is what later ones collide with."""
    opened = open_box(make_settings(tmp_path_factory.mktemp("fuzz") / "box"))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def rig(module_box: Box) -> Iterator[Rig]:
    yield from make_rig(module_box)


def _payload(rig: Rig, kind: str) -> dict[str, Any]:
    """A payload the box accepts, for the strategy to spoil."""
    common: dict[str, Any] = {"session_id": rig.session_id, "by": rig.verifier_id}
    payloads: dict[str, dict[str, Any]] = {
        "scan.recorded": rig.scan()["payload"],
        "scan.undone": {
            **common,
            "undoes": str(ULID()),
            "of_writer": rig.writer_id,
            "code": BARCODE_A,
            "rack_id": rig.rack_id,
            "qty": 1,
        },
        "count.adjusted": rig.adjusted(1, 1)["payload"],
        "damage.adjusted": rig.adjusted(1, 1, kind="damage.adjusted")["payload"],
        "item.attributes_set": rig.attributes({"status": "partial"})["payload"],
        "serial.added": {**common, "product_id": rig.product_a, "serial": "SN-1"},
        "serial.removed": {**common, "product_id": rig.product_a, "serial": "SN-1", "tags": [str(ULID())]},
    }
    return payloads.get(kind, common)


@st.composite
def event_specs(draw: st.DrawFn, rig: Rig, spoil: str) -> dict[str, Any]:
    """One event: valid unless ``spoil`` names the part to spoil (its payload, its envelope fields)."""
    kind = draw(st.sampled_from(TYPES) | st.text(max_size=12)) if spoil == "payload" else draw(st.sampled_from(TYPES))
    payload = _payload(rig, kind)
    if kind == "item.attributes_set":
        payload["attrs"] = {
            name: draw(ATTRIBUTE_VALUES[name] | st.none() | (ANY if spoil == "payload" else st.nothing()))
            for name in draw(st.lists(st.sampled_from(sorted(ATTRIBUTE_VALUES)), min_size=1, max_size=3, unique=True))
        }
    spec: dict[str, Any] = {"type": kind, "payload": payload, "id": "fresh"}
    if spoil == "payload":
        for name in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2, unique=True)):
            payload[name] = draw(INTS | ANY)
        if draw(st.integers(0, 4)) == 0:
            payload.pop(draw(st.sampled_from(sorted(payload))), None)
        if draw(st.integers(0, 4)) == 0:
            payload["extra"] = draw(ANY)
    elif spoil == "envelope":
        name = draw(st.sampled_from(["seq", "hlc", "occurred_at", "event_id"]))
        spec[name] = draw(st.text(max_size=30)) if name == "event_id" else draw(INTS | st.none() | ANY)
        spec["id"] = "text" if name == "event_id" else "fresh"
    elif spoil == "reuse":
        spec["id"] = draw(st.sampled_from(["stored", "earlier"]))
    return spec


@st.composite
def batches(draw: st.DrawFn, rig: Rig) -> list[dict[str, Any]]:
    size = draw(st.integers(1, 4))
    spoiled = draw(st.integers(0, size - 1))
    spoil = draw(st.sampled_from(["none", "none", "payload", "payload", "envelope", "reuse"]))
    return [draw(event_specs(rig, spoil if index == spoiled else "none")) for index in range(size)]


@st.composite
def requests(draw: st.DrawFn, rig: Rig) -> dict[str, Any]:
    return {
        "fmt": draw(st.sampled_from(["msgpack", "json"])),
        "specs": draw(batches(rig)),
        "spoil": draw(
            st.sampled_from(["none"] * 12 + ["events", "head", "writer_id", "body", "bytes", "deep", "extra", "drop"])
        ),
        "value": draw(ANY),
        "bytes": draw(st.binary(max_size=64)),
        "depth": draw(st.sampled_from([2, 100, 1_000, 10_000, 100_000])),
        "heartbeat": draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "queue_depth": INTS | ANY,
                    "app_version": st.text(max_size=80) | ANY,
                    "session_id": st.just(rig.session_id) | ANY,
                    "other": ANY,
                },
            )
            | ANY
        ),
    }


def _events(rig: Rig, specs: list[dict[str, Any]]) -> list[Event]:
    """Chain the specs from the stored head; an event whose integers no encoder takes gets a made-up
    hash for the next link (the box must refuse it anyway)."""
    seq, prev = rig.head()
    stored = [row[0] for row in rig.box.db.read().execute("SELECT event_id FROM events ORDER BY random() LIMIT 3")]
    events: list[Event] = []
    for spec in specs:
        number = spec["seq"] if "seq" in spec else seq + 1
        seq = number if type(number) is int else seq + 1
        event_id = {
            "stored": stored[0] if stored else str(ULID()),
            "earlier": events[-1].event_id if events else str(ULID()),
            "text": spec.get("event_id", ""),
        }.get(spec["id"], str(ULID()))
        hlc = spec["hlc"] if "hlc" in spec else rig.clock.now()
        occurred_at = spec["occurred_at"] if "occurred_at" in spec else wall_ms()
        event = Event(rig.writer_id, number, event_id, spec["type"], spec["payload"], hlc, prev, occurred_at)
        try:
            prev = event.hash
        except (CodecError, RecursionError):
            prev = bytes(32)
        events.append(event)
    return events


def _envelope(rig: Rig, events: list[Event]) -> dict[str, Any]:
    try:
        return rig.envelope(events)
    except (CodecError, RecursionError):
        body = rig.envelope([Event(rig.writer_id, 1, str(ULID()), "x", {}, 0, bytes(32))])
        body["events"] = [transport.wire_event(e) for e in events]
        return body


def _body(rig: Rig, request: dict[str, Any], events: list[Event]) -> tuple[bytes, str]:
    spoil, fmt = request["spoil"], request["fmt"]
    content_type = MSGPACK if fmt == "msgpack" else "application/json"
    if spoil == "bytes":
        return request["bytes"], content_type
    if spoil == "deep":
        depth = request["depth"]
        if fmt == "msgpack":
            return b"\x81\xa6events" + b"\x91" * depth + b"\xc0", content_type
        return ('{"events": ' + "[" * depth + "]" * depth + "}").encode(), content_type
    envelope: Any = _envelope(rig, events)
    if spoil in ("events", "head", "writer_id"):
        envelope[spoil] = request["value"]
    elif spoil == "body":
        envelope = request["value"]
    elif spoil == "extra":
        envelope["extra"] = request["value"]
    elif spoil == "drop":
        envelope.pop("head")
    if fmt == "json":
        return json.dumps(hexed(envelope)).encode(), content_type
    try:
        return msgpack.packb(envelope, use_bin_type=True), content_type
    except (OverflowError, TypeError, ValueError):  # an integer msgpack cannot carry goes as JSON
        return json.dumps(hexed(envelope)).encode(), "application/json"


def _stored_hashes(rig: Rig) -> set[bytes]:
    rows = rig.box.db.read().execute("SELECT hash FROM events WHERE writer_id = ?", (rig.writer_id,))
    return {bytes(row[0]) for row in rows}


def _hash(event: Event) -> bytes | None:
    try:
        return event.hash
    except (CodecError, RecursionError):
        return None


@hypothesis.settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(data=st.data())
def test_random_batches_and_heartbeats_never_answer_5xx_nor_store_a_refused_event(
    rig: Rig, data: st.DataObject
) -> None:
    request = data.draw(requests(rig))
    events = _events(rig, request["specs"])
    body, content_type = _body(rig, request, events)
    before = _stored_hashes(rig)

    answer = rig.post(body, content_type)

    assert answer.status_code < 500, answer.text[:300]
    hypothesis.event(f"batch {answer.status_code}")
    after = _stored_hashes(rig)
    if answer.status_code != 200:
        assert (answer.status_code, decoded(answer)["code"]) == (400, "VALIDATION"), answer.text[:300]
        assert after == before
    else:
        result = decoded(answer)
        refused = {error["seq"] for error in result["errors"]}
        hypothesis.event("events " + " ".join(sorted({error["code"] for error in result["errors"]} or {"ok"})))
        assert refused.isdisjoint(result["ok"])
        for event in events:
            digest = _hash(event)
            if event.seq in refused:
                assert digest is None or digest in before or digest not in after, event
            elif event.seq in result["ok"]:
                assert digest in after, event
        assert len(after - before) == len([e for e in events if e.seq in result["ok"] and _hash(e) not in before])
    head_seq, _ = rig.head()
    assert len(after) == head_seq  # every stored event is on the chain, gap-free

    beat = rig.heartbeat(request["heartbeat"])
    assert beat.status_code in (200, 400), beat.text[:300]

    views = rig.views()
    assert views == dict.fromkeys(views, 200), views


ROUTE_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "scans": {
        "code": st.just(BARCODE_A) | st.text(max_size=70) | ANY,
        "qty": st.integers(1, items.MAX_QTY) | INTS | ANY,
        "rack": st.just("G-01") | ANY,
        "product_id": st.none() | ANY,
    },
    "item": {
        "qty": st.integers(0, items.MAX_QTY) | INTS | ANY,
        "damage_qty": st.integers(0, items.MAX_QTY) | INTS | ANY,
        "attributes": st.dictionaries(
            st.sampled_from(sorted(ATTRIBUTE_VALUES)),
            st.one_of(*ATTRIBUTE_VALUES.values()) | INTS | ANY,
            max_size=3,
        )
        | ANY,
    },
    "serials": {"serial": st.text(min_size=1, max_size=70) | ANY},
}
REQUIRED = {"scans": ("code",), "serials": ("serial",)}


@hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.data(), route=st.sampled_from(sorted(ROUTE_FIELDS)))
def test_random_person_writes_never_answer_5xx_and_keep_the_views_answering(
    rig: Rig, data: st.DataObject, route: str
) -> None:
    fields = ROUTE_FIELDS[route]
    required = {name: fields[name] for name in REQUIRED.get(route, ())}
    optional = {name: value for name, value in fields.items() if name not in required}
    body = data.draw(st.fixed_dictionaries(required, optional=optional) if data.draw(st.integers(0, 9)) else ANY)
    item = f"/api/sessions/{rig.session_id}/items/{rig.product_a}"
    url = {"scans": f"/api/sessions/{rig.session_id}/scans", "item": item, "serials": f"{item}/serials"}[route]
    before = rig.all_events()

    answer = rig.person("PUT" if route == "item" else "POST", url, body)

    assert answer.status_code < 500, answer.text[:300]
    hypothesis.event(f"{route} {answer.status_code}")
    if answer.status_code >= 400:
        assert rig.all_events() == before
    views = rig.views()
    assert views == dict.fromkeys(views, 200), views
