"""Bodies and values the box must refuse cheaply: an oversized body before it is buffered, a body nested
deeper than the decoder follows, numbers past what SQLite stores. Each is a 4xx with the box's error
body; none may become a 500, and a genuine bug still must."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest

from appliance.api.deps import SMALL_BODY
from appliance.app import _error_response
from tests.conftest import ServerProcess

MIB = 1024 * 1024


def _refusal(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["code"]


def test_a_megabyte_login_is_refused_before_it_is_read(demo_server: ServerProcess) -> None:
    body = b'{"username": "admin", "password": "' + b"x" * MIB + b'"}'
    started = time.monotonic()
    answer = httpx.post(demo_server.url + "/api/auth/login", content=body, headers={"content-type": "application/json"})
    elapsed = time.monotonic() - started
    assert _refusal(answer) == (413, "PAYLOAD_TOO_LARGE")
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


def test_a_streamed_login_without_length_is_cut_off_at_the_limit(demo_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"username": "admin", "password": "'
        for _ in range(64):
            yield b"x" * 16 * 1024

    answer = httpx.post(
        demo_server.url + "/api/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert _refusal(answer) == (413, "PAYLOAD_TOO_LARGE")


def test_small_routes_take_a_form_and_imports_take_a_file(
    demo_server: ServerProcess, demo_tokens: dict[str, str]
) -> None:
    boss = demo_server.client(demo_tokens["supervisor"])
    over = {"name": "n" * SMALL_BODY}
    assert _refusal(boss.post("/api/runs", json=over)) == (413, "PAYLOAD_TOO_LARGE")
    assert _refusal(boss.post("/api/runs/none/cancel", json={"reason": "r" * SMALL_BODY})) == (413, "PAYLOAD_TOO_LARGE")
    # A product file far past a form's size still reaches the importer (a dry run writes nothing).
    rows = "".join(f"SKU-{n:06d},Product {n},Cat,Sub,EA,1.00,5\n" for n in range(20_000))
    csv = ("sku,name,category,subcategory,uom,mrp,expected_qty\n" + rows).encode()
    assert len(csv) > 10 * SMALL_BODY
    admin = demo_server.client(demo_tokens["admin"])
    answer = admin.post("/api/products/import", params={"dry_run": "true", "filename": "big.csv"}, content=csv)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("path", "role"),
    [("/api/auth/login", None), ("/api/runs", "supervisor"), ("/api/conflicts/none/resolve", "supervisor")],
)
def test_json_nested_past_the_decoder_is_a_bad_request(
    demo_server: ServerProcess, demo_tokens: dict[str, str], path: str, role: str | None
) -> None:
    depth = 7_000  # within SMALL_BODY, far past what msgspec follows
    body = b"[" * depth + b"]" * depth
    headers = {"content-type": "application/json"}
    if role:
        headers["authorization"] = f"Bearer {demo_tokens[role]}"
    answer = httpx.post(demo_server.url + path, content=body, headers=headers)
    assert _refusal(answer) == (400, "VALIDATION")


@pytest.mark.parametrize(
    ("role", "method", "path", "kwargs"),
    [
        ("auditor", "GET", "/api/writers/none/events", {"params": {"after_seq": 2**63}}),
        ("supervisor", "GET", "/api/products", {"params": {"offset": 2**63}}),
        ("admin", "POST", "/api/floors", {"json": {"code": "ZZ", "position": 2**63}}),
    ],
)
def test_numbers_past_sqlite_are_refused(
    demo_server: ServerProcess, demo_tokens: dict[str, str], role: str, method: str, path: str, kwargs: Any
) -> None:
    answer = demo_server.client(demo_tokens[role]).request(method, path, **kwargs)
    assert _refusal(answer) == (400, "VALIDATION")


def test_pairing_qr_takes_only_ascii_digits(demo_server: ServerProcess, demo_tokens: dict[str, str]) -> None:
    boss = demo_server.client(demo_tokens["supervisor"])
    assert _refusal(boss.get("/api/devices/pairing-qr", params={"code": "12345\uff16"})) == (422, "VALIDATION")
    assert boss.get("/api/devices/pairing-qr", params={"code": "123-456"}).status_code == 200


@pytest.mark.parametrize("error", [RuntimeError("boom"), RecursionError("maximum recursion depth exceeded")])
def test_a_bug_is_still_a_logged_500(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="appliance.app"):
        answer = _error_response(cast(Any, None), error)
    assert answer.status_code == 500
    assert answer.content["code"] == "INTERNAL"
    assert any(record.exc_info and record.exc_info[1] is error for record in caplog.records)
