"""The edges of the device sync contract (docs/sync-protocol.md §3, §4), against ``stockverify serve`` in a
real process: every whole-request refusal comes back in the request's format, msgpack or JSON; a
heartbeat is read and answered in either; and a device that sends too fast is held to its own limit,
told how long to wait, and let through once it has, while every other device goes on unhindered.

The server is this module's own, started with small per-device limits and a small body limit, so that
a limit is reached in a handful of requests and a too-large batch is cheap to send.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from appliance.auth.throttle import TokenBuckets
from appliance.errors import RateLimited
from appliance.settings import SettingsError, load_settings
from replication.device import transport
from replication.device.outbox import Outbox
from tests.conftest import ServerProcess
from tests.replication.conftest import CountingBox, paired_outbox, scan_payload

MSGPACK = "application/msgpack"
JSON = "application/json"
FORMATS = ("msgpack", "json")
BATCH_BURST = 4
HEARTBEAT_BURST = 20
PER_S = 0.5  # both routes: a device that is refused waits about 2 s, long enough to see it still held
MAX_REQUEST_BYTES = 256 * 1024
GOOD_HEARTBEAT = {"queue_depth": 7, "app_version": "edge-1", "session_id": None}


class Edges:
    """The module's box and a counting session every device here scans into."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.box = CountingBox(server)
        self.session_id = self.box.counting_session()
        self.url = server.url

    def device(self, folder: Path, name: str) -> Handheld:
        return Handheld(self, paired_outbox(self.box, folder, name))


class Handheld:
    """A paired device with a real chain of three scans, signed as a handheld signs them."""

    def __init__(self, edges: Edges, outbox: Outbox) -> None:
        self.edges = edges
        self.outbox = outbox
        identity = outbox.require_identity()
        self.writer_id = identity.writer_id
        self.token = identity.device_token
        for _ in range(3):
            outbox.append("scan.recorded", scan_payload(edges.box, edges.session_id))
        events = [record.event(self.writer_id) for record in outbox.records()]
        self.envelope = transport.batch_body(self.writer_id, events, outbox.key())

    def post(self, path: str, body: bytes, content_type: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Device {token or self.token}", "Content-Type": content_type}
        return httpx.post(self.edges.url + path, content=body, headers=headers, timeout=30)

    def batch(self, fmt: str) -> httpx.Response:
        """The device's batch, sent again as often as asked: the box answers a resent batch ``ok`` again."""
        return self.post("/api/sync/batch", *encode(self.envelope, fmt))

    def heartbeat(self, fmt: str, body: Any = GOOD_HEARTBEAT) -> httpx.Response:
        return self.post("/api/sync/heartbeat", *encode(body, fmt))


def _hexed(value: Any) -> Any:
    """JSON carries every ``bin`` as lowercase hex (docs/sync-protocol.md §3)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {name: _hexed(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_hexed(item) for item in value]
    return value


def encode(value: Any, fmt: str) -> tuple[bytes, str]:
    if fmt == "msgpack":
        return msgpack.packb(value, use_bin_type=True), MSGPACK
    return json.dumps(_hexed(value)).encode(), JSON


def decoded(answer: httpx.Response, fmt: str) -> dict[str, Any]:
    """The answer's body, read strictly as ``fmt``: a JSON body where msgpack was asked for fails here."""
    media = answer.headers.get("content-type", "")
    if fmt == "msgpack":
        assert media.startswith(MSGPACK), (answer.status_code, media, answer.content[:200])
        body = msgpack.unpackb(answer.content, raw=False)
    else:
        assert media.startswith(JSON), (answer.status_code, media, answer.content[:200])
        body = answer.json()
    assert isinstance(body, dict), body
    return body


def refused(answer: httpx.Response, fmt: str) -> tuple[int, str]:
    """The status and code of a refusal, after checking it is the box's error body in ``fmt``."""
    body = decoded(answer, fmt)
    assert set(body) == {"code", "message", "details"}, body
    assert isinstance(body["message"], str) and body["message"], body
    return answer.status_code, body["code"]


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edges]:
    env = {
        "STOCKVERIFY_DEVICE_BATCHES_PER_S": str(PER_S),
        "STOCKVERIFY_DEVICE_BATCH_BURST": str(BATCH_BURST),
        "STOCKVERIFY_DEVICE_HEARTBEATS_PER_S": str(PER_S),
        "STOCKVERIFY_DEVICE_HEARTBEAT_BURST": str(HEARTBEAT_BURST),
        "STOCKVERIFY_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "1000",  # pairing is throttled too, and most tests pair
    }
    server = ServerProcess(tmp_path_factory.mktemp("device-edges") / "box", "--demo", env=env)
    try:
        server.wait_ready()
        yield Edges(server)
    finally:
        server.stop()


