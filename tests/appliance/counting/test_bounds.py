"""Bad input from a handheld or a person is refused with a code, never a 5xx, and never stored.

A 5xx tells a handheld's sender "retry forever", so one bad event would block its whole queue; and
a value stored once is read by every view of its run from then on. Each failure is driven through the
real application (Litestar's TestClient over ``create_app`` on a box in ``tmp_path``) with events
chained, hashed and head-signed as a device makes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient
from ulid import ULID

from appliance.app import create_app
from appliance.auth import devices, people
from appliance.box import Box
from appliance.catalog import layout, product_import
from appliance.counting import items, runs, sessions
from appliance.store.identity import public_bytes
from replication.device import transport
from replication.wire.codec import Event
from replication.wire.hlc import HybridClock, wall_ms

CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\n"
    b"SKU-A,4006381333931,Alpha,Food,EA,10.00,5\n"
    b"SKU-B,5901234123457,Beta,Food,EA,2.50,3\n"
)
BARCODE_A = "4006381333931"
MSGPACK = "application/msgpack"
I63 = 2**63 - 1
U64 = 2**64 - 1


@dataclass
class Rig:
    """A store with a running count, a paired handheld holding a session, and people to read it."""

    box: Box
    client: TestClient[Any]
    key: Ed25519PrivateKey
    writer_id: str
    device_token: str
    boss_token: str
    verifier_token: str
    run_id: str
    session_id: str
    rack_id: str
    product_a: str
    product_b: str
    verifier_id: str
    clock: HybridClock = field(default_factory=HybridClock)

    # -- building events ----------------------------------------------------------------------------
    def head(self) -> tuple[int, bytes]:
        row = (
            self.box.db.read()
            .execute("SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (self.writer_id,))
            .fetchone()
        )
        return int(row[0]), bytes(row[1])

    def scan(self, qty: int = 1, **over: Any) -> dict[str, Any]:
        payload = {
            "session_id": self.session_id,
            "code": BARCODE_A,
            "qty": qty,
            "rack_id": self.rack_id,
            "product_id": None,
            "token": None,
            "by": self.verifier_id,
        }
        return {"type": "scan.recorded", "payload": {**payload, **over}}

    def adjusted(self, delta: int, target: int = 0, kind: str = "count.adjusted", **over: Any) -> dict[str, Any]:
        payload = {
            "session_id": self.session_id,
            "product_id": self.product_a,
            "delta": delta,
            "target": target,
            "by": self.verifier_id,
        }
        return {"type": kind, "payload": {**payload, **over}}

    def attributes(self, attrs: dict[str, Any]) -> dict[str, Any]:
        payload = {"session_id": self.session_id, "product_id": self.product_a, "attrs": attrs, "by": self.verifier_id}
        return {"type": "item.attributes_set", "payload": payload}

    def chain(self, *specs: dict[str, Any], start: tuple[int, bytes] | None = None) -> list[Event]:
        """Events continuing the stored chain (or ``start``); a spec may set any field of its event."""
        seq, prev = start or self.head()
        events = []
        for spec in specs:
            seq = spec.get("seq", seq + 1)
            event = Event(
                self.writer_id,
                seq,
                spec["event_id"] if "event_id" in spec else str(ULID()),
                spec["type"],
                spec["payload"],
                spec.get("hlc", self.clock.now()),
                prev,
                spec.get("occurred_at", wall_ms()),
            )
            prev = event.hash
            events.append(event)
        return events

    # -- sending --------------------------------------------------------------------------------------
    def envelope(self, events: list[Event]) -> dict[str, Any]:
        return transport.batch_body(self.writer_id, events, self.key)

    def post(self, body: bytes, content_type: str = MSGPACK) -> httpx.Response:
        return self.client.post(
            "/api/sync/batch",
            content=body,
            headers={"Authorization": f"Device {self.device_token}", "Content-Type": content_type},
        )

    def send(self, events: list[Event], fmt: str = "msgpack") -> tuple[int, dict[str, Any]]:
        envelope = self.envelope(events)
        if fmt == "msgpack":
            answer = self.post(msgpack.packb(envelope, use_bin_type=True))
        else:
            answer = self.post(json.dumps(hexed(envelope)).encode(), "application/json")
        return answer.status_code, decoded(answer)

    def heartbeat(self, body: Any) -> httpx.Response:
        return self.client.post(
            "/api/sync/heartbeat", json=body, headers={"Authorization": f"Device {self.device_token}"}
        )

    def person(self, method: str, url: str, body: Any = None, *, boss: bool = False) -> httpx.Response:
        token = self.boss_token if boss else self.verifier_token
        return self.client.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})

    # -- reading --------------------------------------------------------------------------------------
    def stored(self) -> int:
        row = self.box.db.read().execute("SELECT count(*) FROM events WHERE writer_id = ?", (self.writer_id,))
        return int(row.fetchone()[0])

    def all_events(self) -> int:
        return int(self.box.db.read().execute("SELECT count(*) FROM events").fetchone()[0])

    def views(self) -> dict[str, int]:
        """The status of every view that reads the session's counts."""
        boss = {"Authorization": f"Bearer {self.boss_token}"}
        run = f"/api/runs/{self.run_id}"
        answers = {
            "session": self.client.get(f"/api/sessions/{self.session_id}", headers=boss),
            "run": self.client.get(run, headers=boss),
            "buckets": self.client.get(f"{run}/buckets", headers=boss),
            "rollup": self.client.get(f"{run}/rollup", headers=boss),
            "variance": self.client.get(f"{run}/variance", headers=boss),
            "pull": self.client.get(
                "/api/sync/pull",
                params={"session_id": self.session_id},
                headers={"Authorization": f"Device {self.device_token}"},
            ),
        }
        return {name: answer.status_code for name, answer in answers.items()}

    def assert_views_answer(self) -> None:
        assert self.views() == dict.fromkeys(("session", "run", "buckets", "rollup", "variance", "pull"), 200)


