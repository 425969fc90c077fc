"""Photos a handheld takes offline (docs/sync-protocol.md §3.4, §5), against ``stockverify serve`` in a real
process: the upload under the photo's hash, with its refusals; the ``photo.attached`` event the box refuses
until the photo is there, and takes once it is; a photo held with its event until a supervisor accepts it;
and the ``subcategory`` attribute.

The device here builds and signs its own chain (``Event``, ``transport.batch_body``), as the page says a
writer does, so that it can send the event types the page lists whatever a client library checks first.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from replication.device import transport
from replication.wire.codec import ZERO_HASH, Event
from replication.wire.hlc import wall_ms
from tests.conftest import ServerProcess
from tests.replication.conftest import CountingBox

MSGPACK = "application/msgpack"
MAX_PHOTO_BYTES = 64 * 1024  # the module's box takes small photos, so that one too large is cheap to send
_names = itertools.count(1)


def photo(tag: str, size: int = 2048) -> tuple[bytes, str]:
    """Bytes standing for an image (the box keeps what it is sent; it does not decode images) and their hash."""
    data = (b"\xff\xd8\xff\xe0" + tag.encode() + bytes(range(256)) * (size // 256 + 1))[:size]
    return data, hashlib.sha256(data).hexdigest()


class Device:
    """A paired handheld with its own key, chain and clock."""

    def __init__(self, box: CountingBox) -> None:
        self.box = box
        self.key = Ed25519PrivateKey.generate()
        paired = httpx.post(
            box.url + "/api/devices/pair",
            json={
                "code": box.pairing_code(),
                "name": f"Photo handheld {next(_names)}",
                "public_key": self.key.public_key().public_bytes_raw().hex(),
            },
            timeout=30,
        )
        assert paired.status_code == 201, paired.text
        self.writer_id: str = paired.json()["writer_id"]
        self.token: str = paired.json()["device_token"]
        self.seq = 0
        self.prev = ZERO_HASH
        self.hlc = paired.json()["server_hlc"]

    def headers(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Device {self.token}", **more}

    def upload(self, sha256: str, data: bytes, content_type: str = "image/jpeg") -> httpx.Response:
        return httpx.put(
            f"{self.box.url}/api/sync/photos/{sha256}",
            content=data,
            headers=self.headers(**{"Content-Type": content_type}),
            timeout=30,
        )

    def events(self, specs: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        """New events after the acknowledged head; the head moves only when the box takes them (``send``)."""
        seq, prev, events = self.seq, self.prev, []
        for event_type, payload in specs:
            seq += 1
            self.hlc = max(wall_ms() << 16, self.hlc + 1)
            event = Event(self.writer_id, seq, str(ULID()), event_type, payload, self.hlc, prev, wall_ms())
            prev = event.hash
            events.append(event)
        return events

    def send(self, events: list[Event]) -> dict[str, Any]:
        body = msgpack.packb(transport.batch_body(self.writer_id, events, self.key), use_bin_type=True)
        answer = httpx.post(
            self.box.url + "/api/sync/batch",
            content=body,
            headers=self.headers(**{"Content-Type": MSGPACK}),
            timeout=30,
        )
        assert answer.status_code == 200, answer.content[:300]
        result: dict[str, Any] = msgpack.unpackb(answer.content, raw=False)
        if not result["errors"]:
            self.seq, self.prev = events[-1].seq, events[-1].hash
        self.hlc = max(self.hlc, result["server_hlc"])
        return result

    def pull(self, session_id: str) -> dict[str, Any]:
        answer = httpx.get(
            self.box.url + "/api/sync/pull", params={"session_id": session_id}, headers=self.headers(), timeout=30
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingBox]:
    env = {"STOCKVERIFY_MAX_PHOTO_BYTES": str(MAX_PHOTO_BYTES), "STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "1000"}
    server = ServerProcess(tmp_path_factory.mktemp("device-photos") / "box", "--demo", env=env)
    try:
        server.wait_ready()
        yield CountingBox(server)
    finally:
        server.stop()


@pytest.fixture
def session(box: CountingBox) -> Iterator[str]:
    """A started session of the demo verifier; submitted afterwards (a verifier has one active session)."""
    session_id = box.counting_session()
    yield session_id
    if box.boss.get(f"/api/sessions/{session_id}").json()["status"] == "IN_PROGRESS":
        box.finish(session_id)


@pytest.fixture(scope="module")
def product_id(box: CountingBox) -> str:
    return box.products(1)[0]["product_id"]


def attached(box: CountingBox, session_id: str, product_id: str, sha256: str, size: int) -> tuple[str, dict[str, Any]]:
    payload = {
        "session_id": session_id,
        "product_id": product_id,
        "sha256": sha256,
        "content_type": "image/jpeg",
        "size": size,
        "by": box.verifier_id,
    }
    return "photo.attached", payload


def photos_of(pulled: dict[str, Any], product_id: str) -> list[dict[str, Any]]:
    found = [item["photos"] for item in pulled["items"] if item["product_id"] == product_id]
    return found[0] if found else []


def refusal(answer: httpx.Response) -> tuple[int, str]:
    body = answer.json()
    assert set(body) == {"code", "message", "details"}, body
    return answer.status_code, body["code"]


# -- the upload ------------------------------------------------------------------------------------
def test_a_photo_is_kept_under_its_hash_and_sending_it_again_changes_nothing(box: CountingBox) -> None:
    device = Device(box)
    data, sha256 = photo("again")
    first = device.upload(sha256, data)
    assert first.status_code == 201, first.text
    assert first.json() == {"sha256": sha256, "size": len(data)}
    stored = box.server.data_dir / "photos" / sha256[:2] / sha256
    assert stored.read_bytes() == data
    again = device.upload(sha256, data)
    assert again.status_code == 200, again.text
    assert again.json() == {"sha256": sha256, "size": len(data)}
    assert stored.read_bytes() == data
    assert [p.name for p in stored.parent.iterdir()] == [sha256]  # no temporary file left behind


def test_a_body_that_is_not_the_named_photo_is_refused(box: CountingBox) -> None:
    device = Device(box)
    data, sha256 = photo("mismatch")
    answer = device.upload(sha256, data[:-1])  # cut short on the way
    assert refusal(answer) == (400, "PHOTO_HASH_MISMATCH")
    assert answer.json()["details"]["sha256"] == hashlib.sha256(data[:-1]).hexdigest()
    assert not (box.server.data_dir / "photos" / sha256[:2] / sha256).exists()
    assert refusal(device.upload(sha256.upper(), data)) == (400, "VALIDATION")
    assert refusal(device.upload(sha256[:-1], data)) == (400, "VALIDATION")


@pytest.mark.parametrize("content_type", ["image/gif", "text/plain", "application/octet-stream"])
def test_a_type_that_is_not_a_photo_is_refused(box: CountingBox, content_type: str) -> None:
    device = Device(box)
    data, sha256 = photo(content_type)
    assert refusal(device.upload(sha256, data, content_type)) == (400, "BAD_PHOTO")
    assert not (box.server.data_dir / "photos" / sha256[:2] / sha256).exists()


def test_every_photo_type_is_taken(box: CountingBox) -> None:
    device = Device(box)
    for content_type in ("image/jpeg", "image/png", "image/webp"):
        data, sha256 = photo(f"type {content_type}")
        assert device.upload(sha256, data, content_type).status_code == 201


def test_a_photo_over_the_limit_is_too_large(box: CountingBox) -> None:
    device = Device(box)
    data, sha256 = photo("large", MAX_PHOTO_BYTES + 1)
    answer = device.upload(sha256, data)
    assert refusal(answer) == (413, "PAYLOAD_TOO_LARGE")
    assert answer.json()["details"]["max_photo_bytes"] == MAX_PHOTO_BYTES
    largest, sha256 = photo("largest", MAX_PHOTO_BYTES)
    assert device.upload(sha256, largest).status_code == 201


def test_an_upload_needs_a_paired_device(box: CountingBox) -> None:
    data, sha256 = photo("nobody")
    url = f"{box.url}/api/sync/photos/{sha256}"
    for headers in (
        {},
        {"Authorization": "Device not-a-token"},
        {"Authorization": box.verifier.headers["Authorization"]},
    ):
        answer = httpx.put(url, content=data, headers={**headers, "Content-Type": "image/jpeg"}, timeout=30)
        assert refusal(answer) == (401, "UNAUTHENTICATED")
    assert not (box.server.data_dir / "photos" / sha256[:2] / sha256).exists()


# -- the event ---------------------------------------------------------------------------------------
def test_an_event_naming_a_photo_not_uploaded_is_refused_until_it_is(
    box: CountingBox, session: str, product_id: str
) -> None:
    device = Device(box)
    data, sha256 = photo("offline")
    scan = (
        "scan.recorded",
        {
            "session_id": session,
            "code": "4006381333931",
            "qty": 1,
            "rack_id": box.rack_id(session),
            "product_id": None,
            "token": None,
            "by": box.verifier_id,
        },
    )
    events = device.events([scan, attached(box, session, product_id, sha256, len(data))])
    refused = device.send(events)
    assert refused["ok"] == [] and refused["held"] == [], refused
    assert [(e["seq"], e["code"]) for e in refused["errors"]] == [(1, "NOT_PROCESSED"), (2, "PHOTO_NOT_UPLOADED")]
    assert sha256 in refused["errors"][1]["message"]
    assert refused["expected_seq"] == 1
    assert box.stored(device.writer_id) == []  # nothing of the batch

    assert device.upload(sha256, data).status_code == 201
    taken = device.send(events)  # the same batch, resent
    assert taken["ok"] == [1, 2] and taken["errors"] == [] and taken["held"] == [], taken
    assert [seq for seq, _, _ in box.stored(device.writer_id)] == [1, 2]
    assert photos_of(device.pull(session), product_id) == [{"sha256": sha256, "content_type": "image/jpeg"}]
    # The same photo the dashboard shows, from the same file.
    shown = box.boss.get(f"/api/photos/{sha256}")
    assert shown.status_code == 200 and shown.content == data
    assert shown.headers["content-type"].startswith("image/jpeg")
    # Sent again after a lost answer: ok again, one photo.
    assert device.send(events)["ok"] == [1, 2]
    assert len(photos_of(device.pull(session), product_id)) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "A" * 64),
        ("sha256", "a" * 63),
        ("sha256", "a" * 64 + "\n"),
        ("content_type", "image/gif"),
        ("size", 0),
        ("size", 16 * 1024 * 1024 + 1),
        ("size", "12"),
    ],
)
def test_a_photo_event_outside_its_bounds_is_validation(
    box: CountingBox, session: str, product_id: str, field: str, value: Any
) -> None:
    device = Device(box)
    data, sha256 = photo(f"bounds {field} {value!r}")
    assert device.upload(sha256, data).status_code == 201
    kind, payload = attached(box, session, product_id, sha256, len(data))
    event = device.events([(kind, {**payload, field: value})])
    answer = device.send(event)
    assert [(e["seq"], e["code"]) for e in answer["errors"]] == [(1, "VALIDATION")], answer


def test_a_photo_event_names_a_product_of_the_store(box: CountingBox, session: str) -> None:
    device = Device(box)
    data, sha256 = photo("no product")
    assert device.upload(sha256, data).status_code == 201
    answer = device.send(device.events([attached(box, session, str(ULID()), sha256, len(data))]))
    assert [e["code"] for e in answer["errors"]] == ["PRODUCT_NOT_FOUND"]


def test_a_held_photo_is_shown_once_a_supervisor_accepts_it(box: CountingBox, product_id: str) -> None:
    session_id = box.counting_session()
    box.finish(session_id)  # submitted: what reaches the box now is held
    device = Device(box)
    data, sha256 = photo("held")
    assert device.upload(sha256, data).status_code == 201
    event = device.events([attached(box, session_id, product_id, sha256, len(data))])
    answer = device.send(event)
    assert answer["ok"] == [1] and answer["errors"] == [], answer
    assert answer["held"] == [
        {"seq": 1, "event_id": event[0].event_id, "session_id": session_id, "reason": "SESSION_NOT_IN_PROGRESS"}
    ]
    assert photos_of(device.pull(session_id), product_id) == []
    listed = box.boss.get("/api/held", params={"session_id": session_id}).json()
    assert [(h["event_id"], h["type"], h["product_id"], h["qty"]) for h in listed] == [
        (event[0].event_id, "photo.attached", product_id, 0)
    ]
    decided = box.boss.post(
        "/api/held/decide", json={"event_ids": [event[0].event_id], "decision": "accepted", "reason": ""}
    )
    assert decided.status_code == 200, decided.text
    assert photos_of(device.pull(session_id), product_id) == [{"sha256": sha256, "content_type": "image/jpeg"}]


# -- subcategory -------------------------------------------------------------------------------------
def test_subcategory_is_an_item_attribute(box: CountingBox, session: str, product_id: str) -> None:
    device = Device(box)
    attrs = {"category": "Beverages", "subcategory": "Cold drinks"}
    spec = (
        "item.attributes_set",
        {"session_id": session, "product_id": product_id, "attrs": attrs, "by": box.verifier_id},
    )
    answer = device.send(device.events([spec]))
    assert answer["ok"] == [1] and answer["errors"] == [], answer
    item = next(i for i in device.pull(session)["items"] if i["product_id"] == product_id)
    assert item["attributes"]["subcategory"] == "Cold drinks"
    assert item["attributes"]["category"] == "Beverages"
    for bad in ("", "   ", "x" * 65, 7):
        spoiled = ("item.attributes_set", {**spec[1], "attrs": {"subcategory": bad}})
        refused = device.send(device.events([spoiled]))
        assert [e["code"] for e in refused["errors"]] == ["VALIDATION"], (bad, refused)
    cleared = ("item.attributes_set", {**spec[1], "attrs": {"subcategory": None}})
    assert device.send(device.events([cleared]))["errors"] == []