# -- refusals in the request's format --------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malformed_batch_is_400_validation_in_the_request_format(edges: Edges, tmp_path: Path, fmt: str) -> None:
    device = edges.device(tmp_path, f"Malformed {fmt}")
    garbage = b"\xc1\xc1" if fmt == "msgpack" else b'{"writer_id": '
    assert refused(device.post("/api/sync/batch", garbage, MSGPACK if fmt == "msgpack" else JSON), fmt) == (
        400,
        "VALIDATION",
    )
    unknown_field = {**device.envelope, "extra": 1}
    assert refused(device.post("/api/sync/batch", *encode(unknown_field, fmt)), fmt) == (400, "VALIDATION")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("path", ["/api/sync/batch", "/api/sync/heartbeat"])
def test_an_unknown_device_is_401_in_the_request_format(edges: Edges, tmp_path: Path, fmt: str, path: str) -> None:
    body, content_type = encode({"queue_depth": 1}, fmt)
    answer = httpx.post(
        edges.url + path,
        content=body,
        headers={"Authorization": "Device not-a-token", "Content-Type": content_type},
        timeout=30,
    )
    assert refused(answer, fmt) == (401, "UNAUTHENTICATED")
    no_credential = httpx.post(edges.url + path, content=body, headers={"Content-Type": content_type}, timeout=30)
    assert refused(no_credential, fmt) == (401, "UNAUTHENTICATED")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bodiless_request_is_refused_in_the_format_its_accept_header_prefers(edges: Edges, fmt: str) -> None:
    accept = f"{MSGPACK}, {JSON}" if fmt == "msgpack" else f"{JSON}, {MSGPACK}"
    pull = httpx.get(
        edges.url + "/api/sync/pull",
        params={"session_id": edges.session_id},
        headers={"Authorization": "Device not-a-token", "Accept": accept},
        timeout=30,
    )
    assert refused(pull, fmt) == (401, "UNAUTHENTICATED")
    nowhere = httpx.get(edges.url + "/api/sync/nowhere", headers={"Accept": accept}, timeout=30)
    assert refused(nowhere, fmt) == (404, "NOT_FOUND")
    wrong_method = httpx.get(edges.url + "/api/sync/batch", headers={"Accept": accept}, timeout=30)
    assert refused(wrong_method, fmt) == (405, "METHOD_NOT_ALLOWED")
    assert "POST" in wrong_method.headers["allow"]


def test_a_request_that_prefers_nothing_is_refused_in_json(edges: Edges) -> None:
    answer = httpx.get(edges.url + "/api/sync/pull", params={"session_id": "x"}, headers={"Accept": "*/*"}, timeout=30)
    assert refused(answer, "json") == (401, "UNAUTHENTICATED")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_revoked_device_is_403_revoked_in_the_request_format(edges: Edges, tmp_path: Path, fmt: str) -> None:
    device = edges.device(tmp_path, f"Revoked {fmt}")
    assert device.heartbeat(fmt).status_code == 200
    edges.box.revoke(device.writer_id)

    assert refused(device.batch(fmt), fmt) == (403, "REVOKED")
    assert refused(device.heartbeat(fmt), fmt) == (403, "REVOKED")
    assert edges.box.stored(device.writer_id) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_body_over_the_limit_is_413_in_the_request_format(edges: Edges, tmp_path: Path, fmt: str) -> None:
    device = edges.device(tmp_path, f"Too large {fmt}")
    content_type = MSGPACK if fmt == "msgpack" else JSON
    batch = device.post("/api/sync/batch", b"\x00" * (MAX_REQUEST_BYTES + 1), content_type)
    assert refused(batch, fmt) == (413, "PAYLOAD_TOO_LARGE")
    beat = device.heartbeat(fmt, {"queue_depth": 1, "app_version": "x" * 70_000})
    assert refused(beat, fmt) == (413, "PAYLOAD_TOO_LARGE")
    assert edges.box.stored(device.writer_id) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_device_over_its_batch_limit_is_429_in_the_request_format(edges: Edges, tmp_path: Path, fmt: str) -> None:
    device = edges.device(tmp_path, f"Flood {fmt}")
    answers = [device.batch(fmt) for _ in range(BATCH_BURST + 3)]
    statuses = [answer.status_code for answer in answers]
    assert 429 in statuses, statuses
    assert refused(answers[statuses.index(429)], fmt) == (429, "RATE_LIMITED")