def hexed(value: Any) -> Any:
    """The JSON form of an envelope: every ``bin`` as lowercase hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: hexed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hexed(item) for item in value]
    return value


def decoded(answer: httpx.Response) -> dict[str, Any]:
    if answer.headers.get("content-type", "").startswith(MSGPACK):
        body: dict[str, Any] = msgpack.unpackb(answer.content, raw=False, strict_map_key=False)
        return body
    return dict(answer.json())


def make_rig(box: Box) -> Iterator[Rig]:
    plan = product_import.parse_file(CATALOG, "catalog.csv")
    key = Ed25519PrivateKey.generate()

    def job(conn: Any) -> dict[str, Any]:
        log = box.log
        boss = people.add_user(conn, log, "boss", "Boss", "supervisor", "x")
        v1 = people.add_user(conn, log, "v1", "V1", "verifier", "x")
        layout.add_floor(conn, log, "G", "Ground")
        layout.add_rack(conn, log, "G", "G-01")
        product_import.commit(conn, log, plan)
        run_id = runs.create_run(conn, log, boss, name="Bounds", kind="hard")
        code = devices.make_pairing_code(conn, boss)["code"]
        paired = devices.pair(conn, log, box.node.store_id, code=code, name="HH", public_key=public_bytes(key))
        session_id = sessions.create_session(
            conn, log, boss, run_id, verifier_id=v1.user_id, device_id=paired["writer_id"], rack_codes=["G-01"]
        )
        runs.start_run(conn, log, boss, run_id)
        sessions.start_session(conn, log, v1, session_id)
        ids = {row["sku"]: row["product_id"] for row in conn.execute("SELECT sku, product_id FROM products")}
        return {
            "writer_id": paired["writer_id"],
            "device_token": paired["device_token"],
            "boss_token": people.issue_token(conn, boss.user_id, 3600)[0],
            "verifier_token": people.issue_token(conn, v1.user_id, 3600)[0],
            "run_id": run_id,
            "session_id": session_id,
            "rack_id": conn.execute("SELECT rack_id FROM racks WHERE code = 'G-01'").fetchone()[0],
            "product_a": ids["SKU-A"],
            "product_b": ids["SKU-B"],
            "verifier_id": v1.user_id,
        }

    made = box.db.write(job)
    with TestClient(create_app(box)) as client:
        yield Rig(box, client, key, **made)


@pytest.fixture
def rig(box: Box) -> Iterator[Rig]:
    yield from make_rig(box)


def refused_at(answer: dict[str, Any], index: int, code: str) -> None:
    """The batch was refused: the event at ``index`` got ``code``, every other one NOT_PROCESSED."""
    assert answer["ok"] == [], answer
    codes = [error["code"] for error in answer["errors"]]
    assert codes[index] == code, answer
    assert [c for i, c in enumerate(codes) if i != index] == ["NOT_PROCESSED"] * (len(codes) - 1), answer


# -- 1. a reused event_id ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_an_event_id_the_writer_already_used_is_refused_as_reused(rig: Rig, fmt: str) -> None:
    [first] = rig.chain(rig.scan())
    assert rig.send([first], fmt)[1]["ok"] == [1]
    before = rig.stored()

    status, answer = rig.send(rig.chain(rig.scan(), {**rig.scan(), "event_id": first.event_id}, rig.scan()), fmt)

    assert status == 200
    refused_at(answer, 1, "EVENT_ID_REUSED")
    assert answer["expected_seq"] == 2
    assert rig.stored() == before
    rig.assert_views_answer()


def test_an_event_id_of_another_writer_is_refused_as_reused(rig: Rig) -> None:
    box_event = rig.box.db.read().execute("SELECT event_id FROM events ORDER BY pos DESC LIMIT 1").fetchone()[0]
    before = rig.stored()

    status, answer = rig.send(rig.chain({**rig.scan(), "event_id": box_event}, rig.scan()))

    assert status == 200
    refused_at(answer, 0, "EVENT_ID_REUSED")
    assert rig.stored() == before
    rig.assert_views_answer()


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_an_event_id_twice_in_one_batch_is_refused_as_reused(rig: Rig, fmt: str) -> None:
    same = str(ULID())

    status, answer = rig.send(rig.chain(rig.scan(), {**rig.scan(), "event_id": same}, {**rig.scan(), "event_id": same}))

    assert status == 200
    refused_at(answer, 2, "EVENT_ID_REUSED")
    assert rig.stored() == 0
    rig.assert_views_answer()


def test_a_resent_batch_is_still_ok_and_not_a_reuse(rig: Rig) -> None:
    events = rig.chain(rig.scan(), rig.scan())
    assert rig.send(events)[1]["ok"] == [1, 2]

    status, answer = rig.send(events)

    assert (status, answer["ok"], answer["errors"]) == (200, [1, 2], [])
    assert rig.stored() == 2


@pytest.mark.parametrize(
    "event_id",
    [
        "01HZX3J6D0000000000000000",
        "01HZX3J6D0000000000000000AB",
        "01HZX3J6D000000000000000IA",
        "01HZX3J6D00000000000000U0A",
        "81HZX3J6D0000000000000000A",
        "01hzx3j6d0000000000000000a",
        "01HZX3J6D0000000000000000-",
        "",
    ],
)
def test_an_event_id_that_is_no_ulid_is_refused(rig: Rig, event_id: str) -> None:
    events = rig.chain(rig.scan(), {**rig.scan(), "event_id": event_id}, rig.scan())
    answer = rig.post(msgpack.packb(rig.envelope(events), use_bin_type=True))

    assert (answer.status_code, decoded(answer)["code"]) == (400, "VALIDATION")
    assert rig.stored() == 0


# -- 2. numbers out of range ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        {"occurred_at": I63},
        {"occurred_at": U64},
        {"occurred_at": -1},
        {"hlc": U64},
        {"hlc": I63 + 1},
        {"seq": U64},
        {"seq": I63 + 1},
    ],
    ids=repr,
)
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_an_envelope_integer_out_of_range_is_a_validation_error(rig: Rig, spec: dict[str, int], fmt: str) -> None:
    events = rig.chain({**rig.scan(), **spec})
    envelope = rig.envelope(events)
    body = msgpack.packb(envelope, use_bin_type=True) if fmt == "msgpack" else json.dumps(hexed(envelope)).encode()
    answer = rig.post(body, MSGPACK if fmt == "msgpack" else "application/json")

    assert (answer.status_code, decoded(answer)["code"]) == (400, "VALIDATION"), answer.text
    assert rig.stored() == 0
    rig.assert_views_answer()


@pytest.mark.parametrize(
    "spec_of",
    [
        lambda rig: rig.scan(token=U64),
        lambda rig: rig.scan(token=I63 + 1),
        lambda rig: rig.scan(token=-1),
        lambda rig: rig.scan(qty=U64),
        lambda rig: rig.adjusted(-(2**63)),
        lambda rig: rig.adjusted(U64),
        lambda rig: rig.adjusted(I63),
        lambda rig: rig.adjusted(items.MAX_QTY + 1, items.MAX_QTY + 1),
        lambda rig: rig.adjusted(-items.MAX_QTY - 1),
        lambda rig: rig.adjusted(1, I63),
        lambda rig: rig.adjusted(1, U64),
        lambda rig: rig.adjusted(-(2**63), kind="damage.adjusted"),
        lambda rig: rig.adjusted(U64, kind="damage.adjusted"),
        lambda rig: rig.adjusted(1, items.MAX_QTY + 1, kind="damage.adjusted"),
        lambda rig: rig.attributes({"mrp_minor": U64}),
    ],
    ids=[
        "token 2^64-1",
        "token 2^63",
        "token -1",
        "qty 2^64-1",
        "delta -2^63",
        "delta 2^64-1",
        "delta 2^63-1",
        "delta MAX_QTY+1",
        "delta -MAX_QTY-1",
        "target 2^63-1",
        "target 2^64-1",
        "damage delta -2^63",
        "damage delta 2^64-1",
        "damage target MAX_QTY+1",
        "mrp_minor 2^64-1",
    ],
)
def test_a_payload_integer_out_of_range_is_refused_as_validation(rig: Rig, spec_of: Any) -> None:
    status, answer = rig.send(rig.chain(rig.scan(), spec_of(rig), rig.scan()))

    assert status == 200
    refused_at(answer, 1, "VALIDATION")
    assert rig.stored() == 0
    rig.assert_views_answer()


def test_two_adjustments_of_2_63_minus_1_on_one_product_are_refused(rig: Rig) -> None:
    for _ in range(2):
        status, answer = rig.send(rig.chain(rig.adjusted(I63, 0)))
        assert status == 200
        refused_at(answer, 0, "VALIDATION")
    assert rig.stored() == 0
    rig.assert_views_answer()


@pytest.mark.parametrize("queue_depth", [2**64, U64, I63 + 1, -1, 10**12])
def test_a_heartbeat_queue_depth_out_of_range_is_a_validation_error(rig: Rig, queue_depth: int) -> None:
    answer = rig.heartbeat({"queue_depth": queue_depth, "app_version": "1.0"})

    assert (answer.status_code, answer.json()["code"]) == (400, "VALIDATION")
    seen = rig.box.db.read().execute("SELECT count(*) FROM device_presence WHERE writer_id = ?", (rig.writer_id,))
    assert seen.fetchone()[0] == 0


@pytest.mark.parametrize(
    "body", [{"app_version": "x" * 1000}, {"session_id": "s" * 1000}, {"queue_depth": [7]}, {"extra": 1}, []]
)
def test_a_heartbeat_of_the_wrong_shape_is_a_validation_error(rig: Rig, body: Any) -> None:
    answer = rig.heartbeat(body)

    assert (answer.status_code, answer.json()["code"]) == (400, "VALIDATION")


def test_a_heartbeat_in_range_is_answered(rig: Rig) -> None:
    answer = rig.heartbeat({"queue_depth": 1_000_000, "app_version": "1.0", "session_id": rig.session_id})

    assert answer.status_code == 200, answer.text
    assert answer.json()["sessions"][0]["session_id"] == rig.session_id


# -- 3. no stored event breaks the views ----------------------------------------------------------------
def test_a_scan_then_an_adjustment_of_2_63_minus_1_is_refused_and_the_views_answer(rig: Rig) -> None:
    status, answer = rig.send(rig.chain(rig.scan()))
    assert (status, answer["ok"]) == (200, [1])

    status, answer = rig.send(rig.chain(rig.adjusted(I63, 0)))

    assert status == 200
    refused_at(answer, 0, "VALIDATION")
    assert rig.stored() == 1
    rig.assert_views_answer()


def test_the_largest_allowed_values_summed_over_many_events_keep_every_view_answering(rig: Rig) -> None:
    """Every counter and every sum stays far inside 64 bits: nearly 4,000 events, each at its limit."""
    top = items.MAX_QTY
    specs = [
        rig.scan(top, product_id=rig.product_a, token=I63),
        rig.adjusted(top, top),
        rig.adjusted(top, top, kind="damage.adjusted"),
        rig.adjusted(-top, 0, kind="damage.adjusted"),
        rig.scan(top, code=f"@{rig.product_b}"),
    ]
    for _ in range(8):
        events = rig.chain(*(specs * 99), {**rig.attributes({"mrp_minor": top}), "occurred_at": 253_402_300_799_999})
        status, answer = rig.send(events)
        assert (status, answer["errors"]) == (200, []), answer["errors"][:3]
    assert rig.stored() == 8 * 496
    rig.assert_views_answer()
    qty = items.item_quantity(rig.box.db.read(), rig.session_id, rig.product_a)
    assert qty == 8 * 99 * 2 * top

    # Approved, the session's counts also go through the run's rollup and variance.
    assert rig.person("POST", f"/api/sessions/{rig.session_id}/submit").status_code == 200
    assert rig.person("POST", f"/api/sessions/{rig.session_id}/approve", boss=True).status_code == 200
    rig.assert_views_answer()
    rollup = rig.client.get(
        f"/api/runs/{rig.run_id}/rollup", headers={"Authorization": f"Bearer {rig.boss_token}"}
    ).json()
    assert rollup["total_counted"] == 8 * 99 * 3 * top


# -- 4. attribute values of the wrong type -------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs",
    [
        {"uom": ["EA"]},
        {"uom": {"a": 1}},
        {"category": [1, 2]},
        {"category": 5},
        {"mfg_date": ["2026-01-01"]},
        {"mfg_date": 20260101},
        {"mfg_date": "20260101"},
        {"status": ["finalized"]},
        {"condition": {"good": True}},
        {"mrp_minor": [1]},
        {"mrp_minor": True},
    ],
    ids=repr,
)
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_an_attribute_value_of_the_wrong_type_is_refused(rig: Rig, attrs: dict[str, Any], fmt: str) -> None:
    status, answer = rig.send(rig.chain(rig.scan(), rig.attributes(attrs)), fmt)

    assert status == 200
    refused_at(answer, 1, "VALIDATION")
    assert rig.stored() == 0
    rig.assert_views_answer()


def test_good_attributes_from_a_device_are_stored(rig: Rig) -> None:
    attrs = {"uom": "EA", "category": "Food", "mfg_date": "2025-01-31", "status": "finalized", "mrp_minor": 0}

    status, answer = rig.send(rig.chain(rig.attributes({**attrs, "condition": None})))

    assert (status, answer["ok"], answer["errors"]) == (200, [1], [])
    rig.assert_views_answer()


# -- 5. malformed envelopes ----------------------------------------------------------------------------
DEPTH = 100_000


def _malformed(rig: Rig) -> list[tuple[str, bytes, bytes]]:
    """(what is wrong, the JSON body, the msgpack body) of envelopes every decoder must refuse."""
    good = hexed(rig.envelope(rig.chain(rig.scan())))
    event = good["events"][0]
    shapes: list[tuple[str, Any]] = [
        ("events a number", {**good, "events": 7}),
        ("events null", {**good, "events": None}),
        ("events a string", {**good, "events": "abc"}),
        ("events a map", {**good, "events": {"seq": 1}}),
        ("an event a number", {**good, "events": [1]}),
        ("an event null", {**good, "events": [None]}),
        ("no events", {**good, "events": []}),
        ("501 events", {**good, "events": good["events"] * 501}),
        ("head missing", {key: value for key, value in good.items() if key != "head"}),
        ("head null", {**good, "head": None}),
        ("head a number", {**good, "head": 5}),
        ("head a list", {**good, "head": [1, 2]}),
        ("head hash a number", {**good, "head": {**good["head"], "hash": 5}}),
        ("head hash not hex", {**good, "head": {**good["head"], "hash": "zz"}}),
        ("prev_hash a list", {**good, "events": [{**event, "prev_hash": [1]}]}),
        ("prev_hash not hex", {**good, "events": [{**event, "prev_hash": "xyz"}]}),
        ("writer_id a number", {**good, "writer_id": 3}),
        ("the body a list", [good]),
        ("the body a number", 12),
        ("the body null", None),
        ("an unknown field", {**good, "extra": 1}),
        ("seq a float", {**good, "events": [{**event, "seq": 1.5}]}),
        ("seq 0", {**good, "events": [{**event, "seq": 0}]}),
        ("seqs with a hole", {**good, "events": [event, {**event, "seq": 3}]}),
        ("payload a list", {**good, "events": [{**event, "payload": [1]}]}),
    ]
    bodies = [
        (name, json.dumps(shape).encode(), msgpack.packb(unhexed(shape), use_bin_type=True)) for name, shape in shapes
    ]
    # Nested bodies are written out directly: no encoder follows 100,000 levels.
    marker = '"DEEP"'
    holder = json.dumps({**good, "events": [{**event, "payload": {"deep": "DEEP"}}]})
    json_deep = "[" * DEPTH + "]" * DEPTH
    head, tail = msgpack.packb(unhexed(json.loads(holder)), use_bin_type=True).split(msgpack.packb("DEEP"))
    msgpack_deep = b"\x91" * DEPTH + b"\xc0"
    bodies += [
        ("100,000 deep body", json_deep.encode(), msgpack_deep),
        ("100,000 deep payload", holder.replace(marker, json_deep).encode(), head + msgpack_deep + tail),
        (
            "100,000 deep events",
            ('{"writer_id": "w", "events": ' + json_deep + "}").encode(),
            b"\x81\xa6events" + msgpack_deep,
        ),
    ]
    return bodies


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_every_malformed_envelope_is_a_400_validation_in_both_formats(rig: Rig, fmt: str) -> None:
    failures = []
    for name, json_body, msgpack_body in _malformed(rig):
        answer = rig.post(json_body, "application/json") if fmt == "json" else rig.post(msgpack_body)
        body = decoded(answer) if answer.status_code < 500 else {}
        if (answer.status_code, body.get("code")) != (400, "VALIDATION"):
            failures.append((name, answer.status_code, answer.text[:200]))
    assert failures == []
    assert rig.stored() == 0
    rig.assert_views_answer()


def test_a_body_that_is_not_json_or_msgpack_is_a_400(rig: Rig) -> None:
    for body, content_type in ((b"{not json", "application/json"), (b"\xc1\xc1", MSGPACK), (b"", "application/json")):
        answer = rig.post(body, content_type)
        assert (answer.status_code, decoded(answer)["code"]) == (400, "VALIDATION")


def unhexed(value: Any) -> Any:
    """The msgpack form of a hexed envelope: the hex of the hash fields back into ``bin``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("prev_hash", "hash", "signature") and isinstance(item, str):
                try:
                    out[key] = bytes.fromhex(item)
                except ValueError:
                    out[key] = item
            else:
                out[key] = unhexed(item)
        return out
    if isinstance(value, list):
        return [unhexed(item) for item in value]
    return value


# -- 6. the person API applies the same bounds ------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "scans", {"code": BARCODE_A, "qty": I63}),
        ("POST", "scans", {"code": BARCODE_A, "qty": U64}),
        ("POST", "scans", {"code": BARCODE_A, "qty": 2**64}),
        ("POST", "scans", {"code": BARCODE_A, "qty": -(2**63)}),
        ("POST", "scans", {"code": "x" * 65}),
        ("POST", "scans", {"code": [BARCODE_A]}),
        ("PUT", "item", {"qty": I63}),
        ("PUT", "item", {"qty": -(2**63)}),
        ("PUT", "item", {"qty": U64}),
        ("PUT", "item", {"damage_qty": I63}),
        ("PUT", "item", {"damage_qty": -1}),
        ("PUT", "item", {"attributes": {"mrp_minor": U64}}),
        ("PUT", "item", {"attributes": {"uom": ["EA"]}}),
        ("PUT", "item", {"attributes": {"category": {"a": 1}}}),
        ("PUT", "item", {"attributes": {"mfg_date": [2026]}}),
        ("PUT", "item", {"attributes": {"status": {"x": []}}}),
        ("PUT", "item", {"attributes": {"uom": 5}}),
        ("POST", "serials", {"serial": "s" * 65}),
        ("POST", "serials", {"serial": ["s"]}),
        ("POST", "serials", {"serial": " "}),
    ],
    ids=repr,
)
def test_the_person_api_refuses_out_of_range_input_with_a_4xx(rig: Rig, method: str, path: str, body: Any) -> None:
    item = f"/api/sessions/{rig.session_id}/items/{rig.product_a}"
    url = {"scans": f"/api/sessions/{rig.session_id}/scans", "item": item, "serials": f"{item}/serials"}[path]
    before = rig.all_events()

    answer = rig.person(method, url, body)

    assert (answer.status_code, answer.json()["code"]) in ((400, "VALIDATION"), (422, "VALIDATION")), answer.text
    assert rig.all_events() == before
    rig.assert_views_answer()