# -- heartbeats in msgpack -------------------------------------------------------------------------
def _devices(edges: Edges) -> dict[str, dict[str, Any]]:
    listed = edges.box.auditor.get("/api/devices")
    assert listed.status_code == 200, listed.text
    return {device["writer_id"]: device for device in listed.json()}


def test_a_msgpack_heartbeat_is_read_and_answered_in_msgpack_like_a_json_one(edges: Edges, tmp_path: Path) -> None:
    device = edges.device(tmp_path, "Heartbeat")
    assert device.batch("msgpack").status_code == 200  # so that head_seq is not 0

    as_json = device.heartbeat("json", {"queue_depth": 5, "app_version": "json-1", "session_id": None})
    assert as_json.status_code == 200, as_json.text
    from_json = decoded(as_json, "json")
    assert _devices(edges)[device.writer_id]["queue_depth"] == 5

    beat = {"queue_depth": 9, "app_version": "msgpack-2", "session_id": edges.session_id}
    as_msgpack = device.heartbeat("msgpack", beat)
    assert as_msgpack.status_code == 200, as_msgpack.content[:300]
    from_msgpack = decoded(as_msgpack, "msgpack")

    assert set(from_msgpack) == set(from_json) >= {"server_hlc", "head_seq", "revoked", "lease_renew_s", "sessions"}
    assert {name: type(value) for name, value in from_msgpack.items()} == {
        name: type(value) for name, value in from_json.items()
    }
    assert from_msgpack["server_hlc"] > from_json["server_hlc"]
    same = ("head_seq", "revoked", "lease_renew_s", "sessions")
    assert {name: from_msgpack[name] for name in same} == {name: from_json[name] for name in same}
    assert from_msgpack["head_seq"] == 3 and from_msgpack["revoked"] is False
    seen = _devices(edges)[device.writer_id]  # the msgpack body was read, not only answered
    assert (seen["queue_depth"], seen["app_version"]) == (9, "msgpack-2")

    # A whole number written as a float is that number, in either format (JSON has one kind of number).
    for fmt, depth in (("msgpack", 11.0), ("json", 12.0)):
        assert device.heartbeat(fmt, {"queue_depth": depth}).status_code == 200
        assert _devices(edges)[device.writer_id]["queue_depth"] == depth


MALFORMED_HEARTBEATS: list[Any] = [
    [],
    "beat",
    None,
    {"queue_depth": -1},
    {"queue_depth": 1_000_000_001},
    {"queue_depth": 2**64 - 1},
    {"queue_depth": "7"},
    {"queue_depth": 1.5},
    {"app_version": "x" * 65},
    {"app_version": 7},
    {"session_id": "s" * 65},
    {"session_id": ["s"]},
    {"extra": 1},
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malformed_heartbeat_is_400_validation_in_the_request_format_and_records_nothing(
    edges: Edges, tmp_path: Path, fmt: str
) -> None:
    device = edges.device(tmp_path, f"Bad heartbeat {fmt}")
    content_type = MSGPACK if fmt == "msgpack" else JSON
    not_readable = b"\xc1" if fmt == "msgpack" else b"{"
    answers = [device.post("/api/sync/heartbeat", not_readable, content_type)]
    answers.append(device.post("/api/sync/heartbeat", b"", content_type))
    deep = b"\x81\xabapp_version" + b"\x91" * 20_000 + b"\xc0" if fmt == "msgpack" else b"[" * 20_000 + b"]" * 20_000
    answers.append(device.post("/api/sync/heartbeat", deep, content_type))
    answers += [device.heartbeat(fmt, body) for body in MALFORMED_HEARTBEATS]
    if fmt == "msgpack":  # bin where a str belongs: JSON has no such thing
        answers.append(device.heartbeat(fmt, {"session_id": b"bytes"}))
    assert len(answers) <= HEARTBEAT_BURST  # within the device's limit: each refusal is the body's own
    assert [refused(answer, fmt) for answer in answers] == [(400, "VALIDATION")] * len(answers)
    assert _devices(edges)[device.writer_id]["last_seen"] is None  # no presence was recorded


# -- per-device limits -----------------------------------------------------------------------------
@pytest.mark.parametrize(("route", "burst"), [("batch", BATCH_BURST), ("heartbeat", HEARTBEAT_BURST)])
def test_a_device_over_its_limit_waits_retry_after_while_another_is_not_held(
    edges: Edges, tmp_path: Path, route: str, burst: int
) -> None:
    flooding = edges.device(tmp_path / "a", f"Flooding {route}")
    other = edges.device(tmp_path / "b", f"Other {route}")

    def send(device: Handheld) -> httpx.Response:
        return device.batch("msgpack") if route == "batch" else device.heartbeat("msgpack")

    answers = [send(flooding) for _ in range(burst + 3)]
    statuses = [answer.status_code for answer in answers]
    first = statuses.index(429)  # ValueError: never limited
    assert first >= burst and set(statuses[:first]) == {200}, statuses  # the whole burst, then the limit
    limited = answers[first]
    assert refused(limited, "msgpack") == (429, "RATE_LIMITED")
    wait = decoded(limited, "msgpack")["details"]["retry_after_s"]
    assert isinstance(wait, int) and 1 <= wait <= 2 / PER_S
    assert limited.headers["retry-after"] == str(wait)

    assert send(other).status_code == 200  # the same moment, another device: its own bucket
    assert send(flooding).status_code == 429  # while this one is still held

    time.sleep(wait)
    again = send(flooding)
    assert again.status_code == 200, again.content[:300]
    if route == "batch":
        assert decoded(again, "msgpack")["ok"] == [1, 2, 3]


def test_the_handheld_client_waits_what_the_box_says(edges: Edges, tmp_path: Path) -> None:
    """``replication.device.transport`` reads a msgpack 429 as retryable, with the box's wait."""
    device = edges.device(tmp_path, "Client")

    async def flood() -> transport.SyncError:
        async with transport.open_session() as http:
            for _ in range(HEARTBEAT_BURST + 3):
                try:
                    await transport.request(
                        http, "POST", edges.url + "/api/sync/heartbeat", token=device.token, body={"queue_depth": 1}
                    )
                except transport.SyncError as exc:
                    return exc
        raise AssertionError("never limited")

    error = asyncio.run(flood())
    assert isinstance(error, transport.Retryable), error
    assert (error.status, error.code) == (429, "RATE_LIMITED")
    assert error.retry_after >= 1 and error.details == {"retry_after_s": int(error.retry_after)}


def test_the_document_says_the_heartbeat_takes_msgpack_and_both_sync_writes_may_be_429(edges: Edges) -> None:
    document = httpx.get(edges.url + "/schema/openapi.json", timeout=30).json()
    for path in ("/api/sync/batch", "/api/sync/heartbeat"):
        operation = document["paths"][path]["post"]
        assert set(operation["requestBody"]["content"]) == {MSGPACK, JSON}, path
        assert set(operation["responses"]["200"]["content"]) == {MSGPACK, JSON}, path
        assert set(operation["responses"]["429"]["content"]) == {MSGPACK, JSON}, path
    beat = document["paths"]["/api/sync/heartbeat"]["post"]["requestBody"]["content"][MSGPACK]["schema"]
    assert beat["additionalProperties"] is False
    assert beat["properties"]["queue_depth"] == {"type": "integer", "minimum": 0, "maximum": 1_000_000_000}
    assert "429" not in document["paths"]["/api/sync/pull"]["get"]["responses"]


# -- the buckets themselves ------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(2.0, 3, what="batches", clock=clock)
    for _ in range(3):
        buckets.take("a")
    with pytest.raises(RateLimited) as refusal:
        buckets.take("a")
    assert refusal.value.details == {"retry_after_s": 1}  # half a second, rounded up to what Retry-After says
    buckets.take("b")  # another key is not held
    clock.now += 0.5
    buckets.take("a")
    with pytest.raises(RateLimited):
        buckets.take("a")
    clock.now += 60  # a long pause refills to the burst, never past it
    for _ in range(3):
        buckets.take("a")
    with pytest.raises(RateLimited):
        buckets.take("a")


def test_buckets_are_bounded_and_forget_the_device_heard_from_longest_ago() -> None:
    clock = Clock()
    buckets = TokenBuckets(0.01, 1, what="heartbeats", max_keys=100, clock=clock)
    buckets.take("first")
    for number in range(1000):
        buckets.take(f"device-{number}")
    assert len(buckets) == 100
    buckets.take("first")  # forgotten, so its bucket is full again
    with pytest.raises(RateLimited):
        buckets.take("device-999")  # remembered: still empty


def test_a_bucket_shared_by_threads_gives_exactly_its_burst() -> None:
    buckets = TokenBuckets(0.01, 5000, what="batches")
    granted = [0] * 8

    def hammer(index: int) -> None:
        for _ in range(1000):
            try:
                buckets.take("one device")
            except RateLimited:
                continue
            granted[index] += 1

    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 5000  # 8,000 asked for in well under the 100 s one more token takes


@pytest.mark.parametrize(
    ("name", "value"),
    [("device_batches_per_s", "0"), ("device_batches_per_s", "nan"), ("device_heartbeat_burst", "0")],
)
def test_a_limit_that_would_refuse_everything_stops_the_start(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={f"STOCKVERIFY_{name.upper()}": value})