def test_the_person_api_refuses_a_body_nested_100000_deep(rig: Rig) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    item = f"/api/sessions/{rig.session_id}/items/{rig.product_a}"
    before = rig.all_events()
    for url, method, body in (
        (item, "PUT", '{"attributes": {"uom": ' + deep + "}}"),
        (item, "PUT", deep),
        (f"/api/sessions/{rig.session_id}/scans", "POST", '{"code": ' + deep + "}"),
    ):
        answer = rig.client.request(
            method,
            url,
            content=body.encode(),
            headers={"Authorization": f"Bearer {rig.verifier_token}", "Content-Type": "application/json"},
        )
        assert (answer.status_code, answer.json()["code"]) == (400, "VALIDATION"), (url, answer.text[:200])
    assert rig.all_events() == before


def test_the_person_api_at_the_limits_is_answered(rig: Rig) -> None:
    top = items.MAX_QTY
    item = f"/api/sessions/{rig.session_id}/items/{rig.product_a}"
    for _ in range(3):
        assert (
            rig.person("POST", f"/api/sessions/{rig.session_id}/scans", {"code": BARCODE_A, "qty": top}).status_code
            == 201
        )
    answer = rig.person("PUT", item, {"qty": top, "damage_qty": top, "attributes": {"mrp_minor": top, "uom": "EA"}})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["qty"], answer.json()["damage_qty"]) == (top, top)
    assert rig.person("PUT", item, {"qty": 0}).json()["qty"] == 0
    rig.assert_views_answer()


def test_a_heartbeat_nested_too_deep_or_too_big_is_refused(rig: Rig) -> None:
    headers = {"Authorization": f"Device {rig.device_token}", "Content-Type": "application/json"}
    deep = "[" * 20_000 + "]" * 20_000  # as deep as fits under the heartbeat's 64 KiB
    for body, expected in (
        (deep, (400, "VALIDATION")),
        ('{"app_version": ' + deep + "}", (400, "VALIDATION")),
        ('{"app_version": "' + "x" * 70_000 + '"}', (413, "PAYLOAD_TOO_LARGE")),
    ):
        answer = rig.client.post("/api/sync/heartbeat", content=body.encode(), headers=headers)
        assert (answer.status_code, answer.json()["code"]) == expected, answer.text[:200]


def test_an_out_of_range_event_already_in_the_log_does_not_break_the_counting_views(rig: Rig) -> None:
    """A store may hold such an event from before the bounds, or from a peer box without them: it is
    appended here through the record path as a replicated page would be, past every device check."""
    events = rig.chain(rig.scan(), rig.adjusted(I63, 0), rig.scan(3))
    rig.box.db.write(lambda conn: rig.box.log.append_run(conn, events))
    assert rig.stored() == 3

    rig.assert_views_answer()
    assert items.item_quantity(rig.box.db.read(), rig.session_id, rig.product_a) == I63  # saturated, not failed
